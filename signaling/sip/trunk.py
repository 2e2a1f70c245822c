"""The user agent for the operator's SIP trunk: ``SipTrunk`` and its calls. asyncio.

``SipTrunk`` owns the transport (UDP and TCP on one address), the transaction
layer and its timer wheel (one ``loop.call_later`` handle for the earliest timer
of every transaction, 2xx retransmission and TU timer), the calls in both
directions and the OPTIONS keep-alive towards the SBC. See docs/sip.md for the
behaviour on the wire; the call API in short:

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

import abc
import asyncio
import hashlib
import ipaddress
import logging
import math
import re
import secrets
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from signaling.ratelimit import FloodGuard, TokenBucket
from signaling.ratelimit import Verdict as RateVerdict
from signaling.sip.dialog import AnswerRetransmission, Dialog, DialogState
from signaling.sip.digest import (
    DigestChallenger,
    Verdict,
    authorization,
    choose_challenge,
    supported,
)
from signaling.sip.message import (
    URI,
    Address,
    ParseError,
    Request,
    Response,
    SipTarget,
    Via,
    make_request,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    response_destination,
    stamp_received,
)
from signaling.sip.transaction import (
    DEFAULT_TIMERS,
    Action,
    Deliver,
    Expired,
    InviteServerTransaction,
    NonInviteServerTransaction,
    Send,
    StartTimer,
    State,
    Terminated,
    Timeout,
    TimerValues,
    Transaction,
    TransactionLayer,
    make_cancel,
)
from signaling.sip.transport import SipTransport

if TYPE_CHECKING:
    from signaling.config import Config

logger = logging.getLogger("anruf.sip")

#: The methods we handle; others known to SIP get 405 with this list, unknown ones 501.
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
KNOWN_METHODS = frozenset(
    {
        *("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE"),
        *("NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"),
    }
)
#: Retry-After of the 503 a source gets when it exceeds its request rate.
RATE_LIMIT_RETRY_AFTER = 5
_NUMBER = re.compile(r"[+0-9A-Za-z*#._-]+\Z")
_PHONE = re.compile(r"\+?[0-9*#]+\Z")
_MAX_TRACKED_SOURCES = 4096


# Events and errors --------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """180 Ringing or 183 Session Progress; ``sdp`` is the answer for early media."""

    status: int
    sdp: str | None = None


@dataclass(frozen=True)
class Answered:
    """A 2xx to our INVITE (ACKed already); ``sdp`` is the answer."""

    sdp: str


@dataclass(frozen=True)
class Ended:
    status: int | None
    #: bye, cancel, rejected, timeout, transport or shutdown.
    reason: str
    by_remote: bool
    detail: str = ""


CallEvent = Progress | Answered | Ended


class TrunkUnavailable(Exception):
    """invite() refused: the trunk is down, not started, or over a limit."""


class CallError(RuntimeError):
    """A call method used in a state that does not allow it (answer twice …)."""


# Settings -----------------------------------------------------------------------------


class SettingsError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class TrunkSettings:
    """The trunk's settings; ``trunk_settings(config)`` builds them from Config."""

    listen_host: str = "127.0.0.1"
    #: 0 = any free port (UDP and TCP share it).
    listen_port: int = 5060
    transports: tuple[str, ...] = ("udp", "tcp")
    #: Where INVITE and OPTIONS go, in order of preference (the first one up).
    sbc: tuple[SipTarget, ...] = ()
    #: IPs or CIDRs allowed to send us requests; empty = the SBC hosts.
    accepted_sources: tuple[str, ...] = ()
    #: Host part of our From and To URIs, and the realm of our challenges.
    domain: str = "anruf.invalid"
    #: For the SBC's 401/407 challenges to our requests.
    username: str = ""
    password: str = ""
    #: When set, the SBC's INVITEs must carry digest credentials for these.
    inbound_username: str = ""
    inbound_password: str = ""
    #: Offered in this order (RFC 8760: the preferred first).
    inbound_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    max_calls_per_second: float = 10.0
    max_concurrent_calls: int = 100
    #: Seconds between OPTIONS to each SBC target; 0 = no keep-alive, always up.
    options_interval: float = 30.0
    max_message_bytes: int = 16384
    requests_per_second_per_source: float = 50.0
    #: A source over its request rate for this many seconds is blocked (everything
    #: it sends dropped unparsed) for ``block_seconds``; 0 = never. Accepted sources
    #: (the SBC) are only rate-limited, never blocked.
    block_after: float = 2.0
    block_seconds: float = 60.0
    timers: TimerValues = DEFAULT_TIMERS
    user_agent: str = "Anruf"
    #: Lifetime of our digest nonces (an older nonce gets a stale=true challenge).
    nonce_lifetime: float = 300.0

    def __post_init__(self) -> None:
        try:
            address = ipaddress.ip_address(self.listen_host)
        except ValueError:
            raise SettingsError(
                "listen_host", f"{self.listen_host!r} is not an IP address"
            ) from None
        if address.is_unspecified:
            raise SettingsError(
                "listen_host", "must be a concrete address (it goes into Via and Contact)"
            )
        if not 0 <= self.listen_port <= 65535:
            raise SettingsError("listen_port", f"{self.listen_port} is not a port")
        if not self.transports or any(t not in ("udp", "tcp") for t in self.transports):
            raise SettingsError("transports", f"{self.transports!r}: expected udp and/or tcp")
        if len(set(self.transports)) != len(self.transports):
            raise SettingsError("transports", f"{self.transports!r} repeats a transport")
        for target in self.sbc:
            try:
                ipaddress.ip_address(target.host)
            except ValueError:
                raise SettingsError("sbc", f"{target}: the host must be an IP address") from None
            if target.transport not in self.transports:
                raise SettingsError("sbc", f"{target}: transport {target.transport} is not enabled")
        for source in self.accepted_sources:
            try:
                ipaddress.ip_network(source, strict=False)
            except ValueError:
                raise SettingsError(
                    "accepted_sources", f"{source!r} is not an IP or CIDR"
                ) from None
        if not self.domain or any(c in self.domain for c in " <>;@\"'"):
            raise SettingsError("domain", f"{self.domain!r} is not a host name")
        if bool(self.username) != bool(self.password):
            raise SettingsError("username", "username and password go together")
        if bool(self.inbound_username) != bool(self.inbound_password):
            raise SettingsError("inbound_username", "inbound username and password go together")
        if not self.inbound_algorithms or not all(supported(a) for a in self.inbound_algorithms):
            raise SettingsError(
                "inbound_algorithms", f"{self.inbound_algorithms!r}: use SHA-256, MD5"
            )
        positive = {
            "max_calls_per_second": self.max_calls_per_second,
            "max_concurrent_calls": self.max_concurrent_calls,
            "requests_per_second_per_source": self.requests_per_second_per_source,
        }
        for name, value in positive.items():
            if not value > 0 or math.isinf(value):
                raise SettingsError(name, f"{value} must be a positive number")
        if self.block_after < 0 or math.isinf(self.block_after):
            raise SettingsError("block_after", f"{self.block_after} must be >= 0")
        if not self.block_seconds > 0 or math.isinf(self.block_seconds):
            raise SettingsError("block_seconds", f"{self.block_seconds} must be a positive number")
        if self.options_interval < 0 or math.isinf(self.options_interval):
            raise SettingsError("options_interval", f"{self.options_interval} must be >= 0")
        if not 1024 <= self.max_message_bytes <= 65535:
            raise SettingsError("max_message_bytes", f"{self.max_message_bytes}: 1024 to 65535")

    @property
    def source_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        sources = self.accepted_sources or tuple(t.host for t in self.sbc)
        return tuple(ipaddress.ip_network(s, strict=False) for s in sources)


