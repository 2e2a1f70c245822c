"""The call state machine, transition by transition, end reason by end reason."""

from __future__ import annotations

import pytest

from signaling.calls.machine import (
    Accept,
    Busy,
    Call,
    CallState,
    CallStateError,
    Connected,
    DeviceLost,
    Ended,
    EndReason,
    Fail,
    Hangup,
    NotAllowed,
    Notify,
    QuotaExhausted,
    Reject,
    Ring,
    RingTimeout,
    Unavailable,
)

CALLER = "+4917700000001"
CALLEE = "+4917700000002"


def new_call() -> Call:
    return Call("c1", CALLER, CALLEE, "alice-phone", invited_at=100.0, ring_timeout=45.0)


def ringing(*devices: str) -> Call:
    call = new_call()
    assert call.handle(Ring(101.0, devices or ("bob-phone", "bob-tablet"))) == []
    return call


def notified(effects: list[object]) -> dict[str, EndReason]:
    return {e.device: e.reason for e in effects if isinstance(e, Notify)}


def test_ring_moves_to_ringing_and_sets_deadline() -> None:
    call = ringing()
    assert call.state is CallState.RINGING
    assert call.ring_deadline == 146.0
    assert call.devices == {"alice-phone", "bob-phone", "bob-tablet"}


def test_no_device_online_is_unavailable() -> None:
    call = new_call()
    effects = call.handle(Ring(101.0, ()))
    assert call.state is CallState.ENDED
    assert effects[-1] == Ended(EndReason.UNAVAILABLE, "no_device_online")
    assert notified(effects) == {"alice-phone": EndReason.UNAVAILABLE}


def test_unavailable_with_detail() -> None:
    call = new_call()
    effects = call.handle(Unavailable(101.0, "not_an_app_user"))
    assert effects[-1] == Ended(EndReason.UNAVAILABLE, "not_an_app_user")


def test_busy() -> None:
    call = new_call()
    effects = call.handle(Busy(100.5))
    assert notified(effects) == {"alice-phone": EndReason.BUSY}
    assert call.end_reason is EndReason.BUSY and call.ended_at == 100.5


def test_first_accept_wins_and_others_hear_answered_elsewhere() -> None:
    call = ringing()
    effects = call.handle(Accept(105.0, "bob-tablet"))
    assert call.state is CallState.CONNECTED
    assert notified(effects) == {"bob-phone": EndReason.ANSWERED_ELSEWHERE}
    assert effects[-1] == Connected("bob-tablet")
    assert call.callee_device == "bob-tablet" and call.answered_at == 105.0
    with pytest.raises(CallStateError, match="Accept is not allowed in state connected"):
        call.handle(Accept(105.1, "bob-phone"))


def test_accept_from_a_device_that_was_not_rung_is_refused() -> None:
    call = ringing("bob-phone")
    with pytest.raises(CallStateError):
        call.handle(Accept(105.0, "mallory"))
    assert call.state is CallState.RINGING


def test_decline_ends_for_everyone() -> None:
    call = ringing()
    effects = call.handle(Reject(103.0, "bob-phone"))
    assert notified(effects) == {
        "bob-phone": EndReason.DECLINED,
        "alice-phone": EndReason.DECLINED,
        "bob-tablet": EndReason.DECLINED_ELSEWHERE,
    }
    assert effects[-1] == Ended(EndReason.DECLINED)


def test_ring_timeout_is_no_answer() -> None:
    call = ringing()
    effects = call.handle(RingTimeout(146.0))
    assert notified(effects) == {
        "alice-phone": EndReason.NO_ANSWER,
        "bob-phone": EndReason.NO_ANSWER,
        "bob-tablet": EndReason.NO_ANSWER,
    }
    assert call.ring_deadline is None


@pytest.mark.parametrize("state", ["inviting", "ringing"])
def test_caller_hangup_before_answer_is_cancelled(state: str) -> None:
    call = ringing() if state == "ringing" else new_call()
    effects = call.handle(Hangup(102.0, "alice-phone"))
    assert effects[-1] == Ended(EndReason.CANCELLED)
    assert set(notified(effects).values()) == {EndReason.CANCELLED}


def test_callee_hangup_while_ringing_declines() -> None:
    call = ringing("bob-phone")
    effects = call.handle(Hangup(102.0, "bob-phone"))
    assert effects[-1] == Ended(EndReason.DECLINED)


