"""A node's PostgreSQL connections cut under it (a database restart, a firewall):
a moment later health is good, registrations succeed on fresh connections (a
connection idle for IDLE_PING_SECONDS is pinged before use; one that fails in use
makes the pool drop all of them), and every one answered 201 is stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import sqlalchemy as sa

from signaling.keys import DATABASE
from signaling.store.database import IDLE_PING_SECONDS
from signaling.store.schema import devices
from tests.conftest import ALICE, BOB, TEST_CODE, ServerFactory, fresh_postgres


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_postgres("anruf_reconnect") as url:
        yield url


async def cut_connections(url: str) -> int:
    """Terminate every backend on the database of ``url`` but this one."""
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(url.replace("+asyncpg", "").rsplit("/", 1)[0] + "/postgres")
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await admin.close()
    return len(rows)


async def test_connections_cut_while_idle_are_replaced_before_use(
    make_server: ServerFactory, postgres_url: str
) -> None:
    server = await make_server(database_url=postgres_url)
    await server.register(ALICE)
    # Several connections in the pool, all to be cut.
    await asyncio.gather(*(server.register(ALICE, f"phone {i}") for i in range(6)))
    assert await cut_connections(postgres_url) >= 2
    await asyncio.sleep(IDLE_PING_SECONDS + 0.2)

    async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as response:
        assert response.status == 200, await response.text()
    tokens = await asyncio.gather(*(server.register(BOB, f"phone {i}") for i in range(6)))
    assert len(set(tokens)) == 6
    async with server.app[DATABASE].read() as conn:
        stored = await conn.scalar(
            sa.select(sa.func.count()).select_from(devices).where(devices.c.number == BOB)
        )
    assert stored == 6


async def test_without_its_database_a_node_answers_503_and_then_recovers(
    make_server: ServerFactory, postgres_url: str
) -> None:
    server = await make_server(database_url=postgres_url)
    await server.register(ALICE)
    name = postgres_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(
        postgres_url.replace("+asyncpg", "").rsplit("/", 1)[0] + "/postgres"
    )
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await cut_connections(postgres_url)
        async with aiohttp.ClientSession() as http:
            for _ in range(3):  # not just the first request on a cut connection
                async with http.post(
                    server.url + "/v1/devices", json={"number": BOB, "code": TEST_CODE}
                ) as response:
                    assert response.status == 503, await response.text()
                    assert response.headers["Content-Type"].startswith("application/problem+json")
                    assert response.headers["Retry-After"] == "1"
                    assert (await response.json())["code"] == "database_unavailable"
            async with http.get(server.url + "/healthz") as response:
                assert response.status == 503
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    await server.register(BOB)
    async with server.app[DATABASE].read() as conn:
        numbers = (await conn.execute(sa.select(devices.c.number))).scalars().all()
    assert sorted(numbers) == [ALICE, BOB]