_CONFIG_NAMES = {
    "listen_host": "sip_listen",
    "listen_port": "sip_listen",
    "transports": "sip_transports",
    "sbc": "sip_sbc",
    "accepted_sources": "sip_accepted_sources",
    "domain": "sip_domain",
    "username": "sip_username",
    "inbound_username": "sip_inbound_username",
    "inbound_algorithms": "sip_inbound_algorithms",
    "max_calls_per_second": "sip_max_calls_per_second",
    "max_concurrent_calls": "sip_max_concurrent_calls",
    "options_interval": "sip_options_interval",
    "max_message_bytes": "sip_max_message_bytes",
    "requests_per_second_per_source": "sip_requests_per_second",
    "block_after": "sip_block_after",
    "block_seconds": "sip_block_seconds",
}


def trunk_settings(config: Config) -> TrunkSettings | None:
    """The trunk's settings from ``config``; None when ``sip_listen`` is empty.
    Raises ConfigError naming the setting for a bad value."""
    from signaling.config import ConfigError

    if not config.sip_listen:
        return None
    listen = config.sip_listen.strip()
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", listen)
    if match is None:
        raise ConfigError(f"setting sip_listen: {listen!r} is not HOST:PORT")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    targets = []
    for text in config.sip_sbc:
        try:
            targets.append(SipTarget.parse(text))
        except ValueError as exc:
            raise ConfigError(f"setting sip_sbc: {exc}") from None
    try:
        return TrunkSettings(
            listen_host=host,
            listen_port=port,
            transports=tuple(t.lower() for t in config.sip_transports),
            sbc=tuple(targets),
            accepted_sources=tuple(config.sip_accepted_sources),
            domain=config.sip_domain,
            username=config.sip_username,
            password=config.sip_password,
            inbound_username=config.sip_inbound_username,
            inbound_password=config.sip_inbound_password,
            inbound_algorithms=tuple(config.sip_inbound_algorithms),
            max_calls_per_second=config.sip_max_calls_per_second,
            max_concurrent_calls=config.sip_max_concurrent_calls,
            options_interval=config.sip_options_interval,
            max_message_bytes=config.sip_max_message_bytes,
            requests_per_second_per_source=config.sip_requests_per_second,
            block_after=config.sip_block_after,
            block_seconds=config.sip_block_seconds,
        )
    except SettingsError as exc:
        name = _CONFIG_NAMES.get(exc.field, exc.field)
        raise ConfigError(f"setting {name}: {exc.message}") from None


# Helpers ------------------------------------------------------------------------------


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _sdp(message: Request | Response) -> str | None:
    if not message.body:
        return None
    kind = message.content_type
    if kind is not None and kind != "application/sdp":
        return None
    return message.body.decode("utf-8", "replace")


def reason_header(text: str, cause: int = 16) -> str:
    """RFC 3326 Reason for our BYE and CANCEL (Q.850 16: normal call clearing)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'Q.850;cause={cause};text="{escaped}"'


def reason_text(message: Request | Response) -> str:
    """The text of the first Reason header (RFC 3326), or its protocol and cause."""
    for value in message.headers.get_all("Reason"):
        found = re.search(r'text\s*=\s*"((?:[^"\\]|\\.)*)"', value)
        if found:
            return re.sub(r"\\(.)", r"\1", found.group(1))
        return value.strip()
    return ""


def _number(uri: URI) -> str:
    user = (uri.user or "").split(";")[0]
    return urllib.parse.unquote(user)


def _stateless_tag(request: Request) -> str:
    """The same To tag for every retransmission of a request we answer statelessly."""
    h = request.headers
    key = f"{h.get('Call-ID')}|{h.get('Via')}|{h.get('CSeq')}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class _Later:
    """A TU timer on the wheel: ``callback`` runs when it fires."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.timers: dict[str, float] = {}

    def fire(self, name: str, now: float) -> list[Action]:
        if self.timers.pop(name, None) is None:
            return []
        return [Expired(self, name)]

    def cancel(self) -> None:
        self.timers.clear()


ClientHandler = Callable[[Transaction, Response | None, str | None], None]


# Calls --------------------------------------------------------------------------------


