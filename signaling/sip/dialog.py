"""SIP dialogs (RFC 3261 §12, §13.2.2.4, §13.3.1.4). Sans-I/O.

A ``Dialog`` holds what in-dialog requests need: Call-ID, local and remote tag,
local and remote URI, the CSeq counters, the route set (from Record-Route) and the
remote target (from Contact, refreshed by re-INVITE). It is early after a 1xx with
a To tag and confirmed after a 2xx.

``AnswerRetransmission`` is the UAS's duty for a 2xx to an INVITE: the 2xx is sent
again at T1, 2*T1, … capped at T2 until the ACK comes; after 64*T1 without one
the TU gets ``Expired`` and ends the dialog (it sends BYE).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from signaling.sip.message import URI as SipURI
from signaling.sip.message import Address, Request, Response, SipTarget, Via
from signaling.sip.transaction import (
    DEFAULT_TIMERS,
    Action,
    Expired,
    Send,
    StartTimer,
    TimerValues,
)


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class DialogId:
    call_id: str
    local_tag: str
    remote_tag: str


def dialog_id_of(message: Request | Response, *, received: bool) -> DialogId | None:
    """The id of the dialog ``message`` belongs to, None without both tags.

    A request we received has our tag in To; a response we received has it in From.
    """
    from_tag = message.from_addr.tag
    to_tag = message.to_addr.tag
    if not from_tag or not to_tag:
        return None
    is_request = isinstance(message, Request)
    if is_request == received:
        return DialogId(message.call_id, to_tag, from_tag)
    return DialogId(message.call_id, from_tag, to_tag)


class DialogError(ValueError):
    pass


class Dialog:
    def __init__(
        self,
        *,
        call_id: str,
        local_uri: Address,
        remote_uri: Address,
        remote_target: SipURI,
        route_set: tuple[Address, ...],
        local_seq: int,
        remote_seq: int | None,
        state: DialogState,
    ) -> None:
        if not local_uri.tag:
            raise DialogError("a dialog needs our tag")
        # The remote tag may be null: an RFC 2543 peer sends no From tag (§12.1.1).
        self.call_id = call_id
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.state = state

    @property
    def local_tag(self) -> str:
        return self.local_uri.tag or ""

    @property
    def remote_tag(self) -> str:
        return self.remote_uri.tag or ""

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def __repr__(self) -> str:
        return f"<Dialog {self.call_id} {self.state.value}>"

    @classmethod
    def as_uac(cls, request: Request, response: Response) -> Dialog:
        """§12.1.2: from our request and a 1xx (early) or 2xx (confirmed) with a To tag."""
        if not response.to_addr.tag:
            raise DialogError("the response has no To tag")
        contact = response.contact
        return cls(
            call_id=request.call_id,
            local_uri=request.from_addr,
            remote_uri=response.to_addr,
            remote_target=contact.uri if contact else request.uri,
            route_set=tuple(reversed(_routes(response.headers.get_all("Record-Route")))),
            local_seq=request.cseq.seq,
            remote_seq=None,
            state=DialogState.CONFIRMED if 200 <= response.status < 300 else DialogState.EARLY,
        )

    @classmethod
    def as_uas(cls, request: Request, local_tag: str, *, confirmed: bool = False) -> Dialog:
        """§12.1.1: from a request we received and the tag we put in our To. A request
        without a From tag makes a dialog whose remote tag is null; one without
        Contact (an RFC 2543 peer) one whose remote target is the From URI."""
        contact = request.contact
        return cls(
            call_id=request.call_id,
            local_uri=request.to_addr.with_tag(local_tag),
            remote_uri=request.from_addr,
            remote_target=contact.uri if contact is not None else request.from_addr.uri,
            route_set=tuple(_routes(request.headers.get_all("Record-Route"))),
            local_seq=0,
            remote_seq=request.cseq.seq,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
        )

    def confirm(self, response: Response | None = None) -> None:
        """The 2xx: confirmed; as UAC the route set and target come from the 2xx."""
        if response is not None:
            contact = response.contact
            if contact is not None:
                self.remote_target = contact.uri
            self.route_set = tuple(reversed(_routes(response.headers.get_all("Record-Route"))))
        self.state = DialogState.CONFIRMED

    def receive_request(self, request: Request) -> bool:
        """§12.2.2: False when the CSeq is lower than the last one (answer 500).
        A re-INVITE refreshes the remote target from its Contact."""
        if request.method in ("ACK", "CANCEL"):
            return True
        seq = request.cseq.seq
        if self.remote_seq is not None and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        if request.method in ("INVITE", "UPDATE"):
            contact = request.contact
            if contact is not None:
                self.remote_target = contact.uri
        return True

    @property
    def next_hop(self) -> SipURI:
        """Where in-dialog requests are sent (§12.2.1.1, §8.1.2)."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def _request_uri_and_routes(self) -> tuple[SipURI, list[Address]]:
        if not self.route_set or self.route_set[0].uri.has_param("lr"):
            return self.remote_target, list(self.route_set)
        # Strict routing: the first route becomes the Request-URI.
        first = self.route_set[0].uri
        return first, [*self.route_set[1:], Address(self.remote_target)]

    def create_request(
        self,
        method: str,
        *,
        via: Via,
        contact: Address | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        cseq: int | None = None,
    ) -> Request:
        """An in-dialog request (§12.2.1.1). A new CSeq unless ``cseq`` is given (ACK)."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        uri, routes = self._request_uri_and_routes()
        request = Request(method, uri)
        h = request.headers
        h.add("Via", str(via))
        h.add("Max-Forwards", "70")
        h.add("From", str(self.local_uri))
        h.add("To", str(self.remote_uri))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        for route in routes:
            h.add("Route", str(route))
        if contact is not None:
            h.add("Contact", str(contact))
        for name, value in headers:
            h.add(name, value)
        if body:
            h.add("Content-Type", content_type or "application/sdp")
        request.body = body
        return request

    def create_ack(self, invite_cseq: int, *, via: Via, body: bytes = b"") -> Request:
        """The ACK for a 2xx (§13.2.2.4): its own transaction, the INVITE's CSeq."""
        return self.create_request("ACK", via=via, cseq=invite_cseq, body=body)


