"""The sans-I/O SIP core's throughput on one CPU: parsing, and whole INVITE transactions.

    .venv/bin/python -m bench.sip_core [--messages 20000] [--rounds 5]

No sockets: everything is bytes in, bytes out, in this process. Inputs are
operator-style INVITEs (two Vias, compact and long headers, P-Asserted-Identity,
an SDP body of 250 bytes), each with its own Call-ID, tags and branch.

Figures (best of --rounds, per second of one core):

* parse: ``parse_message`` on an INVITE datagram (start line, headers split and
  unfolded, Via/From/To/CSeq validated, body framed);
* baseline: the standard library's ``email`` parser (compat32 policy) on the same
  bytes without the start line: header parsing only, with no SIP validation;
* UAS INVITE transaction: parse the INVITE, create the server transaction (100
  Trying), build and serialize 180 and 200 (with SDP), parse the ACK and match it
  to the call's dialog: what the trunk's core does per incoming call, without I/O;
* UAC INVITE transaction: build and serialize an INVITE, parse 100, 180 and 200,
  build and serialize the ACK from the dialog.

The last line of output is a JSON object with all figures.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import sys
import time
from collections.abc import Callable

from signaling.sip.dialog import Dialog
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
    Deliver,
    InviteServerTransaction,
    Send,
    TransactionLayer,
)

SDP = (
    "v=0\r\no=- 4711 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 30000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
)
SBC = SipTarget("udp", "192.0.2.10", 5060)


def invite(n: int) -> bytes:
    body = SDP.encode()
    return (
        f"INVITE sip:+4930555{n:06d}@192.0.2.1:5060;user=phone SIP/2.0\r\n"
        f"v: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-sbc-{n};rport\r\n"
        f"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-core-{n};received=198.51.100.7\r\n"
        "Max-Forwards: 68\r\n"
        f'f: "+49 177 {n:08d}" <sip:+49177{n:08d}@sbc.operator.example;user=phone>;tag=a{n}\r\n'
        f"t: <sip:+4930555{n:06d}@anruf.invalid;user=phone>\r\n"
        f"i: {n:08x}-7d1b@192.0.2.10\r\n"
        "CSeq: 102 INVITE\r\n"
        "m: <sip:+4917700000001@192.0.2.10:5060;transport=udp>\r\n"
        f"P-Asserted-Identity: <tel:+49177{n:08d}>\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
        "Supported: timer\r\n"
        "c: application/sdp\r\n"
        f"l: {len(body)}\r\n\r\n"
    ).encode() + body


def ack_for(ok: bytes, n: int) -> bytes:
    """The SBC's ACK for our 200 (a new branch, the To tag from the 200)."""
    response = parse_message(ok)
    return (
        f"ACK sip:+4930555{n:06d}@192.0.2.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-ack-{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {response.headers.get('From')}\r\n"
        f"To: {response.headers.get('To')}\r\n"
        f"Call-ID: {response.call_id}\r\n"
        "CSeq: 102 ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def best_rate(run: Callable[[], int], rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        count = run()
        best = max(best, count / (time.perf_counter() - started))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n: int = args.messages
    datagrams = [invite(i) for i in range(n)]
    email_inputs = [d.split(b"\r\n", 1)[1] for d in datagrams]
    compat = email.parser.BytesParser(policy=email.policy.compat32)

    def parse_all() -> int:
        for data in datagrams:
            parse_message(data)
        return n

    def email_all() -> int:
        for data in email_inputs:
            compat.parsebytes(data)
        return n

    # UAS: a prepared ACK per call (its To tag is fixed by a first run through).
    tags = [f"u{i}" for i in range(n)]
    acks = []
    for i, data in enumerate(datagrams):
        request = parse_message(data)
        assert isinstance(request, Request)
        acks.append(ack_for(make_response(request, 200, to_tag=tags[i]).encode(), i))

    def uas_all() -> int:
        layer = TransactionLayer()
        dialogs: dict[tuple[str, str], Dialog] = {}
        sent = 0
        for i, data in enumerate(datagrams):
            request = parse_message(data)
            assert isinstance(request, Request)
            actions = layer.receive_request(request, SBC, 0.0)
            txn = next(a.transaction for a in actions if isinstance(a, Deliver))
            assert isinstance(txn, InviteServerTransaction)
            sent += sum(len(a.message.encode()) for a in actions if isinstance(a, Send))
            dialog = Dialog.as_uas(request, tags[i])
            dialogs[(dialog.call_id, dialog.local_tag)] = dialog
            for status, body in ((180, b""), (200, SDP.encode())):
                response = make_response(request, status, to_tag=tags[i], body=body)
                response.headers.add("Contact", "<sip:+4930555000100@192.0.2.1:5060>")
                for action in layer.respond(txn, response, 0.0):
                    if isinstance(action, Send):
                        sent += len(action.message.encode())
            ack = parse_message(acks[i])
            assert isinstance(ack, Request)
            for action in layer.receive_request(ack, SBC, 0.0):
                if isinstance(action, Deliver) and action.transaction is None:
                    assert (ack.call_id, ack.to_addr.tag) in dialogs
        assert sent > 0
        return n

    # UAC: responses from the SBC, prepared per call from our INVITE's headers.
    our_invites = []
    replies = []
    for i in range(n):
        request = make_request(
            "INVITE",
            URI("sip", f"+4930555{i:06d}", "192.0.2.10", 5060, (("user", "phone"),)),
            via=Via("UDP", "192.0.2.1", 5060, (("branch", f"z9hG4bK-our-{i}"), ("rport", None))),
            from_addr=Address(URI("sip", "+4917700000001", "anruf.invalid")).with_tag(f"o{i}"),
            to_addr=Address(URI("sip", f"+4930555{i:06d}", "anruf.invalid")),
            call_id=f"our-{i}",
            cseq=1,
            contact=Address(URI("sip", "+4917700000001", "192.0.2.1", 5060)),
            headers=[("User-Agent", "Anruf")],
            body=SDP.encode(),
        )
        our_invites.append(request)
        trying = make_response(request, 100).encode()
        ringing = make_response(request, 180, to_tag=f"s{i}")
        ringing.headers.add("Contact", "<sip:192.0.2.10:5060>")
        ok = make_response(request, 200, to_tag=f"s{i}", body=SDP.encode())
        ok.headers.add("Contact", "<sip:192.0.2.10:5060>")
        replies.append((trying, ringing.encode(), ok.encode()))

    def uac_all() -> int:
        layer = TransactionLayer()
        via = Via("UDP", "192.0.2.1", 5060, (("branch", "z9hG4bK-ack"), ("rport", None)))
        for i in range(n):
            request = our_invites[i]
            _, actions = layer.send_request(request, SBC, 0.0)
            for action in actions:
                if isinstance(action, Send):
                    action.message.encode()
            dialog = None
            for raw in replies[i]:
                response = parse_message(raw)
                assert isinstance(response, Response)
                for action in layer.receive_response(response, 0.0):
                    if isinstance(action, Deliver) and response.status == 200:
                        dialog = Dialog.as_uac(request, response)
            assert dialog is not None
            dialog.create_ack(1, via=via).encode()
        return n

    figures: dict[str, float] = {
        "messages": n,
        "parse_invites_per_s": round(best_rate(parse_all, args.rounds)),
        "baseline_email_parser_per_s": round(best_rate(email_all, args.rounds)),
        "uas_invite_transactions_per_s": round(best_rate(uas_all, args.rounds)),
        "uac_invite_transactions_per_s": round(best_rate(uac_all, args.rounds)),
        "invite_bytes": len(datagrams[0]),
    }
    figures["parse_vs_email_parser"] = round(
        figures["parse_invites_per_s"] / figures["baseline_email_parser_per_s"], 2
    )
    print(f"INVITE of {figures['invite_bytes']} bytes, {n} per round, best of {args.rounds}")
    print(f"  parse_message:              {figures['parse_invites_per_s']:>9,} /s")
    print(f"  email parser (baseline):    {figures['baseline_email_parser_per_s']:>9,} /s")
    print(f"  UAS INVITE transaction:     {figures['uas_invite_transactions_per_s']:>9,} /s")
    print(f"  UAC INVITE transaction:     {figures['uac_invite_transactions_per_s']:>9,} /s")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