class _Call(abc.ABC):
    """What both directions share: dialog, events, in-dialog requests, re-INVITEs."""

    def __init__(self, trunk: SipTrunk, call_id: str, local_tag: str, peer: SipTarget) -> None:
        self.trunk = trunk
        self.call_id = call_id
        self.local_tag = local_tag
        #: Where the call's first request went or came from (in-dialog fallback).
        self.peer = peer
        self.dialog: Dialog | None = None
        self.state = "new"
        self.ended = False
        self.local_sdp = ""
        self.on_reoffer: Callable[[str], Awaitable[str]] | None = None
        self._on_event: Callable[[CallEvent], None] | None = None
        self._pending_events: list[CallEvent] = []
        self._retransmissions: list[AnswerRetransmission] = []
        self._reinvite: InviteServerTransaction | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.call_id} {self.state}>"

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

    def _end(self, status: int | None, reason: str, by_remote: bool, detail: str = "") -> None:
        if self.ended:
            return
        self.ended = True
        self.state = "ended"
        if self.dialog is not None:
            self.dialog.state = DialogState.TERMINATED
        self.trunk._call_ended(self)
        self._emit(Ended(status, reason, by_remote, detail))

    @property
    def _transport(self) -> str:
        return self.peer.transport

    def _next_hop(self) -> SipTarget:
        assert self.dialog is not None
        return self.trunk._next_hop(self.dialog.next_hop, self.peer)

    def _send_bye(self, reason: str) -> None:
        if self.dialog is None:
            return
        headers = [("User-Agent", self.trunk.settings.user_agent)]
        if reason:
            headers.append(("Reason", reason_header(reason)))
        bye = self.dialog.create_request(
            "BYE", via=self.trunk._via(self._transport), headers=headers
        )
        self.trunk._send_with_auth(bye, self._next_hop(), dialog=self.dialog)

    # requests inside the dialog

    def _on_request(
        self, txn: NonInviteServerTransaction | InviteServerTransaction, request: Request
    ) -> None:
        trunk = self.trunk
        if self.dialog is None:
            trunk._reply(txn, request, 481)
            return
        if not self.dialog.receive_request(request):
            trunk._reply(txn, request, 500, headers=[("Retry-After", "1")])
            return
        method = request.method
        if method == "BYE":
            trunk._reply(txn, request, 200)
            self._remote_bye(request)
        elif method == "INVITE":
            assert isinstance(txn, InviteServerTransaction)
            self._on_reinvite(txn, request)
        elif method == "OPTIONS":
            trunk._reply(txn, request, 200, headers=trunk._capabilities())
        else:
            trunk._not_allowed(txn, request)

    def _remote_bye(self, request: Request) -> None:
        self._end(None, "bye", True, reason_text(request))

    def _on_reinvite(self, txn: InviteServerTransaction, request: Request) -> None:
        trunk = self.trunk
        if self.ended:
            trunk._reply(txn, request, 481)
            return
        if self.state != "answered" or self._reinvite is not None:
            # §14.2: an INVITE before our final response to the previous one.
            trunk._reply(
                txn, request, 500, headers=[("Retry-After", str(secrets.randbelow(10) + 1))]
            )
            return
        offer = _sdp(request)
        if offer is None:
            # An offerless re-INVITE: our current SDP is the offer, the ACK the answer.
            self._answer_reinvite(txn, request, self.local_sdp)
            return
        if self.on_reoffer is None:
            trunk._reply(txn, request, 488)
            return
        self._reinvite = txn
        trunk._spawn(self._reoffer(txn, request, offer, self.on_reoffer))

    async def _reoffer(
        self,
        txn: InviteServerTransaction,
        request: Request,
        offer: str,
        handler: Callable[[str], Awaitable[str]],
    ) -> None:
        try:
            answer = await handler(offer)
        except Exception:
            logger.exception("SIP call %s: on_reoffer failed", self.call_id)
            self._reinvite = None
            if not txn.final_sent:
                self.trunk._reply(txn, request, 488)
            return
        self._reinvite = None
        if txn.final_sent:
            return
        if self.ended:
            self.trunk._reply(txn, request, 487)
            return
        self._answer_reinvite(txn, request, answer)

    def _answer_reinvite(self, txn: InviteServerTransaction, request: Request, sdp: str) -> None:
        self.local_sdp = sdp
        response = make_response(
            request,
            200,
            headers=[*self.trunk._contact_headers(self._contact_user(), self._transport)],
            body=sdp.encode(),
        )
        self.trunk._respond(txn, response)
        self._retransmit(response, txn.peer)

    @abc.abstractmethod
    def _contact_user(self) -> str: ...

    def _retransmit(self, response: Response, peer: SipTarget) -> None:
        retransmission = AnswerRetransmission(response, peer, self.trunk.settings.timers)
        self._retransmissions.append(retransmission)
        self.trunk._track_retransmission(retransmission, self)

    def _on_ack(self, ack: Request) -> None:
        seq = ack.cseq.seq
        for retransmission in list(self._retransmissions):
            if retransmission.response.cseq.seq == seq:
                retransmission.ack()
                self._retransmissions.remove(retransmission)
                self.trunk._untrack_retransmission(retransmission)
                self._acked(seq)

    def _acked(self, seq: int) -> None:  # noqa: B027 - a hook; only incoming calls use it
        """The ACK for our 2xx with CSeq ``seq`` arrived."""

    def _no_ack(self, retransmission: AnswerRetransmission) -> None:
        """§13.3.1.4: no ACK for our 2xx within 64*T1: end the dialog with BYE."""
        if retransmission in self._retransmissions:
            self._retransmissions.remove(retransmission)
        self.trunk.stats["no_ack"] += 1
        if not self.ended:
            self._send_bye("no ACK")
            self._end(None, "timeout", False, "no ACK")

    @abc.abstractmethod
    def _shutdown(self) -> None: ...


