"""Property-based tests of the call state machine (signaling/calls/machine.py).

Any sequence of inputs: no exception but CallStateError, ENDED is absorbing, one
Ended effect per call, every device hears the end once. Derandomized and bounded.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling.calls.machine import (
    Accept,
    Admitted,
    Busy,
    Call,
    CallState,
    CallStateError,
    Connected,
    DeviceLost,
    Effect,
    Ended,
    Fail,
    Hangup,
    Input,
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
from signaling.calls.parties import AppDevice, Party, PhoneNetwork

BOUNDED = settings(
    derandomize=True,
    database=None,
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CALLER_DEVICE = AppDevice("caller-phone")
CALLEE_DEVICES = st.sampled_from(
    [
        AppDevice("callee-phone"),
        AppDevice("callee-laptop"),
        AppDevice("stranger"),
        PhoneNetwork("c1"),
    ]
)
DEVICES = st.just(CALLER_DEVICE) | CALLEE_DEVICES
NOW = st.floats(min_value=0, max_value=1e6, allow_nan=False)
DETAIL = st.text(max_size=10)

inputs: st.SearchStrategy[Input] = st.one_of(
    # The callee's devices: never the caller's own (the service refuses self calls).
    st.builds(Ring, NOW, st.lists(CALLEE_DEVICES, max_size=3, unique=True).map(tuple)),
    st.builds(Busy, NOW),
    st.builds(Unavailable, NOW, DETAIL),
    st.builds(Accept, NOW, DEVICES),
    st.builds(Reject, NOW, DEVICES),
    st.builds(Hangup, NOW, DEVICES),
    st.builds(RingTimeout, NOW),
    st.builds(DeviceLost, NOW, DEVICES),
    st.builds(Fail, NOW, DETAIL),
    st.builds(NotAllowed, NOW, DETAIL),
    st.builds(QuotaExhausted, NOW, DETAIL),
    st.builds(Admitted, NOW, st.none() | st.integers(0, 7200), st.sampled_from([0.0, 60.0])),
    st.builds(Timer, NOW),
    st.builds(Renegotiate, NOW, DEVICES),
)


def new_call() -> Call:
    return Call(
        call_id="c1",
        caller="+4917700000001",
        callee="+4917700000002",
        caller_device=CALLER_DEVICE,
        invited_at=0.0,
        ring_timeout=30.0,
    )


@BOUNDED
@given(st.lists(inputs, max_size=25))
def test_any_inputs_keep_the_machine_consistent(events: list[Input]) -> None:
    call = new_call()
    effects: list[Effect] = []
    ever_rang: set[Party] = set()
    for event in events:
        before = call.state
        if before is CallState.RINGING:
            ever_rang |= call.ringing_devices
        try:
            produced = call.handle(event)
        except CallStateError as exc:
            assert exc.state is before and exc.event is event
            assert call.state is before  # a refused input changes nothing
            continue
        if before is CallState.ENDED:
            raise AssertionError(f"{event} was accepted after the end")
        if isinstance(event, Renegotiate):  # a new leg: the call itself goes on as it was
            (move,) = produced
            assert isinstance(move, Renegotiation) and move.device == event.device
            assert call.state is before
        effects += produced
        if call.state is CallState.ENDED:
            assert not call.ringing_devices
            assert call.end_reason is not None and call.ended_at == event.now
        if call.state is CallState.CONNECTED:
            assert call.callee_device is not None and not call.ringing_devices
        if call.state is CallState.ENDED:
            assert call.next_deadline() is None

    ended = [e for e in effects if isinstance(e, Ended)]
    assert len(ended) == (1 if call.state is CallState.ENDED else 0)
    if ended:
        # Ended is the last effect of all, and it matches what the call records.
        assert effects[-1] == ended[0]
        assert (ended[0].reason, ended[0].detail) == (call.end_reason, call.end_detail)
        # Every device that took part hears the end exactly once (the caller always).
        notified = [e.device for e in effects if isinstance(e, Notify)]
        assert notified.count(CALLER_DEVICE) == 1
        assert len(notified) == len(set(notified))
        assert set(notified) <= ever_rang | {CALLER_DEVICE}
    assert sum(isinstance(e, Connected) for e in effects) <= 1


@BOUNDED
@given(st.lists(inputs, max_size=10), st.lists(inputs, min_size=1, max_size=10))
def test_ended_is_absorbing(prefix: list[Input], after: list[Input]) -> None:
    call = new_call()
    for event in prefix:
        with contextlib.suppress(CallStateError):
            call.handle(event)
    if call.state is not CallState.ENDED:
        call.handle(Fail(1.0, "media"))  # legal in every state but ENDED
    snapshot = (call.end_reason, call.end_detail, call.ended_at, call.callee_device)
    for event in after:
        try:
            call.handle(event)
        except CallStateError:
            pass
        else:
            raise AssertionError(f"{event} was accepted after the end")
        assert call.state is CallState.ENDED
        assert (call.end_reason, call.end_detail, call.ended_at, call.callee_device) == snapshot


@BOUNDED
@given(st.lists(inputs, max_size=25), st.floats(min_value=0, max_value=1e4))
def test_a_timer_at_the_deadline_always_makes_progress(events: list[Input], late: float) -> None:
    """The service re-arms one timer from next_deadline(): a timer that fires then
    (or later) either acts or moves the deadline on, so it never spins."""
    call = new_call()
    for event in events:
        with contextlib.suppress(CallStateError):
            call.handle(event)
    for _ in range(3):  # ring timeout, warning, cut: at most three in a row
        deadline = call.next_deadline()
        if deadline is None:
            return
        if call.state is CallState.RINGING:
            assert call.ringing_at is not None and deadline == call.ringing_at + call.ring_timeout
        effects = call.handle_timer(deadline + late)
        assert effects, f"nothing due at {deadline + late} in {call.state}"
        if not any(isinstance(e, Ended) for e in effects):
            (warning,) = effects
            assert isinstance(warning, QuotaWarning) and warning.seconds_left >= 0
            later = call.next_deadline()
            assert later is not None and later > deadline
    assert call.next_deadline() is None
