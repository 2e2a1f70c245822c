"""SIP dialogs: tags, CSeq numbering, route set, target refresh, 2xx retransmission."""

from __future__ import annotations

from signaling.sip.dialog import (
    AnswerRetransmission,
    Dialog,
    DialogId,
    DialogState,
    dialog_id_of,
)
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
from signaling.sip.transaction import Expired, Send, TimerValues, TimerWheel

VIA = Via("UDP", "127.0.0.1", 5060, (("branch", "z9hG4bKd1"),))


def our_invite() -> Request:
    return make_request(
        "INVITE",
        URI("sip", "+4930555000100", "192.0.2.1", 5060, (("user", "phone"),)),
        via=VIA,
        from_addr=Address(URI("sip", "+4917700000001", "anruf.invalid")).with_tag("ours"),
        to_addr=Address(URI("sip", "+4930555000100", "anruf.invalid")),
        call_id="dlg-1",
        cseq=7,
        contact=Address(URI("sip", "+4917700000001", "127.0.0.1", 5060)),
    )


def sbc_answer(
    invite: Request, status: int = 200, contact: str = "<sip:192.0.2.1:5060>"
) -> Response:
    response = make_response(invite, status, to_tag="theirs")
    response.headers.add("Contact", contact)
    response.headers.add("Record-Route", "<sip:192.0.2.2;lr>")
    response.headers.add("Record-Route", "<sip:192.0.2.3;lr>")
    parsed = parse_message(response.encode())
    assert isinstance(parsed, Response)
    return parsed


def test_uac_dialog_from_2xx() -> None:
    invite = our_invite()
    dialog = Dialog.as_uac(invite, sbc_answer(invite))
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.id == DialogId("dlg-1", "ours", "theirs")
    assert dialog.remote_target == URI("sip", None, "192.0.2.1", 5060)
    # The UAC reverses Record-Route (§12.1.2).
    assert [str(r.uri) for r in dialog.route_set] == ["sip:192.0.2.3;lr", "sip:192.0.2.2;lr"]
    assert dialog.next_hop == URI.parse("sip:192.0.2.3;lr")
    bye = dialog.create_request("BYE", via=VIA)
    assert bye.uri == dialog.remote_target  # loose routing: Request-URI is the target
    assert bye.headers.get_all("Route") == ["<sip:192.0.2.3;lr>", "<sip:192.0.2.2;lr>"]
    assert bye.cseq.seq == 8 and bye.cseq.method == "BYE"
    assert bye.from_addr.tag == "ours" and bye.to_addr.tag == "theirs"
    assert dialog.create_request("INFO", via=VIA).cseq.seq == 9
    ack = dialog.create_ack(7, via=VIA)
    assert (ack.cseq.seq, ack.cseq.method) == (7, "ACK")  # the INVITE's number (§13.2.2.4)
    assert dialog.local_seq == 9


def test_uac_early_dialog_is_confirmed_by_the_2xx() -> None:
    invite = our_invite()
    early = Dialog.as_uac(invite, sbc_answer(invite, 183, "<sip:192.0.2.9:5060>"))
    assert early.state is DialogState.EARLY
    early.confirm(sbc_answer(invite, 200, "<sip:192.0.2.1:5062>"))
    assert early.id.remote_tag == "theirs"
    assert early.state.value == "confirmed"
    assert early.remote_target.port == 5062  # the 2xx's Contact wins


def test_uas_dialog_and_remote_cseq_order() -> None:
    incoming = our_invite()
    incoming.headers.add("Record-Route", "<sip:192.0.2.2;lr>")
    dialog = Dialog.as_uas(incoming, "local")
    assert dialog.id == DialogId("dlg-1", "local", "ours")
    assert [str(r.uri) for r in dialog.route_set] == ["sip:192.0.2.2;lr"]  # not reversed
    assert dialog.remote_seq == 7
    bye = dialog.create_request("BYE", via=VIA)
    assert bye.cseq.seq == 1  # our own numbering starts fresh
    assert bye.from_addr.tag == "local" and bye.to_addr.tag == "ours"
    reinvite = make_request(
        "INVITE",
        URI("sip", None, "127.0.0.1", 5060),
        via=VIA,
        from_addr=dialog.remote_uri,
        to_addr=dialog.local_uri,
        call_id="dlg-1",
        cseq=8,
        contact=Address(URI("sip", "+4917700000001", "198.51.100.9", 5080)),
    )
    assert dialog.receive_request(reinvite)
    assert dialog.remote_target.host == "198.51.100.9"  # target refresh
    assert not dialog.receive_request(reinvite)  # same CSeq again: out of order (500)
    assert dialog_id_of(reinvite, received=True) == dialog.id


def test_strict_route_puts_the_first_route_into_the_request_uri() -> None:
    invite = our_invite()
    response = make_response(invite, 200, to_tag="theirs")
    response.headers.add("Contact", "<sip:192.0.2.1:5060>")
    response.headers.add("Record-Route", "<sip:192.0.2.5>")  # no ;lr: a strict router
    dialog = Dialog.as_uac(invite, response)
    bye = dialog.create_request("BYE", via=VIA)
    assert bye.uri == URI.parse("sip:192.0.2.5")
    assert bye.headers.get_all("Route") == ["<sip:192.0.2.1:5060>"]


def test_answer_retransmission_until_ack() -> None:
    timers = TimerValues()
    ok = sbc_answer(our_invite())
    wheel = TimerWheel()
    retransmission = AnswerRetransmission(ok, SipTarget("udp", "192.0.2.1", 5060), timers)
    wheel.track(retransmission.start(0.0))
    sent: list[float] = []
    while (deadline := wheel.next_deadline()) is not None and deadline < 9.0:
        sent += [deadline for a in wheel.fire(deadline) if isinstance(a, Send)]
    assert sent == [0.5, 1.5, 3.5, 7.5]  # T1 doubling, capped at T2 (§13.3.1.4)
    retransmission.ack()
    assert wheel.next_deadline() is None


def test_answer_retransmission_gives_up_after_64_t1() -> None:
    ok = sbc_answer(our_invite())
    wheel = TimerWheel()
    retransmission = AnswerRetransmission(ok, SipTarget("tcp", "192.0.2.1", 5060))
    wheel.track(retransmission.start(10.0))
    assert wheel.next_deadline() == 42.0  # no retransmissions over TCP, only the wait
    assert wheel.fire(42.0) == [Expired(retransmission, "ack")]
