"""Every end detail the code can produce is in the registry (wire/reasons.py).

The relay's names for a failed media leg and the operator's refusals are the
registry's constants (``MediaFailure``, ``Detail``); here each one is followed to
the end of a call and checked with ``wire.allowed``. That no detail is spelled by
hand outside wire/ is test_wire_spelled_once.py's.
"""

from __future__ import annotations

import pytest

import wire
from signaling.calls.machine import Call, Ended, Notify
from signaling.calls.parties import AppDevice
from signaling.calls.quota import refusal
from signaling.carrier.rating import (
    Bundle,
    CallKind,
    Decision,
    Increment,
    Recent,
    Usage,
    VelocityLimits,
    authorize,
    destination_refusal,
    velocity_refusal,
)
from wire.reasons import Detail, EndReason, MediaFailure, media_detail

BUNDLE = Bundle("b1", app_calls_included=True, phone_minutes=10, increment=Increment(60, 60))


@pytest.mark.parametrize("failure", list(MediaFailure))
def test_every_media_failure_ends_a_call_with_a_registered_detail(failure: MediaFailure) -> None:
    assert wire.allowed(EndReason.FAILED, media_detail(failure))


def test_a_lost_relay_worker_is_a_media_failure() -> None:
    from voice.relay.api import WORKER_LOST

    assert WORKER_LOST in set(MediaFailure)


def _operator_refusals() -> list[str]:
    """Each reason the operator's rating and policy can refuse a call with."""
    exhausted = Bundle("b2", app_calls_included=False, phone_minutes=0, increment=Increment(1, 1))
    capped = Bundle("b3", True, phone_minutes=10, increment=Increment(1, 1), fair_use_minutes=1)
    decisions = [
        authorize(BUNDLE, Usage(), CallKind.PHONE, suspended=True),
        authorize(exhausted, Usage(), CallKind.PHONE),
        authorize(capped, Usage(total_seconds=60), CallKind.APP),
    ]
    reasons = [d.reason for d in decisions if not d.allowed]
    reasons += [
        destination_refusal("+4919000000001", (), ("+49190",)),
        destination_refusal("+436760000001", ("+49",), ()),
        velocity_refusal(VelocityLimits(max_calls=3), Recent(calls=3)),
        velocity_refusal(VelocityLimits(max_minutes=1), Recent(calls=1, talk_seconds=60)),
        Detail.NOT_AN_APP_USER,  # signaling/carrier/policy.py: a number no operator provisioned
    ]
    return [r for r in reasons if r is not None]


def test_the_operator_refuses_for_every_reason_the_registry_lists() -> None:
    assert set(_operator_refusals()) == {
        Detail.SUBSCRIBER_SUSPENDED,
        Detail.QUOTA_EXHAUSTED,
        Detail.FAIR_USE_EXCEEDED,
        Detail.DESTINATION_BLOCKED,
        Detail.DESTINATION_NOT_ALLOWED,
        Detail.VELOCITY_EXCEEDED,
        Detail.NOT_AN_APP_USER,
    }


@pytest.mark.parametrize("reason", _operator_refusals())
def test_every_refusal_ends_a_call_with_a_registered_detail(reason: str) -> None:
    call = Call("c1", "+4917700000001", "+4917700000002", AppDevice("d1"), 100.0, 45.0)
    effects = call.handle(refusal(Decision(False, reason), 100.5))
    ends = [(e.reason, e.detail) for e in effects if isinstance(e, Ended | Notify)]
    assert ends
    for end_reason, detail in ends:
        assert detail == reason
        assert wire.allowed(end_reason, detail), (end_reason, detail)
