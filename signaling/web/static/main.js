// The app: sign-in, the home screen (dialer, contacts, history, devices) and calls.

import { Api, ApiError } from "./api.js";
import { Ringtone, LevelMeter, keyTone, unlockOnGesture } from "./audio.js";
import { Call } from "./call.js";
import { microphones } from "./media.js";
import { signInErrorText } from "./reasons.js";
import { Signaling } from "./signaling.js";
import { clearAccount, loadAccount, loadContacts, saveAccount, saveContacts } from "./store.js";
import * as ui from "./ui.js";
import { DETAIL, REASON, RECEIVE } from "./wire.js";

const { $ } = ui;
const TITLE = "Anruf";

const api = new Api();
const ringtone = new Ringtone();
const meter = new LevelMeter(ui.renderLevel);
let account = null;
let signaling = null;
let call = null; // the current (or last) call shown in the panel
let incoming = null; // an incoming call not yet answered
let status = { online: false };
let registered = new Set();
let lastCall = null;

// ---------------------------------------------------------------- sign-in

function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Firefox\//.test(ua) ? "Firefox" : /Edg\//.test(ua) ? "Edge" : /Chrom/.test(ua) ? "Chromium" : /Safari\//.test(ua) ? "Safari" : "Browser";
  const os = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iOS" : /Windows/.test(ua) ? "Windows" : /Mac OS/.test(ua) ? "macOS" : /Linux/.test(ua) ? "Linux" : "";
  return os ? `${browser} on ${os}` : browser;
}

function signinError(message) {
  const node = $("signin-error");
  ui.setText(node, message || "");
  ui.show(node, Boolean(message));
}

async function busy(button, work) {
  button.disabled = true;
  try {
    await work();
  } finally {
    button.disabled = false;
  }
}

function showSignIn() {
  ui.show($("signin"), true);
  ui.show($("home"), false);
  ui.show($("account"), false);
  ui.show($("code-form"), false);
  $("code").value = "";
  document.title = TITLE;
}

$("number-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("request-code"), async () => {
    signinError("");
    const number = $("number").value.trim();
    if (!number) {
      signinError("Enter your phone number.");
      return;
    }
    try {
      await api.requestCode(number);
      ui.show($("code-form"), true);
      $("code").focus();
    } catch (error) {
      signinError(signInErrorText(error));
      $("number").focus();
    }
  });
});

$("code-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("verify"), async () => {
    signinError("");
    const code = $("code").value.trim();
    if (!code) {
      signinError("Enter the code we sent you.");
      return;
    }
    try {
      const device = await api.register($("number").value.trim(), code, deviceName());
      account = { token: device.token, deviceId: device.device_id, number: device.number };
      saveAccount(account);
      start();
    } catch (error) {
      signinError(signInErrorText(error));
      $("code").select();
    }
  });
});

async function signOut() {
  if (account) {
    try {
      await api.revoke(account.deviceId);
    } catch {
      // revoked already, or offline: forget the credential anyway
    }
  }
  forget();
}

function forget() {
  if (signaling) signaling.close();
  signaling = null;
  if (call && call.active) call.hangup();
  if (incoming) endIncoming();
  call = null;
  ui.renderCall(null);
  account = null;
  api.token = null;
  clearAccount();
  showSignIn();
}

$("sign-out").addEventListener("click", () => signOut());
api.onUnauthorized = () => forget();

// ---------------------------------------------------------------- home

function start() {
  api.token = account.token;
  ui.show($("signin"), false);
  ui.show($("home"), true);
  ui.show($("account"), true);
  ui.renderMyNumber(account.number);
  signaling = new Signaling(account.token);
  signaling.addEventListener("status", (event) => onStatus(event.detail));
  signaling.addEventListener("message", (event) => onMessage(event.detail));
  status = { online: false, connecting: true };
  ui.renderConnection(status);
  signaling.connect();
  refreshDevices();
  refreshHistory();
  refreshContacts();
  updateNotifyButton();
  updateDialer();
}

function onStatus(next) {
  status = next;
  ui.renderConnection(status);
  if (next.revoked) {
    forget();
    return;
  }
  if (next.online) {
    if (next.welcome && next.welcome.number) ui.renderMyNumber(next.welcome.number);
    refreshHistory();
    refreshContacts();
  }
  if (!next.online && call && call.state === "inviting" && call.inviteId === null) {
    call.end(REASON.FAILED, DETAIL.CONNECTION_LOST);
  }
}

setInterval(() => {
  if (account && status.online && !document.hidden) refreshContacts();
}, 60000);

