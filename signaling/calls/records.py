"""Call detail records: what is kept of every call once it ends."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from wire.reasons import EndReason

#: End reasons counted as a missed call for the callee.
MISSED_REASONS = frozenset({EndReason.NO_ANSWER, EndReason.CANCELLED, EndReason.UNAVAILABLE})


@dataclass(frozen=True)
class CallRecord:
    call_id: str
    caller: str  # E.164
    callee: str  # E.164
    caller_device: str
    #: The device that answered, if any.
    callee_device: str | None
    invited_at: float  # Unix seconds
    ringing_at: float | None
    answered_at: float | None
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