class OutboundCall(_Call):
    """Our INVITE to the SBC. ``cancel()`` and ``bye()`` both end the call in any
    state: CANCEL before the final response, BYE after a 2xx."""

    def __init__(
        self,
        trunk: SipTrunk,
        target: SipTarget,
        *,
        to_number: str,
        from_number: str,
        sdp: str,
        on_event: Callable[[CallEvent], None],
    ) -> None:
        super().__init__(trunk, new_call_id(), new_tag(), target)
        self.to_number = to_number
        self.from_number = from_number
        self.local_sdp = sdp
        self.state = "calling"
        self._on_event = on_event
        self.invite_request: Request | None = None
        self._invite_txn: Transaction | None = None
        self._cseq = 0
        self._provisional = False
        self._cancel_reason: str | None = None
        self._cancel_sent = False
        self._auth_attempts = 0
        self._ack: Request | None = None
        self._ack_peer: SipTarget | None = None
        self._cancel_timer: _Later | None = None

    def _contact_user(self) -> str:
        return self.from_number

    def _send_invite(self, auth: tuple[str, str] | None = None) -> None:
        trunk = self.trunk
        settings = trunk.settings
        target = self.peer
        self._cseq += 1
        phone = (("user", "phone"),) if _PHONE.match(self.to_number) else ()
        transport = (("transport", "tcp"),) if target.transport == "tcp" else ()
        uri = URI("sip", self.to_number, _uri_host(target.host), target.port, phone + transport)
        headers = [("User-Agent", settings.user_agent), ("Allow", ALLOW)]
        if auth is not None:
            headers.append(auth)
        request = make_request(
            "INVITE",
            uri,
            via=trunk._via(target.transport),
            from_addr=Address(URI("sip", self.from_number, settings.domain)).with_tag(
                self.local_tag
            ),
            to_addr=Address(URI("sip", self.to_number, settings.domain, None, phone)),
            call_id=self.call_id,
            cseq=self._cseq,
            contact=trunk._contact(self.from_number, target.transport),
            headers=headers,
            body=self.local_sdp.encode(),
            content_type="application/sdp",
        )
        self.invite_request = request
        self._invite_txn = trunk._start_client(request, target, self._on_invite_response)

    def _on_invite_response(
        self, txn: Transaction, response: Response | None, timer: str | None
    ) -> None:
        if txn is not self._invite_txn:
            if response is not None and 200 <= response.status < 300:
                self._on_2xx(response)
            return
        trunk = self.trunk
        if response is None:
            if timer == "B":
                trunk._mark_target(self.peer, False)
                self._end(None, "timeout", False, "no response to INVITE")
            else:
                self._end(None, "transport", False, "transport failed")
            return
        trunk._mark_target(self.peer, True)
        status = response.status
        if status < 200:
            self._provisional = True
            if status > 100 and response.to_addr.tag and self.dialog is None:
                assert self.invite_request is not None
                self.dialog = Dialog.as_uac(self.invite_request, response)
            if self._cancel_reason is not None:
                self._send_cancel()
            elif status > 100 and not self.ended:
                self.state = "early"
                self._emit(Progress(status, _sdp(response)))
            return
        if status < 300:
            self._on_2xx(response)
            return
        if self._cancel_timer is not None:
            self._cancel_timer.cancel()
        if status in (401, 407) and self._cancel_reason is None and not self.ended:
            challenge_header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            challenge = choose_challenge(response.headers.get_all(challenge_header))
            if (
                challenge is not None
                and (self._auth_attempts == 0 or challenge.stale)
                and self._auth_attempts < 3
            ):
                auth = trunk._credentials(response, "INVITE", self._request_uri())
                if auth is not None:
                    self._auth_attempts += 1
                    self._provisional = False
                    self._send_invite(auth)
                    return
        if self._cancel_reason is not None and status == 487:
            self._end(487, "cancel", False, self._cancel_reason)
        else:
            self._end(status, "rejected", True, reason_text(response) or response.reason)

    def _request_uri(self) -> str:
        assert self.invite_request is not None
        return str(self.invite_request.uri)

    def _on_2xx(self, response: Response) -> None:
        trunk = self.trunk
        assert self.invite_request is not None
        tag = response.to_addr.tag
        if self._ack is not None and self._ack_peer is not None and self.dialog is not None:
            if tag == self.dialog.remote_tag:
                trunk._send(self._ack, self._ack_peer)  # a retransmitted 2xx
            elif tag:
                # A 2xx from another fork: ACK it and end that dialog at once.
                other = Dialog.as_uac(self.invite_request, response)
                peer = trunk._next_hop(other.next_hop, self.peer)
                trunk._send(
                    other.create_ack(self.invite_request.cseq.seq, via=trunk._via(peer.transport)),
                    peer,
                )
                trunk._send_with_auth(
                    other.create_request("BYE", via=trunk._via(peer.transport)), peer, dialog=other
                )
            return
        if not tag:
            logger.warning("SIP call %s: 2xx without a To tag", self.call_id)
            return
        if self.dialog is None or self.dialog.remote_tag != tag:
            self.dialog = Dialog.as_uac(self.invite_request, response)
        else:
            self.dialog.confirm(response)
        peer = self._next_hop()
        self._ack = self.dialog.create_ack(
            self.invite_request.cseq.seq, via=trunk._via(peer.transport)
        )
        self._ack_peer = peer
        trunk._send(self._ack, peer)
        if self._cancel_timer is not None:
            self._cancel_timer.cancel()
        if self._cancel_reason is not None or self.ended:
            # Our CANCEL crossed the 2xx: the call was answered, so hang up.
            self._send_bye(self._cancel_reason or "")
            self._end(None, "cancel", False, self._cancel_reason or "")
            return
        self.state = "answered"
        self._emit(Answered(_sdp(response) or ""))

    def _send_cancel(self) -> None:
        if self._cancel_sent or self.invite_request is None:
            return
        self._cancel_sent = True
        headers = [("User-Agent", self.trunk.settings.user_agent)]
        if self._cancel_reason:
            headers.append(("Reason", reason_header(self._cancel_reason)))
        cancel = make_cancel(self.invite_request, headers)
        self.trunk._start_client(cancel, self.peer, lambda txn, response, timer: None)
        # §9.1: no final response to the INVITE within 64*T1: consider it cancelled.
        self._cancel_timer = self.trunk._later(
            self.trunk.settings.timers.timeout, self._cancel_expired
        )

    def _cancel_expired(self) -> None:
        # The INVITE transaction, stuck in Proceeding, ends with the call: else it
        # and its handler would be kept for as long as the process runs.
        if self._invite_txn is not None:
            self.trunk._run(self.trunk._layer.abandon(self._invite_txn))
        self._end(487, "cancel", False, self._cancel_reason or "")

    async def cancel(self, reason: str = "") -> None:
        """CANCEL (with an RFC 3326 Reason when ``reason``) before the final response;
        sent once a provisional response came (§9.1). After a 2xx: BYE."""
        if self.ended or self._cancel_reason is not None:
            return
        if self.state == "answered":
            await self.bye(reason)
            return
        self._cancel_reason = reason
        if self._provisional:
            self._send_cancel()

    async def bye(self, reason: str = "") -> None:
        """BYE after the 2xx (before it: CANCEL). ``Ended`` follows at once."""
        if self.ended:
            return
        if self.state != "answered":
            await self.cancel(reason)
            return
        self._send_bye(reason)
        self._end(None, "bye", False, reason)

    def _shutdown(self) -> None:
        if self.state == "answered":
            self._send_bye("shutdown")
        elif self._provisional:
            self._cancel_reason = "shutdown"
            self._send_cancel()
        self._end(None, "shutdown", False)


