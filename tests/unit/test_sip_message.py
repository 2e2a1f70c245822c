"""SIP message parser and serializer: operator-style messages, bad input, fuzzing."""

from __future__ import annotations

import random
import time

import pytest

from signaling.sip.message import (
    URI,
    Address,
    CSeq,
    ParseError,
    Request,
    Response,
    SipTarget,
    StreamParser,
    Via,
    accepts,
    is_response,
    make_request,
    make_response,
    parse_message,
    response_destination,
    stamp_received,
    unescape,
)

SDP = (
    b"v=0\r\no=- 4711 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 30000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)

# An SBC's INVITE as they look in the field: compact forms, two Vias in one header
# and one more below, a folded header, tel-style user part, P-Asserted-Identity.
INVITE = (
    b"INVITE sip:+4930555000100@192.0.2.1:5060;user=phone SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-sbc-1;rport,\r\n"
    b" SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-core-1;received=198.51.100.7\r\n"
    b"Via: SIP/2.0/TCP [2001:db8::7]:5061;branch=z9hG4bK-core-0\r\n"
    b"Max-Forwards: 68\r\n"
    b'f: "+49 177 00000001" <sip:+4917700000001@sbc.operator.example;user=phone>;tag=a8f3\r\n'
    b"t: <sip:+4930555000100@anruf.invalid;user=phone>\r\n"
    b"i: 5f2c1e0a-7d1b@192.0.2.10\r\n"
    b"CSeq: 102 INVITE\r\n"
    b"m: <sip:+4917700000001@192.0.2.10:5060;transport=udp>\r\n"
    b"P-Asserted-Identity: <tel:+4917700000001>\r\n"
    b"Allow: INVITE, ACK, CANCEL,\r\n\tBYE, OPTIONS\r\n"
    b"Record-Route: <sip:192.0.2.10;lr>, <sip:198.51.100.7;lr>\r\n"
    b"k: timer, 100rel\r\n"
    b"c: application/sdp\r\n"
    b"l: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)
LENGTH_LINE = b"l: " + str(len(SDP)).encode()


def test_operator_invite() -> None:
    message = parse_message(INVITE)
    assert isinstance(message, Request)
    assert message.method == "INVITE"
    assert message.uri == URI("sip", "+4930555000100", "192.0.2.1", 5060, (("user", "phone"),))
    assert message.uri.param("user") == "phone"
    vias = message.vias
    assert [v.branch for v in vias] == ["z9hG4bK-sbc-1", "z9hG4bK-core-1", "z9hG4bK-core-0"]
    assert vias[0].has_param("rport") and vias[0].rport is None
    assert vias[1].received == "198.51.100.7"
    assert (vias[2].transport, vias[2].host, vias[2].port) == ("TCP", "[2001:db8::7]", 5061)
    assert message.from_addr.display_name == "+49 177 00000001"
    assert message.from_addr.tag == "a8f3"
    assert message.from_addr.uri.user == "+4917700000001"
    assert message.to_addr.tag is None
    assert message.call_id == "5f2c1e0a-7d1b@192.0.2.10"
    assert message.cseq == CSeq(102, "INVITE")
    assert message.contact is not None
    assert message.contact.uri.param("transport") == "udp"
    assert message.headers.get_all("allow") == ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"]
    assert message.headers.get_all("Record-Route") == [
        "<sip:192.0.2.10;lr>",
        "<sip:198.51.100.7;lr>",
    ]
    assert message.headers.get_all("Supported") == ["timer", "100rel"]
    assert message.headers.get("p-asserted-identity") == "<tel:+4917700000001>"
    assert (
        Address.parse(message.headers.get("P-Asserted-Identity") or "").uri.user == "+4917700000001"
    )
    assert message.content_type == "application/sdp"
    assert message.body == SDP


def test_round_trip_keeps_meaning() -> None:
    message = parse_message(INVITE)
    again = parse_message(message.encode())
    assert isinstance(message, Request) and isinstance(again, Request)
    assert list(again.headers) == list(message.headers)
    assert again.body == message.body
    assert str(again.uri) == str(message.uri)
    # Long forms on the way out, one value per line, Content-Length last and right.
    text = message.encode().decode()
    assert "\r\nFrom: " in text and "\r\nf: " not in text
    assert text.count("\r\nVia: ") == 3
    assert f"\r\nContent-Length: {len(SDP)}\r\n\r\n" in text


def test_response_and_body_framing() -> None:
    raw = (
        b"SIP/2.0 183 Session Progress\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;rport=5060;received=127.0.0.1\r\n"
        b"From: <sip:+4917700000001@anruf.invalid>;tag=1\r\n"
        b"To: <sip:+4930555000100@anruf.invalid>;tag=2\r\n"
        b"Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
        b"Content-Length: 3\r\n\r\nabcdef"
    )
    response = parse_message(raw)
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (183, "Session Progress")
    assert response.body == b"abc"  # the datagram's extra bytes are not the body
    assert response.top_via.rport == 5060
    # No Content-Length on UDP: the body runs to the end of the datagram.
    no_length = raw.replace(b"Content-Length: 3\r\n", b"")
    assert parse_message(no_length).body == b"abcdef"
    # A reason phrase may be empty, or UTF-8.
    empty = parse_message(raw.replace(b"183 Session Progress", b"183 "))
    assert isinstance(empty, Response) and empty.reason == ""
    german = parse_message(raw.replace(b"183 Session Progress", "183 Sitzung läuft".encode()))
    assert isinstance(german, Response) and german.reason == "Sitzung läuft"


def test_uris_and_addresses() -> None:
    uri = URI.parse(
        "sip:+4930555000100;npdi;rn=+4930999@sbc.example:5070;user=phone;transport=TCP?x=y"
    )
    assert uri.user == "+4930555000100;npdi;rn=+4930999"
    assert (uri.host, uri.port) == ("sbc.example", 5070)
    assert uri.param("transport") == "TCP"
    assert uri.headers == "x=y"
    assert (
        str(uri)
        == "sip:+4930555000100;npdi;rn=+4930999@sbc.example:5070;user=phone;transport=TCP?x=y"
    )
    assert URI.parse("sips:[2001:db8::1]:5061").host == "[2001:db8::1]"
    tel = URI.parse("tel:+4930555000100;phone-context=+49")
    assert (tel.scheme, tel.user, tel.param("phone-context")) == ("tel", "+4930555000100", "+49")
    assert str(tel) == "tel:+4930555000100;phone-context=+49"
    # addr-spec without <>: the parameters belong to the header, not the URI (§20.10).
    plain = Address.parse("sip:+4917700000001@sbc.example;tag=99")
    assert plain.tag == "99" and plain.uri.params == ()
    quoted = Address.parse(r'"A \"quoted\" name" <sip:alice@example.com>;tag=1')
    assert quoted.display_name == 'A "quoted" name'
    assert str(quoted) == r'"A \"quoted\" name" <sip:alice@example.com>;tag=1'
    assert Address.parse("Anruf Test <sip:x@y>").display_name == "Anruf Test"
    assert str(Address(URI("sip", "x", "y")).with_tag("t")) == "<sip:x@y>;tag=t"


def test_via_forms() -> None:
    via = Via.parse("SIP / 2.0 / UDP   10.0.0.1:5070 ; branch = z9hG4bK1 ; rport")
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "10.0.0.1", 5070, "z9hG4bK1")
    assert via.sent_by == "10.0.0.1:5070"
    assert Via.parse("SIP/2.0/TCP example.com;branch=z9hG4bK2").sent_by == "example.com:5060"
    assert str(Via("UDP", "127.0.0.1", 5060, (("branch", "z9hG4bK3"), ("rport", None)))) == (
        "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK3;rport"
    )


def test_received_rport_and_response_destination() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    source = SipTarget("udp", "203.0.113.5", 40000)
    stamp_received(request, source)
    assert request.top_via.received == "203.0.113.5"
    assert request.top_via.rport == 40000
    assert response_destination(request, source) == source  # rport: back to the source port
    without_rport = parse_message(INVITE.replace(b";rport,", b","))
    assert isinstance(without_rport, Request)
    stamp_received(without_rport, source)
    assert response_destination(without_rport, source) == SipTarget("udp", "203.0.113.5", 5060)


def test_make_request_and_response() -> None:
    request = make_request(
        "INVITE",
        URI("sip", "+4930555000100", "127.0.0.1", 5070, (("user", "phone"),)),
        via=Via("UDP", "127.0.0.1", 5060, (("branch", "z9hG4bKx"), ("rport", None))),
        from_addr=Address(URI("sip", "+4917700000001", "anruf.invalid")).with_tag("f1"),
        to_addr=Address(URI("sip", "+4930555000100", "anruf.invalid")),
        call_id="c1",
        cseq=1,
        contact=Address(URI("sip", "+4917700000001", "127.0.0.1", 5060)),
        headers=[("User-Agent", "Anruf")],
        body=b"v=0\r\n",
    )
    parsed = parse_message(request.encode())
    assert isinstance(parsed, Request)
    assert parsed.headers.get("Max-Forwards") == "70"
    assert parsed.headers.get("Content-Type") == "application/sdp"
    assert parsed.headers.get("User-Agent") == "Anruf"
    parsed.headers.add("Record-Route", "<sip:192.0.2.10;lr>")
    ringing = make_response(parsed, 180, to_tag="t9")
    assert ringing.reason == "Ringing"
    assert ringing.to_addr.tag == "t9"
    assert ringing.headers.get_all("Record-Route") == ["<sip:192.0.2.10;lr>"]
    assert [ringing.headers.get(n) for n in ("Via", "From", "Call-ID", "CSeq")] == [
        parsed.headers.get(n) for n in ("Via", "From", "Call-ID", "CSeq")
    ]
    busy = make_response(parsed, 486, to_tag="t9")
    assert busy.headers.get("Record-Route") is None
    # A To that already has a tag keeps it.
    parsed.headers.set("To", str(ringing.to_addr))
    assert make_response(parsed, 200, to_tag="other").to_addr.tag == "t9"


def _bad(data: bytes) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_message(data, max_size=4096)
    return info.value


def test_bad_inputs_raise_parse_error_with_status() -> None:
    assert _bad(b"").status == 400
    assert _bad(b"\x00\xff\xfe garbage").status == 400
    assert _bad(b"HELLO\r\n\r\n").status == 400
    assert _bad(INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)).status == 505
    assert _bad(INVITE.replace(b"INVITE sip:", b"INVITE http:", 1)).status == 416
    assert _bad(INVITE + b"x" * 5000).status == 513
    missing_cseq = INVITE.replace(b"CSeq: 102 INVITE\r\n", b"")
    error = _bad(missing_cseq)
    assert error.answerable is False  # a response must copy CSeq
    wrong_method = _bad(INVITE.replace(b"CSeq: 102 INVITE", b"CSeq: 102 BYE"))
    assert wrong_method.answerable
    assert isinstance(wrong_method.partial, Request)
    assert "CSeq method" in wrong_method.reason
    assert _bad(INVITE.replace(LENGTH_LINE, b"l: 9999")).answerable  # body shorter than that
    assert _bad(INVITE.replace(b"Max-Forwards: 68", b"Max-Forwards: many")).answerable
    assert _bad(INVITE.replace(b"Max-Forwards: 68", b"Max Forwards 68")).answerable is False
    truncated = _bad(INVITE[:300])
    assert truncated.status == 400
    two_lengths = INVITE.replace(b"c: application/sdp", b"Content-Length: 1\r\nc: application/sdp")
    assert "Content-Length" in _bad(two_lengths).reason
    many = INVITE.replace(b"CSeq:", b"X-A: 1\r\n" * 200 + b"CSeq:")
    assert "headers" in _bad(many).reason


