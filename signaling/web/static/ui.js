// Rendering: small DOM helpers and the views of lists and the call panel.

import { callEndText, historyReasonText } from "./reasons.js";

export const $ = (id) => document.getElementById(id);

export function show(element, visible = true) {
  element.hidden = !visible;
}

export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/** Readable form of an E.164 number: +49 177 00000001, +49 30 555000100, +1 415 555 0100. */
export function formatNumber(number) {
  const text = number || "";
  const nanp = /^\+1(\d{3})(\d{3})(\d{4})$/.exec(text);
  if (nanp) return `+1 ${nanp[1]} ${nanp[2]} ${nanp[3]}`;
  const city = /^\+49(30|40|69|89)(\d+)$/.exec(text); // Berlin, Hamburg, Frankfurt, Munich
  if (city) return `+49 ${city[1]} ${city[2]}`;
  const match = /^\+(\d{2})(\d{3})(\d+)$/.exec(text);
  return match ? `+${match[1]} ${match[2]} ${match[3]}` : text;
}

/** This account's number in the header: grouped to read, plain E.164 in data-number. */
export function renderMyNumber(number) {
  const node = $("my-number");
  node.dataset.number = number || "";
  setText(node, formatNumber(number));
}

export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const mm = String(Math.floor(s / 60)).padStart(2, "0");
  return `${mm}:${String(s % 60).padStart(2, "0")}`;
}

