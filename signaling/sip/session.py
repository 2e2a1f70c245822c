"""Call sessions of the user agent, one per call in each direction. Sans-I/O.

A session is the dialog of one call (RFC 3261 §12) plus what the user agent must
do for it: the INVITE and its CANCEL (§9) as UAC, the 2xx retransmission until the
ACK (§13.3.1.4) as UAS, BYE (§15) and re-INVITEs (§14) either way. Sessions live
inside a ``UserAgent`` (signaling/sip/ua.py) and send through it; what the
application must hear comes out of ``UserAgent`` as actions: ``CallUpdate`` with a
``Progress``, ``Answered`` or exactly one ``Ended``, and ``Reoffered`` for a
re-INVITE with an offer (answer with ``answer_reoffer``).

Every method that acts takes the current time as ``now``.
"""

from __future__ import annotations

import abc
import logging
import re
import secrets
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from signaling.sip.dialog import AnswerRetransmission, Dialog, DialogState
from signaling.sip.digest import choose_challenge
from signaling.sip.message import (
    URI,
    Address,
    Request,
    Response,
    SipTarget,
    Via,
    accepts,
    make_request,
    make_response,
    new_call_id,
    new_tag,
)
from signaling.sip.settings import TrunkSettings
from signaling.sip.transaction import (
    InviteServerTransaction,
    ServerTransaction,
    Transaction,
    make_cancel,
)

logger = logging.getLogger("anruf.sip")

_PHONE = re.compile(r"\+?[0-9*#]+\Z")


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


class CallError(RuntimeError):
    """A call method used in a state that does not allow it (answer twice …)."""


# The user agent as a session sees it ---------------------------------------------------

#: Told the final response of a client transaction (None and the timer on timeout).
ClientHandler = Callable[[Transaction, Response | None, str | None, float], None]


class Timer(Protocol):
    """A TU timer the user agent started for a session (``UserAgentCore._later``)."""

    def cancel(self) -> None: ...


class UserAgentCore(Protocol):
    """What a session uses of the user agent that holds it (``UserAgent`` in
    signaling/sip/ua.py): its settings, counters and building blocks. Sessions see
    the core through this interface only, so they need not import it."""

    ALLOW: str
    SUPPORTED: str
    settings: TrunkSettings
    stats: Counter[str]

    # what goes out
    def _send(self, message: Request | Response, peer: SipTarget) -> None: ...
    def _start_client(
        self, request: Request, peer: SipTarget, handler: ClientHandler, now: float
    ) -> Transaction: ...
    def _send_with_auth(
        self, request: Request, peer: SipTarget, *, dialog: Dialog | None, now: float
    ) -> None: ...
    def _respond(self, txn: ServerTransaction, response: Response, now: float) -> None: ...
    def _reply(
        self,
        txn: ServerTransaction,
        request: Request,
        status: int,
        now: float,
        headers: list[tuple[str, str]] | None = None,
    ) -> None: ...
    def _not_allowed(self, txn: ServerTransaction, request: Request, now: float) -> None: ...
    def _abandon(self, txn: Transaction) -> None: ...

    # what the application hears
    def _event(self, call: Session, event: CallEvent) -> None: ...
    def _reoffered(self, call: Session, offer: str) -> None: ...
    def _call_ended(self, call: Session, now: float) -> None: ...
    def _mark_target(self, target: SipTarget, up: bool) -> None: ...

    # timers
    def _later(self, delay: float, callback: Callable[[float], None], now: float) -> Timer: ...
    def _track_retransmission(
        self, retransmission: AnswerRetransmission, call: Session, now: float
    ) -> None: ...
    def _untrack_retransmission(self, retransmission: AnswerRetransmission) -> None: ...

    # what messages carry
    def _agent_header(self, name: str) -> list[tuple[str, str]]: ...
    def _via(self, transport: str) -> Via: ...
    def _contact(self, user: str, transport: str) -> Address: ...
    def _contact_headers(self, user: str, transport: str) -> list[tuple[str, str]]: ...
    def _capabilities(self) -> list[tuple[str, str]]: ...
    def _next_hop(self, uri: URI, default: SipTarget) -> SipTarget: ...
    def _credentials(self, response: Response, method: str, uri: str) -> tuple[str, str] | None: ...


