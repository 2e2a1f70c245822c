"""The call state machine, transition by transition, end reason by end reason."""

from __future__ import annotations

import pytest

from signaling.calls.machine import (
    BUNDLE_MINUTES_USED,
    Accept,
    Admitted,
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
    QuotaWarning,
    Reject,
    Renegotiate,
    Renegotiation,
    Ring,
    RingTimeout,
    Timer,
    Unavailable,
)
from signaling.calls.parties import AppDevice, Party

CALLER = "+4917700000001"
CALLEE = "+4917700000002"
ALICE_PHONE = AppDevice("alice-phone")
BOB_PHONE = AppDevice("bob-phone")
BOB_TABLET = AppDevice("bob-tablet")
MALLORY = AppDevice("mallory")


def new_call() -> Call:
    return Call("c1", CALLER, CALLEE, ALICE_PHONE, invited_at=100.0, ring_timeout=45.0)


def ringing(*devices: str) -> Call:
    call = new_call()
    assert call.handle(Ring(101.0, devices or (BOB_PHONE, BOB_TABLET))) == []
    return call


def notified(effects: list[object]) -> dict[Party, EndReason]:
    return {e.device: e.reason for e in effects if isinstance(e, Notify)}


def test_ring_moves_to_ringing_and_sets_deadline() -> None:
    call = ringing()
    assert call.state is CallState.RINGING
    assert call.ring_deadline == 146.0
    assert call.devices == {ALICE_PHONE, BOB_PHONE, BOB_TABLET}


def test_no_device_online_is_unavailable() -> None:
    call = new_call()
    effects = call.handle(Ring(101.0, ()))
    assert call.state is CallState.ENDED
    assert effects[-1] == Ended(EndReason.UNAVAILABLE, "no_device_online")
    assert notified(effects) == {ALICE_PHONE: EndReason.UNAVAILABLE}


def test_unavailable_with_detail() -> None:
    call = new_call()
    effects = call.handle(Unavailable(101.0, "not_an_app_user"))
    assert effects[-1] == Ended(EndReason.UNAVAILABLE, "not_an_app_user")


def test_busy() -> None:
    call = new_call()
    effects = call.handle(Busy(100.5))
    assert notified(effects) == {ALICE_PHONE: EndReason.BUSY}
    assert call.end_reason is EndReason.BUSY and call.ended_at == 100.5


def test_first_accept_wins_and_others_hear_answered_elsewhere() -> None:
    call = ringing()
    effects = call.handle(Accept(105.0, BOB_TABLET))
    assert call.state is CallState.CONNECTED
    assert notified(effects) == {BOB_PHONE: EndReason.ANSWERED_ELSEWHERE}
    assert effects[-1] == Connected(BOB_TABLET)
    assert call.callee_device == BOB_TABLET and call.answered_at == 105.0
    with pytest.raises(CallStateError, match="Accept is not allowed in state connected"):
        call.handle(Accept(105.1, BOB_PHONE))


def test_accept_from_a_device_that_was_not_rung_is_refused() -> None:
    call = ringing(BOB_PHONE)
    with pytest.raises(CallStateError):
        call.handle(Accept(105.0, MALLORY))
    assert call.state is CallState.RINGING


def test_decline_ends_for_everyone() -> None:
    call = ringing()
    effects = call.handle(Reject(103.0, BOB_PHONE))
    assert notified(effects) == {
        BOB_PHONE: EndReason.DECLINED,
        ALICE_PHONE: EndReason.DECLINED,
        BOB_TABLET: EndReason.DECLINED_ELSEWHERE,
    }
    assert effects[-1] == Ended(EndReason.DECLINED)


def test_ring_timeout_is_no_answer() -> None:
    call = ringing()
    effects = call.handle(RingTimeout(146.0))
    assert notified(effects) == {
        ALICE_PHONE: EndReason.NO_ANSWER,
        BOB_PHONE: EndReason.NO_ANSWER,
        BOB_TABLET: EndReason.NO_ANSWER,
    }
    assert call.ring_deadline is None


