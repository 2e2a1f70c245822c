"""The SIP user agent core joined in memory to a second core (the SBC's side).

``transfer(a, b)`` moves what one core sent, as bytes, to the other; time is a
number the tests advance. Our core listens on 192.0.2.1, the SBC's on 192.0.2.2,
and each takes the other as its SBC and accepted source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest

from signaling.sip.dialog import Dialog
from signaling.sip.message import (
    URI,
    Address,
    ParseError,
    Request,
    Response,
    SipTarget,
    Via,
    make_request,
    new_branch,
    parse_message,
)
from signaling.sip.session import (
    Answered,
    CallError,
    CallEvent,
    Ended,
    IncomingSession,
    OutboundSession,
    Progress,
    Session,
)
from signaling.sip.settings import TrunkSettings
from signaling.sip.transaction import Send
from signaling.sip.ua import (
    CallOffered,
    CallUpdate,
    Reoffered,
    TrunkStateChanged,
    TrunkUnavailable,
    UaAction,
    UserAgent,
)

OURS = "192.0.2.1"
SBC = "192.0.2.2"
STRANGER = "198.51.100.7"
CALLER = "+4917700000001"
CALLEE = "+4930555000100"
OFFER = "v=0\r\no=- 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
ANSWER = OFFER.replace("192.0.2.2", "192.0.2.1")


def settings(host: str, other: str, **changes: object) -> TrunkSettings:
    base = TrunkSettings(
        listen_host=host,
        listen_port=5060,
        transports=("udp",),
        sbc=(SipTarget("udp", other, 5060),),
        options_interval=0.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class Node:
    """One core and what came out of it: messages for the wire, events for the app."""

    def __init__(self, ua: UserAgent, host: str) -> None:
        self.ua = ua
        self.host = host
        self.outbox: list[Send] = []
        self.events: list[UaAction] = []
        #: Every message this node put on the wire, in order.
        self.sent: list[Request | Response] = []

    def absorb(self, actions: list[UaAction]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.outbox.append(action)
                self.sent.append(action.message)
            else:
                self.events.append(action)

    def call_events(self, call: Session) -> list[CallEvent]:
        return [e.event for e in self.events if isinstance(e, CallUpdate) and e.call is call]

    def offered(self) -> list[IncomingSession]:
        return [e.call for e in self.events if isinstance(e, CallOffered)]

    def sent_requests(self, method: str) -> list[Request]:
        return [m for m in self.sent if isinstance(m, Request) and m.method == method]

    def sent_responses(self, method: str) -> list[Response]:
        return [m for m in self.sent if isinstance(m, Response) and m.cseq.method == method]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0


def transfer(sender: Node, receiver: Node, now: float) -> int:
    """Move every datagram ``sender`` addressed to ``receiver``; how many moved."""
    moving = [s for s in sender.outbox if s.peer.host == receiver.host]
    sender.outbox = [s for s in sender.outbox if s.peer.host != receiver.host]
    for send in moving:
        source = SipTarget("udp", sender.host, 5060)
        receiver.absorb(receiver.ua.receive_datagram(send.message.encode(), source, now))
    return len(moving)


def settle(a: Node, b: Node, now: float) -> None:
    while transfer(a, b, now) + transfer(b, a, now):
        pass


def run_timers(nodes: tuple[Node, ...], clock: Clock, until: float) -> None:
    """Advance the clock to ``until``, firing every deadline on the way."""
    while True:
        deadlines = [d for n in nodes if (d := n.ua.next_deadline()) is not None]
        due = min(deadlines, default=None)
        if due is None or due > until:
            break
        clock.now = max(clock.now, due)
        for node in nodes:
            deadline = node.ua.next_deadline()
            if deadline is not None and deadline <= clock.now:
                node.absorb(node.ua.handle_timer(clock.now))
        if len(nodes) == 2:
            settle(nodes[0], nodes[1], clock.now)
    clock.now = until


@pytest.fixture
def clock() -> Clock:
    return Clock()


def client_and_server(
    clock: Clock, ours: Mapping[str, object] | None = None, sbc: Mapping[str, object] | None = None
) -> tuple[Node, Node]:
    """Our core and the SBC's, started, each the other's SBC and accepted source."""
    a = Node(UserAgent(settings(OURS, SBC, **(ours or {}))), OURS)
    b = Node(UserAgent(settings(SBC, OURS, **(sbc or {}))), SBC)
    a.absorb(a.ua.start(5060, clock.now))
    b.absorb(b.ua.start(5060, clock.now))
    return a, b


def invite(node: Node, clock: Clock, **kwargs: str) -> OutboundSession:
    call, actions = node.ua.invite(
        to_number=kwargs.get("to_number", CALLEE),
        from_number=kwargs.get("from_number", CALLER),
        sdp=kwargs.get("sdp", OFFER),
        now=clock.now,
    )
    node.absorb(actions)
    return call


def answered_call(
    caller: Node, callee: Node, clock: Clock
) -> tuple[OutboundSession, IncomingSession]:
    call = invite(caller, clock)
    settle(caller, callee, clock.now)
    (incoming,) = callee.offered()
    incoming.answer(ANSWER, now=clock.now)
    flush(callee, caller, clock)
    return call, incoming


def flush(node: Node, other: Node, clock: Clock) -> None:
    """After a session method: collect what ``node`` produced and deliver it all."""
    node.absorb(node.ua.take())
    settle(node, other, clock.now)


def offered_call(
    caller: Node, callee: Node, clock: Clock
) -> tuple[OutboundSession, IncomingSession]:
    """``caller``'s INVITE reached ``callee`` (100 Trying came back)."""
    call = invite(caller, clock)
    settle(caller, callee, clock.now)
    return call, callee.offered()[-1]


