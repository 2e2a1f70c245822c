"""Call detail records: what is kept of every call once it ends."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from signaling.calls.machine import Call
from wire.reasons import EndReason

#: End reasons counted as a missed call for the callee.
MISSED_REASONS = frozenset({EndReason.NO_ANSWER, EndReason.CANCELLED, EndReason.UNAVAILABLE})


@dataclass(frozen=True)
class CallFacts:
    """What a call's record and its live_calls row (live.py) both keep of it: who
    calls whom from which device, the device that answered, and when."""

    call_id: str
    caller: str  # E.164
    callee: str  # E.164
    caller_device: str
    #: The device that answered, if any.
    callee_device: str | None
    invited_at: float  # Unix seconds
    ringing_at: float | None
    answered_at: float | None

    def facts(self) -> dict[str, Any]:
        """These fields alone, to build another kind of row from."""
        return {f.name: getattr(self, f.name) for f in fields(CallFacts)}


def facts_of(call: Call) -> dict[str, Any]:
    """The ``CallFacts`` fields of ``call``, to build a record or a live row from."""
    return {
        "call_id": call.call_id,
        "caller": call.caller,
        "callee": call.callee,
        "caller_device": call.caller_device.device_id,
        "callee_device": None if call.callee_device is None else call.callee_device.device_id,
        "invited_at": call.invited_at,
        "ringing_at": call.ringing_at,
        "answered_at": call.answered_at,
    }


@dataclass(frozen=True)
class CallRecord(CallFacts):
    ended_at: float
    end_reason: str
    end_detail: str = ""
    #: Per leg ("caller", "callee"): packets, loss, jitter, RTT as the relay saw them.
    media: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Rating (signaling.carrier): the caller's operator and bundle, "app" or
    #: "phone", whether it counts against the bundle's minutes, seconds billed.
    operator_id: str | None = None
    bundle_id: str | None = None
    kind: str = "app"
    billable: bool = False
    rated_seconds: int = 0

    def rated(self, **rating: Any) -> CallRecord:
        return replace(self, **rating)

    @property
    def duration(self) -> float:
        """Talk time in seconds: answer to end; zero for unanswered calls."""
        if self.answered_at is None:
            return 0.0
        return max(0.0, self.ended_at - self.answered_at)


def record_of(call: Call, media: dict[str, dict[str, Any]], now: float) -> CallRecord:
    """The record of a call that has ended (``now`` if the machine did not say when)."""
    return CallRecord(
        **facts_of(call),
        ended_at=call.ended_at or now,
        end_reason=call.end_reason.value if call.end_reason is not None else EndReason.FAILED,
        end_detail=call.end_detail,
        media=media,
    )
