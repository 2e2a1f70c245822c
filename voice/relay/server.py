"""The serving side of the relay control channel: requests carried out on a Relay.

What runs where the legs live: in a relay worker process (`worker_main`, one
channel, the Relay its own) and in a relay host (voice/relay/host.py, one
`ChannelServer` per connected signaling node, all sharing the host's Relay).
The frames are voice/relay/control.py's; `perform` carries out one operation of
the relay contract (voice/relay/api.py) on any relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from voice.relay.api import (
    AcceptAnswer,
    AcceptRtpAnswer,
    Answer,
    AnswerRtp,
    Bridge,
    CloseLeg,
    LegStats,
    MediaRelay,
    NewLeg,
    Offer,
    OfferRtp,
    Operation,
    PlayNotice,
    RelayUnavailable,
    SendDtmf,
    StartRingback,
    Stats,
    StopRingback,
    UpdateRtp,
)
from voice.relay.control import (
    HEADER_SIZE,
    MAX_FRAME,
    DtmfReceived,
    FrameDecoder,
    LegFailed,
    Ping,
    ProtocolError,
    Ready,
    RequestError,
    Shutdown,
    StatsReport,
    decode_request,
    encode_error,
    encode_event,
    encode_message,
    encode_reply,
    frame_size,
)
from voice.relay.relay import Relay

__all__ = [
    "STATS_INTERVAL",
    "ChannelServer",
    "WorkerSettings",
    "make_relay",
    "perform",
    "read_frame",
    "serve_channel",
    "sole_channel",
    "worker_main",
    "writer_send",
]

logger = logging.getLogger(__name__)

STATS_INTERVAL = 1.0

#: Operations that await negotiation: run beside the channel, answered when done.
_ASYNC_OPS = (
    Answer,
    Offer,
    AcceptAnswer,
    CloseLeg,
    OfferRtp,
    AnswerRtp,
    AcceptRtpAnswer,
    UpdateRtp,
)


async def perform(relay: MediaRelay, op: Operation) -> str | LegStats | None:
    """Carry out one operation of the relay contract on a relay; its result."""
    if isinstance(op, Answer):
        return await relay.answer(op.leg_id, op.offer_sdp, call_id=op.call_id)
    if isinstance(op, Offer):
        return await relay.offer(op.leg_id, call_id=op.call_id)
    if isinstance(op, OfferRtp):
        return await relay.offer_rtp(op.leg_id, call_id=op.call_id)
    if isinstance(op, AnswerRtp):
        return await relay.answer_rtp(op.leg_id, op.offer_sdp, call_id=op.call_id)
    if isinstance(op, AcceptAnswer):
        await relay.accept_answer(op.leg_id, op.answer_sdp)
    elif isinstance(op, AcceptRtpAnswer):
        await relay.accept_rtp_answer(op.leg_id, op.answer_sdp)
    elif isinstance(op, UpdateRtp):
        return await relay.update_rtp(op.leg_id, op.offer_sdp)
    elif isinstance(op, SendDtmf):
        relay.send_dtmf(op.leg_id, op.digits)
    elif isinstance(op, StartRingback):
        relay.start_ringback(op.leg_id)
    elif isinstance(op, StopRingback):
        relay.stop_ringback(op.leg_id)
    elif isinstance(op, PlayNotice):
        relay.play_notice(op.leg_id)
    elif isinstance(op, Bridge):
        relay.bridge(op.a, op.b)
    elif isinstance(op, Stats):
        return relay.stats(op.leg_id)
    else:
        return await relay.close_leg(op.leg_id)
    return None


# -- settings and the Relay ---------------------------------------------------------


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process or relay host needs to build its Relay (pickled to a worker)."""

    bind_address: str
    announce_address: str
    ice_servers: tuple[str, ...]
    media_timeout: float
    connect_timeout: float
    relay_mode: str
    stats_interval: float = STATS_INTERVAL
    use_uvloop: bool = True
    media_ports: tuple[int, int] = (0, 0)


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


# -- one channel ------------------------------------------------------------------------