class IncomingCall(_Call):
    """The SBC's INVITE, after the source check, authentication and the limits; 100
    Trying has been sent. ``request`` is the INVITE (for headers like
    P-Asserted-Identity); ``on_event`` gets ``Ended`` (events before it is set are
    kept and delivered when it is)."""

    def __init__(
        self,
        trunk: SipTrunk,
        txn: InviteServerTransaction,
        request: Request,
        *,
        from_number: str,
        to_number: str,
        offer_sdp: str,
    ) -> None:
        super().__init__(trunk, request.call_id, new_tag(), txn.peer)
        self.request = request
        self.from_number = from_number
        self.to_number = to_number
        self.offer_sdp = offer_sdp
        self.state = "ringing"
        self._txn = txn
        self.dialog = Dialog.as_uas(request, self.local_tag)
        self._answer_acked = False
        self._bye_pending: str | None = None

    def _contact_user(self) -> str:
        return self.to_number

    def _response(self, status: int, reason: str | None = None, sdp: str | None = None) -> Response:
        headers = [("Server", self.trunk.settings.user_agent)]
        if 100 < status < 300:
            headers += self.trunk._contact_headers(self.to_number, self._transport)
        return make_response(
            self.request,
            status,
            reason,
            to_tag=self.local_tag,
            headers=headers,
            body=sdp.encode() if sdp else b"",
        )

    async def progress(self, status: int = 180, sdp: str | None = None) -> None:
        """180 Ringing, or 183 Session Progress with early-media SDP."""
        if self.ended:
            return
        if self.state != "ringing":
            raise CallError(f"progress() in state {self.state}")
        if not 101 <= status <= 199:
            raise ValueError(f"{status} is not a provisional status")
        if sdp:
            self.local_sdp = sdp
        self.trunk._respond(self._txn, self._response(status, sdp=sdp))

    async def answer(self, sdp: str) -> None:
        """200 OK with ``sdp``, sent again (T1 doubling to T2) until the ACK."""
        if self.ended:
            return
        if self.state != "ringing":
            raise CallError(f"answer() in state {self.state}")
        self.local_sdp = sdp
        response = self._response(200, sdp=sdp)
        self.trunk._respond(self._txn, response)
        assert self.dialog is not None
        self.dialog.confirm()
        self.state = "answered"
        self._retransmit(response, self._txn.peer)

    async def reject(
        self, status: int, reason: str = "", *, retry_after: int | None = None
    ) -> None:
        """A final failure response (404, 480, 486, 503, 603 …); ``reason`` is its
        reason phrase when given; ``retry_after`` adds a Retry-After header (seconds)."""
        if self.ended:
            return
        if self.state != "ringing":
            raise CallError(f"reject() in state {self.state}: use bye()")
        if not 300 <= status <= 699:
            raise ValueError(f"{status} is not a failure status")
        response = self._response(status, reason or None)
        if retry_after is not None:
            response.headers.add("Retry-After", str(max(0, int(retry_after))))
        self.trunk._respond(self._txn, response)
        self._end(status, "rejected", False, reason)

    async def bye(self, reason: str = "") -> None:
        """BYE after the answer (sent once the ACK came, §15); before it: 480."""
        if self.ended:
            return
        if self.state == "ringing":
            await self.reject(480, reason)
            return
        if self._answer_acked:
            self._send_bye(reason)
        else:
            self._bye_pending = reason
        self._end(None, "bye", False, reason)

    def _acked(self, seq: int) -> None:
        if seq == self.request.cseq.seq:
            self._answer_acked = True
            if self._bye_pending is not None:
                self._send_bye(self._bye_pending)
                self._bye_pending = None

    def _no_ack(self, retransmission: AnswerRetransmission) -> None:
        if self._bye_pending is not None:
            self._send_bye(self._bye_pending)
            self._bye_pending = None
        super()._no_ack(retransmission)

    def _remote_bye(self, request: Request) -> None:
        if self.state == "ringing" and not self._txn.final_sent:
            self.trunk._respond(self._txn, self._response(487))
        self._end(None, "bye", True, reason_text(request))

    def _cancelled(self, cancel: Request) -> None:
        """CANCEL for our INVITE: 487 unless we answered already (§9.2)."""
        if self._txn.final_sent:
            return
        self.trunk._respond(self._txn, self._response(487))
        self._end(487, "cancel", True, reason_text(cancel))

    def _shutdown(self) -> None:
        if self.state == "ringing":
            self.trunk._respond(self._txn, self._response(503))
        elif self._answer_acked:
            self._send_bye("shutdown")
        self._end(None, "shutdown", False)


# The trunk ----------------------------------------------------------------------------