setInterval(() => {
  if (!status.online && status.retryAt) ui.renderConnection(status);
  if (call && call.state === "connected") ui.renderTimer(call);
}, 1000);

async function refreshDevices() {
  try {
    ui.renderDevices(await api.devices(), signOutDevice);
  } catch {
    // shown on the next refresh
  }
}

async function signOutDevice(device) {
  if (device.current || device.device_id === account.deviceId) {
    await signOut();
    return;
  }
  try {
    await api.revoke(device.device_id);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) return;
  }
  refreshDevices();
}

async function refreshHistory() {
  if (!account) return;
  try {
    ui.renderHistory(await api.history(50), placeCall);
  } catch {
    // keep what is shown
  }
}

// ---------------------------------------------------------------- contacts

function cleanNumber(text) {
  let number = text.replace(/[\s().\-/]/g, "");
  if (number.startsWith("00")) number = `+${number.slice(2)}`;
  return number;
}

function drawContacts() {
  ui.renderContacts(loadContacts(), registered, {
    onCall: placeCall,
    onRemove: (number) => {
      saveContacts(loadContacts().filter((n) => n !== number));
      drawContacts();
    },
  });
}

async function refreshContacts() {
  drawContacts();
  const contacts = loadContacts();
  if (contacts.length === 0) return;
  try {
    registered = new Set(await api.discover(contacts));
  } catch {
    // shown as not known until the next check
  }
  drawContacts();
}

$("contact-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("add-contact"), async () => {
    const input = $("contact-number");
    let number = cleanNumber(input.value);
    if (!number) return;
    try {
      const found = await api.discover([number]);
      if (found.length === 1) {
        number = found[0];
        registered.add(number);
      }
    } catch {
      // added anyway; checked again later
    }
    const contacts = loadContacts();
    if (!contacts.includes(number)) saveContacts([...contacts, number]);
    input.value = "";
    drawContacts();
  });
});

// ---------------------------------------------------------------- calls

function dialError(message) {
  ui.setText($("dial-error"), message || "");
  ui.show($("dial-error"), Boolean(message));
}

$("dial-form").addEventListener("submit", (event) => {
  event.preventDefault();
  placeCall($("dial-number").value);
});

function placeCall(raw) {
  dialError("");
  const number = cleanNumber(raw || "");
  if (!number) {
    dialError("Enter a number to call.");
    $("dial-number").focus();
    return;
  }
  if ((call && call.active) || incoming) {
    dialError("Finish the current call first.");
    return;
  }
  if (!status.online) {
    dialError("You are offline. The call can be placed once the connection is back.");
    return;
  }
  call = watch(new Call(signaling, { peer: number, outgoing: true }));
  $("dial-number").value = "";
  ui.renderCall(call);
  updateDialer();
  $("hangup").focus();
  call.place();
}

/** The Call button waits while a call is ringing or in progress. */
function updateDialer() {
  const button = $("call-button");
  const engaged = Boolean((call && call.active) || incoming);
  button.disabled = engaged;
  button.title = engaged ? "You are in a call" : "";
}

function watch(c) {
  ui.setText($("dtmf-log"), "");
  ui.show($("dtmf-log"), false);
  c.addEventListener("change", () => onCallChange(c));
  c.addEventListener("remote", (event) => {
    const audio = $("remote-audio");
    audio.muted = false;
    audio.srcObject = event.detail;
    audio.play().catch(() => {});
  });
  c.addEventListener("local", async (event) => {
    meter.attach(event.detail);
    const track = event.detail.getAudioTracks()[0];
    const settings = track && track.getSettings ? track.getSettings() : {};
    ui.renderMicrophones(await microphones(), settings.deviceId || c.deviceId);
  });
  c.addEventListener("dtmf", (event) => {
    if (c !== call || !c.phoneNetwork) return;
    const log = $("dtmf-log");
    ui.setText(log, `${log.textContent ? log.textContent : "Received: "}${event.detail}`);
    ui.show(log, true);
  });
  return c;
}

function onCallChange(c) {
  if (c === incoming && c.state !== "incoming") {
    endIncoming();
    call = c;
  }
  updateDialer();
  if (c !== call) return;
  ui.renderCall(c);
  if (c.state === "ended") {
    meter.detach();
    lastCall = c;
    document.title = TITLE;
    $("remote-audio").srcObject = null;
    refreshHistory();
    $("dismiss").focus();
  } else if (c.state === "connected") {
    document.title = `In call with ${ui.formatNumber(c.peer)} — ${TITLE}`;
  }
}

