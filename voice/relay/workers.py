"""Relay worker processes: one in-process Relay per core, driven over a control channel.

One Python process forwards media on one core (ARCHITECTURE, "Scale": the
loop and the per-packet Python work decide a relay's capacity). WorkerRelay
has exactly the interface of voice.relay.relay.Relay, but each leg lives in
a worker process that owns its media sockets and runs an ordinary Relay (or
TranscodingRelay) on its own event loop, uvloop when it is installed.

- Control channel: a socket pair per worker (multiprocessing "spawn"
  context), carrying length-prefixed JSON messages. Requests are
  ``{id, op, args}`` and answered ``{id, result}`` or ``{id, error: {kind,
  message}}``; notifications are requests without an id (no answer);
  events come from the worker unasked (``ready``, ``leg_failed``, ``dtmf``
  (a digit received on an RTP leg), and a ``stats`` snapshot of its legs
  every second, which is also its heartbeat).
  The framing, the request/response correlation and the error mapping are
  sans-I/O (`FrameDecoder`, `Correlator`, `error_to_wire`/`error_from_wire`).
- Errors keep their type across the channel: NoOpusError, UnknownLegError
  and ValueError raised in a worker are raised as such in the parent.
- Allocation: a call's legs share one worker (bridge() forwards inside one
  process). The call id is the leg id up to its first ':' (CallService's
  "CALLID:DEVICEID"); a new call goes to the ready worker with the fewest
  legs, and the mapping goes when the call's last leg is closed.
- Failure: when a worker exits (or stops answering for `hang_timeout`, and is
  killed), each leg it held gets on_leg_failed(leg_id, "relay_worker_lost")
  once, requests waiting on it raise RelayUnavailable (a ValueError, which
  CallService already handles), and a replacement starts in the background.
  With no ready worker left, answer() and offer() raise RelayUnavailable.
- The synchronous methods (start_ringback, stop_ringback, bridge, stats,
  active_legs) never wait for a worker: they send a notification, or read
  the parent's own bookkeeping (stats() returns the latest snapshot).
- Relay hosts (`hosts=`, a HostDirectory such as
  voice.relay.registry.RedisHostDirectory): instead of spawning processes,
  the "workers" are TCP control connections to relay hosts (`anruf relay`,
  voice/relay/host.py, which serves this same protocol with `serve_channel`
  and `_WorkerServer`). The directory is read every `discovery_interval`: a
  new host is connected, one whose registration expired or changed is lost
  like an exited worker (its legs fail with "relay_worker_lost"), and a
  host is never replaced by us. A host's load is its own report of the legs
  others hold plus ours; a draining or full host gets no new calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from voice.relay.avp import NoCommonCodecError
from voice.relay.control_auth import (
    AuthError,
    auth_request,
    check_authenticated,
    check_relay_secret,
)
from voice.relay.registry import Candidate, HostRecord, choose
from voice.relay.relay import LegStats, NoOpusError, Relay, UnknownLegError

__all__ = [
    "WORKER_LOST",
    "Correlator",
    "Event",
    "Failure",
    "FrameDecoder",
    "HostDirectory",
    "ProtocolError",
    "RelayUnavailable",
    "RelayWorkerError",
    "Reply",
    "WorkerRelay",
    "call_id_of",
    "encode_message",
    "error_from_wire",
    "error_to_wire",
    "make_relay",
    "read_frame",
    "serve_channel",
    "stats_from_wire",
    "stats_to_wire",
]

logger = logging.getLogger(__name__)

#: on_leg_failed detail for the legs of a worker process that exited.
WORKER_LOST = "relay_worker_lost"

REQUEST_TIMEOUT = 10.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
STATS_INTERVAL = 1.0
HANG_TIMEOUT = 10.0
DISCOVERY_INTERVAL = 1.0
MAX_FRAME = 1 << 22
#: The largest frame taken before a control connection is authenticated.
MAX_AUTH_FRAME = 1024
# Final stats of legs lost with their worker, kept for close_leg(); bounded.
MAX_LOST_LEGS = 10_000


class RelayUnavailable(ValueError):
    """No relay worker can serve the request: none alive, it exited, or it did not answer.

    A ValueError, so CallService treats it as an unusable request (the call
    fails) rather than crashing.
    """


class RelayWorkerError(RuntimeError):
    """An unexpected error inside a relay worker, whose type does not cross the channel."""


class ProtocolError(Exception):
    """A control-channel message that cannot be read."""


class HostDirectory(Protocol):
    """Where relay hosts are registered (voice.relay.registry.RedisHostDirectory)."""

    async def hosts(self) -> list[HostRecord]: ...

    async def close(self) -> None: ...


def call_id_of(leg_id: str) -> str:
    """The call a leg belongs to: its id up to the first ':' (all of it without one)."""
    return leg_id.partition(":")[0]


# -- wire format (sans-I/O) ---------------------------------------------------

_HEADER = struct.Struct("!I")


def encode_message(message: dict[str, Any]) -> bytes:
    """One frame: a 4-byte big-endian length, then the message as UTF-8 JSON."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"control message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


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


@dataclass(frozen=True)
class Reply:
    id: int
    result: Any


@dataclass(frozen=True)
class Failure:
    id: int
    error: Exception


@dataclass(frozen=True)
class Event:
    name: str
    args: list[Any]