# Helpers ------------------------------------------------------------------------------


def uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def sdp_of(message: Request | Response) -> str | None:
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


def number_of(uri: URI) -> str:
    user = (uri.user or "").split(";")[0]
    return urllib.parse.unquote(user)


def phone_params(number: str) -> tuple[tuple[str, str | None], ...]:
    """``user=phone`` for a number of digits with an optional + (RFC 3261 §19.1.1)."""
    return (("user", "phone"),) if _PHONE.match(number) else ()


# Sessions -----------------------------------------------------------------------------


class Session(abc.ABC):
    """What both directions share: dialog, in-dialog requests, re-INVITEs, BYE."""

    def __init__(self, ua: UserAgentCore, call_id: str, local_tag: str, peer: SipTarget) -> None:
        self.ua = ua
        self.call_id = call_id
        self.local_tag = local_tag
        #: Where the call's first request went or came from (in-dialog fallback).
        self.peer = peer
        self.dialog: Dialog | None = None
        self.state = "new"
        self.ended = False
        self.local_sdp = ""
        self._retransmissions: list[AnswerRetransmission] = []
        self._reinvite: tuple[InviteServerTransaction, Request] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.call_id} {self.state}>"

    def matches(self, request: Request) -> bool:
        """``request`` belongs to this call's dialog: its From tag is the remote tag
        (the Call-ID and To tag found the call; RFC 3261 §12.2.2 needs all three). A
        dialog with an RFC 2543 peer has a null remote tag: only a From without a tag
        matches it."""
        if self.dialog is None:
            return False
        return (request.from_addr.tag or "") == self.dialog.remote_tag

    def _end(
        self, status: int | None, reason: str, by_remote: bool, detail: str = "", *, now: float
    ) -> None:
        if self.ended:
            return
        self.ended = True
        self.state = "ended"
        if self.dialog is not None:
            self.dialog.state = DialogState.TERMINATED
        self.ua._call_ended(self, now)
        self.ua._event(self, Ended(status, reason, by_remote, detail))

    @property
    def _transport(self) -> str:
        return self.peer.transport

    def _next_hop(self) -> SipTarget:
        assert self.dialog is not None
        return self.ua._next_hop(self.dialog.next_hop, self.peer)

    def _send_bye(self, reason: str, now: float) -> None:
        if self.dialog is None:
            return
        headers = self.ua._agent_header("User-Agent")
        if reason:
            headers.append(("Reason", reason_header(reason)))
        bye = self.dialog.create_request("BYE", via=self.ua._via(self._transport), headers=headers)
        self.ua._send_with_auth(bye, self._next_hop(), dialog=self.dialog, now=now)

    # requests inside the dialog

    def _on_request(self, txn: ServerTransaction, request: Request, now: float) -> None:
        ua = self.ua
        if self.dialog is None:
            ua._reply(txn, request, 481, now)
            return
        if not self.dialog.receive_request(request):
            ua._reply(txn, request, 500, now, headers=[("Retry-After", "1")])
            return
        method = request.method
        if method == "BYE":
            ua._reply(txn, request, 200, now)
            self._remote_bye(request, now)
        elif method == "INVITE":
            assert isinstance(txn, InviteServerTransaction)
            self._on_reinvite(txn, request, now)
        elif method == "OPTIONS":
            ua._reply(txn, request, 200, now, headers=ua._capabilities())
        else:
            ua._not_allowed(txn, request, now)

    def _remote_bye(self, request: Request, now: float) -> None:
        self._end(None, "bye", True, reason_text(request), now=now)

    def _on_reinvite(self, txn: InviteServerTransaction, request: Request, now: float) -> None:
        ua = self.ua
        if self.ended:
            ua._reply(txn, request, 481, now)
            return
        if self.state != "answered" or self._reinvite is not None:
            # §14.2: an INVITE before our final response to the previous one.
            retry = str(secrets.randbelow(10) + 1)
            ua._reply(txn, request, 500, now, headers=[("Retry-After", retry)])
            return
        if not accepts(request, "application/sdp"):
            ua._reply(txn, request, 406, now)  # §21.4.7: our 200 would carry SDP
            return
        offer = sdp_of(request)
        if offer is None:
            # An offerless re-INVITE: our current SDP is the offer, the ACK the answer.
            self._answer_reinvite(txn, request, self.local_sdp, now)
            return
        self._reinvite = (txn, request)
        ua._reoffered(self, offer)

    def answer_reoffer(self, sdp: str, *, now: float) -> None:
        """The application's answer to the offer of ``Reoffered``: 200 OK."""
        if self._reinvite is None:
            return
        txn, request = self._reinvite
        self._reinvite = None
        if txn.final_sent:
            return
        if self.ended:
            self.ua._reply(txn, request, 487, now)
            return
        self._answer_reinvite(txn, request, sdp, now)

    def reject_reoffer(self, *, now: float, status: int = 488) -> None:
        """The application cannot take the offer of ``Reoffered`` (488, §14.2)."""
        if self._reinvite is None:
            return
        txn, request = self._reinvite
        self._reinvite = None
        if not txn.final_sent:
            self.ua._reply(txn, request, status, now)

    def _answer_reinvite(
        self, txn: InviteServerTransaction, request: Request, sdp: str, now: float
    ) -> None:
        self.local_sdp = sdp
        response = make_response(
            request,
            200,
            headers=[*self.ua._contact_headers(self._contact_user(), self._transport)],
            body=sdp.encode(),
        )
        self.ua._respond(txn, response, now)
        self._retransmit(response, txn.peer, now)

    @abc.abstractmethod
    def _contact_user(self) -> str: ...

    def _retransmit(self, response: Response, peer: SipTarget, now: float) -> None:
        retransmission = AnswerRetransmission(response, peer, self.ua.settings.timers)
        self._retransmissions.append(retransmission)
        self.ua._track_retransmission(retransmission, self, now)

    def _on_ack(self, ack: Request, now: float) -> None:
        seq = ack.cseq.seq
        for retransmission in list(self._retransmissions):
            if retransmission.response.cseq.seq == seq:
                retransmission.ack()
                self._retransmissions.remove(retransmission)
                self.ua._untrack_retransmission(retransmission)
                self._acked(seq, now)

    def _acked(self, seq: int, now: float) -> None:  # noqa: B027 - a hook
        """The ACK for our 2xx with CSeq ``seq`` arrived."""

    def _no_ack(self, retransmission: AnswerRetransmission, now: float) -> None:
        """§13.3.1.4: no ACK for our 2xx within 64*T1: end the dialog with BYE."""
        if retransmission in self._retransmissions:
            self._retransmissions.remove(retransmission)
        self.ua.stats["no_ack"] += 1
        if not self.ended:
            self._send_bye("no ACK", now)
            self._end(None, "timeout", False, "no ACK", now=now)

    @abc.abstractmethod
    def shutdown(self, now: float) -> None:
        """The user agent stops: end the call (BYE, CANCEL or 503)."""


