"""Several `anruf serve` processes sharing one PostgreSQL database and one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa

from signaling.keys import CDRS, DATABASE
from signaling.store.cdrs import CallRecordStore
from signaling.store.database import Database
from signaling.store.schema import calls, live_calls
from tests.conftest import TEST_CODE, TEST_PREFIX
from tests.ports import free_port
from voice.client.client import Phone
from voice.client.signaling import SignalingClient

#: Fast failure detection for tests: a node silent for 2 s is dead.
NODE_SETTINGS = {
    "node_heartbeat": "0.5",
    "node_dead_after": "2",
    "reconnect_grace": "8",
    "relay_workers": "0",
}


class NodeProcess:
    def __init__(
        self,
        name: str,
        tmp_path: Path,
        database_url: str,
        redis_url: str,
        **more: str,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"{name}.log"
        env = dict(os.environ)
        settings = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "data_dir": str(tmp_path / name),
            "database_url": database_url,
            "redis_url": redis_url,
            "node_name": name,
            "test_number_prefix": TEST_PREFIX,
            "test_code": TEST_CODE,
            "media_bind_address": "127.0.0.1",
            **NODE_SETTINGS,
            **more,
        }
        env.update({f"ANRUF_{key.upper()}": value for key, value in settings.items()})
        self._env = env
        self.start()

    def start(self) -> None:
        """Run the node (again: same name, port and data)."""
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "signaling.cli", "serve"],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"node {self.name} exited:\n{self.log.read_text()}")
                try:
                    async with session.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"node {self.name} not ready:\n{self.log.read_text()}")

    async def status(self, path: str) -> int:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as response:
            return response.status

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    async def exited(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.name} still running")
            await asyncio.sleep(0.1)
        return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Cluster:
    def __init__(self, tmp_path: Path, database_url: str, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.redis_url = redis_url
        self.nodes: dict[str, NodeProcess] = {}
        self.phones: list[Phone] = []

    async def start(self, *names: str, **settings: str) -> list[NodeProcess]:
        """Nodes by these names; ``settings`` (ANRUF_* values) apply to each of them."""
        started = [
            NodeProcess(name, self.tmp_path, self.database_url, self.redis_url, **settings)
            for name in names
        ]
        self.nodes.update({node.name: node for node in started})
        await asyncio.gather(*(node.ready() for node in started))
        return started

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values()]

    async def phone(self, number: str, node: NodeProcess, name: str = "phone") -> Phone:
        """A device of ``number`` registered and connected on ``node``, failing over to
        the other nodes as an app behind a load balancer would."""
        client = SignalingClient(node.url)
        try:
            token = (await client.register(number, TEST_CODE, name))["token"]
        finally:
            await client.close()
        others = [url for url in self.urls if url != node.url]
        phone = await Phone.open(node.url, token, servers=[node.url, *others])
        self.phones.append(phone)
        return phone

    @contextlib.asynccontextmanager
    async def server_view(self) -> AsyncIterator[Any]:
        """The shared database, shaped like a test Server for tests/integration/provisioning."""
        db = await Database.open(self.database_url)
        try:
            yield types.SimpleNamespace(app={DATABASE: db, CDRS: CallRecordStore(db)})
        finally:
            await db.close()

    async def records(self) -> list[dict[str, object]]:
        db = await Database.open(self.database_url)
        try:
            async with db.read() as conn:
                rows = await conn.execute(sa.select(calls).order_by(calls.c.invited_at))
                return [dict(row._mapping) for row in rows]
        finally:
            await db.close()

    async def live_calls(self) -> list[str]:
        db = await Database.open(self.database_url)
        try:
            async with db.read() as conn:
                return list(await conn.scalars(sa.select(live_calls.c.call_id)))
        finally:
            await db.close()

    async def close(self) -> None:
        for phone in self.phones:
            await phone.close()
        for node in self.nodes.values():
            node.stop()


__all__ = ["Cluster", "NodeProcess"]
