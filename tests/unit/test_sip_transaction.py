"""SIP transactions (RFC 3261 §17, RFC 6026) on a fake clock: every timer and schedule."""

from __future__ import annotations

import pytest

from signaling.sip.message import (
    URI,
    Address,
    Request,
    Response,
    SipTarget,
    Via,
    make_request,
    make_response,
    parse_message,
)
from signaling.sip.transaction import (
    Action,
    Deliver,
    InviteServerTransaction,
    NonInviteServerTransaction,
    Send,
    ServerTransaction,
    State,
    Terminated,
    Timeout,
    Transaction,
    TransactionLayer,
    make_ack,
    make_cancel,
)

UDP = SipTarget("udp", "127.0.0.1", 5070)
TCP = SipTarget("tcp", "127.0.0.1", 5070)


def request(
    method: str = "INVITE", branch: str = "z9hG4bKtest1", to_tag: str | None = None
) -> Request:
    to = Address(URI("sip", "+4930555000100", "anruf.invalid"))
    return make_request(
        method,
        URI("sip", "+4930555000100", "127.0.0.1", 5070),
        via=Via("UDP", "127.0.0.1", 5060, (("branch", branch), ("rport", None))),
        from_addr=Address(URI("sip", "+4917700000001", "anruf.invalid")).with_tag("from1"),
        to_addr=to.with_tag(to_tag) if to_tag else to,
        call_id="call-1",
        cseq=1,
    )


def wire(message: Request | Response) -> Request | Response:
    """Through the serializer and parser, as if it came off the network."""
    return parse_message(message.encode())


def visible(actions: list[Action]) -> list[Action]:
    """What the TU and the network see (no timer bookkeeping)."""
    return [a for a in actions if isinstance(a, Send | Deliver | Timeout | Terminated)]


def sends(actions: list[Action]) -> list[Request | Response]:
    return [a.message for a in actions if isinstance(a, Send)]


def delivered_to(actions: list[Action]) -> ServerTransaction:
    """The new server transaction a request was delivered with."""
    (txn,) = [a.transaction for a in actions if isinstance(a, Deliver)]
    assert isinstance(txn, InviteServerTransaction | NonInviteServerTransaction)
    return txn


def state(txn: Transaction) -> State:
    return txn.state


def run_until(layer: TransactionLayer, end: float) -> list[tuple[float, Action]]:
    """Fire every timer up to ``end``; the actions with the time they happened."""
    timeline: list[tuple[float, Action]] = []
    while (deadline := layer.next_deadline()) is not None and deadline <= end:
        timeline += [(deadline, a) for a in layer.on_timer(deadline)]
    return timeline


def send_times(timeline: list[tuple[float, Action]]) -> list[float]:
    return [t for t, a in timeline if isinstance(a, Send)]


def test_invite_client_udp_retransmits_doubling_until_timer_b() -> None:
    layer = TransactionLayer()
    txn, actions = layer.send_request(request(), UDP, 0.0)
    assert len(sends(actions)) == 1
    timeline = run_until(layer, 100.0)
    # Timer A: 0.5, 1, 2, 4, 8, 16 s apart (no T2 cap for INVITE), then Timer B at 64*T1.
    assert send_times(timeline) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    timeouts = [(t, a) for t, a in timeline if isinstance(a, Timeout)]
    assert timeouts == [(32.0, Timeout(txn, "B"))]
    assert (32.0, Terminated(txn)) in timeline
    assert state(txn) is State.TERMINATED
    assert layer.transactions == {}
    assert layer.next_deadline() is None


def test_invite_client_tcp_sends_once() -> None:
    layer = TransactionLayer()
    txn, _ = layer.send_request(request(), TCP, 0.0)
    timeline = run_until(layer, 100.0)
    assert send_times(timeline) == []
    assert [(t, a) for t, a in timeline if isinstance(a, Timeout)] == [(32.0, Timeout(txn, "B"))]


def test_invite_client_provisional_then_2xx_is_accepted_until_timer_m() -> None:
    layer = TransactionLayer()
    invite = request()
    txn, _ = layer.send_request(invite, UDP, 0.0)
    run_until(layer, 0.6)  # one retransmission
    ringing = wire(make_response(invite, 180, to_tag="t1"))
    assert isinstance(ringing, Response)
    actions = layer.receive_response(ringing, 0.7)
    assert Deliver(txn, ringing) in actions
    assert state(txn) is State.PROCEEDING
    assert send_times(run_until(layer, 10.0)) == []  # no more retransmissions, no Timer B
    ok = wire(make_response(invite, 200, to_tag="t1"))
    assert isinstance(ok, Response)
    assert Deliver(txn, ok) in layer.receive_response(ok, 10.0)
    assert state(txn) is State.ACCEPTED
    # RFC 6026: a retransmitted 2xx goes to the TU (which sends its ACK again).
    again = wire(ok)
    assert isinstance(again, Response)
    assert layer.receive_response(again, 11.0) == [Deliver(txn, again)]
    timeline = run_until(layer, 100.0)
    assert timeline == [(42.0, Terminated(txn))]  # Timer M = 64*T1 after the 2xx