@dataclass
class _TargetState:
    up: bool = False
    options_pending: bool = False


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
        self.settings = settings
        self.on_incoming = on_incoming
        self.on_state_change = on_state_change
        self._clock = clock
        self.stats: Counter[str] = Counter()
        self._layer = TransactionLayer(settings.timers)
        self._transport: SipTransport | None = None
        self._networks = settings.source_networks
        self._source_cache: dict[str, bool] = {}
        self._calls: dict[tuple[str, str], _Call] = {}
        self._active: set[_Call] = set()
        self._handlers: dict[Transaction, ClientHandler] = {}
        self._incoming: dict[InviteServerTransaction, IncomingCall] = {}
        self._retransmissions: dict[AnswerRetransmission, _Call] = {}
        self._last_503: dict[str, float] = {}
        rate = settings.requests_per_second_per_source
        self._guard = FloodGuard(
            rate,
            max(1, math.ceil(2 * rate)),
            block_after=settings.block_after,
            block_seconds=settings.block_seconds,
            max_keys=_MAX_TRACKED_SOURCES,
        )
        cps = settings.max_calls_per_second
        self._cps = TokenBucket(cps, max(1, math.ceil(cps)))
        self._targets = {target: _TargetState() for target in settings.sbc}
        self._up = False
        self._challenger: DigestChallenger | None = None
        if settings.inbound_username:
            self._challenger = DigestChallenger(
                settings.domain,
                secrets.token_bytes(32),
                algorithms=settings.inbound_algorithms,
                nonce_lifetime=settings.nonce_lifetime,
            )
        self._nonce_counts: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None
        self._keepalive: _Later | None = None
        self._started = False

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
        )
        await self._transport.start()
        self._started = True
        logger.info("SIP trunk listening on %s", self.addresses)
        if s.options_interval > 0 and s.sbc:
            self._send_keepalives()

    async def stop(self) -> None:
        """End every call (BYE, CANCEL or 503; ``Ended(reason="shutdown")``), close."""
        if not self._started:
            return
        for call in list(self._active):
            call._shutdown()
        self._started = False
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
        if not self._started or not self.settings.sbc:
            return False
        if self.settings.options_interval <= 0:
            return True
        return self._up

    @property
    def active_calls(self) -> int:
        return len(self._active)

    def blocked_sources(self) -> list[str]:
        """Source addresses on the block list now (expired blocks are lifted)."""
        return self._guard.blocked_keys(self._clock())

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
        for number in (to_number, from_number):
            if not _NUMBER.match(number):
                raise ValueError(f"{number!r} is not a number for a SIP URI")
        target = self._pick_target()
        if target is None:
            self.stats["invites_refused"] += 1
            raise TrunkUnavailable(
                "the SIP trunk is down" if self._started else "the SIP trunk is not started"
            )
        if len(self._active) >= self.settings.max_concurrent_calls:
            self.stats["invites_refused"] += 1
            raise TrunkUnavailable("max_concurrent_calls reached")
        if not self._cps.allow(self._clock()):
            self.stats["invites_refused"] += 1
            raise TrunkUnavailable("max_calls_per_second reached")
        call = OutboundCall(
            self, target, to_number=to_number, from_number=from_number, sdp=sdp, on_event=on_event
        )
        self._calls[(call.call_id, call.local_tag)] = call
        self._active.add(call)
        self.stats["calls_outgoing"] += 1
        call._send_invite()
        return call

    def _pick_target(self) -> SipTarget | None:
        if not self._started or not self.settings.sbc:
            return None
        if self.settings.options_interval <= 0:
            return self.settings.sbc[0]
        for target, state in self._targets.items():
            if state.up:
                return target
        return None

    # keep-alive

    def _send_keepalives(self) -> None:
        if not self._started:
            return
        for target, state in self._targets.items():
            if not state.options_pending:
                state.options_pending = True
                self._send_options(target)
        self._keepalive = self._later(self.settings.options_interval, self._send_keepalives)

    def _send_options(self, target: SipTarget) -> None:
        s = self.settings
        uri = URI("sip", None, _uri_host(target.host), target.port)
        request = make_request(
            "OPTIONS",
            uri,
            via=self._via(target.transport),
            from_addr=Address(URI("sip", "anruf", s.domain)).with_tag(new_tag()),
            to_addr=Address(uri),
            call_id=new_call_id(),
            cseq=1,
            headers=[("User-Agent", s.user_agent), ("Accept", "application/sdp")],
        )
        self.stats["options_sent"] += 1

        def done(txn: Transaction, response: Response | None, timer: str | None) -> None:
            if response is not None and response.status < 200:
                return
            self._targets[target].options_pending = False
            if response is None:
                self.stats["options_failed"] += 1
            self._mark_target(target, response is not None)

        self._start_client(request, target, done)

    def _mark_target(self, target: SipTarget, up: bool) -> None:
        state = self._targets.get(target)
        if state is None:
            return
        if state.up != up:
            logger.info("SIP trunk: %s is %s", target, "up" if up else "down")
        state.up = up
        overall = any(s.up for s in self._targets.values())
        if overall != self._up:
            self._up = overall
            if self.on_state_change is not None:
                try:
                    self.on_state_change(overall)
                except Exception:
                    logger.exception("SIP trunk: on_state_change failed")

    # receiving

    def _accepted(self, host: str) -> bool:
        known = self._source_cache.get(host)
        if known is None:
            try:
                address = ipaddress.ip_address(host)
                known = any(address in network for network in self._networks)
            except ValueError:
                known = False
            if len(self._source_cache) > _MAX_TRACKED_SOURCES:
                self._source_cache.clear()
            self._source_cache[host] = known
        return known

    def _admit(self, host: str, now: float) -> bool:
        """The per-source token bucket for requests (rate, burst 2 s of it); a source
        that is not accepted and stays over it for ``block_after`` gets blocked."""
        verdict = self._guard.check(host, now, may_block=not self._accepted(host))
        if verdict is RateVerdict.BLOCKED:
            self.stats["sources_blocked"] += 1
            logger.warning(
                "SIP: %s flooded us for %.1f s: blocked for %.0f s",
                host,
                self.settings.block_after,
                self.settings.block_seconds,
            )
        return verdict is RateVerdict.ALLOWED

    def _blocked(self, host: str, now: float) -> bool:
        """``host`` is on the block list: what it sends is dropped unparsed (counted)."""
        if self._guard.blocked_until(host, now) is None:
            return False
        self.stats["requests_blocked"] += 1
        return True

    def _peer_admitted(self, host: str) -> bool:
        """For the transport: may ``host`` keep (or open) a TCP connection?"""
        return self._guard.blocked_until(host, self._clock()) is None

    def _on_datagram(self, data: bytes, source: SipTarget) -> None:
        try:
            self._datagram(data, source)
        except Exception:
            # A bug must cost one message, never the transport or the other calls.
            self.stats["internal_errors"] += 1
            logger.exception("SIP: error handling a datagram from %s", source)

    def _on_stream(self, item: Request | Response | ParseError, source: SipTarget) -> None:
        try:
            self._stream(item, source)
        except Exception:
            self.stats["internal_errors"] += 1
            logger.exception("SIP: error handling a message from %s", source)

    def _datagram(self, data: bytes, source: SipTarget) -> None:
        now = self._clock()
        if self._blocked(source.host, now):
            return
        self.stats["messages_received"] += 1
        if not data.strip(b"\r\n"):
            return  # keep-alive
        if not data.lstrip(b"\r\n").startswith(b"SIP/") and not self._admit(source.host, now):
            self._rate_limited(data, source, now)
            return
        try:
            message = parse_message(data, max_size=self.settings.max_message_bytes)
        except ParseError as exc:
            self._malformed(exc, source)
            return
        self._on_message(message, source, now)

    def _stream(self, item: Request | Response | ParseError, source: SipTarget) -> None:
        now = self._clock()
        if self._blocked(source.host, now):
            return
        self.stats["messages_received"] += 1
        if isinstance(item, ParseError):
            self._malformed(item, source)
            return
        if isinstance(item, Request) and not self._admit(source.host, now):
            self._rate_limited(item, source, now)
            return
        self._on_message(item, source, now)

    def _rate_limited(self, data: bytes | Request, source: SipTarget, now: float) -> None:
        """Over the source's request rate: at most one 503 (Retry-After) a second to
        an accepted source; everything else is dropped. Both are counted."""
        self.stats["requests_rate_limited"] += 1
        if not self._accepted(source.host):
            return
        last = self._last_503.get(source.host)
        if last is not None and now - last < 1.0:
            return
        if isinstance(data, bytes):
            try:
                request = parse_message(data, max_size=self.settings.max_message_bytes)
            except ParseError:
                return
        else:
            request = data
        if not isinstance(request, Request) or request.method == "ACK":
            return
        if len(self._last_503) > _MAX_TRACKED_SOURCES:
            self._last_503.clear()
        self._last_503[source.host] = now
        self._stateless(
            request, source, 503, headers=[("Retry-After", str(RATE_LIMIT_RETRY_AFTER))]
        )

    def _malformed(self, exc: ParseError, source: SipTarget) -> None:
        self.stats["messages_malformed"] += 1
        logger.debug("SIP: malformed message from %s: %s", source, exc.reason)
        if not exc.answerable:
            return
        assert isinstance(exc.partial, Request)
        if not self._accepted(source.host):
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
            headers=[("Server", self.settings.user_agent), *(headers or [])],
        )
        self._send(response, peer)

    def _on_message(self, message: Request | Response, source: SipTarget, now: float) -> None:
        if isinstance(message, Response):
            if not self._accepted(source.host):
                self.stats["responses_dropped"] += 1
                return
            self._run(self._layer.receive_response(message, now))
            return
        try:
            stamp_received(message, source)
        except ParseError:
            return
        if not self._accepted(source.host):
            self.stats["requests_forbidden"] += 1
            if message.method != "ACK":
                self._stateless(message, source, 403)
            return
        self._run(self._layer.receive_request(message, source, now))

    def _on_transport_error(self, peer: SipTarget) -> None:
        now = self._clock()
        for txn in list(self._layer.transactions.values()):
            if txn.peer == peer:
                self._run(self._layer.transport_error(txn, now))

    # the actions of the transaction layer

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.message, action.peer)
            elif isinstance(action, Deliver):
                self._deliver(action)
            elif isinstance(action, Timeout):
                handler = self._handlers.get(action.transaction)
                if handler is not None:
                    handler(action.transaction, None, action.timer)
            elif isinstance(action, Terminated):
                self._handlers.pop(action.transaction, None)
                if isinstance(action.transaction, InviteServerTransaction):
                    self._incoming.pop(action.transaction, None)
            elif isinstance(action, Expired):
                self._expired(action)
        self._rearm()

    def _deliver(self, action: Deliver) -> None:
        txn, message = action.transaction, action.message
        if isinstance(message, Response):
            self.stats["responses_received"] += 1
            if txn is None:
                self._stray_response(message)
                return
            handler = self._handlers.get(txn)
            if handler is not None:
                handler(txn, message, None)
            return
        self.stats["requests_received"] += 1
        if txn is None:
            self._stray_request(message)
            return
        assert isinstance(txn, InviteServerTransaction | NonInviteServerTransaction)
        try:
            self._on_request(txn, message)
        except ParseError as exc:
            # A header the request needs turned out unparseable (Contact, Route …).
            if txn.state in (State.TRYING, State.PROCEEDING):
                warning = exc.reason.replace('"', "'")[:120]
                self._reply(txn, message, 400, headers=[("Warning", f'399 anruf "{warning}"')])

    def _expired(self, action: Expired) -> None:
        owner = action.owner
        if isinstance(owner, _Later):
            owner.callback()
        elif isinstance(owner, AnswerRetransmission):
            call = self._retransmissions.pop(owner, None)
            if call is not None:
                call._no_ack(owner)

    def _send(self, message: Request | Response, peer: SipTarget) -> None:
        if self._transport is None or not self._started:
            return
        self.stats["messages_sent"] += 1
        if logger.isEnabledFor(logging.DEBUG):
            first = message.encode().split(b"\r\n", 1)[0].decode(errors="replace")
            logger.debug("SIP -> %s %s", peer, first)
        self._transport.send(peer, message.encode())

    # the wheel

    def _rearm(self) -> None:
        deadline = self._layer.next_deadline()
        if deadline == self._armed or not self._started:
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
            actions = self._layer.on_timer(max(self._clock(), armed))
            self.stats["retransmissions"] += sum(isinstance(a, Send) for a in actions)
            self._run(actions)
        except Exception:
            self.stats["internal_errors"] += 1
            logger.exception("SIP: error on the timer wheel")
        finally:
            self._rearm()  # the wheel keeps turning whatever happened

    def _later(self, delay: float, callback: Callable[[], None]) -> _Later:
        timer = _Later(callback)
        at = self._clock() + delay
        timer.timers["later"] = at
        self._layer.wheel.track([StartTimer(timer, "later", at)])
        self._rearm()
        return timer

    def _track_retransmission(self, retransmission: AnswerRetransmission, call: _Call) -> None:
        self._retransmissions[retransmission] = call
        self._run(self._layer.wheel.track(retransmission.start(self._clock())))

    def _untrack_retransmission(self, retransmission: AnswerRetransmission) -> None:
        self._retransmissions.pop(retransmission, None)

    # building blocks for calls

    def _via(self, transport: str) -> Via:
        assert self._transport is not None
        return Via(
            transport.upper(),
            _uri_host(self.settings.listen_host),
            self._transport.bound_port,
            (("branch", new_branch()), ("rport", None)),
        )

    def _contact(self, user: str, transport: str) -> Address:
        assert self._transport is not None
        params = (("transport", "tcp"),) if transport == "tcp" else ()
        uri = URI(
            "sip", user, _uri_host(self.settings.listen_host), self._transport.bound_port, params
        )
        return Address(uri)

    def _contact_headers(self, user: str, transport: str) -> list[tuple[str, str]]:
        return [("Contact", str(self._contact(user, transport))), ("Allow", ALLOW)]

    def _capabilities(self) -> list[tuple[str, str]]:
        return [
            ("Allow", ALLOW),
            ("Accept", "application/sdp"),
            ("Server", self.settings.user_agent),
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
        self, request: Request, peer: SipTarget, handler: ClientHandler
    ) -> Transaction:
        txn, actions = self._layer.send_request(request, peer, self._clock())
        self._handlers[txn] = handler
        self._run(actions)
        return txn

    def _respond(
        self, txn: InviteServerTransaction | NonInviteServerTransaction, response: Response
    ) -> None:
        if self._transport is None:
            return
        self._run(self._layer.respond(txn, response, self._clock()))

    def _reply(
        self,
        txn: InviteServerTransaction | NonInviteServerTransaction,
        request: Request,
        status: int,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        tag = new_tag() if status > 100 and not request.to_addr.tag else None
        response = make_response(
            request,
            status,
            to_tag=tag,
            headers=[("Server", self.settings.user_agent), *(headers or [])],
        )
        self._respond(txn, response)

    def _not_allowed(
        self, txn: InviteServerTransaction | NonInviteServerTransaction, request: Request
    ) -> None:
        if request.method in KNOWN_METHODS:
            self._reply(txn, request, 405, headers=[("Allow", ALLOW)])
        else:
            self._reply(txn, request, 501, headers=[("Allow", ALLOW)])

    def _credentials(self, response: Response, method: str, uri: str) -> tuple[str, str] | None:
        """Authorization (401) or Proxy-Authorization (407) answering ``response``."""
        s = self.settings
        if not s.username:
            return None
        name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenge = choose_challenge(response.headers.get_all(name))
        if challenge is None:
            return None
        if len(self._nonce_counts) > _MAX_TRACKED_SOURCES:
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

    def _send_with_auth(self, request: Request, peer: SipTarget, *, dialog: Dialog | None) -> None:
        """A non-INVITE request that is sent once more with credentials if challenged."""

        def done(txn: Transaction, response: Response | None, timer: str | None) -> None:
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
            self._start_client(retry, peer, lambda t, r, tm: None)

        self._start_client(request, peer, done)

    def _call_ended(self, call: _Call) -> None:
        self._active.discard(call)
        # Keep the call findable while retransmissions may still arrive.
        key = (call.call_id, call.local_tag)
        linger = self.settings.timers.timeout + self.settings.timers.t4
        if self._started:
            self._later(linger, lambda: self._forget(key))

    def _forget(self, key: tuple[str, str]) -> None:
        self._calls.pop(key, None)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # requests for the TU

    def _stray_request(self, request: Request) -> None:
        """An ACK no transaction matched: the ACK for a 2xx (§13.3.1.4)."""
        if request.method != "ACK":
            return
        call = self._calls.get((request.call_id, request.to_addr.tag or ""))
        if call is not None:
            call._on_ack(request)

    def _stray_response(self, response: Response) -> None:
        """A response no transaction matched: a 2xx retransmission after Timer M."""
        if not 200 <= response.status < 300 or response.cseq.method != "INVITE":
            return
        call = self._calls.get((response.call_id, response.from_addr.tag or ""))
        if isinstance(call, OutboundCall):
            call._on_2xx(response)

    def _on_request(
        self, txn: InviteServerTransaction | NonInviteServerTransaction, request: Request
    ) -> None:
        method = request.method
        max_forwards = request.headers.get("Max-Forwards")
        if max_forwards is not None and int(max_forwards) == 0 and method != "OPTIONS":
            self._reply(txn, request, 483)
            return
        if method == "CANCEL":
            self._on_cancel(txn, request)
            return
        required = [r for r in request.headers.get_all("Require") if r]
        if required:
            self._reply(txn, request, 420, headers=[("Unsupported", ", ".join(required))])
            return
        to_tag = request.to_addr.tag
        if to_tag:
            call = self._calls.get((request.call_id, to_tag))
            if call is None:
                if method == "OPTIONS":
                    self._reply(txn, request, 200, headers=self._capabilities())
                else:
                    self._reply(txn, request, 481)
                return
            call._on_request(txn, request)
            return
        if method == "INVITE":
            assert isinstance(txn, InviteServerTransaction)
            self._on_invite(txn, request)
        elif method == "OPTIONS":
            self._reply(txn, request, 200, headers=self._capabilities())
        elif method == "BYE":
            self._reply(txn, request, 481)
        else:
            self._not_allowed(txn, request)

    def _on_cancel(
        self, txn: InviteServerTransaction | NonInviteServerTransaction, cancel: Request
    ) -> None:
        invite_txn = self._layer.find_invite(cancel)
        if invite_txn is None:
            self._reply(txn, cancel, 481)
            return
        self._reply(txn, cancel, 200)
        call = self._incoming.get(invite_txn)
        if call is not None:
            call._cancelled(cancel)
        elif not invite_txn.final_sent:
            self._reply(invite_txn, invite_txn.request, 487)

    def _on_invite(self, txn: InviteServerTransaction, request: Request) -> None:
        s = self.settings
        now = self._clock()
        if self._challenger is not None and not self._authenticated(txn, request, now):
            return
        kind = request.content_type
        if request.body and kind != "application/sdp":
            self._reply(txn, request, 415, headers=[("Accept", "application/sdp")])
            return
        offer = _sdp(request)
        if offer is None:
            # A delayed offer (INVITE without SDP) is not supported.
            self._reply(
                txn, request, 488, headers=[("Warning", '399 anruf "an SDP offer is required"')]
            )
            return
        if request.contact is None:
            self._reply(txn, request, 400, headers=[("Warning", '399 anruf "missing Contact"')])
            return
        if not request.from_addr.tag:
            # RFC 3261 §8.1.1.3: no dialog can be made without it.
            self._reply(txn, request, 400, headers=[("Warning", '399 anruf "missing From tag"')])
            return
        if len(self._active) >= s.max_concurrent_calls:
            self.stats["invites_refused"] += 1
            self._reply(txn, request, 503)
            return
        if not self._cps.allow(now):
            self.stats["invites_refused"] += 1
            self._reply(txn, request, 503, headers=[("Retry-After", "1")])
            return
        to_number = _number(request.uri) or _number(request.to_addr.uri)
        if not to_number:
            self._reply(txn, request, 404)
            return
        call = IncomingCall(
            self,
            txn,
            request,
            from_number=_number(request.from_addr.uri),
            to_number=to_number,
            offer_sdp=offer,
        )
        self._calls[(call.call_id, call.local_tag)] = call
        self._incoming[txn] = call
        self._active.add(call)
        self.stats["calls_incoming"] += 1
        self._spawn(self._serve(call))

    def _authenticated(self, txn: InviteServerTransaction, request: Request, now: float) -> bool:
        assert self._challenger is not None
        s = self.settings
        stale = False
        for value in request.headers.get_all("Authorization"):
            verdict = self._challenger.verify(
                value,
                method=request.method,
                request_uri=request.uri,
                username=s.inbound_username,
                password=s.inbound_password,
                now=now,
            )
            if verdict is Verdict.OK:
                return True
            if verdict is Verdict.STALE:
                stale = True
        if request.headers.get("Authorization") and not stale:
            self.stats["auth_failures"] += 1
            self._reply(txn, request, 403)
            return False
        self.stats["challenges_sent"] += 1
        challenges = self._challenger.challenges(now, stale=stale)
        self._reply(txn, request, 401, headers=[("WWW-Authenticate", str(c)) for c in challenges])
        return False

    async def _serve(self, call: IncomingCall) -> None:
        try:
            await self.on_incoming(call)
        except Exception:
            logger.exception("SIP trunk: on_incoming failed for %s", call.call_id)
            if call.state == "ringing" and not call.ended:
                await call.reject(500)


__all__ = [
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
    "trunk_settings",
]
