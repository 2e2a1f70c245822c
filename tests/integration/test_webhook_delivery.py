"""Operator webhooks as an operator sees them: the real server's delivery worker
POSTing to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import sqlalchemy as sa

from signaling.carrier import events, signing
from signaling.carrier.delivery import EventDelivery, backoff
from signaling.config import Config
from signaling.keys import DATABASE, DELIVERY
from signaling.metrics import Metrics
from signaling.store.database import Database
from signaling.store.schema import events as events_table
from tests.conftest import ALICE, BOB, Server, ServerFactory, fresh_postgres
from tests.integration.webhooks import (
    OLD_SECRET,
    SECRET,
    Receiver,
    add_operator,
    add_subscriber,
    append_events,
    sequences_by_key,
    sms_code,
)
from voice.client.signaling import ServerError, SignalingClient

#: Fast retries and polling for tests.
FAST = {
    "webhook_poll_interval": 0.02,
    "webhook_backoff_base": 0.02,
    "webhook_backoff_max": 0.1,
    "webhook_timeout": 2.0,
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


async def stored(server: Server, event_ids: list[str]) -> dict[str, sa.Row[tuple[object, ...]]]:
    async with server.app[DATABASE].read() as conn:
        rows = await conn.execute(
            sa.select(events_table).where(events_table.c.event_id.in_(event_ids))
        )
        return {row.event_id: row for row in rows}


async def settled(
    server: Server, event_ids: list[str], timeout: float = 5.0
) -> dict[str, sa.Row[tuple[object, ...]]]:
    """The rows once none is pending any more: a receiver sees a request before
    the server has recorded its answer."""
    async with asyncio.timeout(timeout):
        while True:
            rows = await stored(server, event_ids)
            if all(row.status != "pending" for row in rows.values()):
                return rows
            await asyncio.sleep(0.01)


async def metric(server: Server, line_start: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


async def test_every_event_arrives_once_signed_with_both_secrets(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    server = await make_server(**FAST)
    db = server.app[DATABASE]
    await add_operator(
        db, "op_one", webhook_url=receiver.url + "/hooks", previous_secret=OLD_SECRET
    )
    ids = await append_events(db, "op_one", ["call-a", "call-b", "call-c"], per_key=5)
    server.app[DELIVERY].notify()

    await receiver.wait_ids(set(ids))
    rows = await settled(server, ids)
    await asyncio.sleep(0.2)  # nothing more arrives
    assert len(receiver.requests) == len(ids)
    for r in receiver.requests:
        envelope = r.envelope
        assert r.path == "/hooks"
        assert r.signature_error == ""
        header = r.headers[signing.SIGNATURE_HEADER]
        assert signing.verify(r.body, header, SECRET, now=time.time())
        assert signing.verify(r.body, header, OLD_SECRET, now=time.time())  # rotation
        assert r.headers["Anruf-Event-Id"] == envelope["id"]
        assert r.headers["Anruf-Event-Type"] == envelope["type"] == "call.ringing"
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["User-Agent"].startswith("Anruf-Webhooks/")
        assert envelope["operator_id"] == "op_one"
        assert r.body == rows[envelope["id"]].body.encode()  # the stored bytes
    assert sequences_by_key(receiver.requests) == {
        key: [1, 2, 3, 4, 5] for key in ("call-a", "call-b", "call-c")
    }
    for row in rows.values():
        assert row.status == "delivered" and row.attempts == 1 and row.delivered_at
        assert row.locked_until is None
    assert await metric(server, 'anruf_webhook_deliveries_total{outcome="delivered"}') == 15
    assert await metric(server, "anruf_webhook_latency_seconds_count") == 15


async def test_notify_delivers_at_once_without_waiting_for_the_poll(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    server = await make_server(webhook_poll_interval=30.0)
    db = server.app[DATABASE]
    await add_operator(db, "op_one", webhook_url=receiver.url)
    await asyncio.sleep(0.1)  # the worker is idle, waiting for its next poll
    started = time.monotonic()
    async with db.transaction() as conn:
        event_id = await events.append(
            conn,
            operator_id="op_one",
            type="call.ended",
            data={"call_id": "call-1", "reason": "completed"},
            ordering_key="call-1",
            now=time.time(),
        )
    server.app[DELIVERY].notify()
    await receiver.wait_ids({event_id}, timeout=2.0)
    assert time.monotonic() - started < 0.5


async def test_failures_are_retried_and_each_key_stays_in_order(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    receiver.fail_first = 15
    server = await make_server(**FAST, webhook_concurrency=3)
    db = server.app[DATABASE]
    await add_operator(db, "op_one", webhook_url=receiver.url)
    keys = [f"call-{n}" for n in range(6)]
    ids = await append_events(db, "op_one", keys, per_key=4)
    server.app[DELIVERY].notify()

    await receiver.wait_ids(set(ids))
    assert len(receiver.requests) >= len(ids) + 15
    # Per key, no event is ever sent before the previous one was accepted:
    # every request of a key, failed ones included, is in sequence order.
    for sequences in sequences_by_key(receiver.requests).values():
        assert sequences == sorted(sequences)
    accepted = sequences_by_key(receiver.accepted())
    assert accepted == {key: [1, 2, 3, 4] for key in keys}
    # A retry is the same event: same id, same bytes.
    by_id: dict[str, set[bytes]] = {}
    for r in receiver.requests:
        by_id.setdefault(r.event_id, set()).add(r.body)
    assert all(len(bodies) == 1 for bodies in by_id.values())
    rows = await settled(server, ids)
    assert all(row.status == "delivered" for row in rows.values())
    assert sum(row.attempts for row in rows.values()) == len(receiver.requests)
    assert await metric(server, 'anruf_webhook_deliveries_total{outcome="failed"}') == 15


async def test_an_event_failing_past_max_age_is_dead_and_unblocks_its_key(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    server = await make_server(**FAST, webhook_max_age=0.5)
    db = server.app[DATABASE]
    await add_operator(db, "op_one", webhook_url=receiver.url)
    doomed, after = await append_events(db, "op_one", ["call-x"], per_key=2)
    receiver.reject.add(doomed)
    server.app[DELIVERY].notify()

    await receiver.wait_ids({after})
    attempts = [r for r in receiver.requests if r.event_id == doomed]
    assert len(attempts) >= 2
    (delivered,) = [r for r in receiver.requests if r.event_id == after]
    assert delivered.at >= attempts[-1].at
    rows = await settled(server, [doomed, after])
    assert rows[doomed].status == "dead"
    assert rows[doomed].attempts == len(attempts)
    assert rows[doomed].last_error.startswith("HTTP 500")
    assert rows[after].status == "delivered"
    assert await metric(server, "anruf_webhook_dead_letters_total") == 1
    await asyncio.sleep(0.2)  # a dead event is not tried again
    assert len([r for r in receiver.requests if r.event_id == doomed]) == len(attempts)


async def test_an_sms_is_retried_only_while_its_code_is_valid(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    server = await make_server(**FAST, code_ttl=0.4)
    db = server.app[DATABASE]
    await add_operator(db, "op_one", webhook_url=receiver.url, sms_url=receiver.url + "/sms")
    (sms,) = await append_events(db, "op_one", [f"sms:{ALICE}"], per_key=1, type="sms.send")
    (call,) = await append_events(db, "op_one", ["call-1"], per_key=1, type="call.ended")
    receiver.reject.update({sms, call})
    server.app[DELIVERY].notify()

    rows = await settled(server, [sms], timeout=3.0)
    assert rows[sms].status == "dead"
    assert (await stored(server, [call]))[call].status == "pending"  # retried for a day


async def test_events_of_an_operator_without_url_stay_for_replay(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    server = await make_server(**FAST)
    db = server.app[DATABASE]
    await add_operator(db, "op_quiet")
    await add_operator(db, "op_loud", webhook_url=receiver.url)
    quiet = await append_events(db, "op_quiet", ["call-q1", "call-q2"], per_key=2)
    loud = await append_events(db, "op_loud", ["call-l"], per_key=1)
    server.app[DELIVERY].notify()

    await receiver.wait_ids(set(loud))
    rows = await settled(server, quiet)
    await asyncio.sleep(0.2)
    assert receiver.ids() == set(loud)
    for row in rows.values():
        assert row.status == "replay_only" and row.attempts == 0
        assert row.last_error == "the operator has no webhook_url"
    async with db.read() as conn:
        replay = await events.list_events(conn, "op_quiet")
    assert [e.event_id for e in replay] == quiet


async def test_sms_send_goes_to_the_sms_url(make_server: ServerFactory, receiver: Receiver) -> None:
    server = await make_server(**FAST)
    db = server.app[DATABASE]
    await add_operator(
        db, "op_one", webhook_url=receiver.url + "/hooks", sms_url=receiver.url + "/sms"
    )
    sms = await append_events(db, "op_one", [f"sms:{ALICE}"], per_key=1, type="sms.send")
    call = await append_events(db, "op_one", ["call-1"], per_key=1, type="call.ended")
    server.app[DELIVERY].notify()

    await receiver.wait_ids(set(sms + call))
    assert receiver.ids("/sms") == set(sms)
    assert receiver.ids("/hooks") == set(call)


async def test_a_verification_code_sent_by_the_operator_registers_a_device(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    # No test numbers: every number gets a real code.
    server = await make_server(sms_sender="carrier", test_number_prefix="", test_code="")
    db = server.app[DATABASE]
    await add_operator(db, "op_one", sms_url=receiver.url + "/sms")
    await add_subscriber(db, ALICE, "op_one")
    client = SignalingClient(server.url)
    try:
        started = await client.request_code(ALICE)
        assert started["number"] == ALICE
        code = await sms_code(receiver, ALICE)
        device = await client.register(ALICE, code, "phone")
        assert device["number"] == ALICE and device["token"]
        # A number no operator provisioned, and no default operator: refused.
        with pytest.raises(ServerError) as refused:
            await client.request_code(BOB)
        assert refused.value.status == 503
        assert refused.value.body["code"] == "code_delivery_failed"
    finally:
        await client.close()
    assert json.loads(receiver.requests[0].body)["ordering_key"] == f"sms:{ALICE}"


async def test_unprovisioned_numbers_use_the_default_operator(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    server = await make_server(
        sms_sender="carrier",
        sms_default_operator="op_default",
        test_number_prefix="",
        test_code="",
    )
    await add_operator(server.app[DATABASE], "op_default", sms_url=receiver.url + "/sms")
    client = SignalingClient(server.url)
    try:
        await client.request_code(BOB)
        code = await sms_code(receiver, BOB)
        assert (await client.register(BOB, code))["number"] == BOB
    finally:
        await client.close()
    assert receiver.requests[0].envelope["operator_id"] == "op_default"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_postgres("anruf_webhooks") as url:
        yield url


async def test_two_nodes_on_postgresql_never_send_one_event_at_once(
    postgres_url: str, receiver: Receiver
) -> None:
    receiver.delay = 0.005
    receiver.fail_first = 6
    config = Config(webhook_concurrency=3).replace(**FAST)
    nodes = [await Database.open(postgres_url) for _ in range(2)]
    metrics = [Metrics(), Metrics()]
    workers = [EventDelivery(db, config, m) for db, m in zip(nodes, metrics, strict=True)]
    try:
        await add_operator(nodes[0], "op_one", webhook_url=receiver.url)
        keys = [f"call-{n}" for n in range(5)]
        ids = await append_events(nodes[0], "op_one", keys, per_key=20)
        for worker in workers:
            await worker.start()
        await receiver.wait_ids(set(ids), timeout=20)
    finally:
        for worker in workers:
            await worker.stop()
        for db in nodes:
            await db.close()
    assert receiver.overlapping == []
    accepted = [r.event_id for r in receiver.accepted()]
    assert sorted(accepted) == sorted(ids)  # each accepted exactly once
    for sequences in sequences_by_key(receiver.requests).values():
        assert sequences == sorted(sequences)
    delivered = [
        m.registry.get_sample_value("anruf_webhook_deliveries_total", {"outcome": "delivered"})
        for m in metrics
    ]
    assert all(delivered) and sum(delivered) == len(ids)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    assert [backoff(n, 1.0, 600.0, 0.0) for n in (1, 2, 3, 10)] == [0.5, 1.0, 2.0, 256.0]
    assert backoff(1, 1.0, 600.0, 0.999) == pytest.approx(1.0, abs=0.001)
    assert backoff(11, 1.0, 600.0, 0.0) == 300.0
    assert backoff(10_000, 1.0, 600.0, 0.5) == 450.0
