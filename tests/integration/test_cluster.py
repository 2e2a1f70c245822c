"""Several signaling nodes on one PostgreSQL and one Redis: calls across nodes, a
callee with devices on two nodes, a node that drains (SIGTERM) and one that dies
(SIGKILL). Every node is a real `anruf serve` process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ALICE, BOB, CAROL, fresh_postgres, require_redis
from tests.integration.cluster import Cluster
from tests.integration.provisioning import add_bundle, add_operator, add_subscriber, outbox
from tests.integration.test_calls import RATE, connect, heard
from voice.audio.analysis import tone_fraction

pytestmark = pytest.mark.timeout(180)

#: Redis logical database of these tests (others run their own).
REDIS_DB = 1


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    redis_url = require_redis(REDIS_DB)
    async with fresh_postgres("anruf_cluster") as database_url:
        cluster = Cluster(tmp_path, database_url, redis_url)
        try:
            yield cluster
        finally:
            await cluster.close()


async def test_a_call_across_nodes_carries_audio_both_ways(cluster: Cluster) -> None:
    node_a, node_b = await cluster.start("node-a", "node-b")
    alice = await cluster.phone(ALICE, node_a)
    bob = await cluster.phone(BOB, node_b)
    outgoing, incoming = await connect(alice, bob)
    await asyncio.sleep(3.0)
    await incoming.hangup()  # from node B, about a call node A holds
    assert await outgoing.ended(timeout=5) == "completed"
    assert await incoming.ended(timeout=5) == "completed"
    assert tone_fraction(heard(outgoing), RATE, 880) >= 0.9, "alice did not hear bob"
    assert tone_fraction(heard(incoming), RATE, 440) >= 0.9, "bob did not hear alice"

    # Busy across nodes: carol on node B calls alice while alice talks (held on A).
    outgoing, incoming = await connect(alice, bob)
    carol = await cluster.phone(CAROL, node_b)
    busy = await carol.call(ALICE)
    assert await busy.ended(timeout=5) == "busy"
    await outgoing.hangup()
    assert await incoming.ended(timeout=5) == "completed"

    records = await cluster.records()
    assert [r["end_reason"] for r in records] == ["completed", "completed", "busy"]
    first = records[0]
    assert first["caller"] == ALICE and first["callee"] == BOB
    assert first["callee_device"] == bob.device_id
    duration = float(first["ended_at"]) - float(first["answered_at"])  # type: ignore[arg-type]
    assert 2.5 <= duration <= 5.0
    assert await cluster.live_calls() == []


async def test_a_callee_with_devices_on_two_nodes_first_accept_wins(cluster: Cluster) -> None:
    node_a, node_b = await cluster.start("node-a", "node-b")
    alice = await cluster.phone(ALICE, node_a)
    bob_desk = await cluster.phone(BOB, node_a, "desk")
    bob_mobile = await cluster.phone(BOB, node_b, "mobile")

    outgoing = await alice.call(BOB, source="tone:440")
    on_desk = await bob_desk.incoming(timeout=10)
    on_mobile = await bob_mobile.incoming(timeout=10, source="tone:880")
    assert on_desk.call_id == on_mobile.call_id == outgoing.call_id
    await on_mobile.accept()  # the device on the other node answers first
    assert await outgoing.connected(timeout=10)
    assert await on_desk.ended(timeout=5) == "answered_elsewhere"
    await asyncio.sleep(2.5)
    await outgoing.hangup()
    assert await on_mobile.ended(timeout=5) == "completed"
    assert tone_fraction(heard(outgoing), RATE, 880) >= 0.9
    assert tone_fraction(heard(on_mobile), RATE, 440) >= 0.9

    # A decline from the other node ends the call for the caller and the other device.
    outgoing = await alice.call(BOB)
    on_desk = await bob_desk.incoming(timeout=10)
    on_mobile = await bob_mobile.incoming(timeout=10)
    await on_mobile.reject()
    assert await outgoing.ended(timeout=5) == "declined"
    assert await on_desk.ended(timeout=5) == "declined_elsewhere"

    records = await cluster.records()
    assert [(r["end_reason"], r["callee_device"]) for r in records] == [
        ("completed", bob_mobile.device_id),
        ("declined", None),
    ]


async def test_a_draining_node_sends_its_devices_elsewhere_and_its_calls_go_on(
    cluster: Cluster,
) -> None:
    node_a, node_b = await cluster.start("node-a", "node-b")
    alice = await cluster.phone(ALICE, node_a)
    bob = await cluster.phone(BOB, node_b)
    outgoing, incoming = await connect(alice, bob)  # the call and its media are on node A

    node_a.terminate()
    await alice.closed.wait()  # told to reconnect: alice's app moves to node B
    async with asyncio.timeout(10):
        while not (alice.signaling.connected and alice.signaling.server == node_b.url):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert await node_a.status("/readyz") == 503  # the load balancer sends no one here
    assert node_a.process.poll() is None  # still carrying the call

    incoming.media.mark("drained")  # type: ignore[union-attr]
    outgoing.media.mark("drained")  # type: ignore[union-attr]
    await asyncio.sleep(2.5)
    assert outgoing.state == incoming.state == "connected"
    await outgoing.hangup()  # from node B, routed to node A, which still holds the call
    assert await incoming.ended(timeout=5) == "completed"
    assert await outgoing.ended(timeout=5) == "completed", outgoing.end_detail
    after = tone_fraction(heard(incoming, start="drained"), RATE, 440)
    assert after >= 0.9, "bob stopped hearing alice while her node drained"
    assert tone_fraction(heard(outgoing, start="drained"), RATE, 880) >= 0.9

    assert await node_a.exited(timeout=15) == 0  # it stops once its last call ended
    (record,) = await cluster.records()
    assert record["end_reason"] == "completed"
    assert float(record["ended_at"]) - float(record["answered_at"]) >= 2.5  # type: ignore[arg-type]
    assert await cluster.live_calls() == []

    # New calls work on the node that is left.
    outgoing, incoming = await connect(alice, bob)
    await incoming.hangup()
    assert await outgoing.ended(timeout=5) == "completed"


async def test_a_call_still_up_when_the_drain_time_is_over_ends_on_record(
    cluster: Cluster,
) -> None:
    (node_a,) = await cluster.start("node-a", drain_timeout="2")
    (node_b,) = await cluster.start("node-b")
    alice = await cluster.phone(ALICE, node_a)
    bob = await cluster.phone(BOB, node_a)
    outgoing, incoming = await connect(alice, bob)  # held on node A

    node_a.terminate()
    await asyncio.sleep(1.0)
    assert outgoing.state == incoming.state == "connected"  # within the drain time
    assert await incoming.ended(timeout=10) == "failed"
    assert incoming.end_detail == "server_shutdown"
    assert await outgoing.ended(timeout=5) == "failed"
    assert outgoing.end_detail == "server_shutdown"
    assert alice.signaling.server == bob.signaling.server == node_b.url  # told on node B
    assert await node_a.exited(timeout=15) == 0

    (record,) = await cluster.records()
    assert (record["end_reason"], record["end_detail"]) == ("failed", "server_shutdown")
    talk = float(record["ended_at"]) - float(record["answered_at"])  # type: ignore[arg-type]
    assert 1.5 <= talk <= 4.0  # the drain time, not cut at SIGTERM
    assert await cluster.live_calls() == []


async def test_when_a_node_dies_its_calls_end_on_record_and_devices_move_on(
    cluster: Cluster,
) -> None:
    node_a, node_b = await cluster.start("node-a", "node-b")
    async with cluster.server_view() as view:
        operator_id = await add_operator(view)
        bundle_id = await add_bundle(view, operator_id, increment=(1, 1))
        await add_subscriber(view, ALICE, operator_id, bundle_id)
    alice = await cluster.phone(ALICE, node_a)
    bob = await cluster.phone(BOB, node_b)
    outgoing, incoming = await connect(alice, bob)  # held on node A
    await asyncio.sleep(1.5)

    node_a.kill()
    assert await incoming.ended(timeout=10) == "failed"
    assert incoming.end_detail == "node_lost"
    assert await outgoing.ended(timeout=10) == "failed"  # alice hears it after moving to B
    assert outgoing.end_detail == "node_lost"
    assert alice.signaling.server == node_b.url

    (record,) = await cluster.records()
    assert (record["end_reason"], record["end_detail"]) == ("failed", "node_lost")
    assert record["callee_device"] == bob.device_id
    talk = float(record["ended_at"]) - float(record["answered_at"])  # type: ignore[arg-type]
    assert 1.0 <= talk <= 3.0  # up to the dead node's last heartbeat
    assert record["operator_id"] == operator_id and record["rated_seconds"] == math.ceil(talk)
    assert await cluster.live_calls() == []
    async with cluster.server_view() as view:
        events = [e for e in await outbox(view, operator_id) if e.ordering_key == record["call_id"]]
    assert [(e.type, e.sequence) for e in events] == [
        ("call.started", 1),
        ("call.ringing", 2),
        ("call.answered", 3),
        ("call.ended", 4),  # the operator hears of the call's end once, in order
    ]
    ended = events[-1].envelope()["data"]
    assert (ended["end_reason"], ended["end_detail"]) == ("failed", "node_lost")

    # Both devices call again through the surviving node.
    outgoing, incoming = await connect(alice, bob)
    await incoming.hangup()
    assert await outgoing.ended(timeout=5) == "completed"


async def test_a_node_restarted_after_a_crash_ends_its_earlier_calls(cluster: Cluster) -> None:
    (node_a,) = await cluster.start("node-a")
    alice = await cluster.phone(ALICE, node_a)
    bob = await cluster.phone(BOB, node_a)
    await connect(alice, bob)
    node_a.kill()
    del cluster.nodes["node-a"]
    (again,) = await cluster.start("node-a")  # the same name, a new process
    async with asyncio.timeout(10):
        while not (records := await cluster.records()):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    assert (records[0]["end_reason"], records[0]["end_detail"]) == ("failed", "node_lost")
    assert await cluster.live_calls() == []
    assert again.process.poll() is None
