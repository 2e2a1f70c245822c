"""The cluster bus's registry rules, the same for the in-process bus and for Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from signaling.cluster.bus import Bus, LocalBus, Message, RedisBus
from tests.conftest import ALICE, BOB, require_redis

#: Redis logical database of these tests.
REDIS_DB = 5

BusFactory = Callable[[str], Bus]


@pytest.fixture(params=["local", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    buses: list[Bus] = []
    url = require_redis(REDIS_DB) if request.param == "redis" else ""

    def make(node_id: str) -> Bus:
        bus: Bus = RedisBus(node_id, url) if url else LocalBus(node_id)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


async def test_a_device_is_where_it_connected_last(make_bus: BusFactory) -> None:
    bus = make_bus("node-a")
    assert await bus.device_online("dev_1", ALICE) is None
    assert await bus.device_online("dev_2", ALICE) is None
    assert await bus.device_node("dev_1") == "node-a"
    assert await bus.number_devices(ALICE) == {"dev_1": "node-a", "dev_2": "node-a"}
    assert await bus.device_offline("dev_1", ALICE)
    assert await bus.number_devices(ALICE) == {"dev_2": "node-a"}
    assert await bus.device_node("dev_1") is None
    assert not await bus.device_offline("dev_1", ALICE)  # already gone


async def test_a_late_close_on_the_old_node_does_not_undo_the_new_connection(
    make_bus: BusFactory,
) -> None:
    old, new = make_bus("node-a"), make_bus("node-b")
    if isinstance(old, LocalBus):
        pytest.skip("one process has one node")
    await old.device_online("dev_1", ALICE)
    assert await new.device_online("dev_1", ALICE) == "node-a"  # it moved
    assert not await old.device_offline("dev_1", ALICE)
    assert await new.device_node("dev_1") == "node-b"
    assert await new.number_devices(ALICE) == {"dev_1": "node-b"}


async def test_calls_make_both_numbers_busy_until_they_end(make_bus: BusFactory) -> None:
    bus = make_bus("node-a")
    await bus.call_started("call_1", (ALICE, BOB))
    assert await bus.call_node("call_1") == "node-a"
    assert await bus.number_calls(BOB) == {"call_1": "node-a"}
    await bus.call_ended("call_1", (ALICE, BOB))
    assert await bus.call_node("call_1") is None
    assert await bus.number_calls(ALICE) == {}


async def test_forgetting_a_dead_node_removes_only_what_still_names_it(
    make_bus: BusFactory,
) -> None:
    dead, alive = make_bus("node-a"), make_bus("node-b")
    if isinstance(dead, LocalBus):
        pytest.skip("one process has one node")
    await dead.device_online("dev_1", ALICE)
    await dead.device_online("dev_2", BOB)
    await dead.call_started("call_1", (ALICE, BOB))
    await alive.device_online("dev_2", BOB)  # moved before the node died
    await alive.forget_node("node-a")
    assert await alive.device_node("dev_1") is None
    assert await alive.number_devices(ALICE) == {}
    assert await alive.device_node("dev_2") == "node-b"
    assert await alive.number_devices(BOB) == {"dev_2": "node-b"}
    assert await alive.call_node("call_1") is None
    assert await alive.number_calls(ALICE) == {}


async def test_messages_reach_one_node_or_all(make_bus: BusFactory) -> None:
    a = make_bus("node-a")
    got: dict[str, list[Message]] = {"node-a": [], "node-b": []}

    def collect(node: str) -> Callable[[Message], asyncio.Future[None]]:
        async def handle(message: Message) -> None:
            got[node].append(message)

        return handle  # type: ignore[return-value]

    await a.start(collect("node-a"))
    if isinstance(a, LocalBus):
        await a.publish("node-a", {"op": "x"})
        await a.publish("node-b", {"op": "lost"})  # no such node here
        await a.broadcast({"op": "y"})
        assert got["node-a"] == [{"op": "x"}, {"op": "y"}]
        return
    b = make_bus("node-b")
    await b.start(collect("node-b"))
    await a.publish("node-b", {"op": "to-b"})
    await b.broadcast({"op": "to-all"})
    async with asyncio.timeout(5):
        while len(got["node-a"]) < 1 or len(got["node-b"]) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert got["node-a"] == [{"op": "to-all"}]
    assert sorted(m["op"] for m in got["node-b"]) == ["to-all", "to-b"]