def test_invite_client_non_2xx_is_acked_and_absorbed_until_timer_d() -> None:
    layer = TransactionLayer()
    invite = request()
    txn, _ = layer.send_request(invite, UDP, 0.0)
    busy = wire(make_response(invite, 486, to_tag="t2"))
    assert isinstance(busy, Response)
    actions = layer.receive_response(busy, 0.2)
    (ack,) = sends(actions)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.top_via.branch == invite.top_via.branch  # same transaction (§17.1.1.3)
    assert ack.cseq.seq == invite.cseq.seq and ack.cseq.method == "ACK"
    assert ack.to_addr.tag == "t2"
    assert ack.uri == invite.uri
    assert Deliver(txn, busy) in actions
    # The retransmitted 486 is answered with the ACK again and not delivered.
    again = layer.receive_response(busy, 1.0)
    assert [type(a) for a in again] == [Send]
    assert run_until(layer, 100.0) == [(32.2, Terminated(txn))]  # Timer D = 32 s


def test_invite_client_non_2xx_over_tcp_ends_at_once() -> None:
    layer = TransactionLayer()
    invite = request()
    txn, _ = layer.send_request(invite, TCP, 0.0)
    busy = wire(make_response(invite, 486, to_tag="t2"))
    assert isinstance(busy, Response)
    actions = layer.receive_response(busy, 0.2)
    assert Terminated(txn) in actions
    assert layer.transactions == {}


def test_non_invite_client_timer_e_caps_at_t2_until_timer_f() -> None:
    layer = TransactionLayer()
    txn, _ = layer.send_request(request("OPTIONS"), UDP, 0.0)
    timeline = run_until(layer, 100.0)
    # Timer E: 0.5, 1, 2, 4, then T2 = 4 s apart; Timer F at 32 s.
    assert send_times(timeline) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [(t, a) for t, a in timeline if isinstance(a, Timeout)] == [(32.0, Timeout(txn, "F"))]


def test_non_invite_client_proceeding_retransmits_every_t2_then_timer_k() -> None:
    layer = TransactionLayer()
    bye = request("BYE", to_tag="t3")
    txn, _ = layer.send_request(bye, UDP, 0.0)
    trying = wire(make_response(bye, 100))
    assert isinstance(trying, Response)
    layer.receive_response(trying, 0.1)
    assert state(txn) is State.PROCEEDING
    # Timer E was due at 0.5; in Proceeding it then runs at T2.
    assert send_times(run_until(layer, 9.0)) == [0.5, 4.5, 8.5]
    ok = wire(make_response(bye, 200))
    assert isinstance(ok, Response)
    assert Deliver(txn, ok) in layer.receive_response(ok, 9.0)
    assert layer.receive_response(ok, 9.5) == []  # a retransmitted final is absorbed
    assert run_until(layer, 100.0) == [(14.0, Terminated(txn))]  # Timer K = T4


def test_non_invite_client_over_tcp_ends_on_the_final() -> None:
    layer = TransactionLayer()
    bye = request("BYE", to_tag="t3")
    txn, _ = layer.send_request(bye, TCP, 0.0)
    ok = wire(make_response(bye, 200))
    assert isinstance(ok, Response)
    assert Terminated(txn) in layer.receive_response(ok, 1.0)


def incoming(method: str = "INVITE", **kwargs: str) -> Request:
    message = wire(request(method, **kwargs))
    assert isinstance(message, Request)
    return message


def test_invite_server_sends_100_and_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    invite = incoming()
    actions = layer.receive_request(invite, UDP, 0.0)
    (trying,) = sends(actions)
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.to_addr.tag is None
    txn = delivered_to(actions)
    # A retransmitted INVITE is not delivered again; the last response is resent.
    assert sends(layer.receive_request(incoming(), UDP, 0.5)) == [trying]
    ringing = make_response(invite, 180, to_tag="u1")
    layer.respond(txn, ringing, 1.0)
    assert sends(layer.receive_request(incoming(), UDP, 1.5)) == [ringing]


def test_invite_server_non_2xx_timer_g_until_ack_then_timer_i() -> None:
    layer = TransactionLayer()
    invite = incoming()
    actions = layer.receive_request(invite, UDP, 0.0)
    txn = delivered_to(actions)
    busy = make_response(invite, 486, to_tag="u1")
    layer.respond(txn, busy, 0.0)
    timeline = run_until(layer, 8.0)
    assert send_times(timeline) == [0.5, 1.5, 3.5, 7.5]  # Timer G: T1 doubling …
    timeline = run_until(layer, 16.0)
    assert send_times(timeline) == [11.5, 15.5]  # … capped at T2
    ack = wire(make_ack(invite, busy))
    assert isinstance(ack, Request)
    assert visible(layer.receive_request(ack, UDP, 16.0)) == []  # matched, not delivered
    assert state(txn) is State.CONFIRMED
    assert layer.receive_request(ack, UDP, 16.5) == []  # ACK retransmissions absorbed
    assert run_until(layer, 100.0) == [(21.0, Terminated(txn))]  # Timer I = T4


