"""SIGKILL a loaded `anruf serve` again and again, then audit that nothing it
accepted was lost: registrations, call records, operator events.

Load while the server runs: one client registers new devices one after the other;
``pairs`` pairs of subscribers call each other (real aiortc media, short calls)
and reconnect by themselves whenever the server is gone. After ``load_seconds``
of load, as soon as a call is connected (or 10 s later), the server is killed with
SIGKILL and started again on the same port and data.
Used by tests/integration/test_crash_audit.py (a few cycles) and
bench/crash_cycles.py (ten).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from signaling.store.database import Database
from signaling.store.schema import calls, devices, live_calls
from tests.conftest import TEST_CODE
from tests.integration.cluster import NodeProcess
from tests.integration.webhooks import Receiver, add_operator, add_subscriber
from voice.client.client import Call, Phone
from voice.client.signaling import ServerError, SignalingClient

OPERATOR = "op_audit"
#: Fictional numbers: callers/callees +49 177 0000 03xx, new registrations 04xx-09xx.
PAIR_NUMBER = "+49177000003{:02d}"
NEW_NUMBER = "+4917700{:06d}"
FIRST_NEW = 400
#: All of them verify with the test code (no SMS).
TEST_RANGE = "+4917700"


@dataclass
class Audit:
    cycles: int = 0
    registrations_acknowledged: int = 0
    registrations_lost: int = 0
    calls_placed: int = 0
    calls_in_progress_at_kill: int = 0
    #: Of those, still connected for both parties after the restart.
    calls_kept: int = 0
    calls_without_record: int = 0
    #: Calls in progress at a kill whose record does not say failed/node_lost.
    killed_calls_misrecorded: int = 0
    #: Killed calls whose devices were never told the call ended.
    killed_calls_untold: int = 0
    events_expected: int = 0
    events_lost: int = 0
    live_calls_left: int = 0
    restart_seconds: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return (
            self.registrations_lost
            + self.calls_without_record
            + self.killed_calls_misrecorded
            + self.events_lost
            + self.live_calls_left
        )


class Load:
    def __init__(self, url: str, phones: list[tuple[Phone, Phone]]) -> None:
        self.url = url
        self.phones = phones
        self.registered: list[str] = []  # device ids acknowledged with 201
        self.calls: dict[str, Call] = {}  # every call that got a call id
        self.running = True
        self._next = FIRST_NEW

    async def register(self) -> None:
        client = SignalingClient(self.url)
        try:
            while self.running:
                number = NEW_NUMBER.format(self._next)
                try:
                    device = await client.register(number, TEST_CODE, "audit")
                except (TimeoutError, OSError, aiohttp.ClientError, ServerError) as exc:
                    if isinstance(exc, ServerError) and exc.status == 422:
                        raise
                    await asyncio.sleep(0.05)  # the server is down: nothing was acknowledged
                    continue
                self.registered.append(str(device["device_id"]))
                self._next += 1
        finally:
            await client.close()

    async def converse(self, caller: Phone, callee: Phone, rng: random.Random) -> None:
        while self.running:
            if not (caller.signaling.connected and callee.signaling.connected):
                await asyncio.sleep(0.05)
                continue
            try:
                outgoing = await caller.call(callee.number, source="tone:440")
                incoming = await callee.incoming(timeout=5, source="tone:880")
                await incoming.accept()
                if outgoing.call_id is not None:
                    self.calls[outgoing.call_id] = outgoing
                if await outgoing.connected(timeout=5):
                    await asyncio.sleep(rng.uniform(0.3, 1.5))
                    await outgoing.hangup()
                await outgoing.ended(timeout=15)
                await incoming.ended(timeout=15)
            except (TimeoutError, RuntimeError, OSError, aiohttp.ClientError, ServerError):
                await asyncio.sleep(0.1)  # the server went away mid-call


async def calls_connected(load: Load, within: float) -> list[Call]:
    """The calls connected now, waiting up to ``within`` seconds for one to be: a
    kill is meant to hit live calls, not the pause between two of them."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        connected = [c for c in load.calls.values() if c.state == "connected"]
        if connected or asyncio.get_running_loop().time() >= deadline:
            return connected
        await asyncio.sleep(0.02)