class Correlator:
    """The parent's side of one control channel, without I/O.

    request() numbers a request and encodes it; receive() turns a worker's
    message into the Reply or Failure of a pending request, or an Event.
    Answers to requests that were abandoned (timed out) are dropped (None).
    """

    def __init__(self) -> None:
        self._next_id = 0
        self._pending: dict[int, str] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def request(self, op: str, *args: Any) -> tuple[int, bytes]:
        self._next_id += 1
        self._pending[self._next_id] = op
        return self._next_id, encode_message({"id": self._next_id, "op": op, "args": list(args)})

    @staticmethod
    def notify(op: str, *args: Any) -> bytes:
        return encode_message({"op": op, "args": list(args)})

    def abandon(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    def abandon_all(self) -> list[int]:
        ids = list(self._pending)
        self._pending.clear()
        return ids

    def receive(self, message: dict[str, Any]) -> Reply | Failure | Event | None:
        if "event" in message:
            args = message.get("args", [])
            return Event(str(message["event"]), args if isinstance(args, list) else [args])
        request_id = message.get("id")
        if not isinstance(request_id, int) or ("result" not in message and "error" not in message):
            raise ProtocolError(f"not a reply or an event: {message!r}"[:200])
        if self._pending.pop(request_id, None) is None:
            return None
        if "error" in message:
            return Failure(request_id, error_from_wire(message["error"]))
        return Reply(request_id, message["result"])


def stats_to_wire(stats: LegStats) -> list[Any]:
    return list(asdict(stats).values())


def stats_from_wire(values: object) -> LegStats:
    if isinstance(values, dict):
        return LegStats(**values)
    if isinstance(values, list):
        return LegStats(*values)
    return LegStats()


# -- the worker process ---------------------------------------------------------


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to build its Relay (pickled to the spawned process)."""

    bind_address: str
    announce_address: str
    ice_servers: tuple[str, ...]
    media_timeout: float
    connect_timeout: float
    relay_mode: str
    stats_interval: float = STATS_INTERVAL
    use_uvloop: bool = True
    media_ports: tuple[int, int] = (0, 0)


def _worker_main(conn: Connection, settings: WorkerSettings) -> None:
    """Entry point of a worker process."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if settings.use_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(sock, settings))


async def _serve(sock: socket.socket, settings: WorkerSettings) -> None:
    sock.setblocking(False)
    relay = make_relay(settings)
    reader, writer = await asyncio.open_unix_connection(sock=sock)

    def send(message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(encode_message(message))

    worker = _WorkerServer(relay, send)
    relay.on_leg_failed = worker.leg_failed
    relay.on_dtmf = worker.dtmf
    worker.send_ready()
    try:
        await serve_channel(reader, worker, settings.stats_interval)
    finally:
        await relay.close()
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()


def make_relay(settings: WorkerSettings) -> Relay:
    """This process's Relay as the settings ask (its ICE choices are process-wide)."""
    from voice.ice import restrict_host_addresses, set_media_ports

    # aioice's host address choice is process-wide, so each process makes it for itself.
    restrict_host_addresses([settings.bind_address])
    set_media_ports(*settings.media_ports)
    relay_class: type[Relay] = Relay
    if settings.relay_mode == "transcode":
        from voice.relay.transcode import TranscodingRelay

        relay_class = TranscodingRelay
    return relay_class(
        bind_address=settings.bind_address,
        announce_address=settings.announce_address,
        ice_servers=settings.ice_servers,
        media_timeout=settings.media_timeout,
        connect_timeout=settings.connect_timeout,
    )


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> dict[str, Any]:
    """Exactly one control frame of at most ``limit`` bytes (the handshake's, read
    before the stream is decoded). ProtocolError for a bad frame, IncompleteReadError
    when the other side closes first."""
    header = await reader.readexactly(_HEADER.size)
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise ProtocolError(f"control frame of {size} bytes exceeds {limit}")
    return FrameDecoder().feed(header + await reader.readexactly(size))[0]


async def serve_channel(
    reader: asyncio.StreamReader, worker: _WorkerServer, stats_interval: float
) -> None:
    """Carry out one control channel's requests until it ends or asks to shut down.

    Raises ProtocolError for bytes that are not control frames.
    """
    reporter = asyncio.create_task(worker.report_stats(stats_interval))
    decoder = FrameDecoder()
    try:
        while not worker.stopping:
            data = await reader.read(65536)
            if not data:  # the other side is gone
                break
            for message in decoder.feed(data):
                await worker.handle(message)
    finally:
        reporter.cancel()
        for task in list(worker.tasks):
            task.cancel()


class _WorkerServer:
    """Carries out one control channel's requests on a Relay.

    A worker process has the Relay to itself. A relay host shares its Relay
    among several channels (one per signaling node): each channel's leg ids
    then carry the channel's `prefix` inside the Relay, so channels never see
    or touch each other's legs, and `admit` may refuse legs of new calls.
    """

    ASYNC_OPS = frozenset(
        {
            "answer",
            "offer",
            "accept_answer",
            "close_leg",
            "offer_rtp",
            "answer_rtp",
            "accept_rtp_answer",
            "update_rtp",
        }
    )
    NEW_LEG_OPS = frozenset({"answer", "offer", "offer_rtp", "answer_rtp"})

    def __init__(
        self,
        relay: Relay,
        send: Callable[[dict[str, Any]], None],
        *,
        prefix: str = "",
        admit: Callable[[str], bool] | None = None,
        owns_relay: bool = True,
    ) -> None:
        self.relay = relay
        self.send = send
        self.prefix = prefix
        self.admit = admit
        self.owns_relay = owns_relay
        #: This channel's legs, by the ids the channel uses.
        self.legs: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    def send_ready(self) -> None:
        loop_name = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        self.send({"event": "ready", "args": [os.getpid(), loop_name]})

    # -- events from the Relay (leg ids as the Relay knows them) --------------------

    def leg_failed(self, leg_id: str, detail: str) -> None:
        self.send({"event": "leg_failed", "args": [leg_id.removeprefix(self.prefix), detail]})

    def dtmf(self, leg_id: str, digit: str) -> None:
        self.send({"event": "dtmf", "args": [leg_id.removeprefix(self.prefix), digit]})

    # -- requests ------------------------------------------------------------------

    async def handle(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        op = str(message.get("op", ""))
        args = message.get("args", [])
        if not isinstance(args, list):
            args = [args]
        if op == "shutdown":
            self.stopping = True
            for task in list(self.tasks):
                task.cancel()
            await self.release()
            self._reply(request_id, None)
            return
        if op in self.ASYNC_OPS:
            # Negotiation awaits aiortc: run it beside the channel, answer when done.
            task = asyncio.create_task(self._run(request_id, op, args))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        await self._run(request_id, op, args)

    async def release(self) -> None:
        """Close this channel's legs (all of the Relay's, when it owns the Relay)."""
        legs, self.legs = self.legs, set()
        if self.owns_relay:
            await self.relay.close()
            return
        for leg_id in sorted(legs):
            try:
                await self.relay.close_leg(self.prefix + leg_id)
            except Exception:
                logger.exception("closing leg %s", leg_id)

    async def _run(self, request_id: object, op: str, args: list[Any]) -> None:
        try:
            result = await self._call(op, args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if request_id is None:
                logger.info("relay worker: %s%r: %s", op, tuple(args), exc)
            else:
                self.send({"id": request_id, "error": error_to_wire(exc)})
            return
        self._reply(request_id, result)

    def _reply(self, request_id: object, result: Any) -> None:
        if request_id is not None:
            self.send({"id": request_id, "result": result})

    def _leg(self, leg_id: object) -> str:
        """The Relay's id for a leg id of this channel."""
        if not isinstance(leg_id, str) or not leg_id:
            raise ValueError(f"a leg id is a non-empty string, not {leg_id!r}"[:200])
        return self.prefix + leg_id

    async def _call(self, op: str, args: list[Any]) -> Any:
        relay = self.relay
        if op in self.NEW_LEG_OPS:
            leg_id = args[0] if args else None
            inner = self._leg(leg_id)
            if self.admit is not None and not self.admit(inner):
                raise RelayUnavailable("this relay host takes no new calls")
            if op == "answer":
                _, sdp = args
                result: Any = await relay.answer(inner, _text(sdp))
            elif op == "offer":
                (_,) = args
                result = await relay.offer(inner)
            elif op == "offer_rtp":
                (_,) = args
                result = await relay.offer_rtp(inner)
            else:
                _, sdp = args
                result = await relay.answer_rtp(inner, _text(sdp))
            self.legs.add(str(leg_id))
            return result
        if op == "accept_answer":
            leg_id, sdp = args
            await relay.accept_answer(self._leg(leg_id), _text(sdp))
            return None
        if op == "accept_rtp_answer":
            leg_id, sdp = args
            await relay.accept_rtp_answer(self._leg(leg_id), _text(sdp))
            return None
        if op == "update_rtp":
            leg_id, sdp = args
            return await relay.update_rtp(self._leg(leg_id), _text(sdp))
        if op == "send_dtmf":
            leg_id, digits = args
            relay.send_dtmf(self._leg(leg_id), _text(digits))
            return None
        if op == "close_leg":
            (leg_id,) = args
            inner = self._leg(leg_id)
            self.legs.discard(leg_id)
            return stats_to_wire(await relay.close_leg(inner))
        if op == "start_ringback":
            relay.start_ringback(self._leg(args[0]))
            return None
        if op == "stop_ringback":
            relay.stop_ringback(self._leg(args[0]))
            return None
        if op == "play_notice":
            relay.play_notice(self._leg(args[0]))
            return None
        if op == "bridge":
            a, b = args
            relay.bridge(self._leg(a), self._leg(b))
            return None
        if op == "stats":
            return stats_to_wire(relay.stats(self._leg(args[0])))
        if op == "ping":
            return os.getpid()
        raise ValueError(f"unknown relay worker operation {op!r}"[:200])

    async def report_stats(self, interval: float) -> None:
        """Every interval: each leg's counters (also the parent's sign that we are alive).

        The second argument counts every leg of the Relay, this channel's and others'.
        """
        while True:
            stats = self.relay.stats
            snapshot = {leg_id: stats_to_wire(stats(self.prefix + leg_id)) for leg_id in self.legs}
            self.send({"event": "stats", "args": [snapshot, self.relay.active_legs]})
            await asyncio.sleep(interval)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {type(value).__name__}")
    return value


# -- the parent side -------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    """One control channel: to a worker process we spawned, or to a relay host."""

    index: int
    process: BaseProcess | None
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    ready: asyncio.Future[int]
    last_seen: float
    #: The relay host's registration (None for a worker process).
    host: HostRecord | None = None
    correlator: Correlator = field(default_factory=Correlator)
    waiters: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    legs: set[str] = field(default_factory=set)
    alive: bool = True
    loop: str = ""  # the worker's event loop: "uvloop" or "asyncio"
    reader_task: asyncio.Task[None] | None = None
    #: A relay host's own process id, from its ready event.
    remote_pid: int = 0
    #: Legs others (other signaling nodes) hold on a relay host, as of its latest report.
    others: int = 0

    @property
    def pid(self) -> int:
        if self.process is not None:
            return self.process.pid or 0
        return self.remote_pid

    @property
    def name(self) -> str:
        if self.host is not None:
            return f"relay host {self.host.id}"
        return f"relay worker {self.pid}"

    @property
    def usable(self) -> bool:
        return self.alive and self.ready.done() and not self.ready.cancelled()

    def candidate(self) -> Candidate:
        if self.host is None:
            return Candidate(key=("", self.index), load=len(self.legs))
        return Candidate(
            key=(self.host.id, self.index),
            load=self.others + len(self.legs),
            capacity=self.host.capacity,
            accepting=self.host.state == "up",
        )

    def send(self, data: bytes) -> None:
        if self.alive and not self.writer.is_closing():
            self.writer.write(data)


@dataclass(eq=False)
class _LegState:
    worker: _Worker
    pending: bool = True  # answer()/offer() not answered yet
    failed: bool = False
    stats: LegStats = field(default_factory=LegStats)


class WorkerRelay:
    """A Relay whose legs live in worker processes, one per core by default.

    Same interface as voice.relay.relay.Relay; in addition `workers` (how many
    processes; None: one per core), `relay_mode` ("forward" or "transcode"),
    `start()` to start the workers ahead of the first call (otherwise the
    first answer()/offer() does), `worker_pids`, `worker_of(leg_id)`,
    `worker_loads` and `fetch_stats()`. With `hosts` the legs live on relay
    hosts instead (`host_loads`, `host_of(leg_id)`, `host_of_call(call_id)`).
    """

    def __init__(
        self,
        *,
        bind_address: str,
        announce_address: str = "",
        ice_servers: Sequence[str] = (),
        media_timeout: float = 20.0,
        on_leg_failed: Callable[[str, str], None] | None = None,
        connect_timeout: float = 10.0,
        workers: int | None = None,
        relay_mode: str = "forward",
        request_timeout: float = REQUEST_TIMEOUT,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        hang_timeout: float = HANG_TIMEOUT,
        use_uvloop: bool = True,
        media_ports: tuple[int, int] = (0, 0),
        on_dtmf: Callable[[str, str], None] | None = None,
        hosts: HostDirectory | None = None,
        discovery_interval: float = DISCOVERY_INTERVAL,
        secret: str = "",
    ) -> None:
        if relay_mode not in ("forward", "transcode"):
            raise ValueError(f"relay_mode must be forward or transcode, not {relay_mode!r}")
        if hosts is not None:
            check_relay_secret(secret)
        count = workers if workers is not None else (os.cpu_count() or 1)
        if count < 1:
            raise ValueError(f"workers must be at least 1, not {count}")
        self.bind_address = bind_address
        self.announce_address = announce_address
        self.ice_servers = tuple(ice_servers)
        self.media_timeout = media_timeout
        self.connect_timeout = connect_timeout
        self.on_leg_failed = on_leg_failed
        #: (leg_id, digit) once per RFC 4733 event received on an RTP leg.
        self.on_dtmf = on_dtmf
        self.workers = count
        self.relay_mode = relay_mode
        self.request_timeout = request_timeout
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.hang_timeout = hang_timeout
        self._settings = WorkerSettings(
            bind_address=bind_address,
            announce_address=announce_address,
            ice_servers=self.ice_servers,
            media_timeout=media_timeout,
            connect_timeout=connect_timeout,
            relay_mode=relay_mode,
            stats_interval=min(STATS_INTERVAL, hang_timeout / 4),
            use_uvloop=use_uvloop,
            media_ports=media_ports,
        )
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._legs: dict[str, _LegState] = {}
        self._calls: dict[str, _Worker] = {}
        self._call_legs: dict[str, set[str]] = {}
        self._lost: dict[str, LegStats] = {}
        self._start_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        #: Relay hosts instead of worker processes (`workers` and the media settings
        #: are then the hosts' own business).
        self._directory = hosts
        self._secret = secret  # proves this node to the hosts (voice/relay/control_auth.py)
        self.discovery_interval = discovery_interval
        self._connecting: set[str] = set()
        self._index = 0  # numbers the control connections to hosts
        self._retry_at: dict[str, tuple[float, float]] = {}  # host id: (when, backoff)

    # -- introspection ----------------------------------------------------------

    @property
    def active_legs(self) -> int:
        return len(self._legs)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers that are ready for calls."""
        return [worker.pid for worker in self._workers if worker.usable]

    @property
    def worker_loads(self) -> dict[int, int]:
        """Legs per ready worker, by process id."""
        return {worker.pid: len(worker.legs) for worker in self._workers if worker.usable}

    @property
    def worker_loops(self) -> dict[int, str]:
        """Event loop of each ready worker ("uvloop" or "asyncio"), by process id."""
        return {worker.pid: worker.loop for worker in self._workers if worker.usable}

    def worker_of(self, leg_id: str) -> int | None:
        """Process id of the worker holding the leg, None for no such leg."""
        state = self._legs.get(leg_id)
        return state.worker.pid if state is not None else None

    @property
    def host_loads(self) -> dict[str, int]:
        """Relay hosts in service: each one's load (legs, all nodes') as this node sees it."""
        return {
            worker.host.id: worker.candidate().load
            for worker in self._workers
            if worker.usable and worker.host is not None
        }

    def host_of_call(self, call_id: str) -> str | None:
        """Id of the relay host carrying the call, None for no such call (or a worker process)."""
        worker = self._calls.get(call_id)
        if worker is None or worker.host is None:
            return None
        return worker.host.id

    def host_of(self, leg_id: str) -> str | None:
        """Id of the relay host holding the leg, None for no such leg (or a worker process)."""
        state = self._legs.get(leg_id)
        if state is None or state.worker.host is None:
            return None
        return state.worker.host.id

    # -- starting and stopping ----------------------------------------------------

    async def start(self) -> None:
        """Start the workers and wait until they are ready; RelayUnavailable if none is."""
        if self._closing:
            raise RelayUnavailable("the relay is closed")
        if self._start_task is None:
            self._start_task = asyncio.create_task(self._start())
        if not self._start_task.done():
            # Those waiting for the first start see its outcome; later callers
            # find out from the workers then ready (replacements start meanwhile).
            await asyncio.shield(self._start_task)

    async def _start(self) -> None:
        if self._directory is not None:
            await self._start_hosts()
            return
        for index in range(self.workers):
            await self._launch(index)
        self._spawn(self._watch())
        starting = list(self._workers)
        await asyncio.wait([worker.ready for worker in starting], timeout=self.start_timeout)
        for worker in starting:
            if not worker.usable:
                logger.error("relay worker #%d did not start", worker.index)
                self._lose(worker, kill=True)
                self._spawn(self._replace(worker))
        if not any(worker.usable for worker in self._workers):
            raise RelayUnavailable("no relay worker started")
        logger.info("relay workers ready (%s): %s", self.relay_mode, self.worker_pids)

    async def _launch(self, index: int) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        sock = socket.socket(fileno=os.dup(parent_end.fileno()))
        parent_end.close()
        sock.setblocking(False)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            child_end.close()
            raise
        process = self._context.Process(
            target=_worker_main,
            args=(child_end, self._settings),
            name=f"anruf-relay-{index}",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            writer.close()
            raise
        finally:
            child_end.close()  # the child's copy is its own now: its exit reads as EOF here
        loop = asyncio.get_running_loop()
        worker = _Worker(index, process, reader, writer, loop.create_future(), loop.time())
        self._workers.append(worker)
        worker.reader_task = loop.create_task(self._read(worker))
        return worker

    # -- relay hosts ---------------------------------------------------------------

    async def _start_hosts(self) -> None:
        """Connect to the hosts registered now; later ones are found every discovery_interval.

        Raises RelayUnavailable when the registry cannot be read at all; no host
        registered yet is not an error (answer() and offer() raise until one is).
        """
        try:
            connecting = await self._discover()
        except Exception as exc:
            raise RelayUnavailable(f"relay hosts cannot be read: {exc}") from exc
        if connecting:
            # Each gives up by itself (request_timeout to connect, start_timeout to be ready).
            await asyncio.wait(connecting)
        self._spawn(self._watch())
        self._spawn(self._track_hosts())
        logger.info("relay hosts in service: %s", sorted(self.host_loads))

    async def _track_hosts(self) -> None:
        assert self._directory is not None
        while not self._closing:
            await asyncio.sleep(self.discovery_interval)
            try:
                await self._discover()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Hosts stay in service while the registry is out of reach: their
                # connections (and stats heartbeat) still tell whether they are alive.
                logger.warning("relay hosts cannot be read: %s", exc)

    async def _discover(self) -> list[asyncio.Task[None]]:
        """Match the control connections to the registrations: connect, update, drop.

        Returns the connection attempts started.
        """
        assert self._directory is not None
        records = {record.id: record for record in await self._directory.hosts()}
        if self._closing:
            return []
        connected: set[str] = set()
        for worker in list(self._workers):
            host = worker.host
            if host is None or not worker.alive:
                continue
            record = records.get(host.id)
            if record is None:
                logger.error("%s: its registration expired", worker.name)
                self._lose(worker, kill=True)
            elif (record.control, record.started) != (host.control, host.started):
                logger.error("%s: registered anew (%s)", worker.name, record.control)
                self._lose(worker, kill=True)
            else:
                worker.host = record
                connected.add(host.id)
        now = asyncio.get_running_loop().time()
        attempts: list[asyncio.Task[None]] = []
        for host_id, record in sorted(records.items()):
            if host_id in connected or host_id in self._connecting or record.state != "up":
                continue
            if self._retry_at.get(host_id, (0.0, 0.0))[0] > now:
                continue
            self._connecting.add(host_id)
            attempts.append(self._spawn(self._connect(record)))
        return attempts

    async def _connect(self, record: HostRecord) -> None:
        loop = asyncio.get_running_loop()
        worker: _Worker | None = None
        try:
            host, port = record.control_address
            async with asyncio.timeout(self.request_timeout):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    await self._authenticate(reader, writer)
                except BaseException:
                    writer.close()
                    raise
            self._index += 1
            worker = _Worker(
                self._index, None, reader, writer, loop.create_future(), loop.time(), host=record
            )
            self._workers.append(worker)
            worker.reader_task = loop.create_task(self._read(worker))
            await asyncio.wait([worker.ready], timeout=self.start_timeout)
            if not worker.usable:
                raise RelayUnavailable("it did not say it is ready")
        except Exception as exc:
            if worker is not None:
                self._lose(worker, kill=True)
            backoff = min(self._retry_at.get(record.id, (0.0, 0.5))[1] * 2, 30.0)
            self._retry_at[record.id] = (loop.time() + backoff, backoff)
            logger.warning(
                "relay host %s at %s: no control connection (%s); retry in %.0f s",
                record.id,
                record.control,
                exc,
                backoff,
            )
        else:
            self._retry_at.pop(record.id, None)
            logger.info("relay host %s at %s in service", record.id, record.control)
        finally:
            self._connecting.discard(record.id)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer the host's challenge and check its proof; AuthError if either fails."""
        try:
            first = await read_frame(reader, MAX_AUTH_FRAME)
            host_nonce, node_nonce, request = auth_request(self._secret, first)
            writer.write(encode_message(request))
            answer = await read_frame(reader, MAX_AUTH_FRAME)
        except asyncio.IncompleteReadError:
            raise AuthError(
                "the relay host closed the connection (is relay_secret the same on both?)"
            ) from None
        check_authenticated(self._secret, host_nonce, node_nonce, answer)

    async def close(self) -> None:
        """Stop every worker (its legs close without on_leg_failed); kill any that lingers."""
        if self._closing:
            return
        self._closing = True
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            with contextlib.suppress(BaseException):
                await self._start_task
        for task in list(self._tasks):
            task.cancel()
        workers = list(self._workers)
        await asyncio.gather(*(self._stop(worker) for worker in workers), return_exceptions=True)
        if self._directory is not None:
            with contextlib.suppress(Exception):
                await self._directory.close()
        self._legs.clear()
        self._calls.clear()
        self._call_legs.clear()
        self._lost.clear()

    async def _stop(self, worker: _Worker) -> None:
        grace = 0.0  # a worker that does not answer is killed at once
        if worker.alive:
            try:
                await self._request(worker, "shutdown", timeout=self.stop_timeout)
                grace = self.stop_timeout
            except Exception as exc:
                logger.warning("%s: no clean shutdown: %s", worker.name, exc)
        self._lose(worker, kill=False)
        if worker.reader_task is not None:
            worker.reader_task.cancel()
            with contextlib.suppress(BaseException):
                await worker.reader_task
        await self._reap(worker, grace)

    # -- negotiation --------------------------------------------------------------

    async def answer(self, leg_id: str, offer_sdp: str) -> str:
        """Answer a device's offer (the caller's leg); returns the relay's answer SDP."""
        state = await self._place(leg_id)
        return await self._create(leg_id, state, "answer", offer_sdp)

    async def offer(self, leg_id: str) -> str:
        """Create the relay's offer for a device (a callee's leg)."""
        state = await self._place(leg_id)
        return await self._create(leg_id, state, "offer")

    async def accept_answer(self, leg_id: str, answer_sdp: str) -> None:
        """Apply the device's answer to the relay's offer; media starts flowing."""
        state = self._state(leg_id)
        await self._request(state.worker, "accept_answer", leg_id, answer_sdp)

    # -- plain-RTP legs -------------------------------------------------------------

    async def offer_rtp(self, leg_id: str) -> str:
        """Our SDP offer for an RTP leg (for an INVITE to the operator)."""
        state = await self._place(leg_id)
        return await self._create(leg_id, state, "offer_rtp")

    async def answer_rtp(self, leg_id: str, offer_sdp: str) -> str:
        """Answer the operator's offer (Opus, else PCMA, else PCMU)."""
        state = await self._place(leg_id)
        return await self._create(leg_id, state, "answer_rtp", offer_sdp)

    async def accept_rtp_answer(self, leg_id: str, answer_sdp: str) -> None:
        """Apply the operator's answer to offer_rtp (183, then 200)."""
        state = self._state(leg_id)
        await self._request(state.worker, "accept_rtp_answer", leg_id, answer_sdp)

    async def update_rtp(self, leg_id: str, offer_sdp: str) -> str:
        """A re-INVITE's offer (hold, resume, a new address); returns our answer."""
        state = self._state(leg_id)
        return str(await self._request(state.worker, "update_rtp", leg_id, offer_sdp))

    def send_dtmf(self, leg_id: str, digits: str) -> None:
        """Send RFC 4733 events on an RTP leg (a notification: errors are logged there)."""
        if leg_id in self._lost:
            return
        state = self._state(leg_id)
        state.worker.send(Correlator.notify("send_dtmf", leg_id, digits))

    def _dtmf_received(self, leg_id: str, digit: str) -> None:
        if self.on_dtmf is None:
            return
        try:
            self.on_dtmf(leg_id, digit)
        except Exception:
            logger.exception("on_dtmf(%s, %s) raised", leg_id, digit)

    async def _place(self, leg_id: str) -> _LegState:
        if leg_id in self._legs:
            raise ValueError(f"leg {leg_id} already exists")
        await self.start()
        if self._closing:
            raise RelayUnavailable("the relay is closed")
        if leg_id in self._legs:
            raise ValueError(f"leg {leg_id} already exists")
        call_id = call_id_of(leg_id)
        worker = self._calls.get(call_id)
        if worker is None or not worker.alive:
            worker = self._least_loaded()
            self._calls[call_id] = worker
        state = _LegState(worker)
        self._legs[leg_id] = state
        self._call_legs.setdefault(call_id, set()).add(leg_id)
        worker.legs.add(leg_id)
        self._lost.pop(leg_id, None)
        return state

    def _least_loaded(self) -> _Worker:
        ready = {worker.candidate(): worker for worker in self._workers if worker.usable}
        chosen = choose(list(ready))
        if chosen is None:
            kind = "relay host" if self._directory is not None else "relay worker"
            raise RelayUnavailable(f"no {kind} is available")
        return ready[chosen]

    async def _create(self, leg_id: str, state: _LegState, op: str, *args: str) -> str:
        try:
            sdp = await self._request(state.worker, op, leg_id, *args)
        except BaseException:
            if self._legs.get(leg_id) is state:
                self._forget(leg_id)
                # A timed-out or cancelled request may still create the leg over there.
                state.worker.send(Correlator.notify("close_leg", leg_id))
            raise
        state.pending = False
        return str(sdp)

    def _state(self, leg_id: str) -> _LegState:
        state = self._legs.get(leg_id)
        if state is None:
            if leg_id in self._lost:
                raise RelayUnavailable(f"leg {leg_id}: its relay worker is gone")
            raise UnknownLegError(f"unknown leg {leg_id}")
        return state

    def _forget(self, leg_id: str) -> _LegState | None:
        state = self._legs.pop(leg_id, None)
        if state is None:
            return None
        state.worker.legs.discard(leg_id)
        call_id = call_id_of(leg_id)
        legs = self._call_legs.get(call_id)
        if legs is not None:
            legs.discard(leg_id)
            if not legs:
                del self._call_legs[call_id]
                self._calls.pop(call_id, None)
        return state

    # -- media --------------------------------------------------------------------

    def start_ringback(self, leg_id: str) -> None:
        """Play the ringback tone to this leg as early media (from when it connects)."""
        if leg_id in self._lost:
            return  # on_leg_failed has told the caller already
        state = self._state(leg_id)
        state.worker.send(Correlator.notify("start_ringback", leg_id))

    def stop_ringback(self, leg_id: str) -> None:
        state = self._legs.get(leg_id)
        if state is not None:
            state.worker.send(Correlator.notify("stop_ringback", leg_id))

    def play_notice(self, leg_id: str) -> None:
        """Play the short notice tone to this leg over the call."""
        state = self._legs.get(leg_id)
        if state is not None:
            state.worker.send(Correlator.notify("play_notice", leg_id))

    def bridge(self, a: str, b: str) -> None:
        """Forward Opus packets between legs a and b both ways; ends ringback on both."""
        if a == b:
            raise ValueError("cannot bridge a leg to itself")
        if a in self._lost or b in self._lost:
            return  # on_leg_failed has told the caller already
        state_a, state_b = self._state(a), self._state(b)
        if state_a.worker is not state_b.worker:
            raise ValueError(f"legs {a} and {b} are on different relay workers")
        state_a.worker.send(Correlator.notify("bridge", a, b))

    # -- stats and teardown ---------------------------------------------------------

    def stats(self, leg_id: str) -> LegStats:
        """The leg's counters as of its worker's latest report (at most a second old)."""
        state = self._legs.get(leg_id)
        if state is not None:
            return state.stats
        return self._lost.get(leg_id, LegStats())

    async def fetch_stats(self, leg_id: str) -> LegStats:
        """The leg's current counters, asked of its worker."""
        state = self._legs.get(leg_id)
        if state is None or not state.worker.alive:
            return self.stats(leg_id)
        state.stats = stats_from_wire(await self._request(state.worker, "stats", leg_id))
        return state.stats

    async def close_leg(self, leg_id: str) -> LegStats:
        """Close a leg (idempotent) and return its final stats.

        Never raises for a lost worker: the last reported stats are returned.
        """
        state = self._forget(leg_id)
        if state is None:
            return self._lost.pop(leg_id, LegStats())
        if not state.worker.alive:
            return state.stats
        try:
            return stats_from_wire(await self._request(state.worker, "close_leg", leg_id))
        except RelayUnavailable:
            return state.stats

    # -- the control channel ----------------------------------------------------------

    async def _request(
        self, worker: _Worker, op: str, *args: Any, timeout: float | None = None
    ) -> Any:
        if not worker.alive:
            raise RelayUnavailable(f"{worker.name} is gone")
        request_id, data = worker.correlator.request(op, *args)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.waiters[request_id] = waiter
        limit = self.request_timeout if timeout is None else timeout
        try:
            worker.send(data)
            async with asyncio.timeout(limit):
                return await waiter
        except TimeoutError:
            message = f"{worker.name} did not answer {op} within {limit:g} s"
            raise RelayUnavailable(message) from None
        finally:
            worker.waiters.pop(request_id, None)
            worker.correlator.abandon(request_id)

    async def _read(self, worker: _Worker) -> None:
        decoder = FrameDecoder()
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await worker.reader.read(65536)
                if not data:
                    break
                worker.last_seen = loop.time()
                for message in decoder.feed(data):
                    self._dispatch(worker, worker.correlator.receive(message))
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            logger.error("%s: unreadable control message, dropping it: %s", worker.name, exc)
        except Exception:
            logger.exception("%s: control channel failed", worker.name)
        finally:
            self._lose(worker, kill=not self._closing)

    def _dispatch(self, worker: _Worker, item: Reply | Failure | Event | None) -> None:
        if isinstance(item, Reply | Failure):
            waiter = worker.waiters.get(item.id)
            if waiter is not None and not waiter.done():
                if isinstance(item, Reply):
                    waiter.set_result(item.result)
                else:
                    waiter.set_exception(item.error)
        elif isinstance(item, Event):
            self._event(worker, item)

    def _event(self, worker: _Worker, event: Event) -> None:
        if event.name == "stats" and event.args and isinstance(event.args[0], dict):
            snapshot = event.args[0]
            for leg_id, values in snapshot.items():
                state = self._legs.get(leg_id)
                if state is not None and state.worker is worker:
                    state.stats = stats_from_wire(values)
            total = event.args[1] if len(event.args) > 1 else None
            if isinstance(total, int) and not isinstance(total, bool):
                worker.others = max(0, total - len(snapshot))
        elif event.name == "leg_failed" and len(event.args) == 2:
            leg_id, detail = str(event.args[0]), str(event.args[1])
            state = self._legs.get(leg_id)
            if state is None or state.worker is not worker:
                # Nobody here holds it (its creation timed out): let the worker drop it.
                worker.send(Correlator.notify("close_leg", leg_id))
                return
            self._report_failure(leg_id, state, detail)
        elif event.name == "dtmf" and len(event.args) == 2:
            leg_id = str(event.args[0])
            state = self._legs.get(leg_id)
            if state is not None and state.worker is worker:
                self._dtmf_received(leg_id, str(event.args[1]))
        elif event.name == "ready" and not worker.ready.done():
            if event.args and isinstance(event.args[0], int) and worker.process is None:
                worker.remote_pid = event.args[0]
            worker.ready.set_result(worker.pid)
            worker.loop = str(event.args[1]) if len(event.args) > 1 else ""
            logger.info("%s (#%d) ready on %s", worker.name, worker.index, worker.loop)

    def _report_failure(self, leg_id: str, state: _LegState, detail: str) -> None:
        if state.failed or self._closing:
            return
        state.failed = True
        logger.info("leg %s failed: %s", leg_id, detail)
        if self.on_leg_failed is not None:
            try:
                self.on_leg_failed(leg_id, detail)
            except Exception:
                logger.exception("on_leg_failed(%s, %s) raised", leg_id, detail)

    def _lose(self, worker: _Worker, *, kill: bool) -> None:
        """The worker is gone (or must be): fail its requests and legs; replace a process."""
        if not worker.alive:
            return
        worker.alive = False
        if kill and worker.process is not None and worker.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        worker.writer.close()
        if not worker.ready.done():
            worker.ready.cancel()
        worker.correlator.abandon_all()
        error = f"{worker.name} is gone"
        for waiter in worker.waiters.values():
            if not waiter.done():
                waiter.set_exception(RelayUnavailable(error))
        if worker in self._workers:
            self._workers.remove(worker)
        for call_id, holder in list(self._calls.items()):
            if holder is worker:
                del self._calls[call_id]
        lost: list[tuple[str, _LegState]] = []
        for leg_id in sorted(worker.legs):
            state = self._forget(leg_id)
            if state is None or state.pending:
                continue  # its answer()/offer() raises RelayUnavailable instead
            lost.append((leg_id, state))
            self._lost[leg_id] = state.stats
            while len(self._lost) > MAX_LOST_LEGS:
                del self._lost[next(iter(self._lost))]
        if self._closing:
            return
        in_service = worker.ready.done() and not worker.ready.cancelled()
        if worker.process is not None:
            how = f"exited (code {worker.process.exitcode})"
        else:
            how = "lost its control connection"
        stopping = worker.host is not None and worker.host.state != "up" and not lost
        logger.log(
            logging.INFO if stopping else logging.ERROR,
            "%s (#%d) %s holding %d legs",
            worker.name,
            worker.index,
            how,
            len(lost),
        )
        for leg_id, state in lost:
            self._report_failure(leg_id, state, WORKER_LOST)
        if in_service and worker.process is not None:
            # One that never became ready is retried by whoever started it.
            self._spawn(self._replace(worker))

    async def _replace(self, lost: _Worker) -> None:
        """Start a worker in place of a lost one, retrying with backoff until one is ready."""
        await self._reap(lost)
        delay = 0.5
        while not self._closing:
            try:
                worker = await self._launch(lost.index)
            except Exception:
                logger.exception("relay worker #%d could not be started", lost.index)
            else:
                await asyncio.wait([worker.ready], timeout=self.start_timeout)
                if worker.usable:
                    return
                self._lose(worker, kill=True)
                await self._reap(worker)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _reap(self, worker: _Worker, grace: float | None = None) -> None:
        """Wait for the process to exit and collect it (no zombie); kill it after grace s."""
        if worker.process is None:
            return  # a relay host is not ours to stop
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.stop_timeout if grace is None else grace)
        while worker.process.is_alive():
            if loop.time() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
                deadline = loop.time() + self.stop_timeout
            await asyncio.sleep(0.02)
        worker.process.join(0)

    async def _watch(self) -> None:
        """Kill a worker whose loop stopped reporting (hung): it is then replaced."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            await asyncio.sleep(min(1.0, self.hang_timeout / 4))
            now = loop.time()
            for worker in list(self._workers):
                if worker.usable and now - worker.last_seen > self.hang_timeout:
                    logger.error(
                        "%s silent for %.1f s: dropping it", worker.name, now - worker.last_seen
                    )
                    self._lose(worker, kill=True)

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