def test_hangup_after_answer_is_completed_with_duration() -> None:
    call = ringing()
    call.handle(Accept(105.0, "bob-phone"))
    effects = call.handle(Hangup(125.0, "bob-phone"))
    assert notified(effects) == {
        "alice-phone": EndReason.COMPLETED,
        "bob-phone": EndReason.COMPLETED,
    }
    assert call.ended_at is not None and call.answered_at is not None
    assert call.ended_at - call.answered_at == 20.0


def test_hangup_by_a_stranger_is_refused() -> None:
    call = ringing()
    call.handle(Accept(105.0, "bob-phone"))
    with pytest.raises(CallStateError):
        call.handle(Hangup(106.0, "bob-tablet"))


def test_ringing_device_lost_leaves_the_others_ringing() -> None:
    call = ringing()
    assert call.handle(DeviceLost(102.0, "bob-phone")) == []
    assert call.ringing_devices == {"bob-tablet"}
    effects = call.handle(DeviceLost(103.0, "bob-tablet"))
    assert effects[-1] == Ended(EndReason.UNAVAILABLE, "callee_connection_lost")


def test_caller_lost_while_ringing_cancels() -> None:
    call = ringing()
    effects = call.handle(DeviceLost(102.0, "alice-phone"))
    assert effects[-1] == Ended(EndReason.CANCELLED, "caller_connection_lost")


def test_device_lost_in_a_call_fails_it() -> None:
    call = ringing()
    call.handle(Accept(105.0, "bob-phone"))
    assert call.handle(DeviceLost(106.0, "bob-tablet")) == []  # not a party any more
    effects = call.handle(DeviceLost(110.0, "alice-phone"))
    assert effects[-1] == Ended(EndReason.FAILED, "connection_lost")


@pytest.mark.parametrize("state", ["inviting", "ringing", "connected"])
def test_media_failure_fails_the_call(state: str) -> None:
    call = new_call() if state == "inviting" else ringing()
    if state == "connected":
        call.handle(Accept(105.0, "bob-phone"))
    effects = call.handle(Fail(106.0, "media:ice_failed"))
    assert effects[-1] == Ended(EndReason.FAILED, "media:ice_failed")


def test_nothing_happens_after_the_end() -> None:
    call = ringing()
    call.handle(RingTimeout(146.0))
    for event in (
        Accept(147.0, "bob-phone"),
        Hangup(147.0, "alice-phone"),
        RingTimeout(147.0),
        Fail(147.0, "x"),
        Ring(147.0, ("bob-phone",)),
    ):
        with pytest.raises(CallStateError, match="state ended"):
            call.handle(event)


def test_every_end_reason_is_reachable() -> None:
    reached: set[EndReason] = set()
    scenarios = [
        (new_call(), [Busy(1)]),
        (new_call(), [Unavailable(1)]),
        (new_call(), [Fail(1, "x")]),
        (new_call(), [Hangup(1, "alice-phone")]),
        (ringing(), [RingTimeout(1)]),
        (ringing(), [Reject(1, "bob-phone")]),
        (ringing(), [Accept(1, "bob-phone"), Hangup(2, "alice-phone")]),
        (new_call(), [NotAllowed(1, "subscriber_suspended")]),
        (ringing(), [Accept(1, "bob-phone"), QuotaExhausted(2, "bundle_minutes_used")]),
    ]
    for call, events in scenarios:
        for event in events:
            for effect in call.handle(event):
                if isinstance(effect, Notify):
                    reached.add(effect.reason)
    assert reached == set(EndReason)


def test_the_bundle_running_out_ends_a_connected_call_for_both() -> None:
    call = ringing()
    call.handle(Accept(105.0, "bob-phone"))
    effects = call.handle(QuotaExhausted(165.0, "bundle_minutes_used"))
    assert Notify("alice-phone", EndReason.QUOTA_EXHAUSTED, "bundle_minutes_used") in effects
    assert Notify("bob-phone", EndReason.QUOTA_EXHAUSTED, "bundle_minutes_used") in effects
    assert effects[-1] == Ended(EndReason.QUOTA_EXHAUSTED, "bundle_minutes_used")
    assert call.ended_at == 165.0


def test_a_refused_call_never_rings() -> None:
    call = new_call()
    effects = call.handle(NotAllowed(101.0, "subscriber_suspended"))
    assert effects == [
        Notify("alice-phone", EndReason.NOT_ALLOWED, "subscriber_suspended"),
        Ended(EndReason.NOT_ALLOWED, "subscriber_suspended"),
    ]
    with pytest.raises(CallStateError):
        call.handle(Ring(102.0, ("bob-phone",)))