class OutboundSession(Session):
    """Our INVITE to the SBC. ``cancel()`` and ``bye()`` both end the call in any
    state: CANCEL before the final response, BYE after a 2xx."""

    def __init__(
        self, ua: UserAgentCore, target: SipTarget, *, to_number: str, from_number: str, sdp: str
    ) -> None:
        super().__init__(ua, new_call_id(), new_tag(), target)
        self.to_number = to_number
        self.from_number = from_number
        self.local_sdp = sdp
        self.state = "calling"
        self.invite_request: Request | None = None
        self._invite_txn: Transaction | None = None
        self._cseq = 0
        self._provisional = False
        self._cancel_reason: str | None = None
        self._cancel_sent = False
        self._auth_attempts = 0
        self._ack: Request | None = None
        self._ack_peer: SipTarget | None = None
        self._cancel_timer: Timer | None = None

    def _contact_user(self) -> str:
        return self.from_number

    def send_invite(self, now: float, auth: tuple[str, str] | None = None) -> None:
        ua = self.ua
        settings = ua.settings
        target = self.peer
        self._cseq += 1
        phone = phone_params(self.to_number)
        transport: tuple[tuple[str, str | None], ...] = (
            (("transport", "tcp"),) if target.transport == "tcp" else ()
        )
        uri = URI("sip", self.to_number, uri_host(target.host), target.port, phone + transport)
        # RFC 3325 §9.1: the caller's verified number, for the operator's trust domain.
        asserted = Address(
            URI("sip", self.from_number, settings.domain, None, phone_params(self.from_number))
        )
        headers = [
            *ua._agent_header("User-Agent"),
            ("Allow", ua.ALLOW),
            ("Supported", ua.SUPPORTED),
            ("P-Asserted-Identity", str(asserted)),
        ]
        if auth is not None:
            headers.append(auth)
        request = make_request(
            "INVITE",
            uri,
            via=ua._via(target.transport),
            from_addr=Address(URI("sip", self.from_number, settings.domain)).with_tag(
                self.local_tag
            ),
            to_addr=Address(URI("sip", self.to_number, settings.domain, None, phone)),
            call_id=self.call_id,
            cseq=self._cseq,
            contact=ua._contact(self.from_number, target.transport),
            headers=headers,
            body=self.local_sdp.encode(),
            content_type="application/sdp",
        )
        self.invite_request = request
        self._invite_txn = ua._start_client(request, target, self._on_invite_response, now)

    def _on_invite_response(
        self, txn: Transaction, response: Response | None, timer: str | None, now: float
    ) -> None:
        if txn is not self._invite_txn:
            if response is not None and 200 <= response.status < 300:
                self.on_2xx(response, now)
            return
        ua = self.ua
        if response is None:
            if timer == "B":
                ua._mark_target(self.peer, False)
                self._end(None, "timeout", False, "no response to INVITE", now=now)
            else:
                self._end(None, "transport", False, "transport failed", now=now)
            return
        ua._mark_target(self.peer, True)
        status = response.status
        if status < 200:
            self._provisional = True
            if status > 100 and response.to_addr.tag and self.dialog is None:
                assert self.invite_request is not None
                self.dialog = Dialog.as_uac(self.invite_request, response)
            if self._cancel_reason is not None:
                self._send_cancel(now)
            elif status > 100 and not self.ended:
                self.state = "early"
                ua._event(self, Progress(status, sdp_of(response)))
            return
        if status < 300:
            self.on_2xx(response, now)
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
                auth = ua._credentials(response, "INVITE", self._request_uri())
                if auth is not None:
                    self._auth_attempts += 1
                    self._provisional = False
                    self.send_invite(now, auth)
                    return
        if self._cancel_reason is not None and status == 487:
            self._end(487, "cancel", False, self._cancel_reason, now=now)
        else:
            self._end(status, "rejected", True, reason_text(response) or response.reason, now=now)

    def _request_uri(self) -> str:
        assert self.invite_request is not None
        return str(self.invite_request.uri)

    def on_2xx(self, response: Response, now: float) -> None:
        """A 2xx to our INVITE, in its transaction or a retransmission after it."""
        ua = self.ua
        assert self.invite_request is not None
        tag = response.to_addr.tag
        if self._ack is not None and self._ack_peer is not None and self.dialog is not None:
            if tag == self.dialog.remote_tag:
                ua._send(self._ack, self._ack_peer)  # a retransmitted 2xx
            elif tag:
                # A 2xx from another fork: ACK it and end that dialog at once.
                other = Dialog.as_uac(self.invite_request, response)
                peer = ua._next_hop(other.next_hop, self.peer)
                ua._send(
                    other.create_ack(self.invite_request.cseq.seq, via=ua._via(peer.transport)),
                    peer,
                )
                ua._send_with_auth(
                    other.create_request("BYE", via=ua._via(peer.transport)),
                    peer,
                    dialog=other,
                    now=now,
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
            self.invite_request.cseq.seq, via=ua._via(peer.transport)
        )
        self._ack_peer = peer
        ua._send(self._ack, peer)
        if self._cancel_timer is not None:
            self._cancel_timer.cancel()
        if self._cancel_reason is not None or self.ended:
            # Our CANCEL crossed the 2xx: the call was answered, so hang up.
            self._send_bye(self._cancel_reason or "", now)
            self._end(None, "cancel", False, self._cancel_reason or "", now=now)
            return
        self.state = "answered"
        ua._event(self, Answered(sdp_of(response) or ""))

    def _send_cancel(self, now: float) -> None:
        if self._cancel_sent or self.invite_request is None:
            return
        self._cancel_sent = True
        headers = self.ua._agent_header("User-Agent")
        if self._cancel_reason:
            headers.append(("Reason", reason_header(self._cancel_reason)))
        cancel = make_cancel(self.invite_request, headers)
        self.ua._start_client(cancel, self.peer, lambda txn, response, timer, now: None, now)
        # §9.1: no final response to the INVITE within 64*T1: consider it cancelled.
        self._cancel_timer = self.ua._later(
            self.ua.settings.timers.timeout, self._cancel_expired, now
        )

    def _cancel_expired(self, now: float) -> None:
        # The INVITE transaction, stuck in Proceeding, ends with the call: else it
        # and its handler would be kept for as long as the process runs.
        if self._invite_txn is not None:
            self.ua._abandon(self._invite_txn)
        self._end(487, "cancel", False, self._cancel_reason or "", now=now)

    def cancel(self, reason: str = "", *, now: float) -> None:
        """CANCEL (with an RFC 3326 Reason when ``reason``) before the final response;
        sent once a provisional response came (§9.1). After a 2xx: BYE."""
        if self.ended or self._cancel_reason is not None:
            return
        if self.state == "answered":
            self.bye(reason, now=now)
            return
        self._cancel_reason = reason
        if self._provisional:
            self._send_cancel(now)

    def bye(self, reason: str = "", *, now: float) -> None:
        """BYE after the 2xx (before it: CANCEL). ``Ended`` follows at once."""
        if self.ended:
            return
        if self.state != "answered":
            self.cancel(reason, now=now)
            return
        self._send_bye(reason, now)
        self._end(None, "bye", False, reason, now=now)

    def shutdown(self, now: float) -> None:
        if self.state == "answered":
            self._send_bye("shutdown", now)
        elif self._provisional:
            self._cancel_reason = "shutdown"
            self._send_cancel(now)
        self._end(None, "shutdown", False, now=now)


