"""The call state machine: one call between a caller device and a callee number.

Pure (sans-I/O): fed inputs carrying the current time, it returns effects for the
service to carry out. The transition table lists every legal (state, input) pair;
anything else raises CallStateError naming the state and the input.

    INVITING --Ring--> RINGING --Accept--> CONNECTED --Hangup--> ENDED
        |                 |  Reject/Cancel/RingTimeout/...           ^
        +--- Busy/Unavailable/Fail/Cancel ------------------------+

Time is the machine's too: ``next_deadline()`` says when it next needs to hear
the time (the ring timeout while ringing; the minute-left warning and the end of
the caller's bundle while connected), and ``handle_timer(now)`` (the ``Timer``
input) acts on whatever is due by ``now``, as aioquic's ``get_timer()`` and
``handle_timer(now)``. The service keeps one timer per call, armed from
``next_deadline()`` after every input.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from signaling.calls.parties import Party
from wire.reasons import Detail
from wire.reasons import EndReason as EndReason  # re-exported: the machine ends calls with it

logger = logging.getLogger("anruf.calls")


class CallState(enum.Enum):
    INVITING = "inviting"
    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"


#: End detail of a call cut when the caller's bundle ran out while it talked.
BUNDLE_MINUTES_USED = Detail.BUNDLE_MINUTES_USED


class CallStateError(Exception):
    """An input that is not legal in the call's current state (our caller's mistake)."""

    def __init__(self, state: CallState, event: Input) -> None:
        super().__init__(f"{type(event).__name__} is not allowed in state {state.value}")
        self.state = state
        self.event = event


# Inputs -------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    now: float


@dataclass(frozen=True)
class Ring(Input):
    """The callee's devices have been offered the call."""

    devices: tuple[Party, ...]


@dataclass(frozen=True)
class Busy(Input):
    pass


@dataclass(frozen=True)
class Unavailable(Input):
    detail: str = ""


@dataclass(frozen=True)
class Accept(Input):
    device: Party


@dataclass(frozen=True)
class Reject(Input):
    device: Party


@dataclass(frozen=True)
class Hangup(Input):
    device: Party


@dataclass(frozen=True)
class RingTimeout(Input):
    pass


@dataclass(frozen=True)
class DeviceLost(Input):
    """A participant's device is gone (its connection did not come back in time)."""

    device: Party


@dataclass(frozen=True)
class Fail(Input):
    """Media or signaling failure: the call cannot go on."""

    detail: str


@dataclass(frozen=True)
class NotAllowed(Input):
    """The caller's operator policy refuses the call."""

    detail: str


@dataclass(frozen=True)
class QuotaExhausted(Input):
    """The caller's bundle has no minutes left for this call."""

    detail: str = ""


@dataclass(frozen=True)
class Admitted(Input):
    """The caller's operator allows the call: it may talk ``max_seconds`` (None: no
    limit), and the caller is warned ``warn_before`` seconds before that runs out."""

    max_seconds: float | None
    warn_before: float = 60.0


@dataclass(frozen=True)
class Timer(Input):
    """The time has come (or passed) for what ``next_deadline()`` announced."""


@dataclass(frozen=True)
class Renegotiate(Input):
    """A party's device moves to a new media leg (its network changed); the call goes on."""

    device: Party


# Effects ------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    pass


@dataclass(frozen=True)
class Notify(Effect):
    """Tell one device that the call is over for it, and why."""

    device: Party
    reason: EndReason
    detail: str = ""


@dataclass(frozen=True)
class Connected(Effect):
    device: Party


@dataclass(frozen=True)
class QuotaWarning(Effect):
    """Tell the caller that the bundle runs out in ``seconds_left`` seconds."""

    seconds_left: int


@dataclass(frozen=True)
class Renegotiation(Effect):
    """``device`` may take a new leg: bridged to ``peer`` once the call is connected,
    before that (``peer`` None) it hears what the caller hears while ringing."""

    device: Party
    peer: Party | None


@dataclass(frozen=True)
class Ended(Effect):
    reason: EndReason
    detail: str = ""


# The machine --------------------------------------------------------------

#: Each handler takes the input type its table entry names.
Handler = Callable[["Call", Any], list["Effect"]]


