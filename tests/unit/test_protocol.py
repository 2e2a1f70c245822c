from __future__ import annotations

import json

import pytest

from signaling import protocol
from signaling.ratelimit import TokenBucket


def test_parse_invite() -> None:
    msg = protocol.parse(
        json.dumps({"type": "call.invite", "id": 7, "to": "+4917700000002", "sdp": "v=0"})
    )
    assert msg == protocol.CallInvite("7", "+4917700000002", "v=0", None)


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
    ],
)
def test_bad_messages_get_a_code(text: str, code: str) -> None:
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.parse(text)
    assert info.value.code == code


def test_error_echoes_the_message_id() -> None:
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.parse('{"type": "call.reject", "id": "abc"}')
    assert json.loads(protocol.error(info.value.code, info.value.message, info.value.ref)) == {
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
