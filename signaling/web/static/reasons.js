// Plain words for the end reasons and details of docs/protocol.md, and for the
// problems the sign-in requests answer with.

const DETAILS = {
  caller_connection_lost: "The caller lost their connection",
  callee_connection_lost: "The other side lost their connection",
  no_device_online: "Not reachable right now",
  not_an_app_user: "This number doesn't use Anruf",
  no_such_number: "This number doesn't exist",
  callee_unavailable: "Not reachable right now",
  subscriber_suspended: "Calls are not allowed on your plan",
  destination_not_allowed: "Your plan doesn't include calls to this destination",
  destination_blocked: "Calls to this destination are not possible",
  velocity_exceeded: "Too many calls to phone numbers in the last hour. Try again later",
  quota_exhausted: "Your minutes are used up",
  fair_use_exceeded: "You reached your plan's fair-use limit",
  bundle_minutes_used: "The call ended: the minutes are used up",
  trunk_unavailable: "Phone network unavailable. Try again later",
  trunk_timeout: "The phone network did not answer",
  no_common_codec: "The call could not be set up (no common audio format)",
  no_opus_in_offer: "Your browser offered no supported audio format",
  bad_sdp: "The call could not be set up",
  bad_sdp_in_answer: "The call could not be set up",
  connection_lost: "The connection was lost",
  relay_unavailable: "The service is busy. Try again later",
  overloaded: "The service is busy right now. Try again in a moment",
  "media:ice_failed": "No audio connection could be made",
  "media:dtls_failed": "The secure audio connection failed",
  "media:media_timeout": "The audio stopped",
  "media:consent_expired": "The audio connection was lost",
  "media:closed_by_device": "The audio connection was closed",
  "media:relay_worker_lost": "The call was interrupted by a server problem",
  server_shutdown: "The service restarted. Please call again",
  node_lost: "The call was interrupted by a server problem. Please call again",
};

const REASONS = {
  completed: "Call ended",
  busy: "Busy",
  declined: "Declined",
  no_answer: "No answer",
  cancelled: "Cancelled",
  unavailable: "Not reachable right now",
  answered_elsewhere: "Answered on another device",
  declined_elsewhere: "Declined on another device",
  not_allowed: "This call is not allowed",
  quota_exhausted: "Your minutes are used up",
  failed: "The call failed",
  error: "The call could not be placed",
};

const ERRORS = {
  invalid_number: "That doesn't look like a phone number",
  self_call: "You can't call yourself",
  invalid_state: "You are already in a call",
  call_not_found: "The call is already over",
  rate_limited: "Too many requests. Wait a moment",
  bad_sdp: "Your browser's audio setup was refused",
  draining: "The service is restarting. Try again in a moment",
};

/** A sentence for why a call ended: the detail when it says more than the reason. */
export function endReasonText(reason, detail = "") {
  if (reason === "error") return ERRORS[detail] || REASONS.error;
  if (reason === "cancelled" && detail === "caller_connection_lost") return DETAILS[detail];
  if (reason === "quota_exhausted") return DETAILS[detail] || REASONS.quota_exhausted;
  if (detail && DETAILS[detail] && reason !== "completed") return DETAILS[detail];
  if (reason === "failed" && /^trunk_\d{3}$/.test(detail)) {
    return `The phone network refused the call (${detail.slice(6)})`;
  }
  return REASONS[reason] || "Call ended";
}

/** What a finished call's panel says under "Call ended": who ended it, or why. */
export function callEndText(call) {
  const { reason, detail = "" } = call;
  if (reason === "completed") return call.hungUpHere ? "You hung up" : "They hung up";
  if (reason === "cancelled" && !detail) return call.outgoing ? "You cancelled the call" : "The caller hung up";
  if (reason === "declined") return call.outgoing ? "They declined the call" : "You declined the call";
  if (reason === "error" && !detail) return deviceErrorText(call.errorName, call.errorMessage);
  return endReasonText(reason, detail);
}

const DEVICE_ERRORS = {
  NotAllowedError: "Allow the microphone to make and answer calls",
  SecurityError: "Allow the microphone to make and answer calls",
  NotFoundError: "No microphone found. Connect one and try again",
  NotReadableError: "The microphone is in use by another app",
  OverconstrainedError: "The chosen microphone is not available",
};

function deviceErrorText(name, message) {
  if (DEVICE_ERRORS[name]) return DEVICE_ERRORS[name];
  return sentence(message) || REASONS.error;
}

/** "the code is not correct" → "The code is not correct" (no trailing full stop). */
function sentence(text) {
  const trimmed = String(text || "").trim().replace(/\.$/, "");
  return trimmed ? trimmed[0].toUpperCase() + trimmed.slice(1) : "";
}

function waitText(seconds) {
  const s = Math.max(1, Math.ceil(Number(seconds) || 0));
  if (s < 60) return `in ${s} seconds`;
  const minutes = Math.ceil(s / 60);
  return minutes === 1 ? "in a minute" : `in ${minutes} minutes`;
}

/** A sentence for a failed sign-in request (an ApiError), never the server's raw text. */
export function signInErrorText(error) {
  const code = (error && error.code) || "";
  const problem = (error && error.problem) || {};
  const status = (error && error.status) || 0;
  const retry = error && error.retryAfter ? ` Try again ${waitText(error.retryAfter)}.` : " Try again later.";
  switch (code) {
    case "invalid_number":
      return "That doesn't look like a phone number. Check it and include the country code, e.g. +49.";
    case "wrong_code": {
      const left = Number(problem.attempts_left);
      if (left === 1) return "That code is not right. You have 1 more try.";
      if (left > 1) return `That code is not right. You have ${left} more tries.`;
      return "That code is not right. Check the message and try again.";
    }
    case "code_expired":
      return "That code has expired. Use \u201cSend code\u201d to get a new one.";
    case "too_many_attempts":
      return "Too many wrong codes. Use \u201cSend code\u201d to get a new one.";
    case "too_many_sends":
      return `Too many codes were sent to this number.${retry}`;
    case "rate_limited":
      return `Too many attempts.${retry}`;
    case "too_many_requests":
      return `Too many attempts from your network.${retry}`;
    case "overloaded":
      return "The service is busy right now. Try again in a moment.";
    case "code_delivery_failed":
      return "We couldn't send the code just now. Try again in a moment.";
    case "invalid_body":
    case "malformed_json":
      return "Check the number and the code, then try again.";
    default:
      break;
  }
  if (status === 0) return "Anruf can't be reached. Check your internet connection.";
  if (status === 429) return `Too many attempts.${retry}`;
  if (status >= 500) return "Something went wrong on our side. Try again in a moment.";
  return "Signing in didn't work. Check the number and try again.";
}

/** Short words for a history entry. */
export function historyReasonText(call) {
  if (call.missed) return "Missed";
  if (call.end_reason === "completed") return "";
  return endReasonText(call.end_reason, call.end_detail || "");
}