def test_invite_server_gives_up_waiting_for_ack_timer_h() -> None:
    layer = TransactionLayer()
    invite = incoming()
    actions = layer.receive_request(invite, UDP, 0.0)
    txn = delivered_to(actions)
    layer.respond(txn, make_response(invite, 603, to_tag="u1"), 1.0)
    timeline = run_until(layer, 100.0)
    assert (33.0, Timeout(txn, "H")) in timeline
    assert (33.0, Terminated(txn)) in timeline


def test_invite_server_2xx_is_accepted_until_timer_l() -> None:
    layer = TransactionLayer()
    invite = incoming()
    actions = layer.receive_request(invite, UDP, 0.0)
    txn = delivered_to(actions)
    ok = make_response(invite, 200, to_tag="u1")
    assert sends(layer.respond(txn, ok, 1.0)) == [ok]
    assert state(txn) is State.ACCEPTED
    # RFC 6026: INVITE retransmissions are absorbed; the TU resends its 2xx itself.
    assert layer.receive_request(incoming(), UDP, 1.5) == []
    assert sends(layer.respond(txn, ok, 1.5)) == [ok]
    with pytest.raises(ValueError):
        layer.respond(txn, make_response(invite, 486, to_tag="u1"), 2.0)
    # The ACK for a 2xx has its own branch: no transaction, delivered to the TU.
    ack = incoming("ACK", branch="z9hG4bKack", to_tag="u1")
    assert layer.receive_request(ack, UDP, 2.0) == [Deliver(None, ack)]
    assert run_until(layer, 100.0) == [(33.0, Terminated(txn))]


def test_non_invite_server_absorbs_then_repeats_final_until_timer_j() -> None:
    layer = TransactionLayer()
    bye = incoming("BYE", to_tag="u1")
    actions = layer.receive_request(bye, UDP, 0.0)
    assert sends(actions) == []  # no 100 for a non-INVITE
    txn = delivered_to(actions)
    assert layer.receive_request(incoming("BYE", to_tag="u1"), UDP, 0.2) == []  # Trying: absorbed
    ok = make_response(bye, 200)
    layer.respond(txn, ok, 0.3)
    assert sends(layer.receive_request(incoming("BYE", to_tag="u1"), UDP, 0.8)) == [ok]
    assert run_until(layer, 100.0) == [(32.3, Terminated(txn))]  # Timer J = 64*T1
    # Over TCP the transaction ends with the final response.
    tcp_layer = TransactionLayer()
    actions = tcp_layer.receive_request(bye, TCP, 0.0)
    tcp_txn = delivered_to(actions)
    assert Terminated(tcp_txn) in tcp_layer.respond(tcp_txn, ok, 0.1)


def test_matching_by_branch_sent_by_and_method() -> None:
    layer = TransactionLayer()
    invite = incoming()
    actions = layer.receive_request(invite, UDP, 0.0)
    txn = delivered_to(actions)
    # A CANCEL shares the INVITE's branch but is its own transaction; find_invite links them.
    cancel = wire(make_cancel(invite))
    assert isinstance(cancel, Request)
    cancel_actions = layer.receive_request(cancel, UDP, 0.1)
    cancel_txn = delivered_to(cancel_actions)
    assert cancel_txn is not txn
    assert layer.find_invite(cancel) is txn
    # Same branch from another sent-by is another transaction.
    other = parse_message(
        request().encode().replace(b"127.0.0.1:5060;branch", b"127.0.0.2:5060;branch")
    )
    assert isinstance(other, Request)
    assert any(isinstance(a, Deliver) for a in layer.receive_request(other, UDP, 0.2))
    # A response nobody waits for goes to the TU without a transaction.
    stray = wire(make_response(request(branch="z9hG4bKnobody"), 200, to_tag="x"))
    assert isinstance(stray, Response)
    assert layer.receive_response(stray, 0.3) == [Deliver(None, stray)]


def test_rfc2543_branch_falls_back_to_dialog_fields() -> None:
    layer = TransactionLayer()
    old = incoming(branch="1234")
    actions = layer.receive_request(old, UDP, 0.0)
    txn = delivered_to(actions)
    assert layer.receive_request(incoming(branch="1234"), UDP, 0.5) != []  # retransmission: resend
    busy = make_response(old, 486, to_tag="u9")
    layer.respond(txn, busy, 1.0)
    ack = wire(make_ack(old, busy))
    assert isinstance(ack, Request)
    layer.receive_request(ack, UDP, 1.2)
    assert state(txn) is State.CONFIRMED


def test_transport_error_ends_the_client_transaction() -> None:
    layer = TransactionLayer()
    txn, _ = layer.send_request(request(), TCP, 0.0)
    assert visible(layer.transport_error(txn, 0.1)) == [Timeout(txn, "transport"), Terminated(txn)]
    assert layer.transactions == {}


def test_ack_has_no_client_transaction() -> None:
    with pytest.raises(ValueError):
        TransactionLayer().send_request(request("ACK"), UDP, 0.0)
