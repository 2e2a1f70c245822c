"""The parser against the RFC 4475 torture messages (tests/fixtures/rfc4475): every
valid-but-odd message parses, with the RFC's interpretation where it gives one; every
invalid one raises ParseError with the status to answer and a reason a person can read.

Where the RFC leaves a choice, the one taken is the one the trunk can stand behind:
- baddate (§3.1.2.12) is accepted: nothing here reads Date, and the RFC asks not to
  reject a message for a Date that does not matter to the element.
- unkscm, novelsc and unksm2 (§3.3.2-3.3.4) raise ParseError with status 416 and the
  whole message as ``partial``: the RFC's answer to a scheme we never serve is 416, and
  the trunk answers every ParseError that can be answered.
- mismatch02 (§3.1.2.18) is 400 (the RFC allows 400 or 501).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from signaling.sip.message import (
    Address,
    ParseError,
    Request,
    Response,
    StreamParser,
    parse_message,
    unescape,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rfc4475"

#: §3.1.1 and the messages of §3.2-3.4 that are well formed.
VALID = (
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
    "badbranch",
    "bext01",
    "invut",
    "regaut01",
    "bcast",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
    "inv2543",
    "baddate",
)

#: name: (status, a fragment of the reason)
INVALID = {
    "badinv01": (400, "empty parameter"),
    "clerr": (400, "shorter than Content-Length"),
    "ncl": (400, "bad Content-Length '-999'"),
    "scalar02": (400, "bad CSeq"),
    "scalarlg": (400, "bad CSeq"),
    "quotbal": (400, "unterminated display name"),
    "ltgtruri": (400, "not a URI: '<sip:user@example.com>'"),
    "lwsruri": (400, "bad request line"),
    "lwsstart": (400, "bad request line"),
    "trws": (400, "bad request line"),
    "escruri": (400, "headers in the Request-URI"),
    "regbadct": (400, "must be enclosed in <>"),
    "badaspec": (400, "spaces inside <URI>"),
    "baddn": (400, "needs quotes"),
    "badvers": (505, "unsupported version 'SIP/7.0'"),
    "mismatch01": (400, "CSeq method does not match"),
    "mismatch02": (400, "CSeq method does not match"),
    "bigcode": (400, "bad status line"),
    "insuf": (400, "missing To, From, Call-ID"),
    "unkscm": (416, "unsupported URI scheme 'nobodyknowsthisscheme'"),
    "novelsc": (416, "unsupported URI scheme 'soap.beep'"),
    "unksm2": (416, "unsupported URI scheme"),
    "multi01": (400, "more than one"),
    "mcl01": (400, "conflicting Content-Length"),
}


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.sip").read_bytes()


def request(name: str) -> Request:
    message = parse_message(load(name))
    assert isinstance(message, Request)
    return message


def test_the_corpus_is_the_rfcs_49_messages() -> None:
    names = {path.stem for path in FIXTURES.glob("*.sip")}
    assert len(names) == 49
    assert names == set(VALID) | set(INVALID)
    assert not set(VALID) & set(INVALID)
    # CRLF line ends throughout (a bare LF would be a different message).
    for name in names:
        head = load(name).partition(b"\r\n\r\n")[0]
        assert b"\n" not in head.replace(b"\r\n", b""), name


@pytest.mark.parametrize("name", VALID)
def test_valid_messages_parse_and_survive_a_round_trip(name: str) -> None:
    message = parse_message(load(name))
    again = parse_message(message.encode())
    assert type(again) is type(message)
    assert again.body == message.body
    assert again.call_id == message.call_id
    assert again.cseq == message.cseq


@pytest.mark.parametrize(("name", "status", "reason"), [(n, *v) for n, v in INVALID.items()])
def test_invalid_messages_are_refused_with_a_clear_error(
    name: str, status: int, reason: str
) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(load(name))
    error = info.value
    assert error.status == status
    assert reason in error.reason
    # Requests can be answered (the 400/416/505 goes back along their Via); a broken
    # response is dropped.
    is_request = not load(name).startswith(b"SIP/")
    assert error.answerable is is_request
    if is_request:
        assert isinstance(error.partial, Request)


def test_wsinv_folding_whitespace_and_leading_zeros() -> None:
    """§3.1.1.1: line folding, LWS around every separator, escaped quotes, an empty
    Subject, unknown headers and parameters, integers with leading zeros."""
    invite = request("wsinv")
    assert invite.method == "INVITE"
    assert invite.uri.has_param("unknownparam") and invite.uri.param("unknownparam") is None
    assert invite.to_addr.uri.user == "vivekg" and invite.to_addr.tag == "1918181833n"
    assert invite.from_addr.display_name == 'J Rosenberg \\"'
    assert invite.from_addr.tag == "98asjd8"
    assert invite.headers.get("Max-Forwards") == "0068"
    assert (invite.cseq.seq, invite.cseq.method) == (9, "INVITE")
    vias = invite.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert invite.headers.get("Subject") == ""
    assert invite.headers.get("NewFangledHeader") == ("newfangled value continued newfangled value")
    assert invite.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    contact = invite.contact
    assert contact is not None
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    route = Address.parse(invite.headers.get("Route") or "")
    assert route.uri.has_param("lr") and route.uri.param("unknownwith") == "value"
    assert invite.content_type == "application/sdp" and len(invite.body) == 150


def test_intmeth_token_characters_everywhere() -> None:
    """§3.1.1.2: an unknown method of token characters, a user part holding '?', ';'
    and ',', a password, quoted NUL/BEL/DEL and UTF-8 values."""
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    message = request("intmeth")
    assert message.method == method and message.cseq.method == method
    assert message.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert message.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert (message.uri.host, message.uri.params, message.uri.headers) == ("example.com", (), "")
    assert message.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    to = message.to_addr
    assert to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    sender = message.from_addr
    assert sender.display_name == "token1~` token2'+_ token3*%!.-"
    assert sender.param("fromparam''~+*_!.-%") == '"работающий"'
    assert sender.tag == "_token~1'+`*%!-."
    assert message.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert message.headers.get("Max-Forwards") == "255"
    assert message.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_esc01_percent_escapes_decode_once() -> None:
    """§3.1.1.3: escapes in user parts and URI parameters mean the characters they
    encode; 'v%61lue%25%34%31' is 'value%41', not 'valueA' (never recursively)."""
    invite = request("esc01")
    assert invite.uri.unescaped_user == "sips:user@example.com"
    assert invite.uri.host == "example.net"
    assert invite.to_addr.uri.unescaped_user == "user"
    assert invite.from_addr.uri.unescaped_user == "I have spaces"
    contact = invite.contact
    assert contact is not None and contact.uri.unescaped_user == "caller"
    params = {unescape(name): value for name, value in contact.uri.params}
    assert params == {"lr": None, "name": "v%61lue%25%34%31"}
    assert unescape(params["name"] or "") == "value%41"


def test_escnull_escaped_nulls_do_not_shorten_users() -> None:
    """§3.1.1.4: '%00' is a NUL inside the user; two Contacts that differ only there
    are two Contacts."""
    register = request("escnull")
    assert register.to_addr.uri.unescaped_user == "null-\x00-null"
    assert register.from_addr.uri.unescaped_user == "null-\x00-null"
    users = [Address.parse(c).uri.unescaped_user for c in register.headers.get_all("Contact")]
    assert users == ["\x00", "\x00\x00"]


def test_esc02_percent_where_it_is_no_escape() -> None:
    """§3.1.1.5: the method, display names and header names keep their '%'."""
    message = request("esc02")
    assert message.method == "RE%47IST%45R"  # an unknown method, not REGISTER
    assert message.to_addr.display_name == message.from_addr.display_name == "%Z%45"
    assert len(message.headers.get_all("Contact")) == 2
    assert message.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert message.top_via.branch == "z9hG4bK209%fzsnel234"


def test_lwsdisp_no_space_before_the_angle_bracket() -> None:
    """§3.1.1.6: accepted although RFC 3261's grammar wants LWS there."""
    sender = request("lwsdisp").from_addr
    assert (sender.display_name, sender.tag) == ("caller", "323")