@dataclass
class Call:
    call_id: str
    caller: str
    callee: str
    caller_device: Party
    invited_at: float
    ring_timeout: float
    state: CallState = CallState.INVITING
    ringing_devices: set[Party] = field(default_factory=set)
    callee_device: Party | None = None
    ringing_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None
    end_detail: str = ""
    #: Talk time the caller's operator allows (Admitted); None: no limit.
    max_seconds: float | None = None
    warn_before: float = 60.0
    quota_warned: bool = False
    #: A copy that only tries an input (``allows``): it logs nothing.
    trial: bool = field(default=False, repr=False, compare=False)

    @property
    def ring_deadline(self) -> float | None:
        """When RingTimeout is due, while the call rings."""
        if self.state is not CallState.RINGING or self.ringing_at is None:
            return None
        return self.ringing_at + self.ring_timeout

    @property
    def quota_deadlines(self) -> tuple[float, float] | None:
        """When the caller is warned, and when the call is cut, while it talks."""
        if self.state is not CallState.CONNECTED or self.max_seconds is None:
            return None
        if self.answered_at is None:
            return None
        end = self.answered_at + self.max_seconds
        return end - min(self.warn_before, self.max_seconds), end

    def next_deadline(self) -> float | None:
        """When the machine next needs ``handle_timer`` (None: nothing is timed)."""
        ring = self.ring_deadline
        if ring is not None:
            return ring
        quota = self.quota_deadlines
        if quota is None:
            return None
        warn_at, end_at = quota
        return end_at if self.quota_warned else warn_at

    def handle_timer(self, now: float) -> list[Effect]:
        """What is due by ``now``; nothing when the call is not timed or not yet due."""
        return self.handle(Timer(now))

    @property
    def devices(self) -> set[Party]:
        """Every device still taking part in the call."""
        parties: set[Party] = {self.caller_device} | self.ringing_devices
        if self.callee_device is not None:
            parties.add(self.callee_device)
        return parties

    def allows(self, event: Input) -> bool:
        """Whether ``event`` is legal now; the call is left as it is. For a request
        whose own side effects (a relay operation) must not happen otherwise."""
        copy = replace(self, ringing_devices=set(self.ringing_devices), trial=True)
        try:
            copy.handle(event)
        except CallStateError:
            return False
        return True

    def handle(self, event: Input) -> list[Effect]:
        handler = _TRANSITIONS.get((self.state, type(event)))
        if handler is None:
            raise CallStateError(self.state, event)
        return handler(self, event)

    # helpers used by the table

    def _set_state(self, state: CallState) -> None:
        if not self.trial:
            logger.debug("call %s: %s -> %s", self.call_id, self.state.value, state.value)
        self.state = state

    def _end(
        self,
        now: float,
        reason: EndReason,
        detail: str = "",
        callee_reason: EndReason | None = None,
    ) -> list[Effect]:
        """End the call: every remaining device hears the reason (ringing devices may
        hear ``callee_reason`` instead, e.g. declined_elsewhere)."""
        effects: list[Effect] = [Notify(self.caller_device, reason, detail)]
        others: set[Party] = set(self.ringing_devices)
        if self.callee_device is not None:
            others.add(self.callee_device)
        for device in sorted(others, key=str):
            effects.append(Notify(device, callee_reason or reason, detail))
        self.ringing_devices.clear()
        self.ended_at = now
        self.end_reason = reason
        self.end_detail = detail
        self._set_state(CallState.ENDED)
        effects.append(Ended(reason, detail))
        return effects


def _ring(call: Call, e: Ring) -> list[Effect]:
    if not e.devices:
        return call._end(e.now, EndReason.UNAVAILABLE, Detail.NO_DEVICE_ONLINE)
    call.ringing_devices = set(e.devices)
    call.ringing_at = e.now
    call._set_state(CallState.RINGING)
    return []


def _busy(call: Call, e: Busy) -> list[Effect]:
    return call._end(e.now, EndReason.BUSY)


def _unavailable(call: Call, e: Unavailable) -> list[Effect]:
    return call._end(e.now, EndReason.UNAVAILABLE, e.detail)


def _fail(call: Call, e: Fail) -> list[Effect]:
    return call._end(e.now, EndReason.FAILED, e.detail)


def _not_allowed(call: Call, e: NotAllowed) -> list[Effect]:
    return call._end(e.now, EndReason.NOT_ALLOWED, e.detail)


def _quota_exhausted(call: Call, e: QuotaExhausted) -> list[Effect]:
    return call._end(e.now, EndReason.QUOTA_EXHAUSTED, e.detail)


def _accept(call: Call, e: Accept) -> list[Effect]:
    if e.device not in call.ringing_devices:
        raise CallStateError(call.state, e)
    others = sorted(call.ringing_devices - {e.device}, key=str)
    call.ringing_devices.clear()
    call.callee_device = e.device
    call.answered_at = e.now
    call._set_state(CallState.CONNECTED)
    effects: list[Effect] = [Notify(d, EndReason.ANSWERED_ELSEWHERE) for d in others]
    effects.append(Connected(e.device))
    return effects


def _reject(call: Call, e: Reject) -> list[Effect]:
    if e.device not in call.ringing_devices:
        raise CallStateError(call.state, e)
    # One decline declines the call: the other devices stop ringing too.
    call.ringing_devices.discard(e.device)
    effects = call._end(e.now, EndReason.DECLINED, callee_reason=EndReason.DECLINED_ELSEWHERE)
    return [Notify(e.device, EndReason.DECLINED), *effects]