class ChannelServer:
    """Carries out one control channel's requests on a Relay.

    A worker process has the Relay to itself. A relay host shares its Relay
    among several channels (one per signaling node): each channel's leg ids
    and call ids then carry the channel's `prefix` inside the Relay, so
    channels never see or touch each other's legs, and `admit` (given the
    Relay's call key) may refuse legs of new calls.
    """

    def __init__(
        self,
        relay: MediaRelay,
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
        #: This channel's legs and the call of each, by the ids the channel uses.
        self.legs: dict[str, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    @property
    def calls(self) -> set[str]:
        """This channel's calls, as the Relay knows them (prefixed)."""
        return {self.prefix + call for call in self.legs.values()}

    def send_ready(self) -> None:
        loop_name = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        self.send(encode_event(Ready(os.getpid(), loop_name)))

    # -- events from the Relay (leg ids as the Relay knows them) --------------------

    def leg_failed(self, leg_id: str, detail: str) -> None:
        self.send(encode_event(LegFailed(leg_id.removeprefix(self.prefix), detail)))

    def dtmf(self, leg_id: str, digit: str) -> None:
        self.send(encode_event(DtmfReceived(leg_id.removeprefix(self.prefix), digit)))

    # -- requests ------------------------------------------------------------------

    async def handle(self, message: dict[str, Any]) -> None:
        try:
            request_id, request = decode_request(message)
        except RequestError as exc:
            if exc.request_id is None:
                logger.info("relay worker: %s", exc)
            else:
                self.send(encode_error(exc.request_id, exc))
            return
        if isinstance(request, Shutdown):
            self.stopping = True
            for task in list(self.tasks):
                task.cancel()
            await self.release()
            self._reply(request_id, None)
            return
        if isinstance(request, Ping):
            self._reply(request_id, os.getpid())
            return
        if isinstance(request, _ASYNC_OPS):
            task = asyncio.create_task(self._run(request_id, request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        await self._run(request_id, request)

    async def release(self) -> None:
        """Close this channel's legs (all of the Relay's, when it owns the Relay)."""
        legs, self.legs = self.legs, {}
        if self.owns_relay:
            await self.relay.close()
            return
        for leg_id in sorted(legs):
            try:
                await self.relay.close_leg(self.prefix + leg_id)
            except Exception:
                logger.exception("closing leg %s", leg_id)

    async def _run(self, request_id: int | None, op: Operation) -> None:
        try:
            result = await self._carry_out(op)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if request_id is None:
                logger.info("relay worker: %s: %s", op, exc)
            else:
                self.send(encode_error(request_id, exc))
            return
        self._reply(request_id, result)

    def _reply(self, request_id: int | None, result: Any) -> None:
        if request_id is not None:
            self.send(encode_reply(request_id, result))

    def _inner(self, op: Operation) -> Operation:
        """The operation with the Relay's ids for this channel's legs and calls."""
        if not self.prefix:
            return op
        changes = {
            name: self.prefix + getattr(op, name)
            for name in ("leg_id", "a", "b", "call_id")
            if hasattr(op, name) and getattr(op, name)
        }
        return dataclasses.replace(op, **changes)

    async def _carry_out(self, op: Operation) -> str | LegStats | None:
        inner = self._inner(op)
        if isinstance(op, NewLeg):
            call = op.call_id or op.leg_id
            if self.admit is not None and not self.admit(self.prefix + call):
                raise RelayUnavailable("this relay host takes no new calls")
            result = await perform(self.relay, inner)
            self.legs[op.leg_id] = call
            return result
        if isinstance(op, CloseLeg):
            self.legs.pop(op.leg_id, None)
        return await perform(self.relay, inner)

    async def report_stats(self, interval: float) -> None:
        """Every interval: each leg's counters (also the requesting side's sign that we
        are alive), and every leg of the Relay, this channel's and others'."""
        while True:
            stats = self.relay.stats
            legs = {leg_id: stats(self.prefix + leg_id) for leg_id in self.legs}
            self.send(encode_event(StatsReport(legs, self.relay.active_legs)))
            await asyncio.sleep(interval)


async def serve_channel(
    reader: asyncio.StreamReader, server: ChannelServer, stats_interval: float
) -> None:
    """Carry out one control channel's requests until it ends or asks to shut down.

    Raises ProtocolError for bytes that are not control frames.
    """
    reporter = asyncio.create_task(server.report_stats(stats_interval))
    decoder = FrameDecoder()
    try:
        while not server.stopping:
            data = await reader.read(65536)
            if not data:  # the other side is gone
                break
            for message in decoder.feed(data):
                await server.handle(message)
    finally:
        reporter.cancel()
        for task in list(server.tasks):
            task.cancel()


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> dict[str, Any]:
    """Exactly one control frame of at most ``limit`` bytes (the handshake's, read
    before the stream is decoded). ProtocolError for a bad frame, IncompleteReadError
    when the other side closes first."""
    header = await reader.readexactly(HEADER_SIZE)
    size = frame_size(header)
    if size > limit:
        raise ProtocolError(f"control frame of {size} bytes exceeds {limit}")
    return FrameDecoder().feed(header + await reader.readexactly(size))[0]


# -- a worker process ---------------------------------------------------------------------


def writer_send(writer: asyncio.StreamWriter) -> Callable[[dict[str, Any]], None]:
    """How a channel sends on `writer`: a frame a message, none once it is closing."""

    def send(message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(encode_message(message))

    return send


def sole_channel(relay: MediaRelay, writer: asyncio.StreamWriter) -> ChannelServer:
    """The one channel on a Relay it has to itself (a worker's), sending on `writer`:
    it hears the Relay's events and has said Ready."""
    server = ChannelServer(relay, writer_send(writer))
    relay.on_leg_failed = server.leg_failed
    relay.on_dtmf = server.dtmf
    server.send_ready()
    return server


def worker_main(conn: Connection, settings: WorkerSettings) -> None:
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
    server = sole_channel(relay, writer)
    try:
        await serve_channel(reader, server, settings.stats_interval)
    finally:
        await relay.close()
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()
