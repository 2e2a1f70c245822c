"""The user agent for the operator's SIP trunk: ``SipTrunk`` and its calls. asyncio.

``SipTrunk`` is a thin wrapper: it feeds the sans-I/O user agent core
(``signaling/sip/ua.py``) with what the transport (``signaling/sip/transport.py``)
receives and the time, hands the core's ``Send`` actions to the transport, keeps one
``loop.call_later`` handle for the core's ``next_deadline()`` and turns the core's
other actions into tasks and callbacks. See docs/sip.md for the behaviour on the
wire; the call API in short:

- ``await trunk.invite(to_number=..., from_number=..., sdp=..., on_event=...)``
  returns an ``OutboundCall`` once the INVITE is sent, or raises
  ``TrunkUnavailable``. Its events: ``Progress`` (180/183, early media when
  ``sdp``), ``Answered`` (2xx, already ACKed), then exactly one ``Ended``.
- ``on_incoming(IncomingCall)`` runs (as a task) for each INVITE from the SBC that
  passed the source check, digest authentication (when configured) and the
  limits; 100 Trying has been sent. The call is answered with ``progress``,
  ``answer`` or ``reject``; ``on_event`` gets exactly one ``Ended``.

Every call ends with one ``Ended(status, reason, by_remote, detail)``:

==========  ==========================================  =========  =========
reason      what happened                               status     by_remote
==========  ==========================================  =========  =========
rejected    a final failure response (486, 603, 408 …)  its code   True
            or our ``reject(status)``                   status     False
cancel      the SBC's CANCEL (we answered 487)          487        True
            our ``cancel()`` took effect (487)          487        False
bye         a BYE from the SBC, or our ``bye()``        None       either
timeout     no response to our INVITE (Timer B), or     None       False
            no ACK for our 2xx (we sent BYE)
transport   the TCP connection to the SBC failed        None       False
shutdown    ``stop()`` ended the call                   None       False
==========  ==========================================  =========  =========

``detail`` is the Reason header's text (RFC 3326), else the reason phrase, else the
text our side gave.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from signaling.sip.message import ParseError, Request, Response, SipTarget
from signaling.sip.session import (
    Answered,
    CallError,
    CallEvent,
    Ended,
    IncomingSession,
    OutboundSession,
    Progress,
    Session,
    reason_header,
    reason_text,
)
from signaling.sip.settings import SettingsError, TrunkSettings
from signaling.sip.transaction import Send
from signaling.sip.transport import SipTransport
from signaling.sip.ua import (
    RATE_LIMIT_RETRY_AFTER,
    CallOffered,
    CallUpdate,
    Reoffered,
    TrunkStateChanged,
    TrunkUnavailable,
    UaAction,
    UserAgent,
)

logger = logging.getLogger("anruf.sip")


class _Call:
    """What the application holds of a call: the session's state and async methods
    that run the core and send what it produced."""

    def __init__(self, trunk: SipTrunk, session: Session) -> None:
        self._trunk = trunk
        self._session = session
        self.on_reoffer: Callable[[str], Awaitable[str]] | None = None
        self._on_event: Callable[[CallEvent], None] | None = None
        self._pending_events: list[CallEvent] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.call_id} {self.state}>"

    @property
    def call_id(self) -> str:
        return self._session.call_id

    @property
    def state(self) -> str:
        return self._session.state

    @property
    def ended(self) -> bool:
        return self._session.ended

    @property
    def local_sdp(self) -> str:
        return self._session.local_sdp

    @property
    def on_event(self) -> Callable[[CallEvent], None] | None:
        return self._on_event

    @on_event.setter
    def on_event(self, callback: Callable[[CallEvent], None] | None) -> None:
        """Events that came before a callback was set are delivered to it now."""
        self._on_event = callback
        if callback is not None:
            pending, self._pending_events = self._pending_events, []
            for event in pending:
                self._deliver(event)

    def _emit(self, event: CallEvent) -> None:
        if self._on_event is None:
            self._pending_events.append(event)
        else:
            self._deliver(event)

    def _deliver(self, event: CallEvent) -> None:
        assert self._on_event is not None
        try:
            self._on_event(event)
        except Exception:
            logger.exception("SIP call %s: on_event failed for %r", self.call_id, event)

    async def _reoffer(self, offer: str) -> None:
        session, trunk = self._session, self._trunk
        if self.on_reoffer is None:
            trunk._apply(lambda now: session.reject_reoffer(now=now))
            return
        try:
            answer = await self.on_reoffer(offer)
        except Exception:
            logger.exception("SIP call %s: on_reoffer failed", self.call_id)
            trunk._apply(lambda now: session.reject_reoffer(now=now))
            return
        trunk._apply(lambda now: session.answer_reoffer(answer, now=now))


class OutboundCall(_Call):
    """Our INVITE to the SBC. ``cancel()`` and ``bye()`` both end the call in any
    state: CANCEL before the final response, BYE after a 2xx."""

    _session: OutboundSession

    def __init__(
        self, trunk: SipTrunk, session: OutboundSession, on_event: Callable[[CallEvent], None]
    ) -> None:
        super().__init__(trunk, session)
        self._on_event = on_event

    @property
    def to_number(self) -> str:
        return self._session.to_number

    @property
    def from_number(self) -> str:
        return self._session.from_number

    @property
    def invite_request(self) -> Request | None:
        return self._session.invite_request

    async def cancel(self, reason: str = "") -> None:
        """CANCEL (with an RFC 3326 Reason when ``reason``) before the final response;
        sent once a provisional response came (§9.1). After a 2xx: BYE."""
        self._trunk._apply(lambda now: self._session.cancel(reason, now=now))

    async def bye(self, reason: str = "") -> None:
        """BYE after the 2xx (before it: CANCEL). ``Ended`` follows at once."""
        self._trunk._apply(lambda now: self._session.bye(reason, now=now))


class IncomingCall(_Call):
    """The SBC's INVITE, after the source check, authentication and the limits; 100
    Trying has been sent. ``request`` is the INVITE (for headers like
    P-Asserted-Identity); ``on_event`` gets ``Ended`` (events before it is set are
    kept and delivered when it is)."""

    _session: IncomingSession

    @property
    def request(self) -> Request:
        return self._session.request

    @property
    def from_number(self) -> str:
        return self._session.from_number

    @property
    def to_number(self) -> str:
        return self._session.to_number

    @property
    def offer_sdp(self) -> str:
        return self._session.offer_sdp

    async def progress(self, status: int = 180, sdp: str | None = None) -> None:
        """180 Ringing, or 183 Session Progress with early-media SDP."""
        self._trunk._apply(lambda now: self._session.progress(status, sdp, now=now))

    async def answer(self, sdp: str) -> None:
        """200 OK with ``sdp``, sent again (T1 doubling to T2) until the ACK."""
        self._trunk._apply(lambda now: self._session.answer(sdp, now=now))

    async def reject(
        self, status: int, reason: str = "", *, retry_after: int | None = None
    ) -> None:
        """A final failure response (404, 480, 486, 503, 603 …); ``reason`` is its
        reason phrase when given; ``retry_after`` adds a Retry-After header (seconds)."""
        self._trunk._apply(
            lambda now: self._session.reject(status, reason, retry_after=retry_after, now=now)
        )

    async def bye(self, reason: str = "") -> None:
        """BYE after the answer (sent once the ACK came, §15); before it: 480."""
        self._trunk._apply(lambda now: self._session.bye(reason, now=now))


class SipTrunk:
    """The user agent for the operator trunk (see the module docstring).

    ``stats`` counts what happened (messages in and out, malformed, forbidden and
    rate-limited requests, calls, challenges, retransmissions …) for metrics.
    """

    def __init__(
        self,
        settings: TrunkSettings,
        on_incoming: Callable[[IncomingCall], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.on_incoming = on_incoming
        self.on_state_change = on_state_change
        self._clock = clock
        self.ua = UserAgent(settings)
        self._transport: SipTransport | None = None
        self._facades: dict[Session, _Call] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None

    @property
    def settings(self) -> TrunkSettings:
        return self.ua.settings

    @settings.setter
    def settings(self, settings: TrunkSettings) -> None:
        self.ua.settings = settings

    @property
    def stats(self) -> Counter[str]:
        return self.ua.stats

    # lifecycle

    async def start(self) -> None:
        s = self.settings
        self._transport = SipTransport(
            s.listen_host,
            s.listen_port,
            s.transports,
            on_datagram=self._on_datagram,
            on_stream=self._on_stream,
            on_error=self._on_transport_error,
            max_message_bytes=s.max_message_bytes,
            admit_peer=self._peer_admitted,
            accepted_source=self.ua.guard.accepted,
            stats=self.ua.stats,
            tcp_limits=s.tcp_limits,
        )
        await self._transport.start()
        logger.info("SIP trunk listening on %s", self.addresses)
        self._run(self.ua.start(self._transport.bound_port, self._clock()))

    async def stop(self) -> None:
        """End every call (BYE, CANCEL or 503; ``Ended(reason="shutdown")``), close."""
        if not self.ua.started:
            return
        self._run(self.ua.stop(self._clock()))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        if self._transport is not None:
            await self._transport.stop()

    @property
    def addresses(self) -> list[tuple[str, str, int]]:
        """(transport, host, port) actually bound."""
        return self._transport.addresses if self._transport else []

    @property
    def up(self) -> bool:
        """Whether calls can go out: an SBC target answered its last OPTIONS (or
        any request); with ``options_interval`` 0, whenever started."""
        return self.ua.up

    @property
    def active_calls(self) -> int:
        return len(self.ua.active)

    def blocked_sources(self) -> list[str]:
        """Source addresses on the block list now (expired blocks are lifted)."""
        return self.ua.guard.blocked_sources(self._clock())

    def locked_out(self) -> list[tuple[str, str]]:
        """(source, username) pairs locked out after wrong digest responses."""
        return self.ua.auth_guard.locked(self._clock())

    # calls out

    async def invite(
        self,
        *,
        to_number: str,
        from_number: str,
        sdp: str,
        on_event: Callable[[CallEvent], None],
    ) -> OutboundCall:
        """Send an INVITE to the first SBC target that is up. Raises TrunkUnavailable
        (down, not started, max_concurrent_calls, max_calls_per_second) and
        ValueError for a number that cannot go into a SIP URI."""
        session, actions = self.ua.invite(
            to_number=to_number, from_number=from_number, sdp=sdp, now=self._clock()
        )
        call = OutboundCall(self, session, on_event)
        self._facades[session] = call
        self._run(actions)
        return call

    # the transport's callbacks

    def _peer_admitted(self, host: str) -> bool:
        return self.ua.admits(host, self._clock())

    def _on_datagram(self, data: bytes, source: SipTarget) -> None:
        self._run(self.ua.receive_datagram(data, source, self._clock()))

    def _on_stream(self, item: Request | Response | ParseError, source: SipTarget) -> None:
        self._run(self.ua.receive_stream(item, source, self._clock()))

    def _on_transport_error(self, peer: SipTarget) -> None:
        self._run(self.ua.transport_error(peer, self._clock()))

    # the core's actions

    def _apply(self, step: Callable[[float], None]) -> None:
        """Run a session method with the time, then what it produced (also when it
        raised: CallError or ValueError for the application)."""
        try:
            step(self._clock())
        finally:
            self._run(self.ua.take())

    def _run(self, actions: list[UaAction]) -> None:
        for action in actions:
            try:
                self._act(action)
            except Exception:
                self.stats["internal_errors"] += 1
                logger.exception("SIP: error running %r", action)
        self._rearm()

    def _act(self, action: UaAction) -> None:
        if isinstance(action, Send):
            self._send(action.message, action.peer)
        elif isinstance(action, CallUpdate):
            call = self._facades.get(action.call)
            if isinstance(action.event, Ended):
                self._facades.pop(action.call, None)
            if call is not None:
                call._emit(action.event)
        elif isinstance(action, CallOffered):
            incoming = IncomingCall(self, action.call)
            self._facades[action.call] = incoming
            self._spawn(self._serve(incoming))
        elif isinstance(action, Reoffered):
            facade = self._facades.get(action.call)
            if facade is None:
                action.call.reject_reoffer(now=self._clock())
                self._run(self.ua.take())
            else:
                self._spawn(facade._reoffer(action.offer))
        elif isinstance(action, TrunkStateChanged) and self.on_state_change is not None:
            try:
                self.on_state_change(action.up)
            except Exception:
                logger.exception("SIP trunk: on_state_change failed")

    def _send(self, message: Request | Response, peer: SipTarget) -> None:
        if self._transport is None:
            return
        self.stats["messages_sent"] += 1
        if logger.isEnabledFor(logging.DEBUG):
            first = message.encode().split(b"\r\n", 1)[0].decode(errors="replace")
            logger.debug("SIP -> %s %s", peer, first)
        self._transport.send(peer, message.encode())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, call: IncomingCall) -> None:
        try:
            await self.on_incoming(call)
        except Exception:
            logger.exception("SIP trunk: on_incoming failed for %s", call.call_id)
            if call.state == "ringing" and not call.ended:
                await call.reject(500)

    # the wheel: one timer for the core's next deadline

    def _rearm(self) -> None:
        deadline = self.ua.next_deadline()
        if deadline == self._armed or not self.ua.started:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_wheel)

    def _on_wheel(self) -> None:
        armed = self._armed or 0.0
        self._timer = None
        self._armed = None
        try:
            self._run(self.ua.handle_timer(max(self._clock(), armed)))
        finally:
            self._rearm()  # the wheel keeps turning whatever happened


__all__ = [
    "RATE_LIMIT_RETRY_AFTER",
    "Answered",
    "CallError",
    "CallEvent",
    "Ended",
    "IncomingCall",
    "OutboundCall",
    "Progress",
    "SettingsError",
    "SipTrunk",
    "TrunkSettings",
    "TrunkUnavailable",
    "reason_header",
    "reason_text",
]
