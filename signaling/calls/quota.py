"""The caller's operator on a call: admission, the talk-time limit, events, rating.

CarrierPolicy (signaling/carrier/policy.py) decides; this module turns its
decisions into call-machine inputs. The limit's timing is the machine's own
(``Admitted``, ``next_deadline()``, ``QuotaWarning``): no timers here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from signaling.calls.machine import Admitted, Input, NotAllowed, QuotaExhausted, Unavailable
from signaling.calls.records import CallRecord
from signaling.carrier.rating import WARNING_SECONDS, CallKind, Decision
from wire.reasons import Detail

if TYPE_CHECKING:
    from signaling.carrier.policy import Admission

__all__ = ["CallEventType", "OperatorEvents", "Policy", "admitted", "live_rating", "refusal"]

logger = logging.getLogger("anruf.calls")

#: Refusals that are the bundle's minutes (or its fair-use cap) running out.
_QUOTA_REFUSALS = frozenset({Detail.QUOTA_EXHAUSTED, Detail.FAIR_USE_EXCEEDED})


class CallEventType:
    """The types of the call events an operator receives (signaling/carrier/events.py).

    Operator webhook events, not device messages, though some share a name
    (call.ringing, call.quota_warning, call.ended).
    """

    STARTED: Final = "call.started"
    RINGING: Final = "call.ringing"
    ANSWERED: Final = "call.answered"
    QUOTA_WARNING: Final = "call.quota_warning"


class Policy(Protocol):
    """What CallService needs of the operator policy (signaling.carrier.policy.CarrierPolicy)."""

    async def admit(self, call_id: str, caller: str, callee: str, kind: CallKind) -> Admission: ...
    async def admit_inbound(self, call_id: str, caller: str, callee: str) -> Admission: ...
    async def restore(
        self, call_id: str, caller: str, callee: str, rating: dict[str, Any]
    ) -> Admission: ...
    async def call_event(self, admission: Admission, type: str, **data: Any) -> None: ...
    def rate(self, admission: Admission | None, record: CallRecord) -> CallRecord: ...
    def recorder(
        self, admission: Admission | None, record: CallRecord
    ) -> Callable[[Any], Awaitable[Any]] | None: ...
    def committed(self) -> None: ...


def refusal(decision: Decision, now: float) -> Input:
    """The input that ends a call the policy refused."""
    if decision.reason in _QUOTA_REFUSALS:
        return QuotaExhausted(now, decision.reason)
    if decision.reason == Detail.NOT_AN_APP_USER:
        return Unavailable(now, decision.reason)
    return NotAllowed(now, decision.reason)


def admitted(decision: Decision, now: float) -> Admitted:
    """The input that gives an allowed call its talk-time limit (and the warning before)."""
    return Admitted(now, decision.max_seconds, float(WARNING_SECONDS))


def live_rating(admission: Admission | None) -> dict[str, Any]:
    """What a live_calls row keeps of the admission, for ``Policy.restore``."""
    if admission is None:
        return {}
    return {
        "kind": admission.kind.value,
        "decision": dataclasses.asdict(admission.decision),
        "caller_subscribed": admission.caller_subscription is not None,
        "callee_subscribed": admission.callee_subscription is not None,
    }


class OperatorEvents:
    """Call events for the operators of a call's parties (call.ringing, call.answered …).

    An event that cannot be written is logged: the call goes on.
    """

    def __init__(self, policy: Policy | None) -> None:
        self._policy = policy

    async def send(self, admission: Admission | None, call_id: str, type: str, **data: Any) -> None:
        if self._policy is None or admission is None:
            return
        try:
            await self._policy.call_event(admission, type, **data)
        except Exception:
            logger.exception("call %s: event %s could not be written", call_id, type)