def ringing(caller: Node, callee: Node, clock: Clock) -> tuple[OutboundSession, IncomingSession]:
    """``caller``'s INVITE reached ``callee``, which answered 180."""
    call, incoming = offered_call(caller, callee, clock)
    incoming.progress(180, now=clock.now)
    flush(callee, caller, clock)
    return call, incoming


def options_from_sbc(call_id: str) -> Request:
    return make_request(
        "OPTIONS",
        URI("sip", None, OURS, 5060),
        via=Via("UDP", SBC, 5060, (("branch", new_branch()),)),
        from_addr=Address(URI("sip", "sbc", SBC)).with_tag("t"),
        to_addr=Address(URI("sip", None, OURS)),
        call_id=call_id,
        cseq=1,
    )


def invite_from_stranger(branch: str) -> Request:
    return make_request(
        "INVITE",
        URI("sip", CALLEE, OURS, 5060),
        via=Via("UDP", STRANGER, 5060, (("branch", branch),)),
        from_addr=Address(URI("sip", "scanner", STRANGER)).with_tag("t"),
        to_addr=Address(URI("sip", CALLEE, OURS)),
        call_id="scan",
        cseq=1,
    )


# INVITE, both directions -------------------------------------------------------------


def test_our_invite_is_answered_acked_and_hung_up(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    call, incoming = offered_call(ours, sbc, clock)
    assert (incoming.from_number, incoming.to_number, incoming.offer_sdp) == (
        CALLER,
        CALLEE,
        OFFER,
    )
    assert [r.status for r in sbc.sent_responses("INVITE")] == [100]

    incoming.progress(180, now=clock.now)
    flush(sbc, ours, clock)
    assert ours.call_events(call) == [Progress(180)]
    assert call.state == "early"

    incoming.answer(ANSWER, now=clock.now)
    flush(sbc, ours, clock)
    assert ours.call_events(call)[-1] == Answered(ANSWER)
    assert call.state == incoming.state == "answered"
    assert len(ours.sent_requests("ACK")) == 1
    assert not sbc.ua.retransmissions  # the ACK stopped the 2xx retransmission

    call.bye("caller hung up", now=clock.now)
    flush(ours, sbc, clock)
    assert ours.call_events(call)[-1] == Ended(None, "bye", False, "caller hung up")
    assert sbc.call_events(incoming) == [Ended(None, "bye", True, "caller hung up")]
    assert [r.status for r in sbc.sent_responses("BYE")] == [200]
    assert not ours.ua.active and not sbc.ua.active


def test_the_sbcs_invite_rings_is_answered_and_the_sbc_hangs_up(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote, call = offered_call(sbc, ours, clock)
    assert ours.ua.stats["calls_incoming"] == 1

    call.progress(183, ANSWER, now=clock.now)
    flush(ours, sbc, clock)
    assert sbc.call_events(remote) == [Progress(183, ANSWER)]

    call.answer(ANSWER, now=clock.now)
    flush(ours, sbc, clock)
    assert sbc.call_events(remote)[-1] == Answered(ANSWER)
    with pytest.raises(CallError):
        call.answer(ANSWER, now=clock.now)

    remote.bye("", now=clock.now)
    flush(sbc, ours, clock)
    assert ours.call_events(call) == [Ended(None, "bye", True, "")]


def test_a_rejected_invite_ends_with_its_status(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    call, incoming = offered_call(ours, sbc, clock)
    incoming.reject(486, "Busy Here", now=clock.now)
    flush(sbc, ours, clock)
    assert ours.call_events(call) == [Ended(486, "rejected", True, "Busy Here")]
    assert sbc.call_events(incoming) == [Ended(486, "rejected", False, "Busy Here")]
    assert len(ours.sent_requests("ACK")) == 1  # the transaction's ACK for a non-2xx


def test_no_response_to_our_invite_is_timer_b(clock: Clock) -> None:
    ours, _ = client_and_server(clock)
    call = invite(ours, clock)
    run_timers((ours,), clock, clock.now + 64 * 0.5 + 1)
    ours.outbox.clear()
    assert ours.call_events(call) == [Ended(None, "timeout", False, "no response to INVITE")]
    assert len(ours.sent_requests("INVITE")) == 7  # 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s


def test_no_ack_for_our_2xx_ends_the_call_with_bye(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote, call = offered_call(sbc, ours, clock)
    call.answer(ANSWER, now=clock.now)
    ours.absorb(ours.ua.take())
    ours.outbox.clear()  # the 200 OK is lost, and every retransmission of it
    clock.now += 64 * 0.5 + 0.1
    ours.absorb(ours.ua.handle_timer(clock.now))
    while (deadline := ours.ua.next_deadline()) is not None and deadline <= clock.now:
        ours.absorb(ours.ua.handle_timer(clock.now))
    assert ours.call_events(call) == [Ended(None, "timeout", False, "no ACK")]
    assert ours.ua.stats["no_ack"] == 1
    assert len(ours.sent_requests("BYE")) == 1
    assert len(ours.sent_responses("INVITE")) > 2  # sent again before giving up
    assert remote.state == "calling"


# CANCEL --------------------------------------------------------------------------------


def test_our_cancel_ends_a_ringing_call_with_487(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    call, incoming = ringing(ours, sbc, clock)
    call.cancel("caller gave up", now=clock.now)
    flush(ours, sbc, clock)
    assert sbc.call_events(incoming) == [Ended(487, "cancel", True, "caller gave up")]
    assert ours.call_events(call)[-1] == Ended(487, "cancel", False, "caller gave up")
    assert [r.status for r in sbc.sent_responses("CANCEL")] == [200]


def test_a_cancel_before_any_provisional_waits_for_one(clock: Clock) -> None:
    """§9.1: no CANCEL before a provisional response; ours waits for the 100."""
    ours, sbc = client_and_server(clock)
    call = invite(ours, clock)
    call.cancel("", now=clock.now)
    ours.absorb(ours.ua.take())
    assert not ours.sent_requests("CANCEL")
    settle(ours, sbc, clock.now)
    assert len(ours.sent_requests("CANCEL")) == 1
    assert ours.call_events(call) == [Ended(487, "cancel", False, "")]


def test_the_sbcs_cancel_ends_our_ringing_call(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote, call = ringing(sbc, ours, clock)
    remote.cancel("no answer", now=clock.now)
    flush(sbc, ours, clock)
    assert ours.call_events(call) == [Ended(487, "cancel", True, "no answer")]
    assert [r.status for r in ours.sent_responses("INVITE")] == [100, 180, 487]


def test_a_cancel_for_no_invite_gets_481(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote = invite(sbc, clock)
    settle(ours, sbc, clock.now)
    assert remote.invite_request is not None
    cancel = Request("CANCEL", remote.invite_request.uri, remote.invite_request.headers.copy())
    cancel.headers.replace_first("Via", str(Via("UDP", SBC, 5060, (("branch", new_branch()),))))
    cancel.headers.set("CSeq", "1 CANCEL")
    cancel.headers.remove("Content-Type")
    ours.absorb(ours.ua.receive(parse_message(cancel.encode()), SipTarget("udp", SBC, 5060), 0))
    assert [r.status for r in ours.sent_responses("CANCEL")] == [481]


# BYE and dialog matching (RFC 3261 §12.2.2) --------------------------------------------


def bye_from(dialog: Dialog, *, from_tag: str | None = None) -> bytes:
    request = dialog.create_request("BYE", via=Via("UDP", SBC, 5060, (("branch", new_branch()),)))
    if from_tag is not None:
        request.headers.set("From", str(dialog.local_uri.with_tag(from_tag)))
    return request.encode()


def test_a_bye_with_a_wrong_from_tag_gets_481_and_the_call_goes_on(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote, call = offered_call(sbc, ours, clock)
    call.answer(ANSWER, now=clock.now)
    flush(ours, sbc, clock)
    assert remote.dialog is not None
    source = SipTarget("udp", SBC, 5060)

    forged = bye_from(remote.dialog, from_tag="not-the-callers")
    ours.absorb(ours.ua.receive_datagram(forged, source, clock.now))
    assert [r.status for r in ours.sent_responses("BYE")] == [481]
    assert call.state == "answered" and not ours.call_events(call)

    ours.absorb(ours.ua.receive_datagram(bye_from(remote.dialog), source, clock.now))
    assert [r.status for r in ours.sent_responses("BYE")] == [481, 200]
    assert ours.call_events(call) == [Ended(None, "bye", True, "")]


def test_an_ack_with_a_wrong_from_tag_does_not_stop_the_2xx(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote, call = offered_call(sbc, ours, clock)
    call.answer(ANSWER, now=clock.now)
    ours.absorb(ours.ua.take())
    ours.outbox.clear()  # the SBC never sees the 200
    invite_request = remote.invite_request
    assert invite_request is not None
    ack = make_request(
        "ACK",
        invite_request.uri,
        via=Via("UDP", SBC, 5060, (("branch", new_branch()),)),
        from_addr=invite_request.from_addr.with_tag("forged"),
        to_addr=invite_request.to_addr.with_tag(call.local_tag),
        call_id=call.call_id,
        cseq=invite_request.cseq.seq,
    )
    ours.absorb(ours.ua.receive_datagram(ack.encode(), SipTarget("udp", SBC, 5060), clock.now))
    assert ours.ua.retransmissions  # still waiting for the real ACK


def test_a_bye_for_no_call_gets_481(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    _, incoming = answered_call(sbc, ours, clock)
    assert incoming.dialog is not None
    stray = make_request(
        "BYE",
        URI("sip", CALLEE, OURS, 5060),
        via=Via("UDP", SBC, 5060, (("branch", new_branch()),)),
        from_addr=incoming.request.from_addr,
        to_addr=incoming.request.to_addr.with_tag("unknown"),
        call_id=incoming.call_id,
        cseq=9,
    )
    ours.absorb(ours.ua.receive_datagram(stray.encode(), SipTarget("udp", SBC, 5060), 0))
    assert [r.status for r in ours.sent_responses("BYE")] == [481]


# Older and pickier peers (RFC 4475 §3.3.15, §3.4.1) --------------------------------------


def raw_invite(*, via: str, headers: str = "", from_tag: str = "") -> bytes:
    """An INVITE from the SBC as bytes, with only what ``via`` and ``headers`` add."""
    tag = f";tag={from_tag}" if from_tag else ""
    return (
        f"INVITE sip:{CALLEE}@{OURS} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        f"From: <sip:{CALLER}@{SBC};user=phone>{tag}\r\n"
        f"To: sip:{CALLEE}@{OURS};user=phone\r\n"
        f"Call-ID: older-peer@{SBC}\r\nCSeq: 56 INVITE\r\n{headers}"
        f"Content-Type: application/sdp\r\n\r\n{OFFER}"
    ).encode()


def from_sbc(node: Node, data: bytes, clock: Clock) -> None:
    node.absorb(node.ua.receive_datagram(data, SipTarget("udp", SBC, 5060), clock.now))


RFC3261_VIA = f"SIP/2.0/UDP {SBC}:5060;branch=z9hG4bKpicky"
CONTACT = f"Contact: <sip:{CALLER}@{SBC}:5060>\r\n"


@pytest.mark.parametrize("accept", ["text/nobodyKnowsThis", "", "application/sdp;q=0, text/plain"])
def test_an_invite_that_does_not_accept_sdp_gets_406(clock: Clock, accept: str) -> None:
    """RFC 3261 §21.4.7, RFC 4475 §3.3.15: our answer would carry SDP; an empty
    Accept accepts nothing (§20.1)."""
    ours, _ = client_and_server(clock)
    headers = f"{CONTACT}Accept: {accept}\r\n"
    from_sbc(ours, raw_invite(via=RFC3261_VIA, headers=headers, from_tag="t1"), clock)
    assert [r.status for r in ours.sent_responses("INVITE")] == [100, 406]
    assert not ours.offered()


@pytest.mark.parametrize("accept", ["application/sdp", "application/*;q=0.5", "*/*, text/x"])
def test_an_invite_that_accepts_sdp_is_offered(clock: Clock, accept: str) -> None:
    ours, _ = client_and_server(clock)
    headers = f"{CONTACT}Accept: {accept}\r\n"
    from_sbc(ours, raw_invite(via=RFC3261_VIA, headers=headers, from_tag="t1"), clock)
    assert len(ours.offered()) == 1


def test_a_reinvite_that_does_not_accept_sdp_gets_406(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote, call = answered_call(sbc, ours, clock)
    reinvite(sbc, remote, OFFER)
    (request,) = [s.message for s in sbc.outbox if isinstance(s.message, Request)]
    request.headers.add("Accept", "text/plain")
    settle(sbc, ours, clock.now)
    assert [r.status for r in ours.sent_responses("INVITE")][-1] == 406
    assert not [e for e in ours.events if isinstance(e, Reoffered)]
    assert call.state == "answered"


@pytest.mark.parametrize(
    ("headers", "from_tag", "warning"),
    [("", "t1", "Contact"), (CONTACT, "", "From tag")],
)
def test_an_rfc3261_invite_without_contact_or_from_tag_gets_400(
    clock: Clock, headers: str, from_tag: str, warning: str
) -> None:
    """§8.1.1.3, §8.1.1.8: mandatory for a UAC whose branch has the magic cookie."""
    ours, _ = client_and_server(clock)
    from_sbc(ours, raw_invite(via=RFC3261_VIA, headers=headers, from_tag=from_tag), clock)
    final = ours.sent_responses("INVITE")[-1]
    assert final.status == 400 and warning in (final.headers.get("Warning") or "")
    assert not ours.offered()


def rfc2543_request(method: str, to_tag: str, *, from_tag: str = "", cseq: int = 57) -> bytes:
    """An in-dialog request of the RFC 2543 peer: no branch, no Max-Forwards."""
    tag = f";tag={from_tag}" if from_tag else ""
    return (
        f"{method} sip:{CALLEE}@{OURS}:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {SBC}\r\n"
        f"From: <sip:{CALLER}@{SBC};user=phone>{tag}\r\n"
        f"To: <sip:{CALLEE}@{OURS};user=phone>;tag={to_tag}\r\n"
        f"Call-ID: older-peer@{SBC}\r\nCSeq: {cseq} {method}\r\n\r\n"
    ).encode()


def test_an_rfc2543_call_is_answered_acked_and_hung_up_by_the_peer(clock: Clock) -> None:
    """RFC 4475 §3.4.1: no branch, no From tag, no Contact, no Max-Forwards, no
    Content-Length; the call proceeds. The dialog's remote tag is null (§12.1.1), so
    only requests without a From tag are in it (§12.2.2)."""
    ours, _ = client_and_server(clock)
    from_sbc(ours, raw_invite(via=f"SIP/2.0/UDP {SBC}"), clock)
    (call,) = ours.offered()
    assert (call.from_number, call.to_number, call.offer_sdp) == (CALLER, CALLEE, OFFER)
    call.answer(ANSWER, now=clock.now)
    ours.absorb(ours.ua.take())
    ok = ours.sent_responses("INVITE")[-1]
    assert ok.status == 200 and ok.to_addr.tag == call.local_tag
    assert ok.from_addr.tag is None

    from_sbc(ours, rfc2543_request("ACK", call.local_tag, cseq=56), clock)
    assert not ours.ua.retransmissions  # the ACK matched the dialog

    from_sbc(ours, rfc2543_request("BYE", call.local_tag, from_tag="guessed"), clock)
    assert [r.status for r in ours.sent_responses("BYE")] == [481]
    assert call.state == "answered"
    from_sbc(ours, rfc2543_request("BYE", call.local_tag), clock)
    assert [r.status for r in ours.sent_responses("BYE")] == [481, 200]
    assert ours.call_events(call) == [Ended(None, "bye", True, "")]


def test_our_bye_to_an_rfc2543_peer_goes_to_its_from_uri(clock: Clock) -> None:
    """Without Contact the remote target is the From URI; its To carries no tag."""
    ours, _ = client_and_server(clock)
    from_sbc(ours, raw_invite(via=f"SIP/2.0/UDP {SBC}"), clock)
    (call,) = ours.offered()
    call.answer(ANSWER, now=clock.now)
    ours.absorb(ours.ua.take())
    from_sbc(ours, rfc2543_request("ACK", call.local_tag, cseq=56), clock)
    call.bye("done", now=clock.now)
    ours.absorb(ours.ua.take())
    (bye,) = ours.sent_requests("BYE")
    assert str(bye.uri) == f"sip:{CALLER}@{SBC};user=phone"
    assert bye.to_addr.tag is None and bye.from_addr.tag == call.local_tag
    assert ours.outbox[-1].peer == SipTarget("udp", SBC, 5060)


# re-INVITE (§14) --------------------------------------------------------------------------


def reinvite(node: Node, call: Session, sdp: str) -> None:
    """The far end sends a re-INVITE on ``call``'s dialog (our core has no API for
    sending one: it only answers them)."""
    assert call.dialog is not None
    request = call.dialog.create_request(
        "INVITE",
        via=Via("UDP", node.host, 5060, (("branch", new_branch()), ("rport", None))),
        contact=Address(URI("sip", CALLER, node.host, 5060)),
        body=sdp.encode(),
    )
    node.outbox.append(Send(request, SipTarget("udp", OURS, 5060)))
    node.sent.append(request)


def test_a_reinvite_is_offered_answered_and_acked(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote, call = answered_call(sbc, ours, clock)
    held = OFFER + "a=sendonly\r\n"
    reinvite(sbc, remote, held)
    transfer(sbc, ours, clock.now)
    (reoffer,) = [e for e in ours.events if isinstance(e, Reoffered)]
    assert reoffer.call is call and reoffer.offer == held

    call.answer_reoffer(ANSWER + "a=recvonly\r\n", now=clock.now)
    ours.absorb(ours.ua.take())
    transfer(ours, sbc, clock.now)
    ok = ours.sent_responses("INVITE")[-1]
    assert ok.status == 200 and ok.body.decode().endswith("a=recvonly\r\n")
    assert ok.headers.get("Supported") == ""
    assert call.local_sdp.endswith("a=recvonly\r\n")
    # The far end's ACK stops our 2xx retransmission.
    assert remote.dialog is not None
    ack = remote.dialog.create_ack(
        ok.cseq.seq, via=Via("UDP", SBC, 5060, (("branch", new_branch()),))
    )
    ours.absorb(ours.ua.receive_datagram(ack.encode(), SipTarget("udp", SBC, 5060), clock.now))
    assert not ours.ua.retransmissions


def test_a_reinvite_the_application_cannot_take_gets_488(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote, call = answered_call(sbc, ours, clock)
    reinvite(sbc, remote, OFFER)
    transfer(sbc, ours, clock.now)
    call.reject_reoffer(now=clock.now)
    ours.absorb(ours.ua.take())
    assert ours.sent_responses("INVITE")[-1].status == 488
    assert call.state == "answered"


def test_a_second_reinvite_while_one_is_pending_gets_500(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    remote, _ = answered_call(sbc, ours, clock)
    reinvite(sbc, remote, OFFER)
    reinvite(sbc, remote, OFFER)
    transfer(sbc, ours, clock.now)
    last = ours.sent_responses("INVITE")[-1]
    assert last.status == 500 and last.headers.get("Retry-After")


# Digest authentication (RFC 3261 §22, RFC 7616) ----------------------------------------


CREDENTIALS = {"inbound_username": "operator-sbc", "inbound_password": "in-s3cret"}


def test_the_sbc_answers_our_challenge_and_the_call_comes_through(clock: Clock) -> None:
    ours, sbc = client_and_server(
        clock, ours=CREDENTIALS, sbc={"username": "operator-sbc", "password": "in-s3cret"}
    )
    invite(sbc, clock)
    settle(ours, sbc, clock.now)
    (call,) = ours.offered()
    # 100 Trying comes from the transaction layer, before the core looks (§17.2.1).
    assert [r.status for r in ours.sent_responses("INVITE")] == [100, 401, 100]
    assert (call.request.headers.get("Authorization") or "").startswith("Digest ")
    assert ours.ua.stats["challenges_sent"] == 1
    assert sbc.ua.stats["challenges_answered"] == 1


def test_a_wrong_password_gets_403(clock: Clock) -> None:
    ours, sbc = client_and_server(
        clock, ours=CREDENTIALS, sbc={"username": "operator-sbc", "password": "guess"}
    )
    remote = invite(sbc, clock)
    settle(ours, sbc, clock.now)
    assert not ours.offered()
    assert [r.status for r in ours.sent_responses("INVITE")] == [100, 401, 100, 403]
    assert sbc.call_events(remote) == [Ended(403, "rejected", True, "Forbidden")]
    assert ours.ua.stats["auth_failures"] == 1


def test_repeated_wrong_passwords_lock_the_source_and_username_out(clock: Clock) -> None:
    limits = {**CREDENTIALS, "auth_max_failures": 3, "auth_lockout_seconds": 60.0}
    ours, guesser = client_and_server(
        clock, ours=limits, sbc={"username": "operator-sbc", "password": "guess"}
    )
    for _ in range(3):
        invite(guesser, clock)
        settle(ours, guesser, clock.now)
    assert ours.ua.stats["auth_failures"] == 3
    assert ours.ua.stats["auth_lockouts"] == 1
    assert ours.ua.auth_guard.locked(clock.now) == [(SBC, "operator-sbc")]

    # Locked out: even the right password is not checked.
    right = Node(UserAgent(settings(SBC, OURS, username="operator-sbc", password="in-s3cret")), SBC)
    right.absorb(right.ua.start(5060, clock.now))
    invite(right, clock)
    settle(ours, right, clock.now)
    assert not ours.offered()
    assert ours.ua.stats["auth_locked_out"] == 1
    assert ours.ua.stats["auth_failures"] == 3  # no guess was checked
    assert [r.status for r in ours.sent_responses("INVITE")][-3:] == [401, 100, 403]

    # Another username from the same source is not locked out by it.
    other = Node(UserAgent(settings(SBC, OURS, username="someone", password="x")), SBC)
    other.absorb(other.ua.start(5060, clock.now))
    invite(other, clock)
    settle(ours, other, clock.now)
    assert ours.ua.stats["auth_failures"] == 4

    # After the lockout the right password works again.
    clock.now += 61
    invite(right, clock)
    settle(ours, right, clock.now)
    assert len(ours.offered()) == 1


def test_a_success_forgets_earlier_failures(clock: Clock) -> None:
    limits = {**CREDENTIALS, "auth_max_failures": 2}
    ours, guesser = client_and_server(
        clock, ours=limits, sbc={"username": "operator-sbc", "password": "guess"}
    )
    right = Node(UserAgent(settings(SBC, OURS, username="operator-sbc", password="in-s3cret")), SBC)
    right.absorb(right.ua.start(5060, clock.now))
    invite(guesser, clock)
    settle(ours, guesser, clock.now)
    invite(right, clock)
    settle(ours, right, clock.now)
    invite(guesser, clock)
    settle(ours, guesser, clock.now)
    assert ours.ua.stats["auth_failures"] == 2
    assert ours.ua.stats["auth_lockouts"] == 0


# The source guard --------------------------------------------------------------------------


def test_responses_from_a_stranger_are_charged_dropped_unparsed_and_get_it_blocked(
    clock: Clock,
) -> None:
    ours, _ = client_and_server(
        clock, ours={"requests_per_second_per_source": 5.0, "block_after": 1.0}
    )
    source = SipTarget("udp", STRANGER, 5060)
    response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKx\r\n\r\n"
    for i in range(40):
        ours.absorb(ours.ua.receive_datagram(response, source, clock.now + i * 0.05))
    assert ours.ua.stats["sources_blocked"] == 1
    assert STRANGER in ours.ua.guard.blocked_sources(clock.now + 2)
    assert ours.ua.stats["responses_dropped"] > 0
    assert ours.ua.stats["requests_blocked"] > 0
    assert not ours.sent  # nothing answered


def test_malformed_tcp_requests_are_charged_to_their_source(clock: Clock) -> None:
    ours, _ = client_and_server(
        clock, ours={"requests_per_second_per_source": 5.0, "block_after": 1.0}
    )
    source = SipTarget("tcp", STRANGER, 40000)
    for i in range(40):
        broken = ParseError("bad CSeq", partial=None)
        ours.absorb(ours.ua.receive_stream(broken, source, clock.now + i * 0.05))
    assert ours.ua.stats["sources_blocked"] == 1
    assert not ours.ua.admits(STRANGER, clock.now + 2)  # its connections are refused


def test_an_accepted_source_over_its_rate_gets_one_503_a_second(clock: Clock) -> None:
    ours, _ = client_and_server(clock, ours={"requests_per_second_per_source": 1.0})
    options = options_from_sbc("flood")
    source = SipTarget("udp", SBC, 5060)
    for i in range(10):
        options.headers.replace_first(
            "Via", str(Via("UDP", SBC, 5060, (("branch", f"z9hG4bK{i}"),)))
        )
        ours.absorb(ours.ua.receive_datagram(options.encode(), source, clock.now))
    statuses = [r.status for r in ours.sent_responses("OPTIONS")]
    assert statuses == [200, 200, 503]  # a burst of two, then one 503 and silence
    assert ours.ua.stats["requests_rate_limited"] == 8
    assert ours.ua.stats["sources_blocked"] == 0  # the SBC is never blocked


def test_a_request_from_a_stranger_gets_403_without_a_server_header(clock: Clock) -> None:
    ours, _ = client_and_server(clock)
    request = invite_from_stranger(new_branch())
    source = SipTarget("udp", STRANGER, 5060)
    ours.absorb(ours.ua.receive_datagram(request.encode(), source, clock.now))
    (forbidden,) = ours.sent_responses("INVITE")
    assert forbidden.status == 403
    assert "Server" not in forbidden.headers and "User-Agent" not in forbidden.headers


def test_the_server_header_is_the_setting(clock: Clock) -> None:
    ours, sbc = client_and_server(clock, ours={"user_agent": "Trunk/1"})
    call = invite(ours, clock)
    settle(ours, sbc, clock.now)
    assert ours.sent_requests("INVITE")[0].headers.get("User-Agent") == "Trunk/1"
    remote, incoming = offered_call(sbc, ours, clock)
    incoming.reject(486, now=clock.now)
    ours.absorb(ours.ua.take())
    responses = [r for r in ours.sent_responses("INVITE") if r.status > 100]
    assert responses and all(r.headers.get("Server") == "Trunk/1" for r in responses)
    assert call and remote


# What our messages carry ---------------------------------------------------------------


def test_our_invite_asserts_the_callers_number(clock: Clock) -> None:
    """RFC 3325 §9.1: the operator's network trusts us for the caller's identity."""
    ours, sbc = client_and_server(clock)
    invite(ours, clock)
    settle(ours, sbc, clock.now)
    (request,) = ours.sent_requests("INVITE")
    asserted = Address.parse(request.headers.get("P-Asserted-Identity") or "")
    assert asserted.uri.user == CALLER
    assert asserted.uri.param("user") == "phone"
    assert request.headers.get("Supported") == ""
    (incoming,) = sbc.offered()
    assert incoming.request.headers.get("P-Asserted-Identity") == str(asserted)


def test_our_answers_and_options_advertise_supported(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    _, call = answered_call(sbc, ours, clock)
    ok = ours.sent_responses("INVITE")[-1]
    assert ok.status == 200 and "Supported" in ok.headers
    options = options_from_sbc("ping")
    ours.absorb(ours.ua.receive_datagram(options.encode(), SipTarget("udp", SBC, 5060), 0))
    (pong,) = ours.sent_responses("OPTIONS")
    assert pong.status == 200
    assert pong.headers.get("Allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS"
    assert "Supported" in pong.headers
    assert call.state == "answered"


# SBC health and limits -------------------------------------------------------------------


def test_options_keepalive_brings_the_trunk_up_and_a_silent_sbc_down(clock: Clock) -> None:
    ours = Node(UserAgent(settings(OURS, SBC, options_interval=30.0)), OURS)
    sbc = Node(UserAgent(settings(SBC, OURS)), SBC)
    sbc.absorb(sbc.ua.start(5060, clock.now))
    ours.absorb(ours.ua.start(5060, clock.now))
    assert not ours.ua.up
    with pytest.raises(TrunkUnavailable):
        ours.ua.invite(to_number=CALLEE, from_number=CALLER, sdp=OFFER, now=clock.now)
    settle(ours, sbc, clock.now)
    assert ours.ua.up and ours.events == [TrunkStateChanged(True)]
    # The SBC goes silent: the next OPTIONS times out (Timer F) and the trunk is down.
    sbc.ua.started = False
    run_timers((ours, sbc), clock, clock.now + 30 + 64 * 0.5 + 1)
    assert not ours.ua.up and ours.events[-1] == TrunkStateChanged(False)
    assert ours.ua.stats["options_failed"] >= 1


def test_max_concurrent_calls_refuses_more_both_ways(clock: Clock) -> None:
    ours, sbc = client_and_server(clock, ours={"max_concurrent_calls": 1})
    invite(ours, clock)
    with pytest.raises(TrunkUnavailable, match="max_concurrent_calls"):
        invite(ours, clock)
    invite(sbc, clock)
    settle(ours, sbc, clock.now)
    assert [r.status for r in ours.sent_responses("INVITE")] == [100, 503]


def test_stop_ends_every_call(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    out = invite(ours, clock)
    remote = invite(sbc, clock)
    settle(ours, sbc, clock.now)
    incoming = next(c for c in ours.offered())
    ours.absorb(ours.ua.stop(clock.now))
    assert ours.call_events(out) == [Ended(None, "shutdown", False)]
    assert ours.call_events(incoming) == [Ended(None, "shutdown", False)]
    settle(ours, sbc, clock.now)
    assert sbc.call_events(remote)[-1] == Ended(503, "rejected", True, "Service Unavailable")


def test_a_forgotten_call_lingers_for_late_retransmissions(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    call, incoming = answered_call(ours, sbc, clock)
    call.bye("", now=clock.now)
    flush(ours, sbc, clock)
    assert (call.call_id, call.local_tag) in ours.ua.calls
    run_timers((ours, sbc), clock, clock.now + 64 * 0.5 + 5 + 1)
    assert not ours.ua.calls and not ours.ua.layer.transactions and not ours.ua.handlers
    assert incoming.ended


def test_a_2xx_retransmitted_after_timer_m_is_acked_again(clock: Clock) -> None:
    ours, sbc = client_and_server(clock)
    call, _ = answered_call(ours, sbc, clock)
    ok = sbc.sent_responses("INVITE")[-1]
    run_timers((ours, sbc), clock, clock.now + 64 * 0.5 + 1)  # Timer M ends the txn
    acks = len(ours.sent_requests("ACK"))
    ours.absorb(ours.ua.receive_datagram(ok.encode(), SipTarget("udp", SBC, 5060), clock.now))
    assert len(ours.sent_requests("ACK")) == acks + 1
    assert call.state == "answered"


def test_a_stateless_403_has_the_same_to_tag_for_a_retransmission(clock: Clock) -> None:
    ours, _ = client_and_server(clock)
    request = invite_from_stranger("z9hG4bKsame")
    source = SipTarget("udp", STRANGER, 5060)
    for _ in range(2):
        ours.absorb(ours.ua.receive_datagram(request.encode(), source, clock.now))
    first, second = ours.sent_responses("INVITE")
    assert first.status == second.status == 403
    assert first.to_addr.tag == second.to_addr.tag


def test_an_ack_on_the_invites_branch_stops_the_2xx_too(clock: Clock) -> None:
    """RFC 6026 §8.4: an ACK matching the INVITE's transaction (Accepted) reaches the
    core like any 2xx ACK, and nothing is answered to it."""
    ours, sbc = client_and_server(clock)
    remote, call = offered_call(sbc, ours, clock)
    call.answer(ANSWER, now=clock.now)
    ours.absorb(ours.ua.take())
    ours.outbox.clear()
    invite_request = remote.invite_request
    assert invite_request is not None
    ack = make_request(
        "ACK",
        invite_request.uri,
        via=invite_request.top_via,
        from_addr=invite_request.from_addr,
        to_addr=invite_request.to_addr.with_tag(call.local_tag),
        call_id=call.call_id,
        cseq=invite_request.cseq.seq,
    )
    sent = len(ours.sent)
    ours.absorb(ours.ua.receive_datagram(ack.encode(), SipTarget("udp", SBC, 5060), clock.now))
    assert not ours.ua.retransmissions
    assert len(ours.sent) == sent and ours.ua.stats["internal_errors"] == 0
