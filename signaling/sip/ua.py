"""The user agent core of the operator trunk (RFC 3261 §8, §9, §12 to §15). Sans-I/O.

Driven like the transaction layer below it: every input carries the time and
returns actions, the caller keeps one timer for ``next_deadline()``::

    ua = UserAgent(settings)
    actions = ua.start(local_port, now)              # OPTIONS keep-alive, if any
    actions = ua.receive_datagram(data, source, now)  # bytes from UDP
    actions = ua.receive_stream(item, source, now)    # a framed TCP message or ParseError
    actions = ua.receive(message, source, now)        # a parsed message
    actions = ua.handle_timer(now)                    # at ua.next_deadline()
    call, actions = ua.invite(to_number=..., from_number=..., sdp=..., now=now)
    actions = ua.take()                               # after a session method

Actions: ``Send`` (a message for the transport), ``CallOffered`` (an INVITE that
passed the source check, digest authentication and the limits; 100 Trying has gone
out), ``CallUpdate`` (``Progress``, ``Answered`` or the one ``Ended`` of a call),
``Reoffered`` (a re-INVITE's offer: ``answer_reoffer`` or ``reject_reoffer``) and
``TrunkStateChanged`` (an SBC target came up, or the last went down).

The path of one message (docs/sip.md, "Limits and bad input")::

    bytes ─► SourceGuard.charge(source)   blocked: dropped; over the rate: dropped,
       │                                  an accepted source gets a paced 503
       ├─ a response from a source that is not accepted: dropped unparsed
       ├─ parse ─► 400 (accepted) / 403 (not) for what cannot be read
       ├─ a request from a source that is not accepted: 403
       ▼
    TransactionLayer ─► Deliver ─► the UA core: stray ACK/2xx, CANCEL (§9.2),
       in-dialog requests (Call-ID, To tag and From tag: §12.2.2), INVITE
       (digest: AuthGuard, limits) ─► a Session (signaling/sip/session.py)
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import re
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from signaling.ratelimit import TokenBucket
from signaling.sip.dialog import AnswerRetransmission, Dialog
from signaling.sip.digest import (
    Credentials,
    DigestChallenger,
    DigestError,
    Verdict,
    authorization,
    choose_challenge,
)
from signaling.sip.guard import MAX_TRACKED_SOURCES, Admission, AuthGuard, SourceGuard
from signaling.sip.health import SbcHealth
from signaling.sip.message import (
    URI,
    Address,
    ParseError,
    Request,
    Response,
    SipTarget,
    Via,
    accepts,
    is_response,
    make_request,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    response_destination,
    stamp_received,
)
from signaling.sip.session import (
    CallEvent,
    ClientHandler,
    IncomingSession,
    OutboundSession,
    Session,
    number_of,
    sdp_of,
    uri_host,
)
from signaling.sip.settings import TrunkSettings
from signaling.sip.transaction import (
    Action,
    Deliver,
    Expired,
    InviteServerTransaction,
    Send,
    ServerTransaction,
    StartTimer,
    State,
    Terminated,
    Timeout,
    Transaction,
    TransactionLayer,
)

logger = logging.getLogger("anruf.sip")

#: The methods we handle; others known to SIP get 405 with this list, unknown ones 501.
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
#: The option tags we support (RFC 3261 §20.37): none, said out loud so that a peer
#: does not Require one of us (an empty Supported means no extensions).
SUPPORTED = ""
KNOWN_METHODS = frozenset(
    {
        *("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE"),
        *("NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"),
    }
)
#: Retry-After of the 503 a source gets when it exceeds its request rate.
RATE_LIMIT_RETRY_AFTER = 5
NUMBER = re.compile(r"[+0-9A-Za-z*#._-]+\Z")


# Actions for the application ------------------------------------------------------------


@dataclass(frozen=True)
class CallOffered:
    """An INVITE from the SBC that passed every check; answer it on ``call``."""

    call: IncomingSession


@dataclass(frozen=True)
class CallUpdate:
    call: Session
    event: CallEvent


@dataclass(frozen=True)
class Reoffered:
    """A re-INVITE with an offer: ``call.answer_reoffer(sdp)`` or ``reject_reoffer()``."""

    call: Session
    offer: str


@dataclass(frozen=True)
class TrunkStateChanged:
    up: bool


UaAction = Send | CallOffered | CallUpdate | Reoffered | TrunkStateChanged


class TrunkUnavailable(Exception):
    """invite() refused: the trunk is down, not started, or over a limit."""


# TU timers and client handlers ----------------------------------------------------------


class Later:
    """A TU timer on the wheel: ``callback(now)`` runs when it fires."""

    def __init__(self, callback: Callable[[float], None]) -> None:
        self.callback = callback
        self.timers: dict[str, float] = {}

    def fire(self, name: str, now: float) -> list[Action]:
        if self.timers.pop(name, None) is None:
            return []
        return [Expired(self, name)]

    def cancel(self) -> None:
        self.timers.clear()


def _ignore(txn: Transaction, response: Response | None, timer: str | None, now: float) -> None:
    pass


def _stateless_tag(request: Request) -> str:
    """The same To tag for every retransmission of a request we answer statelessly."""
    h = request.headers
    key = f"{h.get('Call-ID')}|{h.get('Via')}|{h.get('CSeq')}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


# The core ---------------------------------------------------------------------------------


class UserAgent:
    """The trunk's user agent core (see the module docstring).

    ``stats`` counts what happened (messages in, malformed, forbidden and rate-limited
    requests, calls, challenges, retransmissions, digest failures and lockouts …).
    """

    ALLOW = ALLOW
    SUPPORTED = SUPPORTED

    def __init__(self, settings: TrunkSettings, *, secret: bytes | None = None) -> None:
        self.settings = settings
        self.stats: Counter[str] = Counter()
        self.layer = TransactionLayer(settings.timers)
        self.local_port = settings.listen_port
        self.started = False
        self.calls: dict[tuple[str, str], Session] = {}
        self.active: set[Session] = set()
        self.handlers: dict[Transaction, ClientHandler] = {}
        self.incoming: dict[InviteServerTransaction, IncomingSession] = {}
        self.retransmissions: dict[AnswerRetransmission, Session] = {}
        self.guard = SourceGuard(
            settings.source_networks,
            rate=settings.requests_per_second_per_source,
            block_after=settings.block_after,
            block_seconds=settings.block_seconds,
        )
        self.auth_guard = AuthGuard(settings.auth_max_failures, settings.auth_lockout_seconds)
        self.health = SbcHealth(settings.sbc, settings.options_interval)
        cps = settings.max_calls_per_second
        self._cps = TokenBucket(cps, max(1, math.ceil(cps)))
        self._challenger: DigestChallenger | None = None
        if settings.inbound_username:
            self._challenger = DigestChallenger(
                settings.domain,
                secret if secret is not None else secrets.token_bytes(32),
                algorithms=settings.inbound_algorithms,
                nonce_lifetime=settings.nonce_lifetime,
            )
        self._nonce_counts: dict[str, int] = {}
        self._out: list[UaAction] = []

    # the driving interface

    def take(self) -> list[UaAction]:
        """The actions produced since the last call (after a session method)."""
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        return self.layer.next_deadline()

    def start(self, local_port: int, now: float) -> list[UaAction]:
        """The transport is bound to ``local_port`` (it goes into Via and Contact)."""
        self.local_port = local_port
        self.started = True
        if self.health.keepalive:
            self._send_keepalives(now)
        return self.take()

    def stop(self, now: float) -> list[UaAction]:
        """End every call (BYE, CANCEL or 503; ``Ended(reason="shutdown")``)."""
        for call in list(self.active):
            call.shutdown(now)
        actions = self.take()
        self.started = False
        return actions

    def handle_timer(self, now: float) -> list[UaAction]:
        try:
            actions = self.layer.on_timer(now)
            self.stats["retransmissions"] += sum(isinstance(a, Send) for a in actions)
            self._run(actions, now)
        except Exception:
            self.stats["internal_errors"] += 1
            logger.exception("SIP: error on the timer wheel")
        return self.take()

    def receive_datagram(self, data: bytes, source: SipTarget, now: float) -> list[UaAction]:
        """One UDP datagram: charged to its source before anything else."""
        try:
            self._datagram(data, source, now)
        except Exception:
            # A bug must cost one message, never the transport or the other calls.
            self.stats["internal_errors"] += 1
            logger.exception("SIP: error handling a datagram from %s", source)
        return self.take()

    def receive_stream(
        self, item: Request | Response | ParseError, source: SipTarget, now: float
    ) -> list[UaAction]:
        """One message framed on a TCP connection (or why it could not be read)."""
        try:
            self._stream(item, source, now)
        except Exception:
            self.stats["internal_errors"] += 1
            logger.exception("SIP: error handling a message from %s", source)
        return self.take()

    def receive(self, message: Request | Response, source: SipTarget, now: float) -> list[UaAction]:
        """A parsed message (as from TCP): charged, checked and handled."""
        return self.receive_stream(message, source, now)

    def transport_error(self, peer: SipTarget, now: float) -> list[UaAction]:
        """The connection to ``peer`` failed: its transactions time out."""
        for txn in list(self.layer.transactions.values()):
            if txn.peer == peer:
                self._run(self.layer.transport_error(txn, now), now)
        return self.take()

    def admits(self, host: str, now: float) -> bool:
        """For the transport: may ``host`` keep (or open) a TCP connection?"""
        return not self.guard.blocked(host, now)

    @property
    def up(self) -> bool:
        if not self.started or not self.settings.sbc:
            return False
        if self.settings.options_interval <= 0:
            return True
        return self.health.up

    # calls out

    def invite(
        self, *, to_number: str, from_number: str, sdp: str, now: float
    ) -> tuple[OutboundSession, list[UaAction]]:
        """Send an INVITE to the first SBC target that is up. Raises TrunkUnavailable
        (down, not started, max_concurrent_calls, max_calls_per_second) and
        ValueError for a number that cannot go into a SIP URI."""
        for number in (to_number, from_number):
            if not NUMBER.match(number):
                raise ValueError(f"{number!r} is not a number for a SIP URI")
        target = self.health.pick() if self.started else None
        if target is None:
            self.stats["invites_refused"] += 1
            raise TrunkUnavailable(
                "the SIP trunk is down" if self.started else "the SIP trunk is not started"
            )
        if len(self.active) >= self.settings.max_concurrent_calls:
            self.stats["invites_refused"] += 1
            raise TrunkUnavailable("max_concurrent_calls reached")
        if not self._cps.allow(now):
            self.stats["invites_refused"] += 1
            raise TrunkUnavailable("max_calls_per_second reached")
        call = OutboundSession(self, target, to_number=to_number, from_number=from_number, sdp=sdp)
        self.calls[(call.call_id, call.local_tag)] = call
        self.active.add(call)
        self.stats["calls_outgoing"] += 1
        call.send_invite(now)
        return call, self.take()

    # keep-alive

    def _send_keepalives(self, now: float) -> None:
        if not self.started:
            return
        for target in self.health.due():
            self._send_options(target, now)
        self._later(self.settings.options_interval, self._send_keepalives, now)

    def _send_options(self, target: SipTarget, now: float) -> None:
        s = self.settings
        uri = URI("sip", None, uri_host(target.host), target.port)
        request = make_request(
            "OPTIONS",
            uri,
            via=self._via(target.transport),
            from_addr=Address(URI("sip", "anruf", s.domain)).with_tag(new_tag()),
            to_addr=Address(uri),
            call_id=new_call_id(),
            cseq=1,
            headers=[*self._agent_header("User-Agent"), ("Accept", "application/sdp")],
        )
        self.stats["options_sent"] += 1

        def done(txn: Transaction, response: Response | None, timer: str | None, t: float) -> None:
            if response is not None and response.status < 200:
                return
            if response is None:
                self.stats["options_failed"] += 1
            self._target_state(target, self.health.answered(target, response is not None))

        self._start_client(request, target, done, now)

    def _mark_target(self, target: SipTarget, up: bool) -> None:
        self._target_state(target, self.health.mark(target, up))

    def _target_state(self, target: SipTarget, overall: bool | None) -> None:
        """Tell the application when the trunk as a whole came up or went down."""
        if overall is None:
            return
        logger.info("SIP trunk: %s", "up" if overall else f"down ({target} failed)")
        self._out.append(TrunkStateChanged(overall))

    # receiving

    def _charge(self, source: SipTarget, now: float) -> Admission:
        admission = self.guard.charge(source.host, now)
        if admission is Admission.BLOCKED and self.guard.newly_blocked:
            self.stats["sources_blocked"] += 1
            logger.warning(
                "SIP: %s flooded us for %.1f s: blocked for %.0f s",
                source.host,
                self.settings.block_after,
                self.settings.block_seconds,
            )
        return admission

    def _datagram(self, data: bytes, source: SipTarget, now: float) -> None:
        host = source.host
        if self.guard.blocked(host, now):
            self.stats["requests_blocked"] += 1
            return
        self.stats["messages_received"] += 1
        admission = self._charge(source, now)
        if not data.strip(b"\r\n"):
            return  # keep-alive
        accepted = self.guard.accepted(host)
        if not accepted and is_response(data):
            self.stats["responses_dropped"] += 1  # unparsed: only requests may come
            return
        if admission is not Admission.ADMITTED:
            self._rate_limited(data, source, now)
            return
        try:
            message = parse_message(data, max_size=self.settings.max_message_bytes)
        except ParseError as exc:
            self._malformed(exc, source, now)
            return
        self._on_message(message, source, now)

    def _stream(self, item: Request | Response | ParseError, source: SipTarget, now: float) -> None:
        if self.guard.blocked(source.host, now):
            self.stats["requests_blocked"] += 1
            return
        self.stats["messages_received"] += 1
        admission = self._charge(source, now)
        if isinstance(item, Response) and not self.guard.accepted(source.host):
            self.stats["responses_dropped"] += 1
            return
        if admission is not Admission.ADMITTED:
            self._rate_limited(item, source, now)
            return
        if isinstance(item, ParseError):
            self._malformed(item, source, now)
            return
        self._on_message(item, source, now)

    def _rate_limited(
        self, data: bytes | Request | Response | ParseError, source: SipTarget, now: float
    ) -> None:
        """Over the source's rate: at most one 503 (Retry-After) a second to an
        accepted source's requests; everything else is dropped. Both are counted."""
        if isinstance(data, Response) or (isinstance(data, bytes) and is_response(data)):
            self.stats["responses_rate_limited"] += 1
            return
        self.stats["requests_rate_limited"] += 1
        if not self.guard.may_answer_503(source.host, now):
            return
        request: Request | Response | None
        if isinstance(data, bytes):
            try:
                request = parse_message(data, max_size=self.settings.max_message_bytes)
            except ParseError as exc:
                request = exc.partial if exc.answerable else None
        elif isinstance(data, ParseError):
            request = data.partial if data.answerable else None
        else:
            request = data
        if not isinstance(request, Request) or request.method == "ACK":
            return
        self._stateless(
            request, source, 503, headers=[("Retry-After", str(RATE_LIMIT_RETRY_AFTER))]
        )

    def _malformed(self, exc: ParseError, source: SipTarget, now: float) -> None:
        self.stats["messages_malformed"] += 1
        logger.debug("SIP: malformed message from %s: %s", source, exc.reason)
        if not exc.answerable:
            return
        assert isinstance(exc.partial, Request)
        if not self.guard.accepted(source.host):
            self.stats["requests_forbidden"] += 1
            self._stateless(exc.partial, source, 403)
            return
        warning = exc.reason.replace('"', "'")[:120]
        self._stateless(
            exc.partial, source, exc.status, headers=[("Warning", f'399 anruf "{warning}"')]
        )

    def _stateless(
        self,
        request: Request,
        source: SipTarget,
        status: int,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        try:
            peer = response_destination(request, source)
        except ParseError:
            return
        response = make_response(
            request,
            status,
            to_tag=_stateless_tag(request),
            headers=[*self._agent_header("Server"), *(headers or [])],
        )
        self._send(response, peer)

    def _on_message(self, message: Request | Response, source: SipTarget, now: float) -> None:
        if isinstance(message, Response):
            if not self.guard.accepted(source.host):
                self.stats["responses_dropped"] += 1
                return
            self._run(self.layer.receive_response(message, now), now)
            return
        try:
            stamp_received(message, source)
        except ParseError:
            return
        if not self.guard.accepted(source.host):
            self.stats["requests_forbidden"] += 1
            if message.method != "ACK":
                self._stateless(message, source, 403)
            return
        self._run(self.layer.receive_request(message, source, now), now)

    # the actions of the transaction layer

    def _run(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.message, action.peer)
            elif isinstance(action, Deliver):
                self._deliver(action, now)
            elif isinstance(action, Timeout):
                handler = self.handlers.get(action.transaction)
                if handler is not None:
                    handler(action.transaction, None, action.timer, now)
            elif isinstance(action, Terminated):
                self.handlers.pop(action.transaction, None)
                if isinstance(action.transaction, InviteServerTransaction):
                    self.incoming.pop(action.transaction, None)
            elif isinstance(action, Expired):
                self._expired(action, now)

    def _deliver(self, action: Deliver, now: float) -> None:
        txn, message = action.transaction, action.message
        if isinstance(message, Response):
            self.stats["responses_received"] += 1
            if txn is None:
                self._stray_response(message, now)
                return
            handler = self.handlers.get(txn)
            if handler is not None:
                handler(txn, message, None, now)
            return
        self.stats["requests_received"] += 1
        if txn is None or message.method == "ACK":
            # An ACK for a 2xx; RFC 6026 §8.4 passes one that matched the INVITE's
            # transaction in the Accepted state (same branch) up too.
            self._stray_request(message, now)
            return
        assert isinstance(txn, ServerTransaction)
        try:
            self._on_request(txn, message, now)
        except ParseError as exc:
            # A header the request needs turned out unparseable (Contact, Route …).
            if txn.state in (State.TRYING, State.PROCEEDING):
                warning = exc.reason.replace('"', "'")[:120]
                headers = [("Warning", f'399 anruf "{warning}"')]
                self._reply(txn, message, 400, now, headers=headers)

    def _expired(self, action: Expired, now: float) -> None:
        owner = action.owner
        if isinstance(owner, Later):
            owner.callback(now)
        elif isinstance(owner, AnswerRetransmission):
            call = self.retransmissions.pop(owner, None)
            if call is not None:
                call._no_ack(owner, now)

    def _send(self, message: Request | Response, peer: SipTarget) -> None:
        if self.started:
            self._out.append(Send(message, peer))

    def _event(self, call: Session, event: CallEvent) -> None:
        self._out.append(CallUpdate(call, event))

    def _reoffered(self, call: Session, offer: str) -> None:
        self._out.append(Reoffered(call, offer))

    # timers

    def _later(self, delay: float, callback: Callable[[float], None], now: float) -> Later:
        timer = Later(callback)
        at = now + delay
        timer.timers["later"] = at
        self.layer.wheel.track([StartTimer(timer, "later", at)])
        return timer

    def _track_retransmission(
        self, retransmission: AnswerRetransmission, call: Session, now: float
    ) -> None:
        self.retransmissions[retransmission] = call
        self._run(self.layer.wheel.track(retransmission.start(now)), now)

    def _untrack_retransmission(self, retransmission: AnswerRetransmission) -> None:
        self.retransmissions.pop(retransmission, None)

    def _abandon(self, txn: Transaction) -> None:
        self.layer.abandon(txn)
        self.handlers.pop(txn, None)

    # building blocks for sessions

    def _agent_header(self, name: str) -> list[tuple[str, str]]:
        """Server or User-Agent, when the settings name one."""
        return [(name, self.settings.user_agent)] if self.settings.user_agent else []

    def _via(self, transport: str) -> Via:
        return Via(
            transport.upper(),
            uri_host(self.settings.listen_host),
            self.local_port,
            (("branch", new_branch()), ("rport", None)),
        )

    def _contact(self, user: str, transport: str) -> Address:
        params: tuple[tuple[str, str | None], ...] = (
            (("transport", "tcp"),) if transport == "tcp" else ()
        )
        uri = URI("sip", user, uri_host(self.settings.listen_host), self.local_port, params)
        return Address(uri)

    def _contact_headers(self, user: str, transport: str) -> list[tuple[str, str]]:
        return [
            ("Contact", str(self._contact(user, transport))),
            ("Allow", ALLOW),
            ("Supported", SUPPORTED),
        ]

    def _capabilities(self) -> list[tuple[str, str]]:
        """What a 200 to OPTIONS lists (RFC 3261 §11.2)."""
        return [
            ("Allow", ALLOW),
            ("Accept", "application/sdp"),
            ("Supported", SUPPORTED),
            *self._agent_header("Server"),
        ]

    def _next_hop(self, uri: URI, default: SipTarget) -> SipTarget:
        """Where a request to ``uri`` goes: its host if an IP literal on one of our
        transports (no DNS: RFC 3263 is left out), else ``default``."""
        host = uri.host.strip("[]")
        transport = (uri.param("transport") or default.transport).lower()
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return default
        if transport not in self.settings.transports:
            return default
        return SipTarget(transport, host, uri.port or 5060)

    def _start_client(
        self, request: Request, peer: SipTarget, handler: ClientHandler, now: float
    ) -> Transaction:
        txn, actions = self.layer.send_request(request, peer, now)
        self.handlers[txn] = handler
        self._run(actions, now)
        return txn

    def _respond(self, txn: ServerTransaction, response: Response, now: float) -> None:
        self._run(self.layer.respond(txn, response, now), now)

    def _reply(
        self,
        txn: ServerTransaction,
        request: Request,
        status: int,
        now: float,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        tag = new_tag() if status > 100 and not request.to_addr.tag else None
        response = make_response(
            request,
            status,
            to_tag=tag,
            headers=[*self._agent_header("Server"), *(headers or [])],
        )
        self._respond(txn, response, now)

    def _not_allowed(self, txn: ServerTransaction, request: Request, now: float) -> None:
        status = 405 if request.method in KNOWN_METHODS else 501
        self._reply(txn, request, status, now, headers=[("Allow", ALLOW)])

    def _credentials(self, response: Response, method: str, uri: str) -> tuple[str, str] | None:
        """Authorization (401) or Proxy-Authorization (407) answering ``response``."""
        s = self.settings
        if not s.username:
            return None
        name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenge = choose_challenge(response.headers.get_all(name))
        if challenge is None:
            return None
        if len(self._nonce_counts) > MAX_TRACKED_SOURCES:
            self._nonce_counts.clear()
        nc = self._nonce_counts.get(challenge.nonce, 0) + 1
        self._nonce_counts[challenge.nonce] = nc
        creds = authorization(
            challenge,
            method=method,
            uri=uri,
            username=s.username,
            password=s.password,
            cnonce=secrets.token_hex(8),
            nc=nc,
        )
        self.stats["challenges_answered"] += 1
        return ("Authorization" if response.status == 401 else "Proxy-Authorization", str(creds))

    def _send_with_auth(
        self, request: Request, peer: SipTarget, *, dialog: Dialog | None, now: float
    ) -> None:
        """A non-INVITE request that is sent once more with credentials if challenged."""

        def done(txn: Transaction, response: Response | None, timer: str | None, t: float) -> None:
            if response is None or response.status not in (401, 407):
                return
            auth = self._credentials(response, request.method, str(request.uri))
            if auth is None:
                return
            retry = Request(request.method, request.uri, request.headers.copy(), request.body)
            retry.headers.replace_first("Via", str(self._via(peer.transport)))
            seq = request.cseq.seq + 1
            if dialog is not None:
                dialog.local_seq += 1
                seq = dialog.local_seq
            retry.headers.set("CSeq", f"{seq} {request.method}")
            retry.headers.add(*auth)
            self._start_client(retry, peer, _ignore, t)

        self._start_client(request, peer, done, now)

    def _call_ended(self, call: Session, now: float) -> None:
        self.active.discard(call)
        # Keep the call findable while retransmissions may still arrive.
        key = (call.call_id, call.local_tag)
        linger = self.settings.timers.timeout + self.settings.timers.t4
        if self.started:
            self._later(linger, lambda t: self._forget(key), now)

    def _forget(self, key: tuple[str, str]) -> None:
        self.calls.pop(key, None)

    # requests for the TU

    def _stray_request(self, request: Request, now: float) -> None:
        """An ACK no transaction matched: the ACK for a 2xx (§13.3.1.4)."""
        if request.method != "ACK":
            return
        call = self.calls.get((request.call_id, request.to_addr.tag or ""))
        if call is not None and call.matches(request):
            call._on_ack(request, now)

    def _stray_response(self, response: Response, now: float) -> None:
        """A response no transaction matched: a 2xx retransmission after Timer M."""
        if not 200 <= response.status < 300 or response.cseq.method != "INVITE":
            return
        call = self.calls.get((response.call_id, response.from_addr.tag or ""))
        if isinstance(call, OutboundSession):
            call.on_2xx(response, now)

    def _on_request(self, txn: ServerTransaction, request: Request, now: float) -> None:
        method = request.method
        max_forwards = request.headers.get("Max-Forwards")
        if max_forwards is not None and int(max_forwards) == 0 and method != "OPTIONS":
            self._reply(txn, request, 483, now)
            return
        if method == "CANCEL":
            self._on_cancel(txn, request, now)
            return
        required = [r for r in request.headers.get_all("Require") if r]
        if required:
            self._reply(txn, request, 420, now, headers=[("Unsupported", ", ".join(required))])
            return
        to_tag = request.to_addr.tag
        if to_tag:
            # §12.2.2: the dialog is Call-ID, our tag (To) and the remote tag (From).
            call = self.calls.get((request.call_id, to_tag))
            if call is None or not call.matches(request):
                if method == "OPTIONS":
                    self._reply(txn, request, 200, now, headers=self._capabilities())
                else:
                    self._reply(txn, request, 481, now)
                return
            call._on_request(txn, request, now)
            return
        if method == "INVITE":
            assert isinstance(txn, InviteServerTransaction)
            self._on_invite(txn, request, now)
        elif method == "OPTIONS":
            self._reply(txn, request, 200, now, headers=self._capabilities())
        elif method == "BYE":
            self._reply(txn, request, 481, now)
        else:
            self._not_allowed(txn, request, now)

    def _on_cancel(self, txn: ServerTransaction, cancel: Request, now: float) -> None:
        invite_txn = self.layer.find_invite(cancel)
        if invite_txn is None:
            self._reply(txn, cancel, 481, now)
            return
        self._reply(txn, cancel, 200, now)
        call = self.incoming.get(invite_txn)
        if call is not None:
            call.cancelled(cancel, now)
        elif not invite_txn.final_sent:
            self._reply(invite_txn, invite_txn.request, 487, now)

    def _on_invite(self, txn: InviteServerTransaction, request: Request, now: float) -> None:
        s = self.settings
        if self._challenger is not None and not self._authenticated(txn, request, now):
            return
        kind = request.content_type
        if request.body and kind != "application/sdp":
            self._reply(txn, request, 415, now, headers=[("Accept", "application/sdp")])
            return
        if not accepts(request, "application/sdp"):
            # §21.4.7: our answer would carry SDP, a body the caller does not accept.
            warning = '399 anruf "application/sdp is not in Accept"'
            self._reply(txn, request, 406, now, headers=[("Warning", warning)])
            return
        offer = sdp_of(request)
        if offer is None:
            # A delayed offer (INVITE without SDP) is not supported.
            warning = '399 anruf "an SDP offer is required"'
            self._reply(txn, request, 488, now, headers=[("Warning", warning)])
            return
        # An RFC 2543 element (no magic cookie in the branch) may leave out Contact and
        # the From tag (RFC 4475 §3.4.1): the dialog's remote target is then its From
        # URI and its remote tag null (§12.1.1). RFC 3261 makes both mandatory.
        rfc3261 = request.top_via.rfc3261
        if request.contact is None and rfc3261:
            warning = '399 anruf "missing Contact"'
            self._reply(txn, request, 400, now, headers=[("Warning", warning)])
            return
        if not request.from_addr.tag and rfc3261:
            # RFC 3261 §8.1.1.3: a request of an RFC 3261 UAC has one.
            warning = '399 anruf "missing From tag"'
            self._reply(txn, request, 400, now, headers=[("Warning", warning)])
            return
        if len(self.active) >= s.max_concurrent_calls:
            self.stats["invites_refused"] += 1
            self._reply(txn, request, 503, now)
            return
        if not self._cps.allow(now):
            self.stats["invites_refused"] += 1
            self._reply(txn, request, 503, now, headers=[("Retry-After", "1")])
            return
        to_number = number_of(request.uri) or number_of(request.to_addr.uri)
        if not to_number:
            self._reply(txn, request, 404, now)
            return
        call = IncomingSession(
            self,
            txn,
            request,
            from_number=number_of(request.from_addr.uri),
            to_number=to_number,
            offer_sdp=offer,
        )
        self.calls[(call.call_id, call.local_tag)] = call
        self.incoming[txn] = call
        self.active.add(call)
        self.stats["calls_incoming"] += 1
        self._out.append(CallOffered(call))

    def _authenticated(self, txn: InviteServerTransaction, request: Request, now: float) -> bool:
        """Digest (RFC 3261 §22, RFC 7616): True when the credentials are right; else
        the request is answered (401 challenge, 403) here. A source that keeps
        sending wrong ones for a username is locked out (``AuthGuard``)."""
        assert self._challenger is not None
        s = self.settings
        source = txn.peer.host
        values = request.headers.get_all("Authorization")
        usernames = [_username(value) for value in values]
        if any(self.auth_guard.locked_out(source, name, now) for name in usernames):
            self.stats["auth_locked_out"] += 1
            self._reply(txn, request, 403, now)
            return False
        stale = False
        for value, username in zip(values, usernames, strict=True):
            verdict = self._challenger.verify(
                value,
                method=request.method,
                request_uri=request.uri,
                username=s.inbound_username,
                password=s.inbound_password,
                now=now,
            )
            if verdict is Verdict.OK:
                self.auth_guard.succeeded(source, username)
                return True
            if verdict is Verdict.STALE:
                stale = True
        if values and not stale:
            self.stats["auth_failures"] += 1
            if self.auth_guard.failed(source, usernames[0], now):
                self.stats["auth_lockouts"] += 1
                logger.warning(
                    "SIP: %d wrong digest responses from %s for %r: locked out for %.0f s",
                    s.auth_max_failures,
                    source,
                    usernames[0],
                    s.auth_lockout_seconds,
                )
            self._reply(txn, request, 403, now)
            return False
        self.stats["challenges_sent"] += 1
        challenges = self._challenger.challenges(now, stale=stale)
        headers = [("WWW-Authenticate", str(c)) for c in challenges]
        self._reply(txn, request, 401, now, headers=headers)
        return False


def _username(value: str) -> str:
    try:
        return Credentials.parse(value).username
    except DigestError:
        return ""


__all__ = [
    "ALLOW",
    "KNOWN_METHODS",
    "RATE_LIMIT_RETRY_AFTER",
    "SUPPORTED",
    "CallOffered",
    "CallUpdate",
    "Later",
    "Reoffered",
    "TrunkStateChanged",
    "TrunkUnavailable",
    "UaAction",
    "UserAgent",
]
