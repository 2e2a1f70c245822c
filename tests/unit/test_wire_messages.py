"""The wire package's messages both ways, and its registry of end reasons."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from signaling.calls import machine
from wire.reasons import END_REASONS, Detail, EndReason

CALL = "c0ffee"
NUMBER = "+4917700000002"

SERVER_EXAMPLES: list[wire.ServerMessage] = [
    wire.Welcome("dev_1", protocol=1, number="+4917700000001"),
    wire.Welcome("dev_1", ref="7"),
    wire.Pong(ref="8"),
    wire.CallProgress(CALL, NUMBER, "v=0\r\n", phone_network=True, ref="1"),
    wire.CallRinging(CALL),
    wire.CallIncoming(CALL, "+4917700000001", "v=0\r\n", phone_network=False),
    wire.CallAccepted(CALL, "dev_2"),
    wire.CallDigit(CALL, "5"),
    wire.CallQuotaWarning(CALL, 60),
    wire.CallEnded(CALL, EndReason.FAILED, Detail.OVERLOADED, ref="1"),
    wire.CallEnded(CALL, EndReason.COMPLETED, ""),
    wire.CallRenegotiated(CALL, "v=0\r\n", ref="3"),
    wire.CallStateReport(CALL, "connected", "outgoing", NUMBER),
    wire.Reconnect(wire.RECONNECT_DRAINING),
    wire.ErrorReply(wire.ErrorCode.BAD_SDP, "no Opus", ref="4"),
]

CLIENT_EXAMPLES: list[wire.Message] = [
    wire.Auth("1", "token"),
    wire.Ping("2"),
    wire.CallInvite("3", NUMBER, "v=0\r\n"),
    wire.CallInvite("3", "0177 00000002", "v=0\r\n", "DE"),
    wire.CallAccept("4", CALL, "v=0\r\n"),
    wire.CallReject(None, CALL),
    wire.CallHangup("5", CALL),
    wire.CallDtmf("6", CALL, "12#"),
    wire.CallRenegotiate("7", CALL, "v=0\r\n"),
]


def test_every_message_type_has_an_example() -> None:
    assert {type(m) for m in SERVER_EXAMPLES} == set(wire.SERVER_MESSAGES)
    assert {type(m) for m in CLIENT_EXAMPLES} == set(wire.CLIENT_MESSAGES)


@pytest.mark.parametrize("message", SERVER_EXAMPLES, ids=lambda m: m.type)
def test_server_messages_round_trip(message: wire.ServerMessage) -> None:
    text = wire.encode_message(message)
    assert wire.parse_server(text) == message
    assert wire.parse_server(text.encode()) == message
    assert wire.parse_server(json.loads(text)) == message


@pytest.mark.parametrize("message", CLIENT_EXAMPLES, ids=lambda m: m.type)
def test_client_messages_round_trip_through_the_servers_parser(message: wire.Message) -> None:
    assert wire.parse(wire.encode_message(message)) == message


def test_encode_by_type_and_by_message_agree() -> None:
    """The server's keyword encoder and the typed one write the same JSON."""
    assert wire.encode(
        "call.incoming", call_id=CALL, **{"from": "+4917700000001"}, sdp="v=0", phone_network=True
    ) == wire.encode_message(wire.CallIncoming(CALL, "+4917700000001", "v=0", phone_network=True))
    assert wire.encode("call.ended", ref="9", call_id=CALL, reason="busy", detail="") == (
        wire.encode_message(wire.CallEnded(CALL, "busy", "", ref="9"))
    )
    assert wire.error("bad_json", "x", "1") == wire.encode_message(
        wire.ErrorReply("bad_json", "x", ref="1")
    )


def test_the_server_cannot_encode_a_type_the_protocol_lacks() -> None:
    with pytest.raises(ValueError, match="not a server message type"):
        wire.encode("call.teleport", call_id=CALL)


def test_incoming_uses_from_on_the_wire() -> None:
    data = wire.as_dict(wire.CallIncoming(CALL, "+4917700000001", "v=0"))
    assert data["from"] == "+4917700000001" and "from_" not in data


def test_optional_fields_left_out_and_defaulted() -> None:
    assert json.loads(wire.encode_message(wire.Welcome("dev_1", ref="1"))) == {
        "type": "welcome",
        "device_id": "dev_1",
        "ref": "1",
    }
    parsed = wire.parse_server('{"type": "call.progress", "call_id": "c", "to": "1", "sdp": "s"}')
    assert parsed == wire.CallProgress("c", "1", "s", phone_network=False)
    ended = wire.parse_server('{"type": "call.ended", "call_id": "c", "reason": "busy"}')
    assert ended == wire.CallEnded("c", "busy", "")