async def run_audit(tmp_path: Path, cycles: int, load_seconds: float, pairs: int = 2) -> Audit:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'anruf.sqlite3'}"
    receiver = await Receiver().start()
    node = NodeProcess(
        "node-a",
        tmp_path,
        database_url,
        "",
        webhook_timeout="1",
        webhook_poll_interval="0.05",
        webhook_backoff_base="0.05",
        webhook_backoff_max="1",
        reconnect_grace="3",
        test_number_prefix=TEST_RANGE,
        # One client stands for many users: the per-source and per-device limits
        # would otherwise be what is measured.
        source_code_attempts_per_hour="1000000",
        source_code_attempt_burst="1000",
        call_attempts_per_minute="6000",
        call_attempt_burst="100",
    )
    audit = Audit(cycles=cycles)
    phones: list[tuple[Phone, Phone]] = []
    try:
        await node.ready()
        db = await Database.open(database_url)
        try:
            await add_operator(db, OPERATOR, webhook_url=receiver.url + "/events")
            for n in range(2 * pairs):
                await add_subscriber(db, PAIR_NUMBER.format(n), OPERATOR)
        finally:
            await db.close()
        for n in range(pairs):
            pair = []
            for number in (PAIR_NUMBER.format(2 * n), PAIR_NUMBER.format(2 * n + 1)):
                client = SignalingClient(node.url)
                token = (await client.register(number, TEST_CODE, "audit"))["token"]
                await client.close()
                pair.append(await Phone.open(node.url, token, servers=[node.url]))
            phones.append((pair[0], pair[1]))
        load = Load(node.url, phones)
        rng = random.Random(7)
        tasks = [asyncio.create_task(load.register())] + [
            asyncio.create_task(load.converse(a, b, rng)) for a, b in phones
        ]
        killed: list[Call] = []
        for _ in range(cycles):
            await asyncio.sleep(load_seconds)
            in_progress = await calls_connected(load, within=10.0)
            node.kill()
            killed.extend(in_progress)
            audit.calls_in_progress_at_kill += len(in_progress)
            started = asyncio.get_running_loop().time()
            node.start()
            await node.ready()
            audit.restart_seconds.append(asyncio.get_running_loop().time() - started)
        await asyncio.sleep(load_seconds)
        load.running = False
        await asyncio.wait(tasks, timeout=20)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        # Let the last calls and the outbox settle, then audit the data the node kept.
        await asyncio.sleep(2)
        node.terminate()
        await node.exited(timeout=30)
        db = await Database.open(database_url)
        try:
            async with db.read() as conn:
                stored_devices = set(await conn.scalars(sa.select(devices.c.device_id)))
                records = {
                    row.call_id: row
                    for row in await conn.execute(
                        sa.select(calls.c.call_id, calls.c.end_reason, calls.c.end_detail)
                    )
                }
                audit.live_calls_left = len(
                    list(await conn.scalars(sa.select(live_calls.c.call_id)))
                )
        finally:
            await db.close()
        audit.registrations_acknowledged = len(load.registered)
        audit.registrations_lost = len(set(load.registered) - stored_devices)
        audit.calls_placed = len(load.calls)
        audit.calls_without_record = len(set(load.calls) - set(records))
        for call in killed:
            record = records.get(str(call.call_id))
            outcome = None if record is None else (record.end_reason, record.end_detail)
            if outcome == ("completed", ""):
                audit.calls_kept += 1  # it went on until a party hung up
            elif outcome != ("failed", "node_lost"):
                audit.killed_calls_misrecorded += 1
            if call.state != "ended":
                audit.killed_calls_untold += 1
        ended_events = {
            r.envelope["ordering_key"]
            for r in receiver.accepted()
            if r.envelope.get("type") == "call.ended"
        }
        audit.events_expected = len(records)
        audit.events_lost = len(set(records) - ended_events)
        return audit
    finally:
        for a, b in phones:
            await a.close()
            await b.close()
        node.stop()
        await receiver.close()