def test_longreq_long_values_and_many_vias() -> None:
    invite = request("longreq")
    assert len(invite.vias) == 34
    assert [v.host for v in invite.vias[:2]] == ["sip33.example.com", "sip32.example.com"]
    assert invite.vias[-1].received == "192.0.2.5"
    to = invite.to_addr
    assert to.display_name is not None and to.display_name.endswith("extreme proportion")
    assert to.uri.port == 6000 and len(to.uri.params) == 3
    tag = invite.from_addr.tag
    assert tag is not None and tag.startswith("1298298298") and tag.endswith("982424")
    assert invite.call_id.startswith("longreq.onereally")


def test_dblreq_only_the_first_message_of_a_datagram_counts() -> None:
    """§3.1.1.8: octets after the Content-Length are noise, not a second request."""
    register = request("dblreq")
    assert register.method == "REGISTER"
    assert register.body == b""
    assert register.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_semiuri_semicolon_in_the_user_part() -> None:
    """§3.1.1.9: the user part is 'user;par=u@example.net', with no URI parameters."""
    options = request("semiuri")
    assert options.uri.user == "user;par=u%40example.net"
    assert options.uri.unescaped_user == "user;par=u@example.net"
    assert (options.uri.host, options.uri.params) == ("example.com", ())
    assert options.headers.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports_every_via_transport() -> None:
    assert [v.transport for v in request("transports").vias] == [
        "UDP",
        "SCTP",
        "TLS",
        "UNKNOWN",
        "TCP",
    ]