def _routes(values: list[str]) -> list[Address]:
    return [Address.parse(v) for v in values]


class AnswerRetransmission:
    """The UAS core sending its 2xx to an INVITE again until the ACK (§13.3.1.4).

    Timer "2xx" resends (T1 doubling, capped at T2; not on a reliable transport);
    timer "ack" gives up after 64*T1 and returns ``Expired(self, "ack")``."""

    def __init__(
        self, response: Response, peer: SipTarget, timers: TimerValues = DEFAULT_TIMERS
    ) -> None:
        self.response = response
        self.peer = peer
        self.t = timers
        self.timers: dict[str, float] = {}
        self.acked = False
        self._interval = timers.t1

    def start(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if not self.peer.reliable:
            actions.append(self._start("2xx", now + self._interval))
        actions.append(self._start("ack", now + self.t.timeout))
        return actions

    def _start(self, name: str, at: float) -> StartTimer:
        self.timers[name] = at
        return StartTimer(self, name, at)

    def ack(self) -> None:
        """The ACK arrived: stop (the wheel drops the stale timers)."""
        self.acked = True
        self.timers.clear()

    def fire(self, name: str, now: float) -> list[Action]:
        if self.acked or self.timers.pop(name, None) is None:
            return []
        if name == "2xx":
            self._interval = min(2 * self._interval, self.t.t2)
            return [Send(self.response, self.peer), self._start("2xx", now + self._interval)]
        self.timers.clear()
        return [Expired(self, name)]


__all__ = [
    "AnswerRetransmission",
    "Dialog",
    "DialogError",
    "DialogId",
    "DialogState",
    "dialog_id_of",
]
