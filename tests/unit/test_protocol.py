from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import wire
from signaling.ratelimit import TokenBucket


def test_parse_invite() -> None:
    msg = wire.parse(
        json.dumps({"type": "call.invite", "id": 7, "to": "+4917700000002", "sdp": "v=0"})
    )
    assert msg == wire.CallInvite("7", "+4917700000002", "v=0", None)


def test_parse_dtmf_digits_in_upper_case() -> None:
    msg = wire.parse('{"type": "call.dtmf", "call_id": "c1", "digits": "12*#abcd"}')
    assert msg == wire.CallDtmf(None, "c1", "12*#ABCD")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"id": 1}', "bad_message"),
        ('{"type": "call.fly"}', "unknown_type"),
        ('{"type": "call.accept", "call_id": "x"}', "bad_message"),
        ('{"type": "call.hangup", "call_id": 5}', "bad_message"),
        ('{"type": "call.hangup", "call_id": ""}', "bad_message"),
        ('{"type": "ping", "id": true}', "bad_message"),
        ('{"type": "ping", "id": "' + "x" * 65 + '"}', "bad_message"),
        ('{"type": "call.invite", "to": "1", "sdp": "' + "a" * 17000 + '"}', "bad_message"),
        ('{"type": "call.dtmf", "call_id": "c", "digits": "12x"}', "bad_message"),
        ('{"type": "call.dtmf", "call_id": "c", "digits": "' + "1" * 33 + '"}', "bad_message"),
        ('{"type": "call.dtmf", "digits": "1"}', "bad_message"),
    ],
)
def test_bad_messages_get_a_code(text: str, code: str) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse(text)
    assert info.value.code == code


def test_error_echoes_the_message_id() -> None:
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse('{"type": "call.reject", "id": "abc"}')
    assert json.loads(wire.error(info.value.code, info.value.message, info.value.ref)) == {
        "type": "error",
        "code": "bad_message",
        "message": "field 'call_id' is required",
        "ref": "abc",
    }


def test_token_bucket_refuses_a_burst_and_refills() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.allow(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.allow(0.1)
    assert not bucket.allow(0.1)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
TYPES = ["auth", "ping", "call.invite", "call.accept", "call.reject", "call.hangup", "x"]
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={"id": json_values, "to": json_values, "sdp": json_values, "call_id": json_values,
              "token": json_values, "region": json_values},
)  # fmt: skip


@given(st.one_of(json_values, message_like))
def test_any_json_parses_or_fails_with_a_protocol_error(value: object) -> None:
    try:
        message = wire.parse(json.dumps(value))
    except wire.ProtocolError as exc:
        assert exc.code in {"bad_json", "bad_message", "unknown_type"}
    else:
        assert isinstance(message, wire.Message)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_fail_with_a_protocol_error(data: bytes) -> None:
    with contextlib.suppress(wire.ProtocolError):
        wire.parse(data)
