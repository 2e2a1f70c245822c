"""WebSocket message protocol, version 1 (docs/protocol.md): parse, validate, encode.

Sans-I/O: text in, typed messages out; dicts in, text out. Every client message is a
JSON object with a ``type`` and, optionally, an ``id`` that the server echoes as
``ref`` in its reply or error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
MAX_SDP_BYTES: Final = 16 * 1024
MAX_ID_LENGTH: Final = 64
MAX_DTMF_DIGITS: Final = 32
#: The 16 DTMF events of RFC 4733 section 3.2.
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")


class ErrorCode:
    BAD_JSON: Final = "bad_json"
    BAD_MESSAGE: Final = "bad_message"
    UNKNOWN_TYPE: Final = "unknown_type"
    UNAUTHENTICATED: Final = "unauthenticated"
    RATE_LIMITED: Final = "rate_limited"
    MESSAGE_TOO_BIG: Final = "message_too_big"
    INVALID_NUMBER: Final = "invalid_number"
    SELF_CALL: Final = "self_call"
    CALL_NOT_FOUND: Final = "call_not_found"
    INVALID_STATE: Final = "invalid_state"
    BAD_SDP: Final = "bad_sdp"
    #: The server is restarting: reconnect (another node takes over) and try again.
    DRAINING: Final = "draining"
    INTERNAL: Final = "internal"


class ProtocolError(ValueError):
    """The peer sent something we cannot act on; the connection stays up."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True)
class Message:
    id: str | None


@dataclass(frozen=True)
class Auth(Message):
    token: str


@dataclass(frozen=True)
class Ping(Message):
    pass


@dataclass(frozen=True)
class CallInvite(Message):
    to: str
    sdp: str
    region: str | None


@dataclass(frozen=True)
class CallAccept(Message):
    call_id: str
    sdp: str


@dataclass(frozen=True)
class CallReject(Message):
    call_id: str


@dataclass(frozen=True)
class CallHangup(Message):
    call_id: str


@dataclass(frozen=True)
class CallDtmf(Message):
    """Digits to send to a phone-network party (RFC 4733 events on the trunk)."""

    call_id: str
    digits: str


@dataclass(frozen=True)
class CallRenegotiate(Message):
    """The device's network changed: a fresh offer from its new address replaces its leg."""

    call_id: str
    sdp: str


def _string(
    data: dict[str, Any], key: str, ref: str | None, *, max_length: int, optional: bool = False
) -> str | None:
    value = data.get(key)
    if value is None:
        if optional:
            return None
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"field {key!r} is required", ref)
    if not isinstance(value, str) or not value:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"field {key!r} must be a non-empty string", ref)
    if len(value) > max_length:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"field {key!r} is longer than {max_length} characters", ref
        )
    return value


def _required(data: dict[str, Any], key: str, ref: str | None, max_length: int = 128) -> str:
    value = _string(data, key, ref, max_length=max_length)
    assert value is not None
    return value


def _auth(d: dict[str, Any], ref: str | None) -> Message:
    return Auth(ref, _required(d, "token", ref, 256))


def _ping(d: dict[str, Any], ref: str | None) -> Message:
    return Ping(ref)


def _invite(d: dict[str, Any], ref: str | None) -> Message:
    region = _string(d, "region", ref, max_length=2, optional=True)
    return CallInvite(
        ref, _required(d, "to", ref, 64), _required(d, "sdp", ref, MAX_SDP_BYTES), region
    )


def _accept(d: dict[str, Any], ref: str | None) -> Message:
    return CallAccept(ref, _required(d, "call_id", ref), _required(d, "sdp", ref, MAX_SDP_BYTES))


def _renegotiate(d: dict[str, Any], ref: str | None) -> Message:
    return CallRenegotiate(
        ref, _required(d, "call_id", ref), _required(d, "sdp", ref, MAX_SDP_BYTES)
    )


def _reject(d: dict[str, Any], ref: str | None) -> Message:
    return CallReject(ref, _required(d, "call_id", ref))


def _hangup(d: dict[str, Any], ref: str | None) -> Message:
    return CallHangup(ref, _required(d, "call_id", ref))


def _dtmf(d: dict[str, Any], ref: str | None) -> Message:
    digits = _required(d, "digits", ref, MAX_DTMF_DIGITS).upper()
    if not set(digits) <= DTMF_DIGITS:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "field 'digits' may hold only 0-9, *, # and A-D", ref
        )
    return CallDtmf(ref, _required(d, "call_id", ref), digits)


_PARSERS = {
    "auth": _auth,
    "ping": _ping,
    "call.invite": _invite,
    "call.accept": _accept,
    "call.reject": _reject,
    "call.hangup": _hangup,
    "call.dtmf": _dtmf,
    "call.renegotiate": _renegotiate,
}


def parse(text: str | bytes) -> Message:
    """Parse one client frame. Raises ProtocolError with a code for anything unusable."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    except RecursionError:
        # A few thousand nested brackets fit in one frame and exhaust the decoder.
        raise ProtocolError(ErrorCode.BAD_JSON, "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    raw_id = data.get("id")
    ref: str | None = None
    if raw_id is not None:
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "field 'id' must be a string or integer")
        ref = str(raw_id)
        if len(ref) > MAX_ID_LENGTH:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "field 'id' is too long")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "field 'type' is required", ref)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}", ref)
    return parser(data, ref)


def encode(kind: str, *, ref: str | None = None, **fields: Any) -> str:
    """Encode one server message; ``ref`` echoes the client's message id."""
    message: dict[str, Any] = {"type": kind, **fields}
    if ref is not None:
        message["ref"] = ref
    return json.dumps(message, separators=(",", ":"))


def error(code: str, message: str, ref: str | None = None) -> str:
    return encode("error", ref=ref, code=code, message=message)
