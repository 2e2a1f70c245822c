"""RelayPool with a fake backend: where calls go, and what a lost channel does.

The backend's channels are socket pairs to ChannelServers on an in-memory relay
(no aiortc, no processes): the pool, the wire codec and the serving side are
the real ones.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from tests.integration.relaying import LegEvents
from voice.relay.api import (
    WORKER_LOST,
    LegStats,
    MediaRelay,
    RelayUnavailable,
    UnknownLegError,
)
from voice.relay.channel import Channel, ChannelPool
from voice.relay.pool import RelayPool
from voice.relay.registry import Candidate
from voice.relay.server import serve_channel, sole_channel

pytestmark = pytest.mark.timeout(20)


class MemoryRelay:
    """The relay contract in memory: legs are names, SDP is made up."""

    def __init__(self) -> None:
        self.on_leg_failed: Callable[[str, str], None] | None = None
        self.on_dtmf: Callable[[str, str], None] | None = None
        self.legs: dict[str, str] = {}  # leg id: call id
        self.bridged: list[tuple[str, str]] = []

    @property
    def active_legs(self) -> int:
        return len(self.legs)

    def _new(self, leg_id: str, call_id: str) -> str:
        if leg_id in self.legs:
            raise ValueError(f"leg {leg_id} already exists")
        self.legs[leg_id] = call_id
        return f"v=0 {leg_id}"

    async def answer(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        return self._new(leg_id, call_id)

    async def offer(self, leg_id: str, *, call_id: str = "") -> str:
        return self._new(leg_id, call_id)

    async def offer_rtp(self, leg_id: str, *, call_id: str = "") -> str:
        return self._new(leg_id, call_id)

    async def answer_rtp(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        return self._new(leg_id, call_id)

    def _leg(self, leg_id: str) -> None:
        if leg_id not in self.legs:
            raise UnknownLegError(f"unknown leg {leg_id}")

    async def accept_answer(self, leg_id: str, answer_sdp: str) -> None:
        self._leg(leg_id)

    async def accept_rtp_answer(self, leg_id: str, answer_sdp: str) -> None:
        self._leg(leg_id)

    async def update_rtp(self, leg_id: str, offer_sdp: str) -> str:
        self._leg(leg_id)
        return offer_sdp

    def send_dtmf(self, leg_id: str, digits: str) -> None:
        self._leg(leg_id)

    def start_ringback(self, leg_id: str) -> None:
        self._leg(leg_id)

    def stop_ringback(self, leg_id: str) -> None:
        pass

    def play_notice(self, leg_id: str) -> None:
        pass

    def bridge(self, a: str, b: str) -> None:
        self._leg(a)
        self._leg(b)
        self.bridged.append((a, b))

    def stats(self, leg_id: str) -> LegStats:
        return LegStats(packets_received=len(leg_id)) if leg_id in self.legs else LegStats()

    async def close_leg(self, leg_id: str) -> LegStats:
        final = self.stats(leg_id)
        self.legs.pop(leg_id, None)
        return final

    async def close(self) -> None:
        self.legs.clear()


def _contract(relay: MemoryRelay) -> MediaRelay:
    return relay  # mypy checks that the fake keeps the contract


class FakeChannel(Channel):
    def __init__(
        self,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        capacity: int = 0,
        accepting: bool = True,
    ) -> None:
        super().__init__(index, reader, writer)
        self.capacity = capacity
        self.accepting = accepting

    @property
    def name(self) -> str:
        return f"fake {self.index}"

    def candidate(self) -> Candidate:
        return Candidate(
            key=("", self.index),
            load=self.others + len(self.legs),
            capacity=self.capacity,
            accepting=self.accepting,
        )


class FakeBackend:
    """Channels to in-memory relays: `capacities[i]` legs for channel i (0: no limit)."""

    kind = "fake relay"

    def __init__(self, capacities: list[int]) -> None:
        self.capacities = capacities
        self.relays: list[MemoryRelay] = []
        self.channels: list[FakeChannel] = []
        self.servers: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.lost_channels: list[tuple[Channel, bool]] = []

    async def start(self, pool: ChannelPool) -> None:
        for index, capacity in enumerate(self.capacities):
            ours, theirs = socket.socketpair()
            relay = MemoryRelay()
            reader, writer = await asyncio.open_unix_connection(sock=theirs)
            self.writers.append(writer)
            server = sole_channel(relay, writer)
            self.servers.append(asyncio.create_task(serve_channel(reader, server, 0.05)))
            self.relays.append(relay)
            pool_reader, pool_writer = await asyncio.open_unix_connection(sock=ours)
            channel = FakeChannel(index, pool_reader, pool_writer, capacity=capacity)
            self.channels.append(channel)
            pool.attach(channel)
        await asyncio.wait([channel.ready for channel in self.channels], timeout=5)

    def lost(self, pool: ChannelPool, channel: Channel, in_service: bool) -> None:
        self.lost_channels.append((channel, in_service))

    async def close(self) -> None:
        for task in self.servers:
            task.cancel()
        for writer in self.writers:
            writer.close()

    def relay_of(self, pool: RelayPool, leg_id: str) -> int:
        """Which in-memory relay holds the leg."""
        (index,) = [i for i, relay in enumerate(self.relays) if leg_id in relay.legs]
        return index

    def cut(self, index: int) -> None:
        """The serving side of channel `index` goes away (a crash)."""
        self.servers[index].cancel()
        self.writers[index].close()


@pytest.fixture
def failures() -> LegEvents:
    return LegEvents()


@pytest.fixture
async def make_pool(
    failures: LegEvents,
) -> AsyncIterator[Callable[..., tuple[RelayPool, FakeBackend]]]:
    pools: list[RelayPool] = []

    def make(capacities: list[int], **options: float) -> tuple[RelayPool, FakeBackend]:
        backend = FakeBackend(capacities)
        pool = RelayPool(backend, on_leg_failed=failures, stop_timeout=1.0, **options)
        pools.append(pool)
        return pool, backend

    yield make
    for pool in pools:
        await pool.close()


async def wait_for(condition: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_calls_legs_share_a_channel_and_new_calls_go_to_the_least_loaded(
    make_pool: Callable[..., tuple[RelayPool, FakeBackend]],
) -> None:
    pool, backend = make_pool([0, 0, 0])
    assert await pool.answer("one:a", "v=0", call_id="one") == "v=0 one:a"
    await pool.offer("one:b", call_id="one")
    await pool.offer_rtp("one:c", call_id="one")
    assert backend.relay_of(pool, "one:a") == backend.relay_of(pool, "one:b")
    assert backend.relay_of(pool, "one:c") == backend.relay_of(pool, "one:a")
    # The relay got the call too, not only the leg.
    assert backend.relays[backend.relay_of(pool, "one:a")].legs["one:b"] == "one"

    await pool.offer("two:a", call_id="two")
    await pool.answer_rtp("three:a", "v=0", call_id="three")
    holders = {backend.relay_of(pool, leg) for leg in ("one:a", "two:a", "three:a")}
    assert holders == {0, 1, 2}
    assert sorted(len(channel.legs) for channel in backend.channels) == [1, 1, 3]

    # A fourth call goes to one of the channels with one leg, never the busy one.
    await pool.offer("four:a", call_id="four")
    assert backend.relay_of(pool, "four:a") != backend.relay_of(pool, "one:a")

    pool.bridge("one:a", "one:b")
    await wait_for(lambda: backend.relays[backend.relay_of(pool, "one:a")].bridged != [])
    with pytest.raises(ValueError, match="different"):
        pool.bridge("one:a", "two:a")
    with pytest.raises(ValueError, match="itself"):
        pool.bridge("one:a", "one:a")


async def test_the_grouping_is_the_call_given_never_the_leg_id(
    make_pool: Callable[..., tuple[RelayPool, FakeBackend]],
) -> None:
    pool, backend = make_pool([0, 0])
    # Ids that look alike but name different calls go apart; unlike ones of one call stay.
    await pool.offer("x:1", call_id="first")
    await pool.offer("x:2", call_id="second")
    assert backend.relay_of(pool, "x:1") != backend.relay_of(pool, "x:2")
    await pool.offer("totally-other", call_id="first")
    assert backend.relay_of(pool, "totally-other") == backend.relay_of(pool, "x:1")
    # Without a call a leg is a call of its own.
    await pool.offer("alone")
    assert pool.host_of_call("alone") is None  # no relay host behind a fake channel
    assert pool.worker_of("alone") is not None

    # The call's channel is forgotten with its last leg: it may go anywhere then.
    await pool.close_leg("x:2")
    await pool.close_leg("x:1")
    await pool.close_leg("totally-other")
    assert "first" not in pool._calls and "second" not in pool._calls


async def test_full_and_draining_channels_get_no_new_calls(
    make_pool: Callable[..., tuple[RelayPool, FakeBackend]],
) -> None:
    pool, backend = make_pool([2, 0])
    await pool.start()
    backend.channels[1].accepting = False  # draining
    await pool.offer("a:1", call_id="a")
    await pool.offer("a:2", call_id="a")  # a call in progress may exceed what is left
    await pool.offer("a:3", call_id="a")
    assert {backend.relay_of(pool, f"a:{n}") for n in (1, 2, 3)} == {0}
    with pytest.raises(RelayUnavailable, match="no fake relay is available") as caught:
        await pool.offer("b:1", call_id="b")
    assert not isinstance(caught.value, ValueError)  # an outage, not a bad request
    assert pool.active_legs == 3
    backend.channels[1].accepting = True
    await pool.offer("b:1", call_id="b")
    assert backend.relay_of(pool, "b:1") == 1


async def test_errors_keep_their_types_through_the_pool(
    make_pool: Callable[..., tuple[RelayPool, FakeBackend]],
) -> None:
    pool, _ = make_pool([0])
    await pool.offer("c:a", call_id="c")
    with pytest.raises(ValueError, match="already exists"):
        await pool.offer("c:a", call_id="c")
    with pytest.raises(UnknownLegError):
        await pool.accept_answer("c:nobody", "v=0")
    with pytest.raises(UnknownLegError):
        pool.start_ringback("c:nobody")
    assert await pool.update_rtp("c:a", "v=0 again") == "v=0 again"
    await wait_for(lambda: pool.stats("c:a").packets_received == 3)  # a stats report
    assert await pool.fetch_stats("c:a") == LegStats(packets_received=3)
    assert await pool.close_leg("c:a") == LegStats(packets_received=3)
    assert await pool.close_leg("c:a") == LegStats()
    assert pool.active_legs == 0


async def test_a_lost_channel_fails_its_legs_once_and_calls_go_on_elsewhere(
    make_pool: Callable[..., tuple[RelayPool, FakeBackend]], failures: LegEvents
) -> None:
    pool, backend = make_pool([0, 0])
    await pool.answer("doomed:a", "v=0", call_id="doomed")
    await pool.offer("doomed:b", call_id="doomed")
    await pool.offer("other:a", call_id="other")
    doomed = backend.relay_of(pool, "doomed:a")
    assert backend.relay_of(pool, "other:a") != doomed
    await wait_for(lambda: pool.stats("doomed:a").packets_received > 0)

    backend.cut(doomed)
    await wait_for(lambda: len(failures) == 2)
    assert sorted(failures) == [("doomed:a", WORKER_LOST), ("doomed:b", WORKER_LOST)]
    assert backend.lost_channels == [(backend.channels[doomed], True)]
    assert pool.active_legs == 1 and len(pool.worker_pids) == 1
    # Late effects on lost legs are no-ops; asking more of them is an outage.
    pool.bridge("doomed:a", "doomed:b")
    pool.start_ringback("doomed:a")
    with pytest.raises(RelayUnavailable):
        await pool.accept_answer("doomed:a", "v=0")
    # Closing a lost leg never raises and returns what was last reported.
    assert (await pool.close_leg("doomed:a")).packets_received == len("doomed:a")
    # The call is placed again on the channel left.
    await pool.offer("doomed:c", call_id="doomed")
    assert backend.relay_of(pool, "doomed:c") != doomed
    await asyncio.sleep(0.1)
    assert len(failures) == 2  # once each


async def test_a_silent_channel_is_dropped(
    make_pool: Callable[..., tuple[RelayPool, FakeBackend]], failures: LegEvents
) -> None:
    pool, backend = make_pool([0], hang_timeout=0.4)
    await pool.offer("c:a", call_id="c")
    backend.servers[0].cancel()  # no more stats reports; the socket stays open
    await wait_for(lambda: failures == [("c:a", WORKER_LOST)])
    with pytest.raises(RelayUnavailable):
        await pool.offer("d:a", call_id="d")


async def test_a_request_nobody_answers_times_out_as_an_outage(
    make_pool: Callable[..., tuple[RelayPool, FakeBackend]],
) -> None:
    pool, backend = make_pool([0], request_timeout=0.3)
    await pool.start()
    backend.servers[0].cancel()
    with pytest.raises(RelayUnavailable, match="did not answer"):
        await pool.offer("c:a", call_id="c")
    assert pool.active_legs == 0
