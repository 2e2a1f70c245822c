"""How call outcomes map between the phone network (SIP status codes) and our calls.

Pure: the trunk's final responses become call-machine inputs, and our end
reasons become the final response (or the Reason header, RFC 3326) the
network sees.
"""

from __future__ import annotations

from signaling.calls.machine import (
    Busy,
    EndReason,
    Fail,
    Input,
    Reject,
    RingTimeout,
    Unavailable,
)
from signaling.calls.parties import PhoneNetwork
from wire.reasons import Detail, trunk_status_detail

__all__ = ["failure_input", "final_response"]


def failure_input(status: int | None, now: float, device: PhoneNetwork) -> Input | None:
    """The input for a final failure response to our INVITE (None: nothing to do)."""
    if status is None:
        return Fail(now, Detail.TRUNK_TIMEOUT)  # Timer B: the network never answered
    if status == 487:
        return None  # our own CANCEL took effect: the call has ended already
    if status in (486, 600):
        return Busy(now)
    if status in (603, 607):
        return Reject(now, device)
    if status in (404, 484, 604):
        return Unavailable(now, Detail.NO_SUCH_NUMBER)
    if status in (410, 480):
        return Unavailable(now, Detail.CALLEE_UNAVAILABLE)
    if status == 408:
        return RingTimeout(now)
    return Fail(now, trunk_status_detail(status))


_FINAL: dict[EndReason, tuple[int, str]] = {
    EndReason.BUSY: (486, "Busy Here"),
    EndReason.DECLINED: (603, "Decline"),
    EndReason.NO_ANSWER: (480, "Temporarily Unavailable"),
    EndReason.UNAVAILABLE: (480, "Temporarily Unavailable"),
    EndReason.NOT_ALLOWED: (403, "Forbidden"),
    EndReason.QUOTA_EXHAUSTED: (403, "Forbidden"),
    EndReason.CANCELLED: (487, "Request Terminated"),
}


def final_response(reason: EndReason | None, detail: str) -> tuple[int, str]:
    """The final response to an INVITE from the network that our side ends unanswered."""
    if detail == Detail.NO_COMMON_CODEC:
        return 488, "Not Acceptable Here"
    if reason is None:
        return 500, "Server Internal Error"
    return _FINAL.get(reason, (503, "Service Unavailable"))