@pytest.mark.parametrize("state", ["inviting", "ringing"])
def test_caller_hangup_before_answer_is_cancelled(state: str) -> None:
    call = ringing() if state == "ringing" else new_call()
    effects = call.handle(Hangup(102.0, ALICE_PHONE))
    assert effects[-1] == Ended(EndReason.CANCELLED)
    assert set(notified(effects).values()) == {EndReason.CANCELLED}


def test_callee_hangup_while_ringing_declines() -> None:
    call = ringing(BOB_PHONE)
    effects = call.handle(Hangup(102.0, BOB_PHONE))
    assert effects[-1] == Ended(EndReason.DECLINED)


def test_hangup_after_answer_is_completed_with_duration() -> None:
    call = ringing()
    call.handle(Accept(105.0, BOB_PHONE))
    effects = call.handle(Hangup(125.0, BOB_PHONE))
    assert notified(effects) == {
        ALICE_PHONE: EndReason.COMPLETED,
        BOB_PHONE: EndReason.COMPLETED,
    }
    assert call.ended_at is not None and call.answered_at is not None
    assert call.ended_at - call.answered_at == 20.0


def test_hangup_by_a_stranger_is_refused() -> None:
    call = ringing()
    call.handle(Accept(105.0, BOB_PHONE))
    with pytest.raises(CallStateError):
        call.handle(Hangup(106.0, BOB_TABLET))


def test_ringing_device_lost_leaves_the_others_ringing() -> None:
    call = ringing()
    assert call.handle(DeviceLost(102.0, BOB_PHONE)) == []
    assert call.ringing_devices == {BOB_TABLET}
    effects = call.handle(DeviceLost(103.0, BOB_TABLET))
    assert effects[-1] == Ended(EndReason.UNAVAILABLE, "callee_connection_lost")


def test_caller_lost_while_ringing_cancels() -> None:
    call = ringing()
    effects = call.handle(DeviceLost(102.0, ALICE_PHONE))
    assert effects[-1] == Ended(EndReason.CANCELLED, "caller_connection_lost")


def test_device_lost_in_a_call_fails_it() -> None:
    call = ringing()
    call.handle(Accept(105.0, BOB_PHONE))
    assert call.handle(DeviceLost(106.0, BOB_TABLET)) == []  # not a party any more
    effects = call.handle(DeviceLost(110.0, ALICE_PHONE))
    assert effects[-1] == Ended(EndReason.FAILED, "connection_lost")


@pytest.mark.parametrize("state", ["inviting", "ringing", "connected"])
def test_media_failure_fails_the_call(state: str) -> None:
    call = new_call() if state == "inviting" else ringing()
    if state == "connected":
        call.handle(Accept(105.0, BOB_PHONE))
    effects = call.handle(Fail(106.0, "media:ice_failed"))
    assert effects[-1] == Ended(EndReason.FAILED, "media:ice_failed")


def test_nothing_happens_after_the_end() -> None:
    call = ringing()
    call.handle(RingTimeout(146.0))
    for event in (
        Accept(147.0, BOB_PHONE),
        Hangup(147.0, ALICE_PHONE),
        RingTimeout(147.0),
        Fail(147.0, "x"),
        Ring(147.0, (BOB_PHONE,)),
    ):
        with pytest.raises(CallStateError, match="state ended"):
            call.handle(event)


