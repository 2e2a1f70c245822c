"""A relay whose legs live elsewhere: worker processes or relay hosts, one pool.

RelayPool implements the relay contract (voice.relay.api.MediaRelay) over
control channels (voice/relay/control.py) to serving sides that each run an
ordinary Relay (voice/relay/server.py). Where the channels come from is its
backend (`WorkerBackend`, voice/relay/channel.py; voice/relay/backends.py):

- ProcessBackend: worker processes we spawn, one per core by default, each
  owning its media sockets on its own event loop (ARCHITECTURE, "Scale": the
  loop and the per-packet Python work decide a relay's capacity). A lost one
  is replaced.
- HostBackend: TCP control connections to relay hosts (`anruf relay`,
  voice/relay/host.py) found in a registry; a lost one is never replaced by
  us, the registry decides.

What the pool does the same for both:

- Allocation: a call's legs share one channel (bridge() forwards inside one
  process). The call is the `call_id` given when a leg is created (a leg
  without one is a call of its own); a new call goes to the channel that
  `voice.relay.registry.choose` picks (the least loaded relative to its
  capacity, accepting new calls), and the mapping goes with the call's last leg.
- Failure: when a channel ends (its process exited, its connection dropped,
  or it stopped reporting for `hang_timeout` and was dropped), each leg it
  held gets on_leg_failed(leg_id, WORKER_LOST) once, requests waiting on it
  raise RelayUnavailable, and the backend may replace it. With no usable
  channel, answer() and offer() raise RelayUnavailable.
- The synchronous methods (start_ringback, stop_ringback, bridge, stats,
  active_legs) never wait: they send a notification, or read the pool's own
  bookkeeping (stats() returns the latest report, at most a second old).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from voice.relay.api import (
    WORKER_LOST,
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
    PlayNotice,
    RelayUnavailable,
    SendDtmf,
    StartRingback,
    Stats,
    StopRingback,
    UnknownLegError,
    UpdateRtp,
)
from voice.relay.channel import Channel, ChannelPool, WorkerBackend
from voice.relay.control import (
    Correlator,
    DtmfReceived,
    Event,
    Failure,
    FrameDecoder,
    LegFailed,
    ProtocolError,
    Ready,
    Reply,
    Request,
    Shutdown,
    StatsReport,
)
from voice.relay.registry import choose

if TYPE_CHECKING:
    from voice.relay.registry import HostDirectory
    from voice.relay.server import WorkerSettings

__all__ = ["WORKER_LOST", "RelayPool"]

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
HANG_TIMEOUT = 10.0
# Final stats of legs lost with their channel, kept for close_leg(); bounded.
MAX_LOST_LEGS = 10_000

T = TypeVar("T")


@dataclass(eq=False)
class _LegState:
    channel: Channel
    call: str
    pending: bool = True  # answer()/offer() not answered yet
    failed: bool = False
    stats: LegStats = field(default_factory=LegStats)


class RelayPool:
    """The relay contract over a backend's control channels (see the module docstring).

    In addition to voice.relay.api.MediaRelay: `start()` opens the channels
    ahead of the first call (otherwise the first answer()/offer() does),
    `fetch_stats()`, and introspection (`worker_pids`, `worker_loads`,
    `worker_loops`, `worker_of(leg_id)`, `host_loads`, `host_of(leg_id)`,
    `host_of_call(call_id)`).
    """

    def __init__(
        self,
        backend: WorkerBackend,
        *,
        on_leg_failed: Callable[[str, str], None] | None = None,
        on_dtmf: Callable[[str, str], None] | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        hang_timeout: float = HANG_TIMEOUT,
    ) -> None:
        self.backend = backend
        self.on_leg_failed = on_leg_failed
        #: (leg_id, digit) once per RFC 4733 event received on an RTP leg.
        self.on_dtmf = on_dtmf
        self.request_timeout = request_timeout
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.hang_timeout = hang_timeout
        self.channels: list[Channel] = []
        self._legs: dict[str, _LegState] = {}
        self._calls: dict[str, Channel] = {}
        self._call_legs: dict[str, set[str]] = {}
        self._lost: dict[str, LegStats] = {}
        self._start_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    @classmethod
    def of_processes(
        cls,
        *,
        bind_address: str,
        announce_address: str = "",
        ice_servers: Sequence[str] = (),
        media_timeout: float = 20.0,
        connect_timeout: float = 10.0,
        workers: int | None = None,
        relay_mode: str = "forward",
        use_uvloop: bool = True,
        media_ports: tuple[int, int] = (0, 0),
        hang_timeout: float = HANG_TIMEOUT,
        **options: Any,
    ) -> RelayPool:
        """Legs in `workers` processes of our own (None: one per core)."""
        from voice.relay.backends import ProcessBackend
        from voice.relay.server import STATS_INTERVAL, WorkerSettings

        if relay_mode not in ("forward", "transcode"):
            raise ValueError(f"relay_mode must be forward or transcode, not {relay_mode!r}")
        settings: WorkerSettings = WorkerSettings(
            bind_address=bind_address,
            announce_address=announce_address,
            ice_servers=tuple(ice_servers),
            media_timeout=media_timeout,
            connect_timeout=connect_timeout,
            relay_mode=relay_mode,
            stats_interval=min(STATS_INTERVAL, hang_timeout / 4),
            use_uvloop=use_uvloop,
            media_ports=media_ports,
        )
        return cls(ProcessBackend(settings, workers), hang_timeout=hang_timeout, **options)

    @classmethod
    def of_hosts(
        cls,
        directory: HostDirectory,
        *,
        secret: str,
        discovery_interval: float = 1.0,
        **options: Any,
    ) -> RelayPool:
        """Legs on the relay hosts registered in `directory`, proving `secret` to them."""
        from voice.relay.backends import HostBackend

        return cls(HostBackend(directory, secret, discovery_interval), **options)

    # -- introspection ----------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def active_legs(self) -> int:
        return len(self._legs)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the channels that are ready for calls."""
        return [channel.pid for channel in self.channels if channel.usable]

    @property
    def worker_loads(self) -> dict[int, int]:
        """Legs per ready channel, by process id."""
        return {channel.pid: len(channel.legs) for channel in self.channels if channel.usable}

    @property
    def worker_loops(self) -> dict[int, str]:
        """Event loop of each ready channel ("uvloop" or "asyncio"), by process id."""
        return {channel.pid: channel.loop for channel in self.channels if channel.usable}

    def worker_of(self, leg_id: str) -> int | None:
        """Process id of the worker (or host) holding the leg, None for no such leg."""
        state = self._legs.get(leg_id)
        return state.channel.pid if state is not None else None

    @property
    def host_loads(self) -> dict[str, int]:
        """Relay hosts in service: each one's load (legs, all nodes') as this node sees it."""
        return {
            channel.host_id: channel.candidate().load
            for channel in self.channels
            if channel.usable and channel.host_id is not None
        }

    def host_of_call(self, call_id: str) -> str | None:
        """Id of the relay host carrying the call, None for no such call (or a process)."""
        channel = self._calls.get(call_id)
        return channel.host_id if channel is not None else None

    def host_of(self, leg_id: str) -> str | None:
        """Id of the relay host holding the leg, None for no such leg (or a process)."""
        state = self._legs.get(leg_id)
        return state.channel.host_id if state is not None else None

    # -- starting and stopping ----------------------------------------------------

    async def start(self) -> None:
        """Open the channels and wait until they are ready; RelayUnavailable if none is."""
        if self._closing:
            raise RelayUnavailable("the relay is closed")
        if self._start_task is None:
            self._start_task = asyncio.create_task(self._start())
        if not self._start_task.done():
            # Those waiting for the first start see its outcome; later callers
            # find out from the channels then ready (replacements start meanwhile).
            await asyncio.shield(self._start_task)

    async def _start(self) -> None:
        self.spawn(self._watch())
        await self.backend.start(self)

    def attach(self, channel: Channel) -> None:
        """A backend's new channel: read it from now on."""
        self.channels.append(channel)
        channel.reader_task = asyncio.get_running_loop().create_task(self._read(channel))

    async def close(self) -> None:
        """Stop every channel (its legs close without on_leg_failed); kill what lingers."""
        if self._closing:
            return
        self._closing = True
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            with contextlib.suppress(BaseException):
                await self._start_task
        for task in list(self._tasks):
            task.cancel()
        channels = list(self.channels)
        await asyncio.gather(*(self._stop(channel) for channel in channels), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.backend.close()
        self._legs.clear()
        self._calls.clear()
        self._call_legs.clear()
        self._lost.clear()

    async def _stop(self, channel: Channel) -> None:
        grace = 0.0  # one that does not answer is killed at once
        if channel.alive:
            try:
                await self.request(channel, Shutdown(), timeout=self.stop_timeout)
                grace = self.stop_timeout
            except Exception as exc:
                logger.warning("%s: no clean shutdown: %s", channel.name, exc)
        self.lose(channel, kill=False)
        if channel.reader_task is not None:
            channel.reader_task.cancel()
            with contextlib.suppress(BaseException):
                await channel.reader_task
        await channel.reap(grace, self.stop_timeout)

    # -- negotiation --------------------------------------------------------------

    async def answer(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        """Answer a device's offer (the caller's leg); returns the relay's answer SDP."""
        return await self._create(Answer(leg_id, offer_sdp, call_id))

    async def offer(self, leg_id: str, *, call_id: str = "") -> str:
        """Create the relay's offer for a device (a callee's leg)."""
        return await self._create(Offer(leg_id, call_id))

    async def accept_answer(self, leg_id: str, answer_sdp: str) -> None:
        """Apply the device's answer to the relay's offer; media starts flowing."""
        state = self._state(leg_id)
        await self.request(state.channel, AcceptAnswer(leg_id, answer_sdp))

    async def offer_rtp(self, leg_id: str, *, call_id: str = "") -> str:
        """Our SDP offer for an RTP leg (for an INVITE to the operator)."""
        return await self._create(OfferRtp(leg_id, call_id))

    async def answer_rtp(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        """Answer the operator's offer (Opus, else PCMA, else PCMU)."""
        return await self._create(AnswerRtp(leg_id, offer_sdp, call_id))

    async def accept_rtp_answer(self, leg_id: str, answer_sdp: str) -> None:
        """Apply the operator's answer to offer_rtp (183, then 200)."""
        state = self._state(leg_id)
        await self.request(state.channel, AcceptRtpAnswer(leg_id, answer_sdp))

    async def update_rtp(self, leg_id: str, offer_sdp: str) -> str:
        """A re-INVITE's offer (hold, resume, a new address); returns our answer."""
        state = self._state(leg_id)
        return str(await self.request(state.channel, UpdateRtp(leg_id, offer_sdp)))

    def send_dtmf(self, leg_id: str, digits: str) -> None:
        """Send RFC 4733 events on an RTP leg (a notification: errors are logged there)."""
        if leg_id in self._lost:
            return
        state = self._state(leg_id)
        state.channel.send(Correlator.notify(SendDtmf(leg_id, digits)))

    def _dtmf_received(self, leg_id: str, digit: str) -> None:
        if self.on_dtmf is None:
            return
        try:
            self.on_dtmf(leg_id, digit)
        except Exception:
            logger.exception("on_dtmf(%s, %s) raised", leg_id, digit)

    async def _create(self, op: NewLeg) -> str:
        leg_id = op.leg_id
        state = await self._place(leg_id, op.call_id or leg_id)
        try:
            sdp = await self.request(state.channel, op)
        except BaseException:
            if self._legs.get(leg_id) is state:
                self._forget(leg_id)
                # A timed-out or cancelled request may still create the leg over there.
                state.channel.send(Correlator.notify(CloseLeg(leg_id)))
            raise
        state.pending = False
        return str(sdp)

    async def _place(self, leg_id: str, call: str) -> _LegState:
        if leg_id in self._legs:
            raise ValueError(f"leg {leg_id} already exists")
        await self.start()
        if self._closing:
            raise RelayUnavailable("the relay is closed")
        if leg_id in self._legs:
            raise ValueError(f"leg {leg_id} already exists")
        channel = self._calls.get(call)
        if channel is None or not channel.alive:
            channel = self._least_loaded()
            self._calls[call] = channel
        state = _LegState(channel, call)
        self._legs[leg_id] = state
        self._call_legs.setdefault(call, set()).add(leg_id)
        channel.legs.add(leg_id)
        self._lost.pop(leg_id, None)
        return state

    def _least_loaded(self) -> Channel:
        ready = {channel.candidate(): channel for channel in self.channels if channel.usable}
        chosen = choose(list(ready))
        if chosen is None:
            raise RelayUnavailable(f"no {self.backend.kind} is available")
        return ready[chosen]

    def _state(self, leg_id: str) -> _LegState:
        state = self._legs.get(leg_id)
        if state is None:
            if leg_id in self._lost:
                raise RelayUnavailable(f"leg {leg_id}: its {self.backend.kind} is gone")
            raise UnknownLegError(f"unknown leg {leg_id}")
        return state

    def _forget(self, leg_id: str) -> _LegState | None:
        state = self._legs.pop(leg_id, None)
        if state is None:
            return None
        state.channel.legs.discard(leg_id)
        legs = self._call_legs.get(state.call)
        if legs is not None:
            legs.discard(leg_id)
            if not legs:
                del self._call_legs[state.call]
                self._calls.pop(state.call, None)
        return state

    # -- media --------------------------------------------------------------------

    def start_ringback(self, leg_id: str) -> None:
        """Play the ringback tone to this leg as early media (from when it connects)."""
        if leg_id in self._lost:
            return  # on_leg_failed has told the caller already
        state = self._state(leg_id)
        state.channel.send(Correlator.notify(StartRingback(leg_id)))

    def stop_ringback(self, leg_id: str) -> None:
        state = self._legs.get(leg_id)
        if state is not None:
            state.channel.send(Correlator.notify(StopRingback(leg_id)))

    def play_notice(self, leg_id: str) -> None:
        """Play the short notice tone to this leg over the call."""
        state = self._legs.get(leg_id)
        if state is not None:
            state.channel.send(Correlator.notify(PlayNotice(leg_id)))

    def bridge(self, a: str, b: str) -> None:
        """Forward Opus packets between legs a and b both ways; ends ringback on both."""
        if a == b:
            raise ValueError("cannot bridge a leg to itself")
        if a in self._lost or b in self._lost:
            return  # on_leg_failed has told the caller already
        state_a, state_b = self._state(a), self._state(b)
        if state_a.channel is not state_b.channel:
            raise ValueError(f"legs {a} and {b} are on different {self.backend.kind}s")
        state_a.channel.send(Correlator.notify(Bridge(a, b)))

    # -- stats and teardown ---------------------------------------------------------

    def stats(self, leg_id: str) -> LegStats:
        """The leg's counters as of its channel's latest report (at most a second old)."""
        state = self._legs.get(leg_id)
        if state is not None:
            return state.stats
        return self._lost.get(leg_id, LegStats())

    async def fetch_stats(self, leg_id: str) -> LegStats:
        """The leg's current counters, asked of where it lives."""
        state = self._legs.get(leg_id)
        if state is None or not state.channel.alive:
            return self.stats(leg_id)
        stats = await self.request(state.channel, Stats(leg_id))
        assert isinstance(stats, LegStats)
        state.stats = stats
        return stats

    async def close_leg(self, leg_id: str) -> LegStats:
        """Close a leg (idempotent) and return its final stats.

        Never raises for a lost channel: the last reported stats are returned.
        """
        state = self._forget(leg_id)
        if state is None:
            return self._lost.pop(leg_id, LegStats())
        if not state.channel.alive:
            return state.stats
        try:
            stats = await self.request(state.channel, CloseLeg(leg_id))
        except RelayUnavailable:
            return state.stats
        assert isinstance(stats, LegStats)
        return stats

    # -- the control channel ----------------------------------------------------------

    async def request(
        self, channel: Channel, request: Request, timeout: float | None = None
    ) -> Any:
        """Send a request on the channel and wait for its result (RelayUnavailable if the
        channel goes or does not answer within `timeout`, by default request_timeout)."""
        if not channel.alive:
            raise RelayUnavailable(f"{channel.name} is gone")
        request_id, data = channel.correlator.request(request)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        channel.waiters[request_id] = waiter
        limit = self.request_timeout if timeout is None else timeout
        try:
            channel.send(data)
            async with asyncio.timeout(limit):
                return await waiter
        except TimeoutError:
            name = type(request).__name__
            message = f"{channel.name} did not answer {name} within {limit:g} s"
            raise RelayUnavailable(message) from None
        finally:
            channel.waiters.pop(request_id, None)
            channel.correlator.abandon(request_id)

    async def _read(self, channel: Channel) -> None:
        decoder = FrameDecoder()
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await channel.reader.read(65536)
                if not data:
                    break
                channel.last_seen = loop.time()
                for message in decoder.feed(data):
                    self._dispatch(channel, channel.correlator.receive(message))
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            logger.error("%s: unreadable control message, dropping it: %s", channel.name, exc)
        except Exception:
            logger.exception("%s: control channel failed", channel.name)
        finally:
            self.lose(channel, kill=not self._closing)

    def _dispatch(self, channel: Channel, item: Reply | Failure | Event | None) -> None:
        if isinstance(item, Reply | Failure):
            waiter = channel.waiters.get(item.id)
            if waiter is not None and not waiter.done():
                if isinstance(item, Reply):
                    waiter.set_result(item.result)
                else:
                    waiter.set_exception(item.error)
        elif item is not None:
            self._event(channel, item)

    def _event(self, channel: Channel, event: Event) -> None:
        if isinstance(event, StatsReport):
            for leg_id, stats in event.legs.items():
                state = self._legs.get(leg_id)
                if state is not None and state.channel is channel:
                    state.stats = stats
            if event.total is not None:
                channel.others = max(0, event.total - len(event.legs))
        elif isinstance(event, LegFailed):
            state = self._legs.get(event.leg_id)
            if state is None or state.channel is not channel:
                # Nobody here holds it (its creation timed out): let the other side drop it.
                channel.send(Correlator.notify(CloseLeg(event.leg_id)))
                return
            self._report_failure(event.leg_id, state, event.detail)
        elif isinstance(event, DtmfReceived):
            state = self._legs.get(event.leg_id)
            if state is not None and state.channel is channel:
                self._dtmf_received(event.leg_id, event.digit)
        elif isinstance(event, Ready) and not channel.ready.done():
            channel.remote_pid = event.pid or channel.remote_pid
            channel.loop = event.loop
            channel.ready.set_result(channel.pid)
            logger.info("%s (#%d) ready on %s", channel.name, channel.index, channel.loop)

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

    def lose(self, channel: Channel, *, kill: bool) -> None:
        """The channel is gone (or must be): fail its requests and legs; tell the backend."""
        if not channel.alive:
            return
        channel.alive = False
        if kill:
            channel.kill()
        channel.writer.close()
        if not channel.ready.done():
            channel.ready.cancel()
        channel.correlator.abandon_all()
        error = f"{channel.name} is gone"
        for waiter in channel.waiters.values():
            if not waiter.done():
                waiter.set_exception(RelayUnavailable(error))
        if channel in self.channels:
            self.channels.remove(channel)
        for call, holder in list(self._calls.items()):
            if holder is channel:
                del self._calls[call]
        lost: list[tuple[str, _LegState]] = []
        for leg_id in sorted(channel.legs):
            state = self._forget(leg_id)
            if state is None or state.pending:
                continue  # its answer()/offer() raises RelayUnavailable instead
            lost.append((leg_id, state))
            self._lost[leg_id] = state.stats
            while len(self._lost) > MAX_LOST_LEGS:
                del self._lost[next(iter(self._lost))]
        if self._closing:
            return
        in_service = channel.ready.done() and not channel.ready.cancelled()
        logger.log(
            logging.INFO if channel.leaving and not lost else logging.ERROR,
            "%s (#%d) %s holding %d legs",
            channel.name,
            channel.index,
            channel.how_lost(),
            len(lost),
        )
        for leg_id, state in lost:
            self._report_failure(leg_id, state, WORKER_LOST)
        self.backend.lost(self, channel, in_service)

    async def _watch(self) -> None:
        """Drop a channel whose serving side stopped reporting (hung)."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            await asyncio.sleep(min(1.0, self.hang_timeout / 4))
            now = loop.time()
            for channel in list(self.channels):
                if channel.usable and now - channel.last_seen > self.hang_timeout:
                    logger.error(
                        "%s silent for %.1f s: dropping it", channel.name, now - channel.last_seen
                    )
                    self.lose(channel, kill=True)

    def spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A background task of the pool's, cancelled when it closes."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _keeps_the_contract(pool: RelayPool) -> MediaRelay:
    return pool  # checked by mypy: a RelayPool is a MediaRelay


def _serves_its_backend(pool: RelayPool) -> ChannelPool:
    return pool  # checked by mypy: what a backend may use of its pool
