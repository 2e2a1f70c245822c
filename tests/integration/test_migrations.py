"""Schema migrations on real SQLite and PostgreSQL databases.

Earlier versions come from tests/fixtures/schema/ (the CREATE statements of
schema.py at the commits that made them; see make_schema_fixtures.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from signaling.carrier.policy import bundle_from_row
from signaling.identity.codes import hash_token
from signaling.store.database import Database
from signaling.store.migrations import LATEST, MIGRATIONS, SchemaVersionError, schema_migrations
from signaling.store.schema import bundles, metadata
from tests.conftest import ALICE, BOB, ServerFactory, fresh_postgres

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "schema"
OLD_VERSIONS = sorted(int(path.name[1:].split(".")[0]) for path in FIXTURES.glob("v*.sqlite.sql"))
OLD_TOKEN = "token-of-a-device-registered-before-the-upgrade"


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a database that does not exist yet or is empty."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'upgraded.sqlite3'}"
    else:
        async with fresh_postgres("anruf_migrations") as postgres_url:
            yield postgres_url


@contextlib.asynccontextmanager
async def raw_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine without the store's migrations, as an older release would have had."""
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def make_old_database(url: str, version: int) -> None:
    """The empty schema of ``version`` with a device of ALICE and one call to BOB in it."""
    async with raw_engine(url) as engine, engine.begin() as conn:
        sql = (FIXTURES / f"v{version}.{conn.dialect.name}.sql").read_text()
        lines = [line for line in sql.splitlines() if not line.startswith("--")]
        for statement in "\n".join(lines).split(";"):
            if statement.strip():
                await conn.exec_driver_sql(statement)
        # Only columns of version 1, which every later version has as well.
        await conn.execute(
            sa.text(
                "INSERT INTO devices (device_id, number, name, token_hash, created_at) "
                "VALUES ('d-old', :number, 'old phone', :token_hash, 1000.0)"
            ),
            {"number": ALICE, "token_hash": hash_token(OLD_TOKEN)},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO calls (call_id, caller, callee, caller_device, callee_device, "
                "invited_at, ringing_at, answered_at, ended_at, end_reason, media) VALUES "
                "('c-old', :caller, :callee, 'd-old', 'd-bob', 1000.0, 1000.5, 1003.0, 1063.0, "
                "'hangup', '{}')"
            ),
            {"caller": ALICE, "callee": BOB},
        )


async def describe(url: str) -> dict[str, Any]:
    """Tables, columns (type, nullability, default), keys and indexes, as reflected."""

    def reflect(conn: sa.Connection) -> dict[str, Any]:
        inspector = sa.inspect(conn)
        return {
            table: {
                "columns": {
                    column["name"]: (str(column["type"]), column["nullable"], column["default"])
                    for column in inspector.get_columns(table)
                },
                "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                "unique": sorted(
                    tuple(unique["column_names"])
                    for unique in inspector.get_unique_constraints(table)
                ),
                "indexes": sorted(
                    (index["name"], tuple(index["column_names"]), bool(index["unique"]))
                    for index in inspector.get_indexes(table)
                    if not index.get("duplicates_constraint")  # PostgreSQL's for UNIQUE
                ),
            }
            for table in sorted(inspector.get_table_names())
        }

    async with raw_engine(url) as engine, engine.connect() as conn:
        return await conn.run_sync(reflect)


async def applied(url: str) -> list[int]:
    async with raw_engine(url) as engine, engine.connect() as conn:
        query = sa.select(schema_migrations.c.version).order_by(schema_migrations.c.version)
        return list((await conn.execute(query)).scalars())


def same_type(reflected: str, declared: sa.types.TypeEngine[Any], dialect: str) -> bool:
    if isinstance(declared, sa.Float) and dialect == "postgresql":
        return reflected == "DOUBLE PRECISION"  # PostgreSQL's FLOAT is double precision
    if isinstance(declared, sa.JSON) and dialect == "sqlite":
        return reflected == "JSON"
    compiler = postgresql.dialect() if dialect == "postgresql" else sqlite.dialect()  # type: ignore[no-untyped-call]
    return reflected == declared.compile(dialect=compiler)


async def test_empty_database_gets_the_latest_schema(url: str) -> None:
    db = await Database.open(url)
    await db.close()
    assert await applied(url) == [LATEST]

    schema = await describe(url)
    dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
    assert set(schema) == {table.name for table in metadata.sorted_tables}
    for table in metadata.sorted_tables:
        found = schema[table.name]
        assert list(found["columns"]) == [column.name for column in table.columns]
        for column in table.columns:
            kind, nullable, _ = found["columns"][column.name]
            assert same_type(kind, column.type, dialect), (table.name, column.name, kind)
            assert nullable == column.nullable, (table.name, column.name)
        assert found["primary_key"] == [column.name for column in table.primary_key]
        assert found["indexes"] == sorted(
            (index.name, tuple(c.name for c in index.columns), bool(index.unique))
            for index in table.indexes
        )
        declared_unique = [
            tuple(c.name for c in constraint.columns)
            for constraint in table.constraints
            if isinstance(constraint, sa.UniqueConstraint)  # with column-level unique=True
        ]
        assert found["unique"] == sorted(declared_unique)

    # Opening again changes nothing.
    db = await Database.open(url)
    await db.close()
    assert await applied(url) == [LATEST]
    assert await describe(url) == schema