def test_every_end_reason_is_reachable() -> None:
    reached: set[EndReason] = set()
    scenarios = [
        (new_call(), [Busy(1)]),
        (new_call(), [Unavailable(1)]),
        (new_call(), [Fail(1, "x")]),
        (new_call(), [Hangup(1, ALICE_PHONE)]),
        (ringing(), [RingTimeout(1)]),
        (ringing(), [Reject(1, BOB_PHONE)]),
        (ringing(), [Accept(1, BOB_PHONE), Hangup(2, ALICE_PHONE)]),
        (new_call(), [NotAllowed(1, "subscriber_suspended")]),
        (ringing(), [Accept(1, BOB_PHONE), QuotaExhausted(2, "bundle_minutes_used")]),
    ]
    for call, events in scenarios:
        for event in events:
            for effect in call.handle(event):
                if isinstance(effect, Notify):
                    reached.add(effect.reason)
    assert reached == set(EndReason)


def test_the_bundle_running_out_ends_a_connected_call_for_both() -> None:
    call = ringing()
    call.handle(Accept(105.0, BOB_PHONE))
    effects = call.handle(QuotaExhausted(165.0, "bundle_minutes_used"))
    assert Notify(ALICE_PHONE, EndReason.QUOTA_EXHAUSTED, "bundle_minutes_used") in effects
    assert Notify(BOB_PHONE, EndReason.QUOTA_EXHAUSTED, "bundle_minutes_used") in effects
    assert effects[-1] == Ended(EndReason.QUOTA_EXHAUSTED, "bundle_minutes_used")
    assert call.ended_at == 165.0


def test_a_refused_call_never_rings() -> None:
    call = new_call()
    effects = call.handle(NotAllowed(101.0, "subscriber_suspended"))
    assert effects == [
        Notify(ALICE_PHONE, EndReason.NOT_ALLOWED, "subscriber_suspended"),
        Ended(EndReason.NOT_ALLOWED, "subscriber_suspended"),
    ]
    with pytest.raises(CallStateError):
        call.handle(Ring(102.0, (BOB_PHONE,)))


# Time: next_deadline() and the Timer input ---------------------------------------


def test_an_inviting_call_is_not_timed() -> None:
    call = new_call()
    assert call.next_deadline() is None
    assert call.handle_timer(1e9) == []
    assert call.state is CallState.INVITING


def test_the_ring_deadline_is_the_next_deadline_and_a_timer_before_it_does_nothing() -> None:
    call = ringing()
    assert call.next_deadline() == 146.0
    assert call.handle_timer(145.9) == []
    assert call.state is CallState.RINGING and call.next_deadline() == 146.0
    effects = call.handle_timer(146.0)
    assert effects[-1] == Ended(EndReason.NO_ANSWER)
    assert set(notified(effects)) == {ALICE_PHONE, BOB_PHONE, BOB_TABLET}
    assert call.next_deadline() is None


def test_a_late_timer_still_ends_the_ringing_call_at_its_own_time() -> None:
    call = ringing()
    call.handle(Timer(150.0))
    assert call.end_reason is EndReason.NO_ANSWER and call.ended_at == 150.0


def test_an_answered_call_without_a_limit_is_not_timed() -> None:
    call = ringing()
    call.handle(Accept(105.0, BOB_PHONE))
    assert call.next_deadline() is None
    assert call.handle_timer(10_000.0) == []
    assert call.state is CallState.CONNECTED


def test_the_caller_is_warned_a_minute_before_the_bundle_runs_out_then_cut() -> None:
    call = new_call()
    assert call.handle(Admitted(100.0, 300, 60.0)) == []
    call.handle(Ring(101.0, (BOB_PHONE,)))
    assert call.next_deadline() == 146.0  # the limit counts from the answer only
    call.handle(Accept(105.0, BOB_PHONE))
    assert call.next_deadline() == 345.0
    assert call.handle_timer(344.0) == []
    assert call.handle_timer(345.0) == [QuotaWarning(60)]
    assert call.next_deadline() == 405.0
    assert call.handle_timer(404.9) == []  # warned once only
    effects = call.handle_timer(405.0)
    assert notified(effects) == {
        ALICE_PHONE: EndReason.QUOTA_EXHAUSTED,
        BOB_PHONE: EndReason.QUOTA_EXHAUSTED,
    }
    assert effects[-1] == Ended(EndReason.QUOTA_EXHAUSTED, BUNDLE_MINUTES_USED)
    assert call.ended_at == 405.0 and call.next_deadline() is None


