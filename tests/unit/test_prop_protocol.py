"""Property-based tests of the WebSocket protocol parser (wire/messages.py).

Any text is a Message or a ProtocolError with one of the documented codes, never
another exception; valid messages of every type round-trip through JSON.
Derandomized and bounded (a few seconds).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire

BOUNDED = settings(
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: The codes parse() may give; the others are the server's verdicts on valid messages.
PARSE_CODES = {
    wire.ErrorCode.BAD_JSON,
    wire.ErrorCode.BAD_MESSAGE,
    wire.ErrorCode.UNKNOWN_TYPE,
}
FIELDS = ["id", "type", "to", "sdp", "call_id", "token", "region", "digits"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", "0", "1#", "+4917700000002", "DE", "v=0\r\n", "x" * 70])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from([*wire.messages._PARSERS, "x", ""])},
    optional={name: json_values for name in FIELDS if name != "type"},
)


def _check(text: str | bytes) -> wire.Message | None:
    try:
        message = wire.parse(text)
    except wire.ProtocolError as exc:
        assert exc.code in PARSE_CODES, exc.code
        assert exc.message
        assert exc.ref is None or (isinstance(exc.ref, str) and len(exc.ref) <= 64)
        # The error goes back to the device as JSON: it must encode.
        json.loads(wire.error(exc.code, exc.message, exc.ref))
        return None
    assert isinstance(message, wire.Message)
    return message


@BOUNDED
@given(st.text(max_size=300))
def test_any_text_is_a_message_or_a_protocol_error(text: str) -> None:
    _check(text)


@BOUNDED
@given(st.binary(max_size=300))
def test_any_bytes_are_a_message_or_a_protocol_error(data: bytes) -> None:
    _check(data)


@BOUNDED
@given(message_like)
def test_message_shaped_json_is_a_message_or_a_protocol_error(value: dict[str, Any]) -> None:
    message = _check(json.dumps(value))
    if message is not None:
        # Every string field of a parsed message is bounded.
        for item in dataclasses.fields(message):
            field_value = getattr(message, item.name)
            assert field_value is None or isinstance(field_value, str)
            assert field_value is None or len(field_value) <= wire.MAX_SDP_BYTES


@BOUNDED
@given(st.text(max_size=40), st.integers(min_value=1, max_value=40))
def test_deeply_nested_json_is_a_protocol_error(prefix: str, depth_thousands: int) -> None:
    """Nesting deep enough to exhaust the JSON decoder's recursion is refused, not
    raised as RecursionError."""
    deep = "[" * (1000 * depth_thousands) + "]" * (1000 * depth_thousands)
    for text in (deep, '{"type": "ping", "id": ' + deep + "}", prefix + deep):
        _check(text)


ids = st.none() | st.text(min_size=1, max_size=64) | st.integers(-(10**20), 10**20)
strings = st.text(min_size=1, max_size=128)
sdps = st.text(min_size=1, max_size=400)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[dict[str, Any], wire.Message]:
    raw_id = draw(ids)
    ref = None if raw_id is None else str(raw_id)
    kind = draw(st.sampled_from(sorted(wire.messages._PARSERS)))
    data: dict[str, Any] = {"type": kind}
    if raw_id is not None:
        data["id"] = raw_id
    expected: wire.Message
    if kind == "auth":
        data["token"] = draw(st.text(min_size=1, max_size=256))
        expected = wire.Auth(ref, data["token"])
    elif kind == "ping":
        expected = wire.Ping(ref)
    elif kind == "call.invite":
        data["to"] = draw(st.text(min_size=1, max_size=64))
        data["sdp"] = draw(sdps)
        region = draw(st.none() | st.sampled_from(["DE", "AT", "x"]))
        if region is not None:
            data["region"] = region
        expected = wire.CallInvite(ref, data["to"], data["sdp"], region)
    elif kind == "call.dtmf":
        data["call_id"] = draw(strings)
        data["digits"] = draw(st.text(alphabet="0123456789*#ABCDabcd", min_size=1, max_size=32))
        expected = wire.CallDtmf(ref, data["call_id"], data["digits"].upper())
    else:
        # call.accept, call.reject, call.hangup and any newer call.* message: a call id
        # and, where the type takes one, an SDP.
        data["call_id"] = draw(strings)
        data["sdp"] = draw(sdps)
        parsed = wire.messages._PARSERS[kind](data, ref)
        names = {item.name for item in dataclasses.fields(parsed)}
        assert names <= {"id", "call_id", "sdp"}, names
        expected = parsed
    return data, expected


@BOUNDED
@given(valid_messages(), st.booleans())
def test_valid_messages_round_trip(
    case: tuple[dict[str, Any], wire.Message], ascii_only: bool
) -> None:
    data, expected = case
    text = json.dumps(data, ensure_ascii=ascii_only)
    assert wire.parse(text) == expected
    assert wire.parse(text.encode()) == expected
