"""Relay worker processes: allocation by call, a killed or hung worker, the whole server.

Media through a worker and the errors it passes on are the relay contract's
(tests/integration/test_relay_contract.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from signaling.keys import CALLS, RELAY
from tests.conftest import ALICE, BOB, Server, ServerFactory
from tests.integration.relaying import LegEvents
from voice.audio import tone_fraction
from voice.client.media import SAMPLE_RATE, MediaEndpoint
from voice.relay.api import WORKER_LOST, RelayUnavailable
from voice.relay.pool import RelayPool

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def failures() -> LegEvents:
    return LegEvents()


@pytest.fixture
async def make_relay(failures: LegEvents) -> AsyncIterator[Callable[..., RelayPool]]:
    relays: list[RelayPool] = []

    def make(**options: object) -> RelayPool:
        relay = RelayPool.of_processes(bind_address="127.0.0.1", on_leg_failed=failures, **options)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.close()
    # close() stops every worker process: none is left behind.
    for relay in relays:
        assert relay.worker_pids == []


async def wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def call_through(
    relay: RelayPool, call_id: str, caller: MediaEndpoint, callee: MediaEndpoint
) -> tuple[str, str]:
    """Both legs as CallService sets them up: relay answers the caller, offers the callee."""
    a, b = f"{call_id}:caller", f"{call_id}:callee"
    await caller.accept_answer(await relay.answer(a, await caller.create_offer(), call_id=call_id))
    relay.start_ringback(a)
    offer = await relay.offer(b, call_id=call_id)
    await relay.accept_answer(b, await callee.answer(offer))
    await wait_for(
        lambda: caller.connection_state == "connected" and callee.connection_state == "connected"
    )
    return a, b


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_calls_spread_over_workers(
    make_relay: Callable[..., RelayPool], failures: LegEvents
) -> None:
    relay = make_relay(workers=2)
    started = time.monotonic()
    await relay.start()
    print(f"2 workers ready in {time.monotonic() - started:.2f} s: {relay.worker_pids}")
    pids = relay.worker_pids
    assert len(pids) == 2 and os.getpid() not in pids
    uvloop_installed = importlib.util.find_spec("uvloop") is not None
    assert set(relay.worker_loops.values()) == {"uvloop" if uvloop_installed else "asyncio"}

    # Both legs of a call are on one worker; the next call goes to the idle one.
    await relay.offer("first-caller", call_id="call1")
    await relay.offer("first-callee", call_id="call1")
    assert relay.worker_of("first-caller") == relay.worker_of("first-callee") is not None
    other = await relay.offer("second", call_id="call2")
    assert "m=audio" in other
    assert relay.worker_of("second") not in (None, relay.worker_of("first-caller"))
    assert relay.active_legs == 3
    assert sorted(relay.worker_loads.values()) == [1, 2]
    assert await relay.fetch_stats("first-caller") == relay.stats("first-caller")

    # The call's worker mapping goes with its last leg.
    for leg_id in ("first-caller", "first-callee", "second"):
        await relay.close_leg(leg_id)
    assert relay.active_legs == 0
    assert relay.worker_loads == {pid: 0 for pid in pids}
    assert failures == []
    await relay.close()
    for pid in pids:
        await wait_for(lambda pid=pid: not pid_alive(pid), limit=5)  # type: ignore[misc]


async def test_a_killed_worker_fails_its_legs_once_and_calls_go_on_elsewhere(
    make_relay: Callable[..., RelayPool], failures: LegEvents
) -> None:
    relay = make_relay(workers=2)
    await relay.start()
    caller = MediaEndpoint(source="tone:440")
    callee = MediaEndpoint(source="tone:880")
    survivors = [MediaEndpoint(source="tone:523"), MediaEndpoint(source="tone:659")]
    try:
        a, b = await call_through(relay, "doomed", caller, callee)
        relay.bridge(a, b)
        await callee.wait_for_tone(440, timeout=5)
        other = await relay.offer("bystander:x", call_id="bystander")
        doomed_pid = relay.worker_of(a)
        assert doomed_pid is not None and relay.worker_of("bystander:x") != doomed_pid
        await asyncio.sleep(1.2)  # a stats report or two

        os.kill(doomed_pid, signal.SIGKILL)
        await wait_for(lambda: len(failures) == 2, limit=5)
        assert sorted(failures) == sorted([(a, WORKER_LOST), (b, WORKER_LOST)])
        assert relay.active_legs == 1 and relay.worker_of("bystander:x") is not None
        relay.bridge(a, b)  # late effects on lost legs are no-ops
        relay.start_ringback(a)
        # What CallService does next: closing the lost legs never raises, and
        # returns what the worker last reported.
        lost_stats = await relay.close_leg(a)
        assert lost_stats.packets_received > 0
        assert (await relay.close_leg(b)).packets_sent > 0
        assert "m=audio" in other

        # A new call right away works on the remaining worker.
        x, y = await call_through(relay, "after", *survivors)
        assert relay.worker_of(x) == relay.worker_of(y) != doomed_pid
        relay.bridge(x, y)
        await survivors[0].wait_for_tone(659, timeout=5)
        await survivors[1].wait_for_tone(523, timeout=5)

        # And a replacement worker comes up in the background.
        await wait_for(lambda: len(relay.worker_pids) == 2, limit=20)
        assert doomed_pid not in relay.worker_pids
        assert not pid_alive(doomed_pid)  # reaped, not a zombie
        await asyncio.sleep(0.5)
        assert sorted(failures) == sorted([(a, WORKER_LOST), (b, WORKER_LOST)])  # once each
    finally:
        for endpoint in (caller, callee, *survivors):
            await endpoint.close()


async def test_without_a_live_worker_requests_raise_relay_unavailable(
    make_relay: Callable[..., RelayPool], failures: LegEvents
) -> None:
    relay = make_relay(workers=1)
    await relay.offer("c1:a", call_id="c1")
    (pid,) = relay.worker_pids
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: failures == [("c1:a", WORKER_LOST)], limit=5)
    with pytest.raises(RelayUnavailable):
        await relay.offer("c2:a", call_id="c2")
    with pytest.raises(RelayUnavailable) as caught:  # an outage, not the caller's bad SDP
        await relay.answer("c2:b", "v=0\r\n", call_id="c2")
    assert not isinstance(caught.value, ValueError)
    with pytest.raises(RelayUnavailable):
        await relay.accept_answer("c1:a", "v=0\r\n")
    await wait_for(lambda: len(relay.worker_pids) == 1, limit=20)
    assert "m=audio" in await relay.offer("c3:a", call_id="c3")


async def test_a_request_to_a_hung_worker_times_out(
    make_relay: Callable[..., RelayPool],
) -> None:
    relay = make_relay(workers=1, request_timeout=2.0)
    await relay.start()
    (pid,) = relay.worker_pids
    os.kill(pid, signal.SIGSTOP)  # hung: it never answers
    started = time.monotonic()
    with pytest.raises(RelayUnavailable, match="did not answer"):
        await relay.offer("c:a", call_id="c")
    assert time.monotonic() - started < 3.0
    assert relay.active_legs == 0
    os.kill(pid, signal.SIGKILL)


# -- through the whole server ---------------------------------------------------


@pytest.fixture
async def worker_server(make_server: ServerFactory) -> Server:
    return await make_server(relay_workers=2)


async def test_a_worker_killed_mid_call_ends_that_call_and_the_next_call_works(
    worker_server: Server,
) -> None:
    relay = worker_server.app[RELAY]
    assert isinstance(relay, RelayPool)
    alice = await worker_server.phone(ALICE)
    bob = await worker_server.phone(BOB)

    async def connect(caller_tone: int, callee_tone: int) -> tuple[Any, Any]:
        outgoing = await alice.call(BOB, source=f"tone:{caller_tone}")
        incoming = await bob.incoming(timeout=10, source=f"tone:{callee_tone}")
        await outgoing.ringing(timeout=5)
        await incoming.accept()
        assert await outgoing.connected(timeout=10)
        assert await incoming.connected(timeout=10)
        return outgoing, incoming

    outgoing, incoming = await connect(440, 880)
    await outgoing.media.wait_for_tone(880, timeout=5)
    await incoming.media.wait_for_tone(440, timeout=5)
    await asyncio.sleep(1.0)  # mid-call
    loads = relay.worker_loads
    assert sorted(loads.values()) == [0, 2]  # both legs on one worker
    doomed = next(pid for pid, legs in loads.items() if legs == 2)

    os.kill(doomed, signal.SIGKILL)
    assert await outgoing.ended(timeout=5) == "failed"
    assert await incoming.ended(timeout=5) == "failed"
    assert WORKER_LOST in outgoing.end_detail
    assert worker_server.app[CALLS].active_calls == 0
    assert relay.active_legs == 0

    # The next call is carried by the surviving worker (or its replacement).
    outgoing, incoming = await connect(523, 659)
    await outgoing.media.wait_for_tone(659, timeout=5)
    await incoming.media.wait_for_tone(523, timeout=5)
    assert doomed not in relay.worker_loads
    outgoing.media.mark("talk")
    await asyncio.sleep(1.5)
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    talk = outgoing.media.received()[outgoing.media.markers["talk"] :]
    assert tone_fraction(talk, SAMPLE_RATE, 659) >= 0.9
    history = await alice.signaling.history()
    assert [record["end_reason"] for record in history[:2]] == ["completed", "failed"]


async def test_a_hung_worker_is_killed_and_replaced(
    make_relay: Callable[..., RelayPool], failures: LegEvents
) -> None:
    relay = make_relay(workers=1, hang_timeout=1.0)
    await relay.offer("c:a", call_id="c")
    (pid,) = relay.worker_pids
    os.kill(pid, signal.SIGSTOP)  # its loop stops: no more reports
    await wait_for(lambda: failures == [("c:a", WORKER_LOST)], limit=5)
    assert not pid_alive(pid) or pid not in relay.worker_pids
    await wait_for(lambda: len(relay.worker_pids) == 1, limit=20)
    assert relay.worker_pids != [pid]
    assert "m=audio" in await relay.offer("c2:a", call_id="c2")


async def test_transcoding_workers_carry_a_call(make_relay: Callable[..., RelayPool]) -> None:
    relay = make_relay(workers=1, relay_mode="transcode")
    caller = MediaEndpoint(source="tone:440")
    callee = MediaEndpoint(source="tone:880")
    try:
        a, b = await call_through(relay, "t", caller, callee)
        relay.bridge(a, b)
        await caller.wait_for_tone(880, timeout=5)
        await callee.wait_for_tone(440, timeout=5)
    finally:
        await caller.close()
        await callee.close()
    with pytest.raises(ValueError, match="relay_mode"):
        RelayPool.of_processes(bind_address="127.0.0.1", relay_mode="mixing")