def _hangup_before_answer(call: Call, e: Hangup) -> list[Effect]:
    if e.device == call.caller_device:
        return call._end(e.now, EndReason.CANCELLED)
    if e.device in call.ringing_devices:
        return _reject(call, Reject(e.now, e.device))
    raise CallStateError(call.state, e)


def _hangup_connected(call: Call, e: Hangup) -> list[Effect]:
    if e.device not in (call.caller_device, call.callee_device):
        raise CallStateError(call.state, e)
    return call._end(e.now, EndReason.COMPLETED)


def _ring_timeout(call: Call, e: RingTimeout) -> list[Effect]:
    return call._end(e.now, EndReason.NO_ANSWER)


def _device_lost_before_answer(call: Call, e: DeviceLost) -> list[Effect]:
    if e.device == call.caller_device:
        return call._end(e.now, EndReason.CANCELLED, Detail.CALLER_CONNECTION_LOST)
    if e.device not in call.ringing_devices:
        return []
    call.ringing_devices.discard(e.device)
    if call.ringing_devices or call.state is CallState.INVITING:
        return []
    return call._end(e.now, EndReason.UNAVAILABLE, Detail.CALLEE_CONNECTION_LOST)


def _device_lost_connected(call: Call, e: DeviceLost) -> list[Effect]:
    if e.device not in (call.caller_device, call.callee_device):
        return []
    return call._end(e.now, EndReason.FAILED, Detail.CONNECTION_LOST)


def _admitted(call: Call, e: Admitted) -> list[Effect]:
    call.max_seconds = e.max_seconds
    call.warn_before = e.warn_before
    return []


def _timer(call: Call, e: Timer) -> list[Effect]:
    ring = call.ring_deadline
    if ring is not None and e.now >= ring:
        return _ring_timeout(call, RingTimeout(e.now))
    quota = call.quota_deadlines
    if quota is None:
        return []
    warn_at, end_at = quota
    if e.now >= end_at:
        return call._end(e.now, EndReason.QUOTA_EXHAUSTED, BUNDLE_MINUTES_USED)
    if not call.quota_warned and e.now >= warn_at:
        call.quota_warned = True
        return [QuotaWarning(max(0, round(end_at - e.now)))]
    return []


def _renegotiate(call: Call, e: Renegotiate) -> list[Effect]:
    if call.state is CallState.CONNECTED:
        if e.device == call.caller_device and call.callee_device is not None:
            return [Renegotiation(e.device, call.callee_device)]
        if e.device == call.callee_device:
            return [Renegotiation(e.device, call.caller_device)]
    elif e.device == call.caller_device:
        return [Renegotiation(e.device, None)]
    raise CallStateError(call.state, e)


_TRANSITIONS: dict[tuple[CallState, type[Input]], Handler] = {
    (CallState.INVITING, Ring): _ring,
    (CallState.INVITING, Busy): _busy,
    (CallState.INVITING, Unavailable): _unavailable,
    (CallState.INVITING, Fail): _fail,
    (CallState.INVITING, NotAllowed): _not_allowed,
    (CallState.INVITING, QuotaExhausted): _quota_exhausted,
    (CallState.RINGING, QuotaExhausted): _quota_exhausted,
    (CallState.CONNECTED, QuotaExhausted): _quota_exhausted,
    (CallState.INVITING, Hangup): _hangup_before_answer,
    (CallState.INVITING, DeviceLost): _device_lost_before_answer,
    (CallState.RINGING, Accept): _accept,
    (CallState.RINGING, Reject): _reject,
    (CallState.RINGING, Hangup): _hangup_before_answer,
    (CallState.RINGING, RingTimeout): _ring_timeout,
    (CallState.RINGING, DeviceLost): _device_lost_before_answer,
    (CallState.RINGING, Fail): _fail,
    # A phone-network callee answers busy or unreachable only after ringing started.
    (CallState.RINGING, Busy): _busy,
    (CallState.RINGING, Unavailable): _unavailable,
    (CallState.CONNECTED, Hangup): _hangup_connected,
    (CallState.CONNECTED, DeviceLost): _device_lost_connected,
    (CallState.CONNECTED, Fail): _fail,
    (CallState.INVITING, Admitted): _admitted,
    (CallState.INVITING, Timer): _timer,
    (CallState.RINGING, Timer): _timer,
    (CallState.CONNECTED, Timer): _timer,
    (CallState.INVITING, Renegotiate): _renegotiate,
    (CallState.RINGING, Renegotiate): _renegotiate,
    (CallState.CONNECTED, Renegotiate): _renegotiate,
}
