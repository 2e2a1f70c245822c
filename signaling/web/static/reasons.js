// Plain words for the end reasons and details of docs/protocol.md.

const DETAILS = {
  caller_connection_lost: "The caller lost their connection",
  callee_connection_lost: "The other side lost their connection",
  no_device_online: "Not reachable right now",
  not_an_app_user: "This number doesn't use Anruf",
  no_such_number: "This number doesn't exist",
  callee_unavailable: "Not reachable right now",
  subscriber_suspended: "Calls are not allowed on your plan",
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
  "media:ice_failed": "No audio connection could be made",
  "media:dtls_failed": "The secure audio connection failed",
  "media:media_timeout": "The audio stopped",
  "media:consent_expired": "The audio connection was lost",
  "media:closed_by_device": "The audio connection was closed",
  "media:relay_worker_lost": "The call was interrupted by a server problem",
  server_shutdown: "The service restarted. Please call again",
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

/** Short words for a history entry. */
export function historyReasonText(call) {
  if (call.missed) return "Missed";
  if (call.end_reason === "completed") return "";
  return endReasonText(call.end_reason, call.end_detail || "");
}
