"""The relay control channel's wire format, without I/O.

A node's RelayPool talks to each worker process (over a socket pair) and each
relay host (over TCP) in the same frames:

- A frame is a 4-byte big-endian length, then one JSON object (`encode_message`,
  `FrameDecoder`), at most MAX_FRAME bytes (MAX_AUTH_FRAME before a relay host's
  control connection is authenticated, voice/relay/control_auth.py).
- A request is ``{id, op, args}``: a relay operation (voice.relay.api.Operation,
  its fields in order as args) or a channel request (`Ping`, `Shutdown`). A
  notification is a request without an id, never answered.
- A reply is ``{id, result}`` or ``{id, error: {kind, message}}``. Errors keep
  their type across the channel (`error_to_wire`, `error_from_wire`); anything
  unexpected arrives as RelayWorkerError.
- Events come unasked from the serving side: ``ready`` (its pid and event loop),
  ``leg_failed``, ``dtmf`` and ``stats`` (every leg's counters and the relay's
  total legs, every second: also its heartbeat).

`Correlator` is the requesting side (numbers requests, matches replies to them
and decodes results and events to typed values); `decode_request` and
`encode_reply`/`encode_error`/`encode_event` are the serving side's.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import MISSING, astuple, dataclass, fields
from typing import Any, get_args

from voice.relay.api import (
    CloseLeg,
    LegStats,
    NewLeg,
    NoCommonCodecError,
    NoOpusError,
    Operation,
    RelayUnavailable,
    RelayWorkerError,
    Stats,
    UnknownLegError,
    UpdateRtp,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_AUTH_FRAME",
    "MAX_FRAME",
    "Correlator",
    "DtmfReceived",
    "Event",
    "Failure",
    "FrameDecoder",
    "LegFailed",
    "Ping",
    "ProtocolError",
    "Ready",
    "Reply",
    "Request",
    "RequestError",
    "Shutdown",
    "StatsReport",
    "decode_event",
    "decode_request",
    "encode_error",
    "encode_event",
    "encode_message",
    "encode_reply",
    "encode_request",
    "error_from_wire",
    "error_to_wire",
    "frame_size",
    "op_name",
    "stats_from_wire",
    "stats_to_wire",
]

MAX_FRAME = 1 << 22
#: The largest frame taken before a control connection is authenticated.
MAX_AUTH_FRAME = 1024

_HEADER = struct.Struct("!I")
HEADER_SIZE = _HEADER.size


class ProtocolError(Exception):
    """A control-channel message that cannot be read."""


class RequestError(ValueError):
    """A request whose operation or arguments are not understood (answered as a ValueError)."""

    def __init__(self, request_id: int | None, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id


# -- framing ----------------------------------------------------------------------


def encode_message(message: dict[str, Any]) -> bytes:
    """One frame: a 4-byte big-endian length, then the message as UTF-8 JSON."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"control message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def frame_size(header: bytes) -> int:
    """The body length a frame's 4-byte header announces."""
    (size,) = _HEADER.unpack(header)
    return int(size)