def test_fuzzed_messages_raise_only_parse_errors() -> None:
    """Mutations of valid messages either parse or raise ParseError, never anything else."""
    rng = random.Random(3261)
    invite = parse_message(INVITE)
    assert isinstance(invite, Request)
    seeds = [INVITE, make_response(invite, 200, to_tag="x", body=SDP).encode()]
    alphabet = b' \t\r\n:;,<>"@=/\\[]?0123456789zZ\x00\xff'
    deadline = time.monotonic() + 1.5
    count = 0
    while time.monotonic() < deadline:
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.choice(alphabet)
            elif op == 1:
                del data[pos : pos + rng.randint(1, 20)]
            elif op == 2:
                data[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
            else:
                end = pos + rng.randint(1, 40)
                data[pos:pos] = data[pos:end]
        try:
            message = parse_message(bytes(data))
        except ParseError as exc:
            _ = exc.answerable
        else:
            message.encode()
        count += 1
    assert count > 1000


def test_fuzzed_streams_raise_only_parse_errors() -> None:
    """The TCP framer on mutated streams cut at random: messages, ParseErrors, or a raise
    of ParseError (the connection closes), nothing else."""
    rng = random.Random(5626)
    stream = INVITE * 3
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        data = bytearray(stream)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            data[pos : pos + rng.randint(0, 8)] = bytes(rng.randrange(256) for _ in range(3))
        parser = StreamParser(max_size=2048)
        try:
            i = 0
            while i < len(data):
                step = rng.randint(1, 300)
                parser.feed(bytes(data[i : i + step]))
                i += step
        except ParseError:
            pass


def test_stream_parser_frames_by_content_length() -> None:
    parser = StreamParser(max_size=4096)
    stream = b"\r\n\r\n" + INVITE + INVITE.replace(b"CSeq: 102", b"CSeq: 103")
    out: list[Request | Response | ParseError] = []
    for i in range(0, len(stream), 37):  # arbitrary chunking
        out += parser.feed(stream[i : i + 37])
    assert [m.cseq.seq for m in out if isinstance(m, Request)] == [102, 103]
    assert all(isinstance(m, Request) and m.body == SDP for m in out)


def test_stream_parser_errors() -> None:
    parser = StreamParser(max_size=4096)
    bad_but_framed = INVITE.replace(b"CSeq: 102 INVITE", b"CSeq: 102 BYE")
    out = parser.feed(bad_but_framed + INVITE)
    assert isinstance(out[0], ParseError) and isinstance(out[1], Request)
    with pytest.raises(ParseError, match="Content-Length"):
        StreamParser().feed(INVITE.replace(LENGTH_LINE + b"\r\n", b""))
    with pytest.raises(ParseError) as info:
        StreamParser(max_size=2048).feed(b"INVITE sip:x@y SIP/2.0\r\n" + b"X: y\r\n" * 400)
    assert info.value.status == 513
    with pytest.raises(ParseError):
        StreamParser(max_size=2048).feed(INVITE.replace(LENGTH_LINE, b"l: 100000"))


def test_uri_user_parts_hold_question_marks_and_semicolons() -> None:
    """The userinfo ends at the last '@' (RFC 4475 §3.1.1.2, §3.1.1.9)."""
    uri = URI.parse("sip:a?b;c=d:secret@example.com;lr?subject=x")
    assert (uri.user, uri.password, uri.host) == ("a?b;c=d", "secret", "example.com")
    assert (uri.params, uri.headers) == ((("lr", None),), "subject=x")
    assert str(uri) == "sip:a?b;c=d:secret@example.com;lr?subject=x"


def test_percent_escapes_decode_once() -> None:
    assert unescape("%2B4930555000100") == "+4930555000100"
    assert unescape("v%61lue%25%34%31") == "value%41"
    assert unescape("plain") == "plain"
    assert URI.parse("sip:%2B4917700000001@sbc.example").unescaped_user == "+4917700000001"
    assert URI.parse("sip:sbc.example").unescaped_user is None


def test_grammar_the_parser_now_holds_to() -> None:
    # Empty parameters, a scheme that is no scheme, spaces inside <>, unquoted display
    # names that are not tokens, '?' in an addr-spec (RFC 4475 §3.1.2).
    for bad in ("sip:x@y;;lr", "sip:x@y;", "<sip:x@y>", "1sip:x@y"):
        with pytest.raises(ParseError) as info:
            URI.parse(bad)
        assert info.value.status == 400, bad
    for bad_address in (
        "<sip:x@y>;;tag=1",
        "< sip:x@y >",
        "Bell, Alexander <sip:x@y>",
        "sip:x@y?Route=%3Csip:z%3E",
    ):
        with pytest.raises(ParseError):
            Address.parse(bad_address)
    assert Address.parse("caller<sip:x@y>;tag=1").display_name == "caller"
    with pytest.raises(ParseError) as unknown:
        URI.parse("mailto:x@y")
    assert unknown.value.status == 416


def test_max_forwards_may_have_leading_zeros_but_not_exceed_255() -> None:
    assert parse_message(INVITE.replace(b"Max-Forwards: 68", b"Max-Forwards: 0068"))
    assert _bad(INVITE.replace(b"Max-Forwards: 68", b"Max-Forwards: 256")).answerable
    assert _bad(INVITE.replace(b"Max-Forwards: 68", b"Max-Forwards: \xc2\xb2")).status == 400


def test_single_headers_may_not_repeat() -> None:
    twice = INVITE.replace(b"CSeq: 102 INVITE\r\n", b"CSeq: 102 INVITE\r\nCSeq: 103 INVITE\r\n")
    assert "more than one CSeq" in _bad(twice).reason
    two_call_ids = INVITE.replace(b"i: ", b"Call-ID: other\r\ni: ")
    assert "more than one Call-ID" in _bad(two_call_ids).reason


def test_bad_start_lines_and_contacts_are_answerable() -> None:
    spaces = _bad(INVITE.replace(b"INVITE sip:", b"INVITE  sip:", 1))
    assert spaces.status == 400 and spaces.answerable
    assert isinstance(spaces.partial, Request) and spaces.partial.method == "INVITE"
    headers = _bad(INVITE.replace(b";user=phone SIP/2.0", b"?Route=x SIP/2.0", 1))
    assert "headers in the Request-URI" in headers.reason and headers.answerable
    contact = _bad(INVITE.replace(b":5060;transport=udp>", b":5060;;transport=udp>", 1))
    assert "Contact" in contact.reason and contact.answerable


def test_a_request_without_from_to_and_call_id_is_still_answered() -> None:
    """RFC 4475 §3.3.1: the 400 goes back along the Via, matched by the CSeq."""
    bare = (
        b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKbare\r\n"
        b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    error = _bad(bare)
    assert error.reason == "missing To, From, Call-ID" and error.answerable
    assert isinstance(error.partial, Request)
    response = make_response(error.partial, 400)
    assert response.headers.get("Via") == "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKbare"
    assert response.headers.get("To") is None
    no_via = bare.replace(b"Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKbare\r\n", b"")
    assert _bad(no_via).answerable is False


def test_a_via_of_another_version_is_read_to_answer_505() -> None:
    via = Via.parse("SIP/7.0/UDP c.example.com;branch=z9hG4bKv7")
    assert (via.version, via.host) == ("7.0", "c.example.com")
    assert str(via) == "SIP/7.0/UDP c.example.com;branch=z9hG4bKv7"
    # A malformed Via is still good enough to send the 400 back along.
    assert Via.parse("SIP/2.0/UDP 192.0.2.15;;", lenient=True).params == ()
    with pytest.raises(ParseError):
        Via.parse("SIP/2.0/UDP 192.0.2.15;;")


def test_stream_parser_tells_when_a_message_is_partly_read() -> None:
    parser = StreamParser(max_size=4096)
    assert not parser.in_message
    parser.feed(b"\r\n\r\n")  # keep-alives are no message
    assert not parser.in_message
    parser.feed(INVITE[:100])
    assert parser.in_message
    assert len(parser.feed(INVITE[100:])) == 1
    assert not parser.in_message


def test_a_response_is_told_from_a_request_before_parsing() -> None:
    assert is_response(b"SIP/2.0 200 OK\r\n\r\n")
    assert is_response(b"\r\n\r\nSIP/2.0 486 Busy Here\r\n")  # after keep-alives
    assert not is_response(INVITE)
    assert not is_response(b"\r\n")


def test_a_branch_without_the_magic_cookie_is_an_rfc2543_sender() -> None:
    assert Via.parse("SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1").rfc3261
    assert not Via.parse("SIP/2.0/UDP 192.0.2.10;branch=1").rfc3261
    assert not Via.parse("SIP/2.0/UDP 192.0.2.10").rfc3261


def test_accept_decides_which_bodies_a_response_may_carry() -> None:
    """RFC 3261 §20.1: without Accept only SDP; an empty one accepts nothing."""
    invite = parse_message(INVITE)
    assert isinstance(invite, Request)
    assert accepts(invite, "application/sdp") and not accepts(invite, "text/plain")
    for value, sdp in [
        ("", False),
        ("text/nobodyKnowsThis", False),
        ("Application/SDP", True),
        ("application/*", True),
        ("*/*;q=0.1", True),
        ("application/sdp;q=0, text/plain", False),
        ("application/sdp;q=0.0;level=1", False),
    ]:
        invite.headers.set("Accept", value)
        assert accepts(invite, "application/sdp") is sdp, value
