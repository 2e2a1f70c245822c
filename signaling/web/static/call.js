// One call as this browser sees it: states inviting → ringing → connected → ended
// (an incoming call starts as "incoming"), following docs/protocol.md message by message.

import { gathered, inboundAudio, microphone, peerConnection, QualityMeter } from "./media.js";
import { DETAIL, ERROR, REASON, RECEIVE, SEND } from "./wire.js";

const RENEGOTIATE_TIMEOUT_MS = 5000;

export class Call extends EventTarget {
  constructor(signaling, { peer, outgoing, callId = null, offer = "", phoneNetwork = false }) {
    super();
    this.signaling = signaling;
    this.peer = peer;
    this.outgoing = outgoing;
    this.callId = callId;
    this.offer = offer; // the relay's offer for an incoming call
    this.phoneNetwork = Boolean(phoneNetwork); // the other party is a phone number: DTMF applies
    this.hungUpHere = false; // this device ended (or declined) the call
    this.inviteId = null;
    this.state = outgoing ? "inviting" : "incoming";
    this.reason = "";
    this.detail = "";
    this.connectedAt = 0;
    this.muted = false;
    this.pc = null;
    this.stream = null;
    this.hangupWanted = false;
    this.quotaSecondsLeft = null;
    this.quality = "unknown";
    this.lastStats = { packetsReceived: 0, totalAudioEnergy: 0, bytesReceived: 0 };
    this.qualityMeter = new QualityMeter();
    this.statsTimer = null;
    this.nextPc = null; // a new peer connection waiting for call.renegotiated
    this.renegotiations = 0;
  }

  changed() {
    this.dispatchEvent(new Event("change"));
  }

  get active() {
    return this.state !== "ended";
  }

  /** Place the call: microphone, offer with candidates, call.invite. */
  async place() {
    try {
      await this.setUp();
      const offer = await this.pc.createOffer();
      await this.pc.setLocalDescription(offer);
      await gathered(this.pc);
      if (!this.active) return;
      this.inviteId = this.signaling.send(SEND.CALL_INVITE, { to: this.peer, sdp: this.pc.localDescription.sdp });
      if (this.inviteId === null) this.end(REASON.FAILED, DETAIL.CONNECTION_LOST);
    } catch (error) {
      this.fail(error);
    }
  }

  /** Answer an incoming call: the relay's offer, our answer, call.accept. */
  async accept() {
    if (this.state !== "incoming") return;
    this.state = "ringing"; // accepted here; connected once the server says so
    this.accepting = true;
    this.changed();
    try {
      await this.setUp(this.offer);
      const answer = await this.pc.createAnswer();
      await this.pc.setLocalDescription(answer);
      await gathered(this.pc);
      if (!this.active) return;
      const sent = this.signaling.send(SEND.CALL_ACCEPT, { call_id: this.callId, sdp: this.pc.localDescription.sdp });
      if (sent === null) this.end(REASON.FAILED, DETAIL.CONNECTION_LOST);
    } catch (error) {
      this.signaling.send(SEND.CALL_HANGUP, { call_id: this.callId });
      this.fail(error);
    }
  }

  async setUp(remoteOffer = "") {
    this.stream = await microphone(this.deviceId || "");
    if (!this.active) {
      this.release();
      return;
    }
    this.pc = this.newPeerConnection();
    if (remoteOffer) await this.pc.setRemoteDescription({ type: "offer", sdp: remoteOffer });
    for (const track of this.stream.getAudioTracks()) {
      track.enabled = !this.muted;
      this.pc.addTrack(track, this.stream);
    }
    this.dispatchEvent(new CustomEvent("local", { detail: this.stream }));
    this.statsTimer = setInterval(() => this.measure(true), 2000);
  }

  newPeerConnection() {
    const pc = peerConnection();
    pc.addEventListener("track", (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      this.dispatchEvent(new CustomEvent("remote", { detail: stream }));
    });
    // The relay cannot do an ICE restart: when our path to it breaks (a new network),
    // a new peer connection from where we are now replaces this one (call.renegotiate).
    let lost = null;
    pc.addEventListener("iceconnectionstatechange", () => {
      if (pc !== this.pc) return;
      clearTimeout(lost);
      if (pc.iceConnectionState === "failed") this.renegotiate();
      else if (pc.iceConnectionState === "disconnected") lost = setTimeout(() => this.renegotiate(), 1000);
    });
    return pc;
  }

  /** Move the call to a new peer connection (the network changed); the call goes on. */
  async renegotiate() {
    const talking = this.state === "connected" || (this.outgoing && this.state === "ringing");
    if (!talking || !this.callId || !this.stream || this.nextPc) return false;
    const pc = this.newPeerConnection();
    this.nextPc = pc;
    try {
      for (const track of this.stream.getAudioTracks()) pc.addTrack(track, this.stream);
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      if (!this.active || this.nextPc !== pc) throw new Error("the call ended meanwhile");
      const sent = this.signaling.send(SEND.CALL_RENEGOTIATE, { call_id: this.callId, sdp: pc.localDescription.sdp });
      if (sent === null) throw new Error("offline");
      setTimeout(() => {
        if (this.nextPc !== pc) return; // answered meanwhile
        this.nextPc = null; // refused or lost: the next path change tries again
        pc.close();
      }, RENEGOTIATE_TIMEOUT_MS);
      return true;
    } catch {
      if (this.nextPc === pc) this.nextPc = null;
      pc.close();
      return false;
    }
  }

