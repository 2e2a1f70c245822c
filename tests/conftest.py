"""Shared fixtures: a real server on 127.0.0.1 and registered app devices."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from signaling.app import create_app
from signaling.config import Config
from voice.client.client import Phone
from voice.client.signaling import SignalingClient
from voice.ice import restrict_host_addresses

#: Fictional numbers in the test range of every test server.
TEST_PREFIX = "+4917700000"
TEST_CODE = "246810"
ALICE = "+4917700000001"
BOB = "+4917700000002"
CAROL = "+4917700000003"

# All media stays on loopback: our clients and the relay bind and offer 127.0.0.1 only.
restrict_host_addresses(["127.0.0.1"])


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def server_config(tmp_path: Path, **changes: object) -> Config:
    return Config(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        test_number_prefix=TEST_PREFIX,
        test_code=TEST_CODE,
        media_bind_address="127.0.0.1",
        reconnect_grace=1.0,
        media_timeout=10.0,
        relay_workers=0,  # in-process: fast to start; worker tests ask for workers
    ).replace(**changes)


class Server:
    def __init__(self, app: web.Application, runner: web.AppRunner, url: str) -> None:
        self.app = app
        self.runner = runner
        self.url = url
        self.phones: list[Phone] = []

    async def register(self, number: str, name: str = "phone") -> str:
        """A new device for ``number``; returns its credential."""
        client = SignalingClient(self.url)
        try:
            device = await client.register(number, TEST_CODE, name)
        finally:
            await client.close()
        return str(device["token"])

    async def phone(self, number: str, name: str = "phone") -> Phone:
        phone = await Phone.open(self.url, await self.register(number, name))
        self.phones.append(phone)
        return phone


async def start_server(config: Config) -> Server:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Server(app, runner, f"http://127.0.0.1:{port}")


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    servers: list[Server] = []

    async def make(**changes: object) -> Server:
        server = await start_server(server_config(tmp_path, **changes))
        servers.append(server)
        return server

    yield make
    for server in servers:
        for phone in server.phones:
            await phone.close()
        await server.runner.cleanup()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def require_postgres() -> str:
    """The machine's PostgreSQL: absent fails loudly in CI, and skips elsewhere."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432 in CI: {exc}")
        pytest.skip(f"PostgreSQL is not running at 127.0.0.1:5432 ({exc})")
    return POSTGRES_URL


@contextlib.asynccontextmanager
async def fresh_postgres(prefix: str = "anruf_test") -> AsyncIterator[str]:
    """A database of its own on the machine's PostgreSQL, dropped afterwards."""
    import asyncpg

    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin_dsn = POSTGRES_URL.replace("+asyncpg", "").rsplit("/", 1)[0] + "/postgres"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def require_redis(db: int) -> str:
    """The machine's Redis, logical database ``db`` emptied: absent fails loudly in CI.

    Test modules that run at the same time use different ``db`` numbers.
    """
    import redis

    url = f"redis://127.0.0.1:6379/{db}"
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.flushdb()
        client.close()
    except redis.RedisError as exc:
        if in_ci():
            pytest.fail(f"Redis is not reachable at 127.0.0.1:6379 in CI: {exc}")
        pytest.skip(f"Redis is not running at 127.0.0.1:6379 ({exc})")
    return url