class FrameDecoder:
    """Bytes in, whole messages out; keeps any partial frame for the next feed."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise ProtocolError(f"control frame of {size} bytes exceeds {MAX_FRAME}")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[_HEADER.size : end])
            del self._buffer[:end]
            try:
                message = json.loads(body)
            except ValueError as exc:
                raise ProtocolError(f"control frame is not JSON: {exc}") from None
            if not isinstance(message, dict):
                raise ProtocolError("control frame is not a JSON object")
            messages.append(message)
        return messages


# -- errors -------------------------------------------------------------------------

# Most specific first: an error is sent as the first of these it is an instance of.
_WIRE_ERRORS: tuple[tuple[str, type[Exception]], ...] = (
    ("NoOpusError", NoOpusError),
    ("NoCommonCodecError", NoCommonCodecError),
    ("UnknownLegError", UnknownLegError),
    ("RelayUnavailable", RelayUnavailable),
    ("ValueError", ValueError),
)
_ERROR_KINDS = dict(_WIRE_ERRORS)


def error_to_wire(exc: BaseException) -> dict[str, str]:
    kind = next((name for name, cls in _WIRE_ERRORS if isinstance(exc, cls)), None)
    if kind is None:
        kind = "RelayWorkerError"
        message = f"{type(exc).__name__}: {exc}"
    else:
        # str() of a KeyError quotes its argument; the message itself reads better.
        message = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return {"kind": kind, "message": message}


def error_from_wire(error: object) -> Exception:
    if not isinstance(error, dict):
        return RelayWorkerError(f"malformed error from relay worker: {error!r}")
    kind = str(error.get("kind", ""))
    message = str(error.get("message", ""))
    cls = _ERROR_KINDS.get(kind)
    if cls is None:
        return RelayWorkerError(message if kind == "RelayWorkerError" else f"{kind}: {message}")
    return cls(message)


# -- leg stats ------------------------------------------------------------------------


def stats_to_wire(stats: LegStats) -> list[Any]:
    return list(astuple(stats))


def stats_from_wire(values: object) -> LegStats:
    if isinstance(values, dict):
        return LegStats(**values)
    if isinstance(values, list):
        return LegStats(*values)
    return LegStats()


# -- requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    """Is the other side there? Answered with its process id."""


@dataclass(frozen=True)
class Shutdown:
    """Close this channel's legs (all of a worker's) and stop serving it."""


Request = Operation | Ping | Shutdown

#: Each request by its name on the wire: an operation's is the relay contract's method
#: (MediaRelay.offer_rtp for OfferRtp: the class name in snake case), then ping, shutdown.
_OPS: dict[str, type[Request]] = {
    re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower(): cls for cls in get_args(Request)
}
_NAMES: dict[type[Request], str] = {cls: name for name, cls in _OPS.items()}


def op_name(request: Request) -> str:
    return _NAMES[type(request)]


def _message(request_id: int | None, request: Request) -> dict[str, Any]:
    message: dict[str, Any] = {"op": op_name(request), "args": list(astuple(request))}
    if request_id is not None:
        message = {"id": request_id, **message}
    return message


def encode_request(request_id: int | None, request: Request) -> bytes:
    """A request frame (a notification without an id)."""
    return encode_message(_message(request_id, request))


def decode_request(message: dict[str, Any]) -> tuple[int | None, Request]:
    """The id (None: a notification) and the request; RequestError when not understood.

    Every argument is a string; a trailing argument with a default (a new
    leg's call_id) may be left out.
    """
    raw_id = message.get("id")
    request_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
    op = str(message.get("op", ""))
    cls = _OPS.get(op)
    if cls is None:
        raise RequestError(request_id, f"unknown relay worker operation {op!r}"[:200])
    args = message.get("args", [])
    if not isinstance(args, list):
        args = [args]
    params = fields(cls)
    required = sum(1 for param in params if param.default is MISSING)
    if not required <= len(args) <= len(params):
        raise RequestError(request_id, f"{op} takes {len(params)} arguments, not {len(args)}"[:200])
    for value in args:
        if not isinstance(value, str):
            raise RequestError(request_id, f"expected a string, not {type(value).__name__}")
    for value, param in zip(args, params, strict=False):
        if param.name in _LEG_FIELDS and not value:
            raise RequestError(request_id, "a leg id is a non-empty string")
    return request_id, cls(*args)


_LEG_FIELDS = frozenset({"leg_id", "a", "b"})


def encode_reply(request_id: int, result: Any) -> dict[str, Any]:
    if isinstance(result, LegStats):
        result = stats_to_wire(result)
    return {"id": request_id, "result": result}


def encode_error(request_id: int, error: BaseException) -> dict[str, Any]:
    return {"id": request_id, "error": error_to_wire(error)}


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The serving side is ready: its process id and event loop ("uvloop", "asyncio")."""

    pid: int
    loop: str


@dataclass(frozen=True)
class LegFailed:
    leg_id: str
    detail: str


@dataclass(frozen=True)
class DtmfReceived:
    leg_id: str
    digit: str


@dataclass(frozen=True)
class StatsReport:
    """Counters of the channel's legs, and every leg the serving relay holds (None: not said)."""

    legs: dict[str, LegStats]
    total: int | None


Event = Ready | LegFailed | DtmfReceived | StatsReport


def encode_event(event: Event) -> dict[str, Any]:
    if isinstance(event, Ready):
        return {"event": "ready", "args": [event.pid, event.loop]}
    if isinstance(event, LegFailed):
        return {"event": "leg_failed", "args": [event.leg_id, event.detail]}
    if isinstance(event, DtmfReceived):
        return {"event": "dtmf", "args": [event.leg_id, event.digit]}
    snapshot = {leg_id: stats_to_wire(stats) for leg_id, stats in event.legs.items()}
    return {"event": "stats", "args": [snapshot, event.total]}


def decode_event(message: dict[str, Any]) -> Event | None:
    """The event in a message; None for one this side does not know or cannot read."""
    name = str(message["event"])
    args = message.get("args", [])
    if not isinstance(args, list):
        args = [args]
    if name == "stats" and args and isinstance(args[0], dict):
        total = args[1] if len(args) > 1 else None
        if not isinstance(total, int) or isinstance(total, bool):
            total = None
        legs = {str(leg_id): stats_from_wire(values) for leg_id, values in args[0].items()}
        return StatsReport(legs, total)
    if name == "leg_failed" and len(args) == 2:
        return LegFailed(str(args[0]), str(args[1]))
    if name == "dtmf" and len(args) == 2:
        return DtmfReceived(str(args[0]), str(args[1]))
    if name == "ready":
        pid = args[0] if args and isinstance(args[0], int) else 0
        return Ready(pid, str(args[1]) if len(args) > 1 else "")
    return None


# -- the requesting side --------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    id: int
    result: Any


@dataclass(frozen=True)
class Failure:
    id: int
    error: Exception


def _result(request: Request, value: Any) -> Any:
    """A reply's result as the operation returns it."""
    if isinstance(request, Stats | CloseLeg):
        return stats_from_wire(value)
    if isinstance(request, NewLeg | UpdateRtp):  # an SDP
        return str(value)
    return value


class Correlator:
    """The requesting side of one control channel, without I/O.

    request() numbers a request and encodes it; receive() turns a message from
    the other side into the Reply (result decoded) or Failure of a pending
    request, or an Event. Answers to requests that were abandoned (timed out)
    are dropped (None), as are events this side does not know.
    """

    def __init__(self) -> None:
        self._next_id = 0
        self._pending: dict[int, Request] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def request(self, request: Request) -> tuple[int, bytes]:
        self._next_id += 1
        self._pending[self._next_id] = request
        return self._next_id, encode_request(self._next_id, request)

    @staticmethod
    def notify(request: Request) -> bytes:
        return encode_request(None, request)

    def abandon(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    def abandon_all(self) -> list[int]:
        ids = list(self._pending)
        self._pending.clear()
        return ids

    def receive(self, message: dict[str, Any]) -> Reply | Failure | Event | None:
        if "event" in message:
            return decode_event(message)
        request_id = message.get("id")
        if not isinstance(request_id, int) or ("result" not in message and "error" not in message):
            raise ProtocolError(f"not a reply or an event: {message!r}"[:200])
        request = self._pending.pop(request_id, None)
        if request is None:
            return None
        if "error" in message:
            return Failure(request_id, error_from_wire(message["error"]))
        try:
            return Reply(request_id, _result(request, message["result"]))
        except (TypeError, ValueError) as exc:
            return Failure(request_id, RelayWorkerError(f"unreadable result: {exc}"))
