"""One call as a device sees it: a sans-I/O machine shared by every Python client.

Fed the server's parsed messages and the device's own actions, with the current
time as an argument, it returns the messages to send and the events that
happened; it never touches a socket or a clock. The Python app client
(voice/client) and the load generator (voice/loadtest/line.py) both drive it.

    outgoing: INVITING --call.ringing--> RINGING --call.accepted--> CONNECTED
    incoming: INCOMING --------------call.accepted----------------> CONNECTED
    any of them --call.ended / error to the invite / local end--> ENDED

Server messages the table does not list for the phase are ignored (a late
``call.ringing`` after the answer changes nothing); a local action that is not
possible in the phase raises CallUsageError, our caller's mistake.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from wire.messages import (
    CallAccept,
    CallAccepted,
    CallDigit,
    CallDtmf,
    CallEnded,
    CallHangup,
    CallIncoming,
    CallInvite,
    CallProgress,
    CallQuotaWarning,
    CallReject,
    CallRenegotiate,
    CallRenegotiated,
    CallRinging,
    CallStateReport,
    ErrorReply,
    Message,
    ServerMessage,
)
from wire.reasons import DEVICE_ERROR

logger = logging.getLogger("anruf.wire.call")


class Phase(enum.StrEnum):
    INVITING = "inviting"
    INCOMING = "incoming"
    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"


class CallUsageError(RuntimeError):
    """A local action that is not possible in the call's phase (the caller's mistake)."""


# Events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class Send(Event):
    """Send this message now (e.g. a hang-up asked for before the call had an id)."""

    message: Message


@dataclass(frozen=True)
class Progressed(Event):
    """The server took the invite: the relay's answer to apply (early media follows)."""

    sdp: str
    phone_network: bool


@dataclass(frozen=True)
class Ringing(Event):
    pass


@dataclass(frozen=True)
class Connected(Event):
    device_id: str


@dataclass(frozen=True)
class Ended(Event):
    """The call is over: a wire.reasons reason and detail, or DEVICE_ERROR and the code."""

    reason: str
    detail: str
    message: str = ""


@dataclass(frozen=True)
class Renegotiated(Event):
    sdp: str


@dataclass(frozen=True)
class RenegotiationRefused(Event):
    code: str
    message: str


@dataclass(frozen=True)
class RequestRefused(Event):
    """The server refused a request of this call other than the invite; the call goes on."""

    request: str
    code: str
    message: str


@dataclass(frozen=True)
class DigitReceived(Event):
    digit: str


@dataclass(frozen=True)
class QuotaWarned(Event):
    seconds_left: int


@dataclass(frozen=True)
class StateReported(Event):
    """After a reconnect, the server's view of the call (``call.state``)."""

    state: str


#: (phase, server message) -> the next phase.
TRANSITIONS: dict[tuple[Phase, type[ServerMessage]], Phase] = {
    (Phase.INVITING, CallProgress): Phase.INVITING,
    (Phase.INVITING, CallRinging): Phase.RINGING,
    (Phase.INVITING, CallAccepted): Phase.CONNECTED,
    (Phase.RINGING, CallAccepted): Phase.CONNECTED,
    (Phase.INCOMING, CallAccepted): Phase.CONNECTED,
    (Phase.INVITING, CallEnded): Phase.ENDED,
    (Phase.RINGING, CallEnded): Phase.ENDED,
    (Phase.INCOMING, CallEnded): Phase.ENDED,
    (Phase.CONNECTED, CallEnded): Phase.ENDED,
}

#: Messages about a call in any phase but ENDED that change no phase.
_ANY_LIVE_PHASE = (CallDigit, CallQuotaWarning, CallRenegotiated, CallStateReport, ErrorReply)


