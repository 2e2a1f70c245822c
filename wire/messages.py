"""WebSocket messages, version 1 (docs/protocol.md), both ways, and their JSON.

Sans-I/O: text in, typed messages out; typed messages in, text out. Every
client message is a JSON object with a ``type`` and, optionally, an ``id`` that
the server echoes as ``ref`` in its reply or error.

- client to server: `parse` (the server's strict parser) and `encode_message`
  (what a client sends);
- server to client: `encode` / `encode_message` (what the server sends) and
  `parse_server` (what a client reads).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

PROTOCOL_VERSION: Final = 1
MAX_SDP_BYTES: Final = 16 * 1024
MAX_ID_LENGTH: Final = 64
MAX_DTMF_DIGITS: Final = 32
#: The 16 DTMF events of RFC 4733 section 3.2.
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")


class ErrorCode:
    """The ``code`` of an ``error`` message (docs/protocol.md, "Error codes")."""

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


#: Each error code with what it means.
ERROR_CODES: Final[dict[str, str]] = {
    ErrorCode.BAD_JSON: "the frame is not valid JSON",
    ErrorCode.BAD_MESSAGE: "a missing or invalid field, or a binary frame",
    ErrorCode.UNKNOWN_TYPE: "no such message type",
    ErrorCode.UNAUTHENTICATED: "no valid credential (the connection closes)",
    ErrorCode.RATE_LIMITED: "too many messages or calls: slow down",
    ErrorCode.MESSAGE_TOO_BIG: "reserved: a frame over 64 KiB closes the connection (1009)",
    ErrorCode.INVALID_NUMBER: "the number cannot be read as a phone number",
    ErrorCode.SELF_CALL: "a number cannot call itself",
    ErrorCode.CALL_NOT_FOUND: "no such call (it may be over)",
    ErrorCode.INVALID_STATE: "not possible in the call's state (e.g. answered already)",
    ErrorCode.BAD_SDP: "the SDP was refused",
    ErrorCode.DRAINING: "this server is restarting: reconnect and try again",
    ErrorCode.INTERNAL: "the server failed",
}


class ProtocolError(ValueError):
    """The peer sent something we cannot act on; the connection stays up."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


def _wire_name(name: str) -> str:
    """A field's name on the wire: ``from_`` is ``from``."""
    return name.rstrip("_")


# Client to server ---------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A message from a device; ``id`` comes back as ``ref`` in the reply."""

    type: ClassVar[str]
    id: str | None


@dataclass(frozen=True)
class Auth(Message):
    type: ClassVar[str] = "auth"
    token: str


@dataclass(frozen=True)
class Ping(Message):
    type: ClassVar[str] = "ping"


@dataclass(frozen=True)
class CallInvite(Message):
    type: ClassVar[str] = "call.invite"
    to: str
    sdp: str
    region: str | None = None


@dataclass(frozen=True)
class CallAccept(Message):
    type: ClassVar[str] = "call.accept"
    call_id: str
    sdp: str


@dataclass(frozen=True)
class CallReject(Message):
    type: ClassVar[str] = "call.reject"
    call_id: str


@dataclass(frozen=True)
class CallHangup(Message):
    type: ClassVar[str] = "call.hangup"
    call_id: str


@dataclass(frozen=True)
class CallDtmf(Message):
    """Digits to send to a phone-network party (RFC 4733 events on the trunk)."""

    type: ClassVar[str] = "call.dtmf"
    call_id: str
    digits: str


@dataclass(frozen=True)
class CallRenegotiate(Message):
    """The device's network changed: a fresh offer from its new address replaces its leg."""

    type: ClassVar[str] = "call.renegotiate"
    call_id: str
    sdp: str


CLIENT_MESSAGES: Final[tuple[type[Message], ...]] = (
    Auth,
    Ping,
    CallInvite,
    CallAccept,
    CallReject,
    CallHangup,
    CallDtmf,
    CallRenegotiate,
)


# Server to client ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServerMessage:
    """A message from the server; ``ref`` is the id of the request it answers."""

    type: ClassVar[str]
    ref: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Welcome(ServerMessage):
    """Authenticated (to a repeated ``auth``: only ``device_id``)."""

    type: ClassVar[str] = "welcome"
    device_id: str
    protocol: int | None = None
    number: str | None = None


@dataclass(frozen=True)
class Pong(ServerMessage):
    type: ClassVar[str] = "pong"


@dataclass(frozen=True)
class CallProgress(ServerMessage):
    """Reply to call.invite: the relay's answer; ringback follows (early media)."""

    type: ClassVar[str] = "call.progress"
    call_id: str
    to: str
    sdp: str
    #: The callee is a phone number reached over the operator's trunk (DTMF applies).
    phone_network: bool = False


@dataclass(frozen=True)
class CallRinging(ServerMessage):
    type: ClassVar[str] = "call.ringing"
    call_id: str


@dataclass(frozen=True)
class CallIncoming(ServerMessage):
    """A call for this device; ``sdp`` is the relay's offer for this device's leg."""

    type: ClassVar[str] = "call.incoming"
    call_id: str
    from_: str
    sdp: str
    phone_network: bool = False


@dataclass(frozen=True)
class CallAccepted(ServerMessage):
    type: ClassVar[str] = "call.accepted"
    call_id: str
    device_id: str


@dataclass(frozen=True)
class CallDigit(ServerMessage):
    """A digit the phone-number party sent (one message per RFC 4733 event)."""

    type: ClassVar[str] = "call.dtmf"
    call_id: str
    digit: str