  async renegotiated(sdp) {
    const pc = this.nextPc;
    if (!pc) return;
    this.nextPc = null;
    try {
      await pc.setRemoteDescription({ type: "answer", sdp });
    } catch (error) {
      pc.close();
      return;
    }
    const old = this.pc;
    this.pc = pc;
    this.renegotiations += 1;
    this.qualityMeter = new QualityMeter();
    if (old) old.close();
    this.changed();
  }

  fail(error) {
    this.errorName = error && error.name ? error.name : "";
    this.end(REASON.ERROR, "", error && error.message ? error.message : String(error));
  }

  reject() {
    if (this.state !== "incoming") return;
    this.hungUpHere = true;
    this.signaling.send(SEND.CALL_REJECT, { call_id: this.callId });
  }

  hangup() {
    if (!this.active) return;
    if (this.state === "incoming") {
      this.reject();
      return;
    }
    this.hungUpHere = true;
    if (this.callId) {
      if (this.signaling.send(SEND.CALL_HANGUP, { call_id: this.callId }) !== null) return;
    } else if (this.inviteId) {
      this.hangupWanted = true; // sent as soon as the call has an id
      return;
    }
    this.end(REASON.CANCELLED, "");
  }

  sendDigit(digit) {
    if (this.state !== "connected" || !this.callId || !this.phoneNetwork) return false;
    return this.signaling.send(SEND.CALL_DTMF, { call_id: this.callId, digits: digit }) !== null;
  }

  setMuted(muted) {
    this.muted = muted;
    if (this.stream) for (const track of this.stream.getAudioTracks()) track.enabled = !muted;
    this.changed();
  }

  /** Switch microphones during the call without renegotiating. */
  async useMicrophone(deviceId) {
    this.deviceId = deviceId;
    if (!this.pc || !this.active) return;
    const stream = await microphone(deviceId);
    const track = stream.getAudioTracks()[0];
    track.enabled = !this.muted;
    const sender = this.pc.getSenders().find((s) => s.track && s.track.kind === "audio");
    if (sender) await sender.replaceTrack(track);
    if (this.stream) for (const old of this.stream.getTracks()) old.stop();
    this.stream = stream;
    this.dispatchEvent(new CustomEvent("local", { detail: stream }));
  }

  /** Read the inbound figures; the periodic reading (rate) also rates the quality. */
  async measure(rate = false) {
    if (!this.pc) return;
    try {
      const stats = await inboundAudio(this.pc);
      this.lastStats = stats;
      if (this.state === "connected" && rate) {
        const quality = this.qualityMeter.rate(stats);
        if (quality !== this.quality) {
          this.quality = quality;
          this.changed();
        }
      }
    } catch {
      // closed meanwhile
    }
  }

  async audioStats() {
    if (this.pc && this.pc.signalingState !== "closed") await this.measure();
    const { packetsReceived, totalAudioEnergy, bytesReceived } = this.lastStats;
    return { packetsReceived, totalAudioEnergy, bytesReceived };
  }

  /** A server message about this call. */
  async handle(message) {
    switch (message.type) {
      case RECEIVE.CALL_PROGRESS:
        this.callId = message.call_id;
        this.phoneNetwork = message.phone_network === true;
        if (this.hangupWanted) this.signaling.send(SEND.CALL_HANGUP, { call_id: this.callId });
        try {
          await this.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
        } catch (error) {
          this.signaling.send(SEND.CALL_HANGUP, { call_id: this.callId });
          this.fail(error);
        }
        break;
      case RECEIVE.CALL_RINGING:
        if (this.state === "inviting") {
          this.state = "ringing";
          this.changed();
        }
        break;
      case RECEIVE.CALL_ACCEPTED:
        if (this.active) {
          this.state = "connected";
          this.connectedAt = Date.now();
          this.changed();
        }
        break;
      case RECEIVE.CALL_QUOTA_WARNING:
        this.quotaSecondsLeft = Number(message.seconds_left) || 0;
        this.changed();
        break;
      case RECEIVE.CALL_RENEGOTIATED:
        await this.renegotiated(message.sdp);
        break;
      case RECEIVE.CALL_DTMF:
        this.dispatchEvent(new CustomEvent("dtmf", { detail: String(message.digit || "") }));
        break;
      case RECEIVE.CALL_ENDED:
        if (message.call_id) this.callId = message.call_id;
        this.end(message.reason || REASON.FAILED, message.detail || "");
        break;
      case RECEIVE.ERROR:
        if (!this.callId || message.code !== ERROR.CALL_NOT_FOUND) {
          this.end(REASON.ERROR, message.code || "", message.message || "");
        }
        break;
      default:
        break;
    }
  }

  end(reason, detail, message = "") {
    if (!this.active) return;
    this.state = "ended";
    this.endedAt = Date.now();
    this.reason = reason;
    this.detail = detail;
    this.errorMessage = message;
    this.release();
    this.changed();
  }

  release() {
    clearInterval(this.statsTimer);
    if (this.nextPc) this.nextPc.close();
    this.nextPc = null;
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.pc) {
      const pc = this.pc;
      this.measure().finally(() => pc.close());
    }
  }
}