def test_unknown_fields_of_a_newer_server_are_ignored() -> None:
    assert wire.parse_server('{"type": "call.ringing", "call_id": "c", "x": 1}') == (
        wire.CallRinging("c")
    )


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", "bad_json"),
        ("[]", "bad_message"),
        ('{"call_id": "c"}', "bad_message"),
        ('{"type": "call.teleported"}', "unknown_type"),
        ('{"type": "call.ringing"}', "bad_message"),
        ('{"type": "call.ringing", "call_id": 5}', "bad_message"),
        ('{"type": "call.quota_warning", "call_id": "c", "seconds_left": true}', "bad_message"),
        ('{"type": "call.progress", "call_id": "c", "to": "1", "sdp": "s", "phone_network": 1}',
         "bad_message"),
    ],
)  # fmt: skip
def test_bad_server_messages_are_protocol_errors(text: str, code: str) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse_server(text)
    assert info.value.code == code


def test_integral_floats_are_integers() -> None:
    parsed = wire.parse_server(
        '{"type": "call.quota_warning", "call_id": "c", "seconds_left": 60.0}'
    )
    assert parsed == wire.CallQuotaWarning("c", 60)


text = st.text(min_size=1, max_size=40)


def _server_messages() -> st.SearchStrategy[wire.ServerMessage]:
    def build(cls: type[wire.ServerMessage]) -> st.SearchStrategy[wire.ServerMessage]:
        fields: dict[str, Any] = {"ref": st.none() | text}
        for f in dataclasses.fields(cls):
            if f.name == "ref":
                continue
            kind = {"bool": st.booleans(), "int": st.integers(-(2**40), 2**40)}.get(
                str(f.type).split(" ")[0], text
            )
            fields[f.name] = kind if f.default is dataclasses.MISSING else st.none() | kind
        return st.builds(cls, **fields)

    return st.one_of([build(cls) for cls in wire.SERVER_MESSAGES])


@settings(max_examples=300, deadline=None)
@given(_server_messages())
def test_any_server_message_round_trips(message: wire.ServerMessage) -> None:
    parsed = wire.parse_server(wire.encode_message(message))
    # A field left out comes back as its default.
    expected = dataclasses.replace(
        message,
        **{
            f.name: f.default
            for f in dataclasses.fields(message)
            if getattr(message, f.name) is None and f.default is not dataclasses.MISSING
        },
    )
    assert parsed == expected


# The registry of end reasons -------------------------------------------------------------


def test_the_call_machine_ends_calls_with_the_registrys_reasons() -> None:
    assert machine.EndReason is EndReason


def test_every_reason_is_in_the_registry_and_every_detail_has_a_reason() -> None:
    assert set(END_REASONS) == set(EndReason)
    details = [detail for spec in END_REASONS.values() for detail in spec.details]
    assert sorted(details) == sorted(Detail), "each detail belongs to exactly one reason"
    for reason, spec in END_REASONS.items():
        assert spec.description, reason
        for detail, description in spec.details.items():
            assert description and "\n" not in description, detail


@pytest.mark.parametrize(
    ("reason", "detail", "allowed"),
    [
        ("completed", "", True),
        ("cancelled", "caller_connection_lost", True),
        ("unavailable", "no_device_online", True),
        ("failed", "overloaded", True),
        ("failed", "trunk_503", True),
        ("failed", wire.media_detail("ice_failed"), True),
        ("failed", "", False),
        ("not_allowed", "", False),
        ("failed", "trunk_5031", False),
        ("busy", "overloaded", False),
        ("exploded", "", False),
    ],
)
def test_allowed_reason_and_detail_pairs(reason: str, detail: str, allowed: bool) -> None:
    assert wire.allowed(reason, detail) is allowed


def test_dynamic_details_are_built_from_the_registry() -> None:
    assert wire.trunk_status_detail(503) == "trunk_503"
    assert wire.media_detail("media_timeout") == Detail.MEDIA_TIMEOUT
    assert wire.allowed(EndReason.FAILED, wire.trunk_status_detail(404))


def test_error_codes_each_have_a_description() -> None:
    codes = {value for key, value in vars(wire.ErrorCode).items() if key.isupper()}
    assert codes == set(wire.ERROR_CODES)


def test_wire_is_a_leaf_package() -> None:
    """No I/O library and nothing of the server or the media plane is imported."""
    code = (
        "import sys, wire, wire.call, wire.document\n"
        "roots = {name.split('.')[0] for name in sys.modules}\n"
        "print(sorted(roots & {'aiohttp', 'aiortc', 'asyncio', 'signaling', 'voice'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