@dataclass(frozen=True)
class CallQuotaWarning(ServerMessage):
    type: ClassVar[str] = "call.quota_warning"
    call_id: str
    seconds_left: int


@dataclass(frozen=True)
class CallEnded(ServerMessage):
    """The call is over for this device; ``reason`` and ``detail`` are in wire.reasons."""

    type: ClassVar[str] = "call.ended"
    call_id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class CallRenegotiated(ServerMessage):
    type: ClassVar[str] = "call.renegotiated"
    call_id: str
    sdp: str


@dataclass(frozen=True)
class CallStateReport(ServerMessage):
    """After a reconnect: a call the device is still on (``state``: inviting/ringing/connected)."""

    type: ClassVar[str] = "call.state"
    call_id: str
    state: str
    direction: str
    peer: str


@dataclass(frozen=True)
class Reconnect(ServerMessage):
    """This server is restarting (``reason`` "draining"): connect again."""

    type: ClassVar[str] = "reconnect"
    reason: str


@dataclass(frozen=True)
class ErrorReply(ServerMessage):
    """A request could not be carried out (``code`` in ErrorCode); the connection stays up."""

    type: ClassVar[str] = "error"
    code: str
    message: str


SERVER_MESSAGES: Final[tuple[type[ServerMessage], ...]] = (
    Welcome,
    Pong,
    CallProgress,
    CallRinging,
    CallIncoming,
    CallAccepted,
    CallDigit,
    CallQuotaWarning,
    CallEnded,
    CallRenegotiated,
    CallStateReport,
    Reconnect,
    ErrorReply,
)

#: The reason of a ``reconnect`` message.
RECONNECT_DRAINING: Final = "draining"

_SERVER_BY_TYPE: Final = {cls.type: cls for cls in SERVER_MESSAGES}


# Parsing client messages (the server's side) --------------------------------------------


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


_PARSERS: Final = {
    Auth.type: _auth,
    Ping.type: _ping,
    CallInvite.type: _invite,
    CallAccept.type: _accept,
    CallReject.type: _reject,
    CallHangup.type: _hangup,
    CallDtmf.type: _dtmf,
    CallRenegotiate.type: _renegotiate,
}


def _json_object(text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    except RecursionError:
        # A few thousand nested brackets fit in one frame and exhaust the decoder.
        raise ProtocolError(ErrorCode.BAD_JSON, "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    return data


def parse(text: str | bytes) -> Message:
    """Parse one client frame. Raises ProtocolError with a code for anything unusable."""
    data = _json_object(text)
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


# Encoding -------------------------------------------------------------------------------


def encode(kind: str, *, ref: str | None = None, **fields: Any) -> str:
    """Encode one server message; ``ref`` echoes the client's message id."""
    if kind not in _SERVER_BY_TYPE:
        raise ValueError(f"{kind!r} is not a server message type")
    message: dict[str, Any] = {"type": kind, **fields}
    if ref is not None:
        message["ref"] = ref
    return json.dumps(message, separators=(",", ":"))


def error(code: str, message: str, ref: str | None = None) -> str:
    return encode(ErrorReply.type, ref=ref, code=code, message=message)


def as_dict(message: Message | ServerMessage) -> dict[str, Any]:
    """The JSON object of a message: ``type``, the client's ``id``, its fields, the ``ref``.

    Optional fields that are None are left out.
    """
    data: dict[str, Any] = {"type": message.type}
    if isinstance(message, Message) and message.id is not None:
        data["id"] = message.id
    for f in dataclasses.fields(message):
        if f.name in ("id", "ref"):
            continue
        value = getattr(message, f.name)
        if value is not None:
            data[_wire_name(f.name)] = value
    if isinstance(message, ServerMessage) and message.ref is not None:
        data["ref"] = message.ref
    return data


def encode_message(message: Message | ServerMessage) -> str:
    """Encode a typed message, either way."""
    return json.dumps(as_dict(message), separators=(",", ":"))


# Parsing server messages (a client's side) ----------------------------------------------


def _field_types(cls: type[ServerMessage]) -> dict[str, tuple[str, Any, bool]]:
    """wire name -> (attribute, Python type, required) for one server message class."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[str, Any, bool]] = {}
    for f in dataclasses.fields(cls):
        if f.name == "ref":
            continue
        hint = hints[f.name]
        options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[_wire_name(f.name)] = (f.name, options[0], required)
    return out


_SERVER_FIELDS: Final = {cls.type: _field_types(cls) for cls in SERVER_MESSAGES}


def parse_server(text: str | bytes | dict[str, Any]) -> ServerMessage:
    """Parse one server frame (or its decoded JSON object) into its typed message.

    Unknown fields are ignored (a newer server may add some); a missing required
    field or a field of the wrong type is a ProtocolError.
    """
    data = text if isinstance(text, dict) else _json_object(text)
    kind = data.get("type")
    raw_ref = data.get("ref")
    ref = None if raw_ref is None else str(raw_ref)
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "field 'type' is required", ref)
    cls = _SERVER_BY_TYPE.get(kind)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}", ref)
    values: dict[str, Any] = {"ref": ref}
    for wire_name, (name, kind_of, required) in _SERVER_FIELDS[kind].items():
        value = data.get(wire_name)
        if value is None:
            if required:
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE, f"{kind}: field {wire_name!r} is required", ref
                )
            continue
        if kind_of is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind_of) or (kind_of is int and isinstance(value, bool)):
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"{kind}: field {wire_name!r} must be {kind_of.__name__}",
                ref,
            )
        values[name] = value
    return cls(**values)
