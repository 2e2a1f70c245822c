"""A server killed (SIGKILL) in the middle of delivering events loses none of them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa

from signaling.store.database import Database
from signaling.store.schema import events
from tests.integration.webhooks import (
    Receiver,
    add_operator,
    append_events,
    first_arrivals,
    sequences_by_key,
)
from tests.ports import free_port

ANRUF = [sys.executable, "-m", "signaling.cli"]


async def wait_healthy(url: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


class ServeProcess:
    """`anruf serve` on a data directory, with fast webhook settings."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        port = free_port()
        env = {
            **os.environ,
            "ANRUF_WEBHOOK_TIMEOUT": "1",  # the lease of a claimed event is 2 s
            "ANRUF_WEBHOOK_POLL_INTERVAL": "0.05",
            "ANRUF_WEBHOOK_BACKOFF_BASE": "0.05",
        }
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *ANRUF, "serve", "--port", str(port), "--data-dir", str(self.data_dir),
                "--relay-workers", "0",
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
            )  # fmt: skip
        await wait_healthy(f"http://127.0.0.1:{port}")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """A graceful stop (SIGTERM)."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        await asyncio.wait_for(self.process.wait(), 15)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver(delay=0.3).start()  # a slow operator: requests stay in flight
    yield r
    await r.close()


async def test_sigkill_mid_delivery_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    data_dir = tmp_path / "data"
    url = f"sqlite+aiosqlite:///{data_dir / 'anruf.sqlite3'}"
    db = await Database.open(url)
    await add_operator(db, "op_one", webhook_url=receiver.url + "/hooks")
    ids = await append_events(db, "op_one", ["call-a", "call-b", "call-c"], per_key=8)
    await db.close()

    server = ServeProcess(data_dir, tmp_path / "serve.log")
    try:
        await server.start()
        # Kill it while requests are in flight (the receiver holds each for 0.3 s).
        await receiver.wait_for(lambda r: len(r.requests) >= 7, timeout=20)
        await server.kill()
        before_kill = len(receiver.requests)
        assert before_kill < len(ids)

        await server.start()
        await receiver.wait_ids(set(ids), timeout=30)
    finally:
        await server.stop()

    # Every event arrived; a duplicate is the same event: same id, same bytes.
    bodies: dict[str, set[bytes]] = {}
    for r in receiver.requests:
        assert r.signature_error == ""
        assert r.headers["Anruf-Event-Id"] == r.event_id
        bodies.setdefault(r.event_id, set()).add(r.body)
    assert set(bodies) == set(ids)
    assert all(len(b) == 1 for b in bodies.values())
    duplicates = len(receiver.requests) - len(ids)
    assert duplicates >= 1  # the ones in flight at the kill were sent again
    # Per key, each event first arrived after its predecessor. (A resent one can
    # come after later ones, if the server died before recording their answers.)
    assert sequences_by_key(first_arrivals(receiver.requests)) == {
        key: list(range(1, 9)) for key in ("call-a", "call-b", "call-c")
    }
    db = await Database.open(url)
    try:
        async with db.read() as conn:
            statuses = (await conn.execute(sa.select(events.c.status))).scalars().all()
    finally:
        await db.close()
    assert statuses == ["delivered"] * len(ids)
