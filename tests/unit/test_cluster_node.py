"""Node liveness on a real database: heartbeats, dead nodes, who ends their calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling.calls.live import LiveCall
from signaling.cluster.node import Node
from signaling.store.database import Database
from signaling.store.live_calls import LiveCalls
from tests.conftest import ALICE, BOB


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'anruf.sqlite3'}")
    yield database
    await database.close()


def node(db: Database, clock: Clock, name: str) -> tuple[Node, list[tuple[str, float]]]:
    ended: list[tuple[str, float]] = []
    forgotten: list[str] = []

    async def end_calls(node_id: str, last_seen: float) -> None:
        ended.append((node_id, last_seen))

    async def forget(node_id: str) -> None:
        forgotten.append(node_id)

    n = Node(db, name=name, heartbeat=1.0, dead_after=5.0, clock=clock)
    n.on_dead(end_calls, forget)
    return n, ended


def live_call(call_id: str, node_id: str) -> LiveCall:
    return LiveCall(
        call_id=call_id,
        node_id=node_id,
        caller=ALICE,
        callee=BOB,
        caller_device="dev_a",
        callee_device=None,
        invited_at=1.0,
        ringing_at=2.0,
        answered_at=None,
        devices=("dev_a", "dev_b"),
        rating={},
    )


async def test_a_silent_node_is_dead_and_one_survivor_ends_its_calls(db: Database) -> None:
    clock = Clock()
    a, ended_by_a = node(db, clock, "node-a")
    b, ended_by_b = node(db, clock, "node-b")
    c, _ = node(db, clock, "node-c")
    await a.start()
    await b.start()
    await c.start()
    await LiveCalls(db).ringing(live_call("call_1", c.node_id))
    last_seen = clock.now
    await a.beat()
    assert a.alive(c.node_id) and a.alive("a-node-that-started-since")

    for _ in range(6):  # node-c stops beating; the others go on
        clock.now += 1
        await b.beat()
        await a.beat()
    assert not a.alive(c.node_id) and not b.alive(c.node_id)
    assert ended_by_a == [(c.node_id, last_seen)]  # the node with the smallest id
    assert ended_by_b == []

    # Ended calls are gone from live_calls; here nothing removed it, so it is retried.
    await a.beat()
    assert ended_by_a == [(c.node_id, last_seen)] * 2


async def test_a_node_restarted_under_its_name_ends_its_earlier_calls_at_once(
    db: Database,
) -> None:
    clock = Clock()
    first, _ = node(db, clock, "node-a")
    await first.start()
    await LiveCalls(db).ringing(live_call("call_1", first.node_id))
    clock.now += 1  # killed; a new process starts a second later
    again, ended = node(db, clock, "node-a")
    await again.start()
    assert ended == [(first.node_id, clock.now - 1)]
    assert not again.alive(first.node_id)


async def test_a_node_that_stopped_cleanly_is_not_alive(db: Database) -> None:
    clock = Clock()
    a, _ = node(db, clock, "node-a")
    b, ended = node(db, clock, "node-b")
    await a.start()
    await b.start()
    await b.stop()
    await a.beat()
    assert not a.alive(b.node_id)
    assert ended == []  # it had no calls


async def test_a_node_declared_dead_stops_itself(db: Database) -> None:
    clock = Clock()
    a, _ = node(db, clock, "node-a")
    b, _ = node(db, clock, "node-b")
    stopped: list[str] = []
    b.on_fenced(lambda: stopped.append(b.node_id))
    await a.start()
    await b.start()
    clock.now += 6  # node-b stalled (a long pause) while node-a went on
    await a.beat()
    assert not a.alive(b.node_id)
    await b.beat()  # it wakes up to find itself declared dead
    assert b.fenced and stopped == [b.node_id]
