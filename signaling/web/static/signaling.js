// The call WebSocket (/v1/ws): authenticates with its first message, reconnects by
// itself with exponential backoff, and checks the line with ping/pong.

import { RECEIVE, SEND } from "./wire.js";

const CLOSE_REPLACED = 4000;
const CLOSE_UNAUTHENTICATED = 4001;
const CLOSE_RECONNECT = 4002; // the server restarts: connect again now (another takes over)
const CLOSE_REVOKED = 4003;
const PING_EVERY_MS = 20000;
const PONG_WITHIN_MS = 10000;

export class Signaling extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.ws = null;
    this.open = false; // welcomed
    this.attempt = 0;
    this.stopped = false;
    this.nextId = 1;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.retryAt = 0;
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => this.drop();
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/v1/ws`;
  }

  connect() {
    this.stopped = false;
    clearTimeout(this.retryTimer);
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.addEventListener("open", () => ws.send(JSON.stringify({ type: SEND.AUTH, token: this.token })));
    ws.addEventListener("message", (event) => this.receive(ws, event.data));
    ws.addEventListener("close", (event) => this.closed(ws, event.code));
    ws.addEventListener("error", () => {}); // a close event follows
  }

  receive(ws, text) {
    if (ws !== this.ws) return;
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.type === RECEIVE.WELCOME) {
      this.open = true;
      this.attempt = 0;
      this.startPings();
      this.emit("status", { online: true, welcome: message });
      return;
    }
    if (message.type === RECEIVE.PONG) {
      clearTimeout(this.pongTimer);
      return;
    }
    this.emit("message", message);
  }

  closed(ws, code) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.open = false;
    this.stopPings();
    if (code === CLOSE_UNAUTHENTICATED || code === CLOSE_REVOKED) {
      this.stopped = true;
      this.emit("status", { online: false, revoked: true });
      return;
    }
    if (code === CLOSE_REPLACED) {
      // This device's credential is in use in another tab or window: let that one be.
      this.stopped = true;
      this.emit("status", { online: false, replaced: true });
      return;
    }
    if (this.stopped) {
      this.emit("status", { online: false });
      return;
    }
    if (code === CLOSE_RECONNECT) this.attempt = 0;
    const delay =
      code === CLOSE_RECONNECT
        ? 50 + Math.random() * 450
        : Math.min(30000, 500 * 2 ** this.attempt) * (0.8 + Math.random() * 0.4);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.emit("status", { online: false, retryAt: this.retryAt });
  }

  /** The network went away: say so now rather than when a ping goes unanswered. */
  drop() {
    const ws = this.ws;
    if (!ws) return;
    this.closed(ws, 1006);
    ws.close();
  }

  reconnectNow() {
    if (this.stopped || this.ws) return;
    this.attempt = 0;
    this.connect();
  }

  startPings() {
    this.stopPings();
    this.pingTimer = setInterval(() => {
      if (!this.send(SEND.PING)) return;
      clearTimeout(this.pongTimer);
      this.pongTimer = setTimeout(() => this.drop(), PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  stopPings() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
  }

  /** Send a message; returns its id, or null when not connected. */
  send(type, fields = {}) {
    if (!this.ws || !this.open || this.ws.readyState !== WebSocket.OPEN) return null;
    const id = String(this.nextId++);
    this.ws.send(JSON.stringify({ type, id, ...fields }));
    return id;
  }

  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.stopPings();
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.open = false;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