// Times from the server are Unix seconds.
function when(seconds) {
  if (!seconds) return "";
  const date = new Date(seconds * 1000);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function renderConnection(status) {
  const node = $("connection-status");
  let text = "Offline";
  if (status.online) text = "Online";
  else if (status.replaced) text = "Offline — open in another tab";
  else if (status.retryAt) {
    const seconds = Math.max(1, Math.round((status.retryAt - Date.now()) / 1000));
    text = `Offline — reconnecting in ${seconds} s`;
  } else if (status.connecting) text = "Offline — connecting…";
  node.dataset.state = status.online ? "online" : "offline";
  setText(node, text);
}

export function renderDevices(devices, onSignOut) {
  const list = $("devices");
  list.replaceChildren(
    ...devices.map((device) => {
      const name = device.name || "Unnamed device";
      const seen = device.current ? "Active now" : `Last seen ${when(device.last_seen_at) || "never"}`;
      let action;
      if (device.current) {
        // Signing this device out is the header's "Sign out".
        action = el("span", { class: "badge ok", text: "This device" });
      } else {
        action = el("button", {
          type: "button",
          class: "ghost small",
          "data-testid": "sign-out-device",
          "aria-label": `Sign out ${name}`,
          text: "Sign out",
        });
        action.addEventListener("click", () => onSignOut(device));
      }
      return el(
        "li",
        { "data-testid": "device-item", "data-device-id": device.device_id, "data-current": String(Boolean(device.current)) },
        el("div", { class: "item-main" }, el("span", { class: "item-title", text: name }), el("span", { class: "muted small", text: seen })),
        action,
      );
    }),
  );
}

export function renderContacts(contacts, registered, { onCall, onRemove }) {
  const list = $("contacts");
  list.replaceChildren(
    ...contacts.map((number) => {
      const uses = registered.has(number);
      const call = el(
        "button",
        { type: "button", class: "item-main link", "aria-label": `Call ${formatNumber(number)}` },
        el("span", { class: "item-title number", text: formatNumber(number) }),
        el("span", { class: uses ? "badge ok" : "badge", text: uses ? "Uses Anruf" : "Not on Anruf" }),
      );
      call.addEventListener("click", () => onCall(number));
      const remove = el("button", { type: "button", class: "ghost small", "aria-label": `Remove ${formatNumber(number)}`, text: "Remove" });
      remove.addEventListener("click", () => onRemove(number));
      return el("li", { "data-testid": "contact-item", "data-number": number, "data-registered": String(uses) }, call, remove);
    }),
  );
  show($("contacts-empty"), contacts.length === 0);
}

export function renderHistory(calls, onCall) {
  const list = $("history");
  list.replaceChildren(
    ...calls.map((call) => {
      const reason = historyReasonText(call);
      const direction = call.direction === "outgoing" ? "Outgoing" : "Incoming";
      const duration = call.answered_at && call.duration ? clock(call.duration) : "";
      const details = [direction, when(call.invited_at), duration, reason].filter(Boolean).join(" · ");
      const button = el(
        "button",
        { type: "button", class: "item-main link", "aria-label": `Call ${formatNumber(call.peer)}` },
        el("span", { class: "item-title number", text: formatNumber(call.peer) }),
        el("span", { class: "muted small", text: details }),
      );
      button.addEventListener("click", () => onCall(call.peer));
      const icon = el("span", { class: `dir ${call.missed ? "missed" : call.direction}`, "aria-hidden": "true", text: call.direction === "outgoing" ? "\u2197\uFE0E" : "\u2199\uFE0E" });
      return el(
        "li",
        {
          "data-testid": "history-item",
          "data-missed": String(Boolean(call.missed)),
          "data-reason": call.end_reason || "",
          class: call.missed ? "missed" : "",
        },
        icon,
        button,
      );
    }),
  );
  show($("history-empty"), calls.length === 0);
}

const STATE_TEXT = {
  inviting: "Calling…",
  ringing: "Ringing…",
  connected: "Connected",
  ended: "Call ended",
};

const QUALITY_TEXT = { good: "Good", fair: "Fair", poor: "Poor", unknown: "—" };

/** The call panel for a call (or hidden without one). */
export function renderCall(call) {
  const panel = $("call-panel");
  if (!call || call.state === "incoming") {
    show(panel, false);
    return;
  }
  show(panel, true);
  const state = $("call-state");
  let text = STATE_TEXT[call.state];
  if (call.state === "ringing" && !call.outgoing) text = "Connecting…";
  state.dataset.state = call.state;
  setText(state, text);
  setText($("call-peer"), formatNumber(call.peer));
  const ended = call.state === "ended";
  const reason = $("call-end-reason");
  const words = ended ? callEndText(call) : "";
  if (ended) {
    reason.dataset.reason = call.reason;
    if (call.detail) reason.dataset.detail = call.detail;
    else delete reason.dataset.detail;
    setText(reason, words);
  } else {
    delete reason.dataset.reason;
    setText(reason, "");
  }
  show(reason, ended && Boolean(words) && words !== text);
  const quota = $("quota-warning");
  if (call.quotaSecondsLeft !== null && !ended) {
    setText(quota, `Your minutes run out in ${call.quotaSecondsLeft} seconds.`);
    show(quota, true);
  } else if (ended) {
    show(quota, false);
  }
  const connected = call.state === "connected";
  show($("keypad"), connected && call.phoneNetwork);
  show($("dtmf-log"), call.phoneNetwork && Boolean($("dtmf-log").textContent));
  show($("call-media"), !ended);
  const quality = $("quality");
  const q = connected ? call.quality : "unknown";
  quality.dataset.quality = q;
  setText(quality, `Connection: ${QUALITY_TEXT[q]}`);
  const mute = $("mute");
  mute.setAttribute("aria-pressed", String(call.muted));
  setText(mute, call.muted ? "Unmute" : "Mute");
  show(mute, !ended);
  show($("hangup"), !ended);
  show($("dismiss"), ended);
  renderTimer(call);
}

export function renderTimer(call) {
  const timer = $("call-timer");
  if (call && call.connectedAt) {
    const end = call.state === "ended" ? call.endedAt || Date.now() : Date.now();
    setText(timer, clock((end - call.connectedAt) / 1000));
  } else {
    setText(timer, "00:00");
  }
  show(timer, Boolean(call && call.connectedAt));
}

export function renderLevel(level) {
  const meter = $("level-meter");
  const rounded = Math.round(level * 100) / 100;
  meter.dataset.level = String(rounded);
  meter.setAttribute("aria-valuenow", String(rounded));
  $("level-bar").style.transform = `scaleX(${rounded})`;
}

export function renderMicrophones(devices, selected) {
  const select = $("microphone");
  select.replaceChildren(
    ...devices.map((device, index) =>
      el("option", { value: device.deviceId, text: device.label || `Microphone ${index + 1}` }),
    ),
  );
  if (selected) select.value = selected;
  select.disabled = devices.length === 0;
}