class IncomingSession(Session):
    """The SBC's INVITE, after the source check, authentication and the limits; 100
    Trying has been sent. ``request`` is the INVITE (for headers like
    P-Asserted-Identity)."""

    def __init__(
        self,
        ua: UserAgentCore,
        txn: InviteServerTransaction,
        request: Request,
        *,
        from_number: str,
        to_number: str,
        offer_sdp: str,
    ) -> None:
        super().__init__(ua, request.call_id, new_tag(), txn.peer)
        self.request = request
        self.from_number = from_number
        self.to_number = to_number
        self.offer_sdp = offer_sdp
        self.state = "ringing"
        self.txn = txn
        self.dialog = Dialog.as_uas(request, self.local_tag)
        self._answer_acked = False
        self._bye_pending: str | None = None

    def _contact_user(self) -> str:
        return self.to_number

    def _response(self, status: int, reason: str | None = None, sdp: str | None = None) -> Response:
        headers = self.ua._agent_header("Server")
        if 100 < status < 300:
            headers += self.ua._contact_headers(self.to_number, self._transport)
        return make_response(
            self.request,
            status,
            reason,
            to_tag=self.local_tag,
            headers=headers,
            body=sdp.encode() if sdp else b"",
        )

    def progress(self, status: int = 180, sdp: str | None = None, *, now: float) -> None:
        """180 Ringing, or 183 Session Progress with early-media SDP."""
        if self.ended:
            return
        if self.state != "ringing":
            raise CallError(f"progress() in state {self.state}")
        if not 101 <= status <= 199:
            raise ValueError(f"{status} is not a provisional status")
        if sdp:
            self.local_sdp = sdp
        self.ua._respond(self.txn, self._response(status, sdp=sdp), now)

    def answer(self, sdp: str, *, now: float) -> None:
        """200 OK with ``sdp``, sent again (T1 doubling to T2) until the ACK."""
        if self.ended:
            return
        if self.state != "ringing":
            raise CallError(f"answer() in state {self.state}")
        self.local_sdp = sdp
        response = self._response(200, sdp=sdp)
        self.ua._respond(self.txn, response, now)
        assert self.dialog is not None
        self.dialog.confirm()
        self.state = "answered"
        self._retransmit(response, self.txn.peer, now)

    def reject(
        self, status: int, reason: str = "", *, retry_after: int | None = None, now: float
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
        self.ua._respond(self.txn, response, now)
        self._end(status, "rejected", False, reason, now=now)

    def bye(self, reason: str = "", *, now: float) -> None:
        """BYE after the answer (sent once the ACK came, §15); before it: 480."""
        if self.ended:
            return
        if self.state == "ringing":
            self.reject(480, reason, now=now)
            return
        if self._answer_acked:
            self._send_bye(reason, now)
        else:
            self._bye_pending = reason
        self._end(None, "bye", False, reason, now=now)

    def _acked(self, seq: int, now: float) -> None:
        if seq == self.request.cseq.seq:
            self._answer_acked = True
            if self._bye_pending is not None:
                self._send_bye(self._bye_pending, now)
                self._bye_pending = None

    def _no_ack(self, retransmission: AnswerRetransmission, now: float) -> None:
        if self._bye_pending is not None:
            self._send_bye(self._bye_pending, now)
            self._bye_pending = None
        super()._no_ack(retransmission, now)

    def _remote_bye(self, request: Request, now: float) -> None:
        if self.state == "ringing" and not self.txn.final_sent:
            self.ua._respond(self.txn, self._response(487), now)
        self._end(None, "bye", True, reason_text(request), now=now)

    def cancelled(self, cancel: Request, now: float) -> None:
        """CANCEL for our INVITE: 487 unless we answered already (§9.2)."""
        if self.txn.final_sent:
            return
        self.ua._respond(self.txn, self._response(487), now)
        self._end(487, "cancel", True, reason_text(cancel), now=now)

    def shutdown(self, now: float) -> None:
        if self.state == "ringing":
            self.ua._respond(self.txn, self._response(503), now)
        elif self._answer_acked:
            self._send_bye("shutdown", now)
        self._end(None, "shutdown", False, now=now)


__all__ = [
    "Answered",
    "CallError",
    "CallEvent",
    "ClientHandler",
    "Ended",
    "IncomingSession",
    "OutboundSession",
    "Progress",
    "Session",
    "Timer",
    "UserAgentCore",
    "reason_header",
    "reason_text",
]
