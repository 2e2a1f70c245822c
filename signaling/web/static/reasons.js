// Plain words for the end reasons and details of the protocol (wire.js), and for the
// problems the sign-in requests answer with.

import { DETAIL, ERROR, REASON, TRUNK_STATUS } from "./wire.js";

const DETAILS = {
  [DETAIL.CALLER_CONNECTION_LOST]: "The caller lost their connection",
  [DETAIL.CALLEE_CONNECTION_LOST]: "The other side lost their connection",
  [DETAIL.NO_DEVICE_ONLINE]: "Not reachable right now",
  [DETAIL.NOT_AN_APP_USER]: "This number doesn't use Anruf",
  [DETAIL.NO_SUCH_NUMBER]: "This number doesn't exist",
  [DETAIL.CALLEE_UNAVAILABLE]: "Not reachable right now",
  [DETAIL.SUBSCRIBER_SUSPENDED]: "Calls are not allowed on your plan",
  [DETAIL.DESTINATION_NOT_ALLOWED]: "Your plan doesn't include calls to this destination",
  [DETAIL.DESTINATION_BLOCKED]: "Calls to this destination are not possible",
  [DETAIL.VELOCITY_EXCEEDED]: "Too many calls to phone numbers in the last hour. Try again later",
  [DETAIL.QUOTA_EXHAUSTED]: "Your minutes are used up",
  [DETAIL.FAIR_USE_EXCEEDED]: "You reached your plan's fair-use limit",
  [DETAIL.BUNDLE_MINUTES_USED]: "The call ended: the minutes are used up",
  [DETAIL.TRUNK_UNAVAILABLE]: "Phone network unavailable. Try again later",
  [DETAIL.TRUNK_TIMEOUT]: "The phone network did not answer",
  [DETAIL.NO_COMMON_CODEC]: "The call could not be set up (no common audio format)",
  [DETAIL.NO_OPUS_IN_OFFER]: "Your browser offered no supported audio format",
  [DETAIL.BAD_SDP]: "The call could not be set up",
  [DETAIL.BAD_SDP_IN_ANSWER]: "The call could not be set up",
  [DETAIL.CONNECTION_LOST]: "The connection was lost",
  [DETAIL.RELAY_UNAVAILABLE]: "The service is busy. Try again later",
  [DETAIL.OVERLOADED]: "The service is busy right now. Try again in a moment",
  [DETAIL.MEDIA_ICE_FAILED]: "No audio connection could be made",
  [DETAIL.MEDIA_DTLS_FAILED]: "The secure audio connection failed",
  [DETAIL.MEDIA_TIMEOUT]: "The audio stopped",
  [DETAIL.MEDIA_CONSENT_EXPIRED]: "The audio connection was lost",
  [DETAIL.MEDIA_CLOSED_BY_DEVICE]: "The audio connection was closed",
  [DETAIL.MEDIA_RELAY_WORKER_LOST]: "The call was interrupted by a server problem",
  [DETAIL.SERVER_SHUTDOWN]: "The service restarted. Please call again",
  [DETAIL.NODE_LOST]: "The call was interrupted by a server problem. Please call again",
};

const REASONS = {
  [REASON.COMPLETED]: "Call ended",
  [REASON.BUSY]: "Busy",
  [REASON.DECLINED]: "Declined",
  [REASON.NO_ANSWER]: "No answer",
  [REASON.CANCELLED]: "Cancelled",
  [REASON.UNAVAILABLE]: "Not reachable right now",
  [REASON.ANSWERED_ELSEWHERE]: "Answered on another device",
  [REASON.DECLINED_ELSEWHERE]: "Declined on another device",
  [REASON.NOT_ALLOWED]: "This call is not allowed",
  [REASON.QUOTA_EXHAUSTED]: "Your minutes are used up",
  [REASON.FAILED]: "The call failed",
  [REASON.ERROR]: "The call could not be placed",
};

const ERRORS = {
  [ERROR.INVALID_NUMBER]: "That doesn't look like a phone number",
  [ERROR.SELF_CALL]: "You can't call yourself",
  [ERROR.INVALID_STATE]: "You are already in a call",
  [ERROR.CALL_NOT_FOUND]: "The call is already over",
  [ERROR.RATE_LIMITED]: "Too many requests. Wait a moment",
  [ERROR.BAD_SDP]: "Your browser's audio setup was refused",
  [ERROR.DRAINING]: "The service is restarting. Try again in a moment",
};

/** A sentence for why a call ended: the detail when it says more than the reason. */
export function endReasonText(reason, detail = "") {
  if (reason === REASON.ERROR) return ERRORS[detail] || REASONS[REASON.ERROR];
  if (reason === REASON.CANCELLED && detail === DETAIL.CALLER_CONNECTION_LOST) return DETAILS[detail];
  if (reason === REASON.QUOTA_EXHAUSTED) return DETAILS[detail] || REASONS[REASON.QUOTA_EXHAUSTED];
  if (detail && DETAILS[detail] && reason !== REASON.COMPLETED) return DETAILS[detail];
  if (reason === REASON.FAILED && TRUNK_STATUS.test(detail)) {
    return `The phone network refused the call (${detail.slice(6)})`;
  }
  return REASONS[reason] || "Call ended";
}

/** What a finished call's panel says under "Call ended": who ended it, or why. */
export function callEndText(call) {
  const { reason, detail = "" } = call;
  if (reason === REASON.COMPLETED) return call.hungUpHere ? "You hung up" : "They hung up";
  if (reason === REASON.CANCELLED && !detail) return call.outgoing ? "You cancelled the call" : "The caller hung up";
  if (reason === REASON.DECLINED) return call.outgoing ? "They declined the call" : "You declined the call";
  if (reason === REASON.ERROR && !detail) return deviceErrorText(call.errorName, call.errorMessage);
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
  return sentence(message) || REASONS[REASON.ERROR];
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
  if (call.end_reason === REASON.COMPLETED) return "";
  return endReasonText(call.end_reason, call.end_detail || "");
}