@dataclass
class DeviceCall:
    """One call of this device. ``ids`` gives each request its message id."""

    outgoing: bool
    peer: str
    ids: Callable[[], str]
    call_id: str | None = None
    phase: Phase = Phase.INVITING
    phone_network: bool = False
    #: The relay's offer, for an incoming call.
    offer: str = ""
    end_reason: str | None = None
    end_detail: str = ""
    end_message: str = ""
    #: When each phase began (the ``now`` of the input that began it).
    times: dict[Phase, float] = field(default_factory=dict)
    #: Message id -> type of the requests sent for this call (their replies are ours).
    requests: dict[str, str] = field(default_factory=dict)
    hangup_wanted: bool = False

    @classmethod
    def place(cls, to: str, ids: Callable[[], str], now: float) -> DeviceCall:
        call = cls(outgoing=True, peer=to, ids=ids)
        call.times[Phase.INVITING] = now
        return call

    @classmethod
    def incoming(cls, message: CallIncoming, ids: Callable[[], str], now: float) -> DeviceCall:
        call = cls(
            outgoing=False,
            peer=message.from_,
            ids=ids,
            call_id=message.call_id,
            phase=Phase.INCOMING,
            phone_network=message.phone_network,
            offer=message.sdp,
        )
        call.times[Phase.INCOMING] = now
        return call

    @property
    def active(self) -> bool:
        return self.phase is not Phase.ENDED

    def _set_phase(self, phase: Phase, now: float) -> None:
        if phase is not self.phase:
            logger.debug("call %s: %s -> %s", self.call_id, self.phase.value, phase.value)
            self.phase = phase
            self.times.setdefault(phase, now)

    def _request(self, message: Message) -> None:
        assert message.id is not None
        self.requests[message.id] = message.type

    def _known(self, action: str) -> str:
        if self.call_id is None or not self.active:
            raise CallUsageError(f"cannot {action}: the call is {self.phase.value}")
        return self.call_id

    # Local actions: each returns the message to send -------------------------------------

    def invite(self, sdp: str, now: float, region: str | None = None) -> CallInvite:
        if not self.outgoing or self.phase is not Phase.INVITING or self.requests:
            raise CallUsageError("only a new outgoing call can be placed")
        message = CallInvite(self.ids(), self.peer, sdp, region)
        self._request(message)
        self.times[Phase.INVITING] = now
        return message

    def accept(self, sdp: str, now: float) -> CallAccept:
        if self.phase is not Phase.INCOMING:
            raise CallUsageError(f"only an incoming call can be accepted, not {self.phase.value}")
        message = CallAccept(self.ids(), self._known("accept"), sdp)
        self._request(message)
        return message

    def reject(self, now: float) -> CallReject:
        if self.phase is not Phase.INCOMING:
            raise CallUsageError(f"only an incoming call can be rejected, not {self.phase.value}")
        message = CallReject(self.ids(), self._known("reject"))
        self._request(message)
        return message

    def hangup(self, now: float) -> CallHangup | None:
        """The hang-up to send; None when the call is over, or has no id yet (then it is
        sent as soon as the server names the call)."""
        if not self.active:
            return None
        if self.call_id is None:
            self.hangup_wanted = True
            return None
        message = CallHangup(self.ids(), self.call_id)
        self._request(message)
        return message

    def send_dtmf(self, digits: str, now: float) -> CallDtmf:
        message = CallDtmf(self.ids(), self._known("send digits"), digits)
        self._request(message)
        return message

    def renegotiate(self, sdp: str, now: float) -> CallRenegotiate:
        message = CallRenegotiate(self.ids(), self._known("move"), sdp)
        self._request(message)
        return message

    def end(self, reason: str, detail: str, now: float, message: str = "") -> list[Event]:
        """End the call here without the server (e.g. the device could not set it up)."""
        if not self.active:
            return []
        return self._end(reason, detail, message, now)

    def _end(self, reason: str, detail: str, message: str, now: float) -> list[Event]:
        self.end_reason, self.end_detail, self.end_message = reason, detail, message
        self._set_phase(Phase.ENDED, now)
        return [Ended(reason, detail, message)]

    # Server messages ------------------------------------------------------------------

    def owns(self, message: ServerMessage) -> bool:
        """The message is about this call: a reply to one of its requests, or its call id."""
        if message.ref is not None and message.ref in self.requests:
            return True
        call_id = getattr(message, "call_id", None)
        return call_id is not None and call_id == self.call_id

    def receive(self, message: ServerMessage, now: float) -> list[Event]:
        """Events (and messages to send) for one server message about this call."""
        if not self.active:
            return []
        events: list[Event] = []
        call_id = getattr(message, "call_id", None)
        if self.call_id is None and call_id is not None:
            self.call_id = call_id  # the server names our call in its reply to the invite
            if self.hangup_wanted:
                hangup = self.hangup(now)
                if hangup is not None:
                    events.append(Send(hangup))
        following = TRANSITIONS.get((self.phase, type(message)))
        if following is None and not isinstance(message, _ANY_LIVE_PHASE):
            return events  # late or repeated: nothing changes
        match message:
            case CallProgress(sdp=sdp, phone_network=phone_network):
                self.phone_network = phone_network
                events.append(Progressed(sdp, phone_network))
            case CallRinging():
                events.append(Ringing())
            case CallAccepted(device_id=device_id):
                events.append(Connected(device_id))
            case CallEnded(reason=reason, detail=detail):
                return events + self._end(reason, detail, "", now)
            case CallDigit(digit=digit):
                events.append(DigitReceived(digit))
            case CallQuotaWarning(seconds_left=seconds_left):
                events.append(QuotaWarned(seconds_left))
            case CallRenegotiated(sdp=sdp):
                events.append(Renegotiated(sdp))
            case CallStateReport(state=state):
                events.append(StateReported(state))
            case ErrorReply(code=code, message=text):
                request = self.requests.get(message.ref or "")
                if request is None:
                    return events
                if request == CallInvite.type:
                    return events + self._end(DEVICE_ERROR, code, text, now)
                if request == CallRenegotiate.type:
                    events.append(RenegotiationRefused(code, text))
                else:
                    events.append(RequestRefused(request, code, text))
        if following is not None:
            self._set_phase(following, now)
        return events
