"""The call as a device sees it (wire/call.py): driven by hand, no sockets, no clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from wire.call import (
    TRANSITIONS,
    CallUsageError,
    Connected,
    DeviceCall,
    DigitReceived,
    Ended,
    Phase,
    Progressed,
    QuotaWarned,
    Renegotiated,
    RenegotiationRefused,
    RequestRefused,
    Ringing,
    Send,
    StateReported,
)

CALL = "c0ffee"
CALLEE = "+4917700000002"
CALLER = "+4917700000001"


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: str(next(numbers))


def placed(now: float = 10.0) -> tuple[DeviceCall, wire.CallInvite]:
    call = DeviceCall.place(CALLEE, counter(), now)
    return call, call.invite("v=0 offer", now)


def incoming(now: float = 10.0) -> DeviceCall:
    message = wire.CallIncoming(CALL, CALLER, "v=0 relay offer", phone_network=True)
    return DeviceCall.incoming(message, counter(), now)


def test_an_outgoing_call_from_invite_to_hang_up() -> None:
    call, invite = placed(10.0)
    assert invite == wire.CallInvite("1", CALLEE, "v=0 offer", None)
    assert call.phase is Phase.INVITING and call.call_id is None

    progress = wire.CallProgress(CALL, CALLEE, "v=0 answer", phone_network=True, ref="1")
    assert call.owns(progress)
    assert call.receive(progress, 10.1) == [Progressed("v=0 answer", True)]
    assert call.call_id == CALL and call.phone_network and call.phase is Phase.INVITING

    assert call.receive(wire.CallRinging(CALL), 10.3) == [Ringing()]
    assert call.phase is Phase.RINGING
    assert call.receive(wire.CallAccepted(CALL, "dev_b"), 12.0) == [Connected("dev_b")]
    assert call.phase is Phase.CONNECTED

    hangup = call.hangup(20.0)
    assert hangup == wire.CallHangup("2", CALL)
    ended = wire.CallEnded(CALL, "completed", "", ref="2")
    assert call.receive(ended, 20.1) == [Ended("completed", "")]
    assert call.phase is Phase.ENDED and call.end_reason == "completed"
    assert call.times == {
        Phase.INVITING: 10.0,
        Phase.RINGING: 10.3,
        Phase.CONNECTED: 12.0,
        Phase.ENDED: 20.1,
    }


def test_an_incoming_call_is_accepted() -> None:
    call = incoming()
    assert (call.phase, call.peer, call.offer, call.outgoing) == (
        Phase.INCOMING,
        CALLER,
        "v=0 relay offer",
        False,
    )
    accept = call.accept("v=0 answer", 11.0)
    assert accept == wire.CallAccept("1", CALL, "v=0 answer")
    assert call.phase is Phase.INCOMING  # connected once the server says so
    assert call.receive(wire.CallAccepted(CALL, "dev_b"), 11.2) == [Connected("dev_b")]
    assert call.phase is Phase.CONNECTED


@pytest.mark.parametrize(
    "reason", ["answered_elsewhere", "declined_elsewhere", "cancelled", "no_answer"]
)
def test_an_incoming_call_ends_before_the_answer(reason: str) -> None:
    call = incoming()
    assert call.receive(wire.CallEnded(CALL, reason, ""), 12.0) == [Ended(reason, "")]
    assert call.phase is Phase.ENDED
    with pytest.raises(CallUsageError):
        call.accept("v=0", 12.5)


def test_a_rejected_call() -> None:
    call = incoming()
    assert call.reject(11.0) == wire.CallReject("1", CALL)
    assert call.receive(wire.CallEnded(CALL, "declined", ""), 11.1) == [Ended("declined", "")]


def test_an_invite_refused_with_an_error_ends_the_call_as_the_devices_error() -> None:
    call, _ = placed()
    events = call.receive(wire.ErrorReply("self_call", "cannot call yourself", ref="1"), 10.2)
    assert events == [Ended(wire.DEVICE_ERROR, "self_call", "cannot call yourself")]
    assert (call.end_reason, call.end_detail, call.end_message) == (
        "error",
        "self_call",
        "cannot call yourself",
    )


def test_an_invite_refused_at_once_names_a_call_id_never_used_again() -> None:
    call, _ = placed()
    ended = wire.CallEnded("refused1", "failed", "overloaded", ref="1")
    assert call.owns(ended)
    assert call.receive(ended, 10.1) == [Ended("failed", "overloaded")]
    assert call.call_id == "refused1"


def test_other_errors_leave_the_call_up() -> None:
    call, _ = placed()
    call.receive(wire.CallProgress(CALL, CALLEE, "a", ref="1"), 10.1)
    call.receive(wire.CallAccepted(CALL, "dev_b"), 11.0)
    dtmf = call.send_dtmf("12", 12.0)
    refusal = wire.ErrorReply("invalid_state", "not a phone call", ref=dtmf.id)
    assert call.receive(refusal, 12.1) == [
        RequestRefused("call.dtmf", "invalid_state", "not a phone call")
    ]
    assert call.phase is Phase.CONNECTED


def test_renegotiation_answered_and_refused() -> None:
    call, _ = placed()
    call.receive(wire.CallProgress(CALL, CALLEE, "a", ref="1"), 10.1)
    call.receive(wire.CallAccepted(CALL, "dev_b"), 11.0)
    first = call.renegotiate("v=0 new", 20.0)
    assert first == wire.CallRenegotiate("2", CALL, "v=0 new")
    answer = wire.CallRenegotiated(CALL, "v=0 answer", ref="2")
    assert call.receive(answer, 20.1) == [Renegotiated("v=0 answer")]
    second = call.renegotiate("v=0 bad", 30.0)
    refusal = wire.ErrorReply("bad_sdp", "no Opus", ref=second.id)
    assert call.receive(refusal, 30.1) == [RenegotiationRefused("bad_sdp", "no Opus")]
    assert call.phase is Phase.CONNECTED


def test_digits_quota_warnings_and_state_reports_change_no_phase() -> None:
    call = incoming()
    call.accept("a", 11.0)
    call.receive(wire.CallAccepted(CALL, "dev_b"), 11.1)
    assert call.receive(wire.CallDigit(CALL, "7"), 12.0) == [DigitReceived("7")]
    assert call.receive(wire.CallQuotaWarning(CALL, 60), 13.0) == [QuotaWarned(60)]
    report = wire.CallStateReport(CALL, "connected", "incoming", CALLER)
    assert call.receive(report, 14.0) == [StateReported("connected")]
    assert call.phase is Phase.CONNECTED


def test_a_hang_up_before_the_call_has_an_id_is_sent_when_it_has_one() -> None:
    call, _ = placed()
    assert call.hangup(10.05) is None and call.hangup_wanted
    events = call.receive(wire.CallProgress(CALL, CALLEE, "a", ref="1"), 10.1)
    assert events == [Send(wire.CallHangup("2", CALL)), Progressed("a", False)]


def test_late_and_foreign_messages() -> None:
    call, _ = placed()
    call.receive(wire.CallProgress(CALL, CALLEE, "a", ref="1"), 10.1)
    call.receive(wire.CallAccepted(CALL, "dev_b"), 11.0)
    assert call.receive(wire.CallRinging(CALL), 11.1) == []  # late: nothing changes
    assert call.phase is Phase.CONNECTED
    assert not call.owns(wire.CallEnded("another", "completed", ""))
    assert not call.owns(wire.ErrorReply("bad_json", "x", ref="99"))
    assert not call.owns(wire.Pong())
    call.receive(wire.CallEnded(CALL, "completed", ""), 30.0)
    assert call.receive(wire.CallEnded(CALL, "failed", "node_lost"), 31.0) == []
    assert call.end_reason == "completed"
    assert call.hangup(32.0) is None


def test_local_end() -> None:
    call, _ = placed()
    assert call.end("failed", "connection_lost", 10.5) == [Ended("failed", "connection_lost")]
    assert call.end("completed", "", 11.0) == []


def test_local_actions_out_of_phase_are_the_callers_mistake() -> None:
    call, _ = placed()
    with pytest.raises(CallUsageError):
        call.invite("again", 10.1)
    with pytest.raises(CallUsageError):
        call.accept("v=0", 10.1)
    with pytest.raises(CallUsageError):
        call.send_dtmf("1", 10.1)  # no call id yet
    with pytest.raises(CallUsageError):
        incoming().invite("v=0", 10.0)


def test_every_transition_is_reachable_from_a_real_message() -> None:
    for phase, kind in TRANSITIONS:
        assert kind in wire.SERVER_MESSAGES, (phase, kind)


server_messages = st.sampled_from(
    [
        wire.CallProgress(CALL, CALLEE, "a", ref="1"),
        wire.CallRinging(CALL),
        wire.CallAccepted(CALL, "dev_b"),
        wire.CallDigit(CALL, "1"),
        wire.CallQuotaWarning(CALL, 30),
        wire.CallRenegotiated(CALL, "b"),
        wire.CallStateReport(CALL, "ringing", "outgoing", CALLEE),
        wire.CallEnded(CALL, "completed", ""),
        wire.ErrorReply("call_not_found", "no", ref="1"),
        wire.ErrorReply("call_not_found", "no", ref="2"),
        wire.Pong(),
    ]
)
ORDER = [Phase.INVITING, Phase.INCOMING, Phase.RINGING, Phase.CONNECTED, Phase.ENDED]


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(server_messages, max_size=12))
def test_any_sequence_moves_only_forward_and_ends_once(
    outgoing: bool, messages: list[wire.ServerMessage]
) -> None:
    if outgoing:
        call, _ = placed(0.0)
    else:
        call = incoming(0.0)
    endings = 0
    for now, message in enumerate(messages, start=1):
        before = call.phase
        events = call.receive(message, float(now))
        endings += sum(isinstance(event, Ended) for event in events)
        assert ORDER.index(call.phase) >= ORDER.index(before) or (
            before is Phase.INCOMING and call.phase is not Phase.INVITING
        )
        if before is Phase.ENDED:
            assert events == []
    assert endings == (1 if call.phase is Phase.ENDED else 0)
    assert list(call.times.values()) == sorted(call.times.values())