def test_mpart01_a_binary_body_with_nuls_is_framed_by_content_length() -> None:
    message = request("mpart01")
    assert message.content_type == "multipart/mixed"
    assert len(message.body) == 553
    assert b"\x00" in message.body
    assert message.body.endswith(b"--7a9cbec02ceef655--\r\n")


def test_unusual_and_empty_reason_phrases() -> None:
    unusual = parse_message(load("unreason"))
    assert isinstance(unusual, Response) and unusual.status == 200
    assert unusual.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    empty = parse_message(load("noreason"))
    assert isinstance(empty, Response) and (empty.status, empty.reason) == (100, "")


def test_application_layer_messages_parse_as_the_rfc_reads_them() -> None:
    assert request("badbranch").top_via.branch == "z9hG4bK"  # §3.2.1
    assert request("bext01").headers.get_all("Require") == [
        "nothingSupportsThis",
        "nothingSupportsThisEither",
    ]
    assert request("invut").content_type == "application/unknownformat"  # §3.3.6
    assert request("regaut01").headers.get("Authorization") == (
        "NoOneKnowsThisScheme opaque-data=here"
    )
    broadcast = parse_message(load("bcast"))
    assert broadcast.vias[1].host == "255.255.255.255"  # §3.3.10
    assert request("zeromf").headers.get("Max-Forwards") == "0"  # §3.3.11
    # §3.3.12: without <>, ';unknownparam' belongs to the header; §3.3.13: with <>,
    # to the URI.
    bare = request("cparam01").contact
    assert bare is not None and bare.param("unknownparam") is None
    assert ("unknownparam", None) in bare.params and bare.uri.params == ()
    enclosed = request("cparam02").contact
    assert enclosed is not None and enclosed.uri.has_param("unknownparam")
    assert enclosed.params == ()
    # §3.3.14: an escaped header in the Contact URI.
    escaped = request("regescrt").contact
    assert escaped is not None
    assert unescape(escaped.uri.headers) == "Route=<sip:sip.example.com>"
    assert request("sdp01").headers.get("Accept") == "text/nobodyKnowsThis"  # §3.3.15


def test_inv2543_rfc2543_syntax() -> None:
    """§3.4.1: no branch, no From tag, no Max-Forwards, no Content-Length (over UDP
    the body is the rest of the datagram)."""
    invite = request("inv2543")
    assert invite.top_via.branch is None
    assert invite.from_addr.tag is None
    assert invite.headers.get("Max-Forwards") is None
    assert invite.headers.get("Content-Length") is None
    assert invite.body.startswith(b"v=0\r\n") and invite.body.endswith(b"RTP/AVP 0\r\n")


def test_baddate_is_accepted_with_its_date_unread() -> None:
    """§3.1.2.12: a non-GMT Date; nothing here reads Date, so the message is served."""
    assert request("baddate").headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"


def test_over_tcp_a_short_body_waits_and_a_negative_length_closes() -> None:
    """§3.1.2.2 and §3.1.2.3 on a stream: a Content-Length beyond the bytes sent leaves
    the parser waiting (the transport's message timeout ends it); a negative one
    loses the framing."""
    waiting = StreamParser()
    assert waiting.feed(load("clerr")) == []
    assert waiting.in_message
    with pytest.raises(ParseError, match="Content-Length"):
        StreamParser().feed(load("ncl"))
    with pytest.raises(ParseError, match="Content-Length"):
        StreamParser().feed(load("mcl01"))