@pytest.mark.parametrize("version", OLD_VERSIONS)
async def test_previous_version_is_upgraded_in_place(
    url: str,
    version: int,
    tmp_path: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await make_old_database(url, version)
    caplog.set_level(logging.INFO, logger="anruf.store")
    db = await Database.open(url)
    await db.close()

    # Recognised as its version, then each later migration once, in order and logged.
    steps = [version] + [m.version for m in MIGRATIONS if m.version > version]
    assert await applied(url) == steps
    logged = [r.getMessage() for r in caplog.records if "schema at version" in r.getMessage()]
    assert [int(message.split()[4].rstrip(":")) for message in logged] == steps

    # Exactly the schema of a database created by this release.
    if url.startswith("sqlite"):
        fresh_url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.sqlite3'}"
        fresh = await Database.open(fresh_url)
        await fresh.close()
        assert await describe(url) == await describe(fresh_url)
    else:
        async with fresh_postgres("anruf_migrations") as fresh_url:
            fresh = await Database.open(fresh_url)
            await fresh.close()
            assert await describe(url) == await describe(fresh_url)

    # The rows survive; the columns they lacked have their defaults.
    async with raw_engine(url) as engine, engine.connect() as conn:
        device = (await conn.execute(sa.text("SELECT number, name FROM devices"))).one()
        assert tuple(device) == (ALICE, "old phone")
        call = (
            await conn.execute(
                sa.text(
                    "SELECT caller, callee, operator_id, bundle_id, kind, billable, rated_seconds "
                    "FROM calls"
                )
            )
        ).one()
        assert tuple(call) == (ALICE, BOB, None, None, "app", False, 0)

    # A server on the upgraded database: the old device still signs in and sees its
    # call, and a new device registers through the API.
    server = await make_server(database_url=url)
    async with aiohttp.ClientSession(server.url) as http:
        response = await http.get("/v1/calls", headers={"Authorization": f"Bearer {OLD_TOKEN}"})
        assert response.status == 200, await response.text()
        calls = (await response.json())["calls"]
        assert [(c["call_id"], c["direction"], c["peer"], c["duration"]) for c in calls] == [
            ("c-old", "outgoing", BOB, 60.0)
        ]
        token = await server.register(BOB, "new phone")
        response = await http.get("/v1/calls", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200, await response.text()
        calls = (await response.json())["calls"]
        assert [(c["call_id"], c["direction"], c["peer"]) for c in calls] == [
            ("c-old", "incoming", ALICE)
        ]


async def test_bundles_of_version_3_keep_their_terms_and_get_no_guards(url: str) -> None:
    """Migration 4: bundles gain the toll-fraud guards, off for existing ones."""
    await make_old_database(url, 3)
    async with raw_engine(url) as engine, engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO bundles (bundle_id, operator_id, name, app_calls_included, "
                "phone_minutes, increment_first, increment_next, created_at, updated_at) "
                "VALUES ('b-old', 'op-old', 'Talk 100', true, 100, 60, 60, 1000.0, 1000.0)"
            )
        )
    db = await Database.open(url)
    try:
        async with db.read() as conn:
            row = (await conn.execute(sa.select(bundles))).one()._mapping
        bundle = bundle_from_row(row)
    finally:
        await db.close()
    assert await applied(url) == [3, 4]
    assert (bundle.bundle_id, bundle.phone_minutes, bundle.increment.first) == ("b-old", 100, 60)
    assert bundle.allowed_destinations == ()  # any destination
    assert bundle.max_phone_calls_per_hour is None and bundle.max_phone_minutes_per_hour is None


async def test_newer_database_is_refused(url: str) -> None:
    db = await Database.open(url)
    await db.close()
    async with raw_engine(url) as engine, engine.begin() as conn:
        await conn.execute(
            schema_migrations.insert().values(
                version=LATEST + 1, name="from a newer release", applied_at=2000.0
            )
        )
    with pytest.raises(SchemaVersionError) as refused:
        await Database.open(url)
    message = str(refused.value)
    assert f"version {LATEST + 1}, newer than this Anruf" in message
    assert f"up to {LATEST}" in message
    assert await applied(url) == [LATEST, LATEST + 1]


@pytest.mark.parametrize("start", ["empty", "version 1"])
async def test_nodes_starting_together_migrate_once(url: str, start: str) -> None:
    if start == "version 1":
        await make_old_database(url, 1)
    dbs = await asyncio.gather(*(Database.open(url) for _ in range(4)))
    for db in dbs:
        await db.close()
    expected = [LATEST] if start == "empty" else [1, *(m.version for m in MIGRATIONS)]
    assert await applied(url) == expected


async def anruf(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signaling.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_upgrade_from_the_command_line(url: str) -> None:
    await make_old_database(url, 1)
    code, out, err = await anruf("db", "upgrade", "--database-url", url)
    assert code == 0, err
    assert out == f"Database schema at version {LATEST}.\n"
    assert "schema at version 2: carrier" in err  # each step is logged
    assert await applied(url) == [1, *(m.version for m in MIGRATIONS)]

    async with raw_engine(url) as engine, engine.begin() as conn:
        await conn.execute(
            schema_migrations.insert().values(version=LATEST + 1, name="newer", applied_at=0.0)
        )
    code, out, err = await anruf("db", "upgrade", "--database-url", url)
    assert code == 1
    assert err.startswith(f"anruf: the database schema is version {LATEST + 1}, newer than")