def test_a_limit_shorter_than_the_warning_warns_at_the_answer() -> None:
    call = new_call()
    call.handle(Admitted(100.0, 30, 60.0))
    call.handle(Ring(101.0, (BOB_PHONE,)))
    call.handle(Accept(105.0, BOB_PHONE))
    assert call.next_deadline() == 105.0
    assert call.handle_timer(105.0) == [QuotaWarning(30)]
    assert call.next_deadline() == 135.0


def test_a_timer_past_the_limit_ends_the_call_without_a_warning() -> None:
    call = new_call()
    call.handle(Admitted(100.0, 120, 60.0))
    call.handle(Ring(101.0, (BOB_PHONE,)))
    call.handle(Accept(105.0, BOB_PHONE))
    effects = call.handle_timer(300.0)
    assert not any(isinstance(e, QuotaWarning) for e in effects)
    assert effects[-1] == Ended(EndReason.QUOTA_EXHAUSTED, BUNDLE_MINUTES_USED)


def test_the_limit_is_set_before_the_call_rings_only() -> None:
    call = ringing()
    with pytest.raises(CallStateError, match="Admitted is not allowed in state ringing"):
        call.handle(Admitted(102.0, 60, 60.0))


def test_no_timer_after_the_end() -> None:
    call = ringing()
    call.handle(RingTimeout(146.0))
    with pytest.raises(CallStateError, match="Timer is not allowed in state ended"):
        call.handle_timer(147.0)


# Renegotiation ------------------------------------------------------------------


@pytest.mark.parametrize("state", ["inviting", "ringing"])
def test_the_caller_may_move_to_a_new_leg_before_the_answer(state: str) -> None:
    call = ringing() if state == "ringing" else new_call()
    assert call.handle(Renegotiate(102.0, ALICE_PHONE)) == [Renegotiation(ALICE_PHONE, None)]
    assert call.state.value == state  # the call goes on as it was


def test_a_ringing_device_may_not_renegotiate() -> None:
    call = ringing()
    with pytest.raises(CallStateError, match="Renegotiate is not allowed in state ringing"):
        call.handle(Renegotiate(102.0, BOB_PHONE))


def test_both_parties_of_a_connected_call_move_to_a_new_leg_bridged_to_the_other() -> None:
    call = ringing()
    call.handle(Accept(105.0, BOB_TABLET))
    assert call.handle(Renegotiate(110.0, ALICE_PHONE)) == [Renegotiation(ALICE_PHONE, BOB_TABLET)]
    assert call.handle(Renegotiate(111.0, BOB_TABLET)) == [Renegotiation(BOB_TABLET, ALICE_PHONE)]
    assert call.state is CallState.CONNECTED
    with pytest.raises(CallStateError):  # answered elsewhere: no longer a party
        call.handle(Renegotiate(112.0, BOB_PHONE))


def test_no_renegotiation_after_the_end() -> None:
    call = ringing()
    call.handle(Hangup(103.0, ALICE_PHONE))
    with pytest.raises(CallStateError, match="state ended"):
        call.handle(Renegotiate(104.0, ALICE_PHONE))


def test_allows_asks_the_table_without_changing_the_call() -> None:
    call = ringing()
    assert call.allows(Accept(105.0, BOB_PHONE))
    assert not call.allows(Accept(105.0, MALLORY))
    assert call.allows(RingTimeout(146.0))
    assert call.state is CallState.RINGING and call.ringing_devices == {BOB_PHONE, BOB_TABLET}
    assert call.answered_at is None and call.ended_at is None
    call.handle(Accept(105.0, BOB_PHONE))
    assert not call.allows(Accept(105.0, BOB_TABLET))