function onMessage(message) {
  if (message.type === RECEIVE.CALL_INCOMING) {
    onIncoming(message);
    return;
  }
  const target = [call, incoming].find(
    (c) => c && c.active && ((message.ref && message.ref === c.inviteId) || (message.call_id && message.call_id === c.callId)),
  );
  if (target) target.handle(message);
  else if (message.type === RECEIVE.ERROR && call && call.active && call.inviteId && !call.callId) call.handle(message);
}

function onIncoming(message) {
  if ((call && call.active) || incoming) return; // the server does not ring a busy device
  incoming = watch(
    new Call(signaling, {
      peer: message.from,
      outgoing: false,
      callId: message.call_id,
      offer: message.sdp,
      phoneNetwork: message.phone_network === true,
    }),
  );
  updateDialer();
  ui.setText($("incoming-from"), ui.formatNumber(message.from));
  ui.show($("incoming"), true);
  ui.renderCall(null);
  ringtone.start();
  $("accept").focus();
  document.title = `Incoming call from ${ui.formatNumber(message.from)} — ${TITLE}`;
  if (document.hidden && "Notification" in window && Notification.permission === "granted") {
    try {
      const note = new Notification("Incoming call", { body: ui.formatNumber(message.from), tag: message.call_id });
      note.onclick = () => window.focus();
      incoming.notification = note;
    } catch {
      // notifications unavailable in this context
    }
  }
}

function endIncoming() {
  ringtone.stop();
  ui.show($("incoming"), false);
  if (incoming && incoming.notification) incoming.notification.close();
  incoming = null;
  document.title = TITLE;
  updateDialer();
}

$("accept").addEventListener("click", () => {
  if (!incoming) return;
  const c = incoming;
  c.accept(); // its change event moves it to the call panel
  $("hangup").focus();
});

$("decline").addEventListener("click", () => {
  if (incoming) incoming.reject();
});

$("hangup").addEventListener("click", () => {
  if (call) call.hangup();
});

$("dismiss").addEventListener("click", () => {
  if (call && !call.active) {
    call = null;
    ui.renderCall(null);
    updateDialer();
    $("dial-number").focus();
  }
});

$("mute").addEventListener("click", () => {
  if (call && call.active) call.setMuted(!call.muted);
});

$("microphone").addEventListener("change", (event) => {
  if (call && call.active) call.useMicrophone(event.target.value).catch((error) => dialError(error.message));
});

$("keypad").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-digit]");
  if (!button || !call) return;
  if (call.sendDigit(button.dataset.digit)) keyTone(button.dataset.digit);
});

if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
  navigator.mediaDevices.addEventListener("devicechange", async () => {
    if (call && call.active) ui.renderMicrophones(await microphones(), $("microphone").value);
  });
}

// ---------------------------------------------------------------- notifications

/** The settings line under the cards: whether incoming calls show a notification. */
function updateNotifyButton() {
  const supported = "Notification" in window;
  const permission = supported ? Notification.permission : "";
  const text = {
    default: "Get a notification for incoming calls while Anruf is in the background.",
    granted: "Incoming calls show a notification while Anruf is in the background.",
    denied: "Notifications are blocked for Anruf. You can allow them in your browser's site settings.",
  }[permission];
  ui.setText($("notify-text"), text || "");
  ui.show($("notify"), permission === "default");
  ui.show($("notify-line"), Boolean(text));
}

$("notify").addEventListener("click", async () => {
  try {
    await Notification.requestPermission();
  } finally {
    updateNotifyButton();
  }
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && incoming && incoming.notification) incoming.notification.close();
});

// ---------------------------------------------------------------- test hook

window.anrufDebug = {
  async audioStats() {
    const c = (call && call.pc ? call : null) || (lastCall && lastCall.pc ? lastCall : null);
    if (!c) return { packetsReceived: 0, totalAudioEnergy: 0, bytesReceived: 0 };
    return c.audioStats();
  },
  state() {
    if (incoming) return incoming.state;
    return call ? call.state : "idle";
  },
  ws() {
    return signaling && signaling.open ? "open" : "closed";
  },
  /** As after a network change: the call moves to a new peer connection. */
  async renegotiate() {
    return call ? call.renegotiate() : false;
  },
  renegotiations() {
    return call ? call.renegotiations : 0;
  },
};

// ---------------------------------------------------------------- start

unlockOnGesture();
ui.renderCall(null);
account = loadAccount();
if (account) start();
else showSignIn();
