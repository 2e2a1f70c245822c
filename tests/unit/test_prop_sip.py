"""Property-based tests of the SIP parser, the stream framer and digest header parsing.

Derandomized (the same examples on every run, no example database) and bounded:
the whole file runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling.sip.digest import (
    Challenge,
    Credentials,
    DigestChallenger,
    DigestError,
    Verdict,
    parse_auth_params,
)
from signaling.sip.message import (
    URI,
    ParseError,
    Request,
    Response,
    StreamParser,
    parse_message,
)
from tests.unit.test_sip_message import INVITE, SDP

BOUNDED = settings(
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: For the stream tests, which feed every example in many pieces.
FEWER = settings(BOUNDED, max_examples=80)
#: Status codes a ParseError may carry (RFC 3261: 400, 416 bad scheme, 505 version,
#: 513 too large).
PARSE_ERROR_STATUSES = {400, 416, 505, 513}

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
HOST = st.from_regex(r"\A[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}\Z").filter(
    lambda h: h not in ("sip", "sips", "tel")
) | st.sampled_from(["127.0.0.1", "192.0.2.10", "[2001:db8::7]"])
USER = st.from_regex(r"\A\+?[0-9]{3,15}\Z") | st.from_regex(r"\A[a-z][a-z0-9]{0,10}\Z")
PORT = st.none() | st.integers(min_value=1, max_value=65535)
#: Header values without CR/LF and without leading/trailing white space or commas.
VALUE = st.from_regex(r"\A[!-+\--~]([ !-+\--~]{0,30}[!-+\--~])?\Z")
METHODS = st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "FROB"])


def _uri(user: str, host: str, port: int | None) -> str:
    return f"sip:{user}@{host}" + (f":{port}" if port else "")


@st.composite
def sip_messages(draw: st.DrawFn) -> bytes:
    """A well-formed request or response as a peer could send it."""
    user, host, port = draw(USER), draw(HOST), draw(PORT)
    method = draw(METHODS)
    body = draw(st.sampled_from([b"", SDP, b"x" * 3]))
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append(f"{method} {_uri(user, host, port)} SIP/2.0")
    else:
        status = draw(st.integers(min_value=100, max_value=699))
        lines.append(f"SIP/2.0 {status} {draw(st.sampled_from(['OK', 'Ringing', 'Busy Here']))}")
    for index in range(draw(st.integers(min_value=1, max_value=3))):
        branch = draw(TOKEN)
        lines.append(f"Via: SIP/2.0/UDP {host}:{5060 + index};branch=z9hG4bK{branch};rport")
    lines.append(f"From: <{_uri(draw(USER), host, None)}>;tag={draw(TOKEN)}")
    to_tag = draw(st.none() | TOKEN)
    lines.append(f"To: <{_uri(user, host, port)}>" + (f";tag={to_tag}" if to_tag else ""))
    lines.append(f"Call-ID: {draw(TOKEN)}@{host}")
    lines.append(f"CSeq: {draw(st.integers(min_value=0, max_value=2**31 - 1))} {method}")
    lines.append(f"Max-Forwards: {draw(st.integers(min_value=0, max_value=255))}")
    for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=4)):
        if name.lower() in ("content-length", "l", "cseq", "via", "v", "to", "t", "from", "f"):
            continue
        if name.lower() in ("call-id", "i", "max-forwards"):
            continue
        lines.append(f"X-{name}: {value}")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _outcome(data: bytes) -> Request | Response | ParseError:
    try:
        message = parse_message(data, max_size=4096)
    except ParseError as exc:
        assert exc.status in PARSE_ERROR_STATUSES, exc.status
        assert exc.reason
        _ = exc.answerable  # the trunk asks this of every error: it must not raise
        return exc
    # What the trunk reads from every message it accepts is readable.
    _ = (message.call_id, message.cseq, message.top_via, message.from_addr, message.to_addr)
    message.encode()
    return message


@BOUNDED
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_a_parse_error(data: bytes) -> None:
    _outcome(data)


@BOUNDED
@given(st.text(max_size=400))
def test_any_text_parses_or_raises_a_parse_error(text: str) -> None:
    _outcome(text.encode("utf-8", "surrogatepass"))


@FEWER
@given(st.data())
def test_spliced_valid_messages_parse_or_raise_a_parse_error(data: st.DataObject) -> None:
    """Valid messages cut and glued: the regions a random byte string rarely reaches."""
    a = data.draw(sip_messages())
    b = data.draw(st.sampled_from([INVITE, data.draw(sip_messages())]))
    cut_a = data.draw(st.integers(min_value=0, max_value=len(a)))
    cut_b = data.draw(st.integers(min_value=0, max_value=len(b)))
    junk = data.draw(st.binary(max_size=8))
    _outcome(a[:cut_a] + junk + b[cut_b:])


@FEWER
@given(sip_messages())
def test_serialize_after_parse_is_stable(wire: bytes) -> None:
    first = parse_message(wire)
    encoded = first.encode()
    second = parse_message(encoded)
    assert second.encode() == encoded
    assert list(second.headers) == list(first.headers)
    assert second.body == first.body
    if isinstance(first, Request):
        assert isinstance(second, Request)
        assert (second.method, second.uri) == (first.method, first.uri)
    else:
        assert isinstance(second, Response)
        assert (second.status, second.reason) == (first.status, first.reason)


def _feed_all(chunks: list[bytes]) -> tuple[list[str], bool]:
    """What a stream parser gives for these chunks: the outcomes (as comparable text)
    and whether the framing was lost (feed raised)."""
    parser = StreamParser(max_size=2048)
    out: list[str] = []
    for chunk in chunks:
        try:
            results = parser.feed(chunk)
        except ParseError as exc:
            assert exc.status in PARSE_ERROR_STATUSES
            return out, True
        for result in results:
            if isinstance(result, ParseError):
                out.append(f"error {result.status} {result.reason}")
            else:
                out.append(result.encode().decode("utf-8", "replace"))
    return out, False


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@FEWER
@given(
    st.lists(sip_messages() | st.just(b"\r\n\r\n"), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_stream_parser_gives_the_same_messages_for_any_chunking(
    messages: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(messages)
    whole, lost = _feed_all([stream])
    assert not lost
    assert len(whole) == sum(m != b"\r\n\r\n" for m in messages)
    assert _feed_all(_chunked(stream, cuts)) == (whole, False)
    assert _feed_all([stream[i : i + 1] for i in range(len(stream))]) == (whole, False)


@FEWER
@given(
    st.lists(sip_messages() | st.binary(max_size=40), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_stream_parser_on_any_bytes_loses_framing_or_not_regardless_of_chunking(
    parts: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(parts)
    whole, lost = _feed_all([stream])
    chunked, chunked_lost = _feed_all(_chunked(stream, cuts))
    assert chunked_lost == lost
    if not lost:
        assert chunked == whole
    else:
        # A feed that raises drops what that call completed: chunked feeding may have
        # handed out more before the framing was lost, never anything different.
        assert chunked[: len(whole)] == whole


def test_a_head_trickled_a_byte_at_a_time_is_searched_once() -> None:
    """Found by the stream properties: each one-byte feed searched the whole buffer
    again, 3 s of CPU for one 64 KiB head sent a byte per segment."""
    parser = StreamParser()
    head = b"INVITE sip:x@y SIP/2.0\r\nX: " + b"a" * 65_000
    started = time.process_time()
    for i in range(len(head)):
        assert parser.feed(head[i : i + 1]) == []
    assert time.process_time() - started < 1.0


# Digest (RFC 8760, RFC 7616 header syntax) ---------------------------------------------


@BOUNDED
@given(st.text(max_size=200))
def test_any_auth_header_parses_or_raises_a_digest_error(value: str) -> None:
    for parse in (parse_auth_params, Challenge.parse, Credentials.parse):
        with contextlib.suppress(DigestError):
            parse(value)


QUOTABLE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20
)
QOP = st.lists(st.sampled_from(["auth", "auth-int"]), max_size=2, unique=True).map(tuple)
ALGORITHM = st.sampled_from(["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"])


@BOUNDED
@given(QUOTABLE, QUOTABLE, ALGORITHM, QOP, st.none() | QUOTABLE, st.booleans())
def test_challenges_round_trip(
    realm: str, nonce: str, algorithm: str, qop: tuple[str, ...], opaque: str | None, stale: bool
) -> None:
    challenge = Challenge(realm, nonce, algorithm, qop, opaque, stale)
    assert Challenge.parse(str(challenge)) == challenge


@BOUNDED
@given(
    QUOTABLE,
    QUOTABLE,
    QUOTABLE,
    QUOTABLE,
    st.from_regex(r"\A[0-9a-f]{32}\Z"),
    ALGORITHM,
    st.booleans(),
    st.none() | QUOTABLE,
)
def test_credentials_round_trip(
    username: str,
    realm: str,
    nonce: str,
    uri: str,
    response: str,
    algorithm: str,
    with_qop: bool,
    opaque: str | None,
) -> None:
    qop, nc, cnonce = ("auth", "00000001", "c0ffee") if with_qop else (None, None, None)
    creds = Credentials(username, realm, nonce, uri, response, algorithm, qop, nc, cnonce, opaque)
    assert Credentials.parse(str(creds)) == creds


@BOUNDED
@given(st.text(max_size=300))
def test_the_challenger_refuses_any_header_it_did_not_answer(value: str) -> None:
    challenger = DigestChallenger("anruf.invalid", b"k" * 32)
    verdict = challenger.verify(
        value,
        method="INVITE",
        request_uri=URI("sip", "+4930555000100", "127.0.0.1"),
        username="operator",
        password="secret",
        now=1_700_000_000.0,
    )
    assert verdict is Verdict.INVALID
