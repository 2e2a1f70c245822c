"""The database handle: one async engine, the schema, and write transactions.

SQLite (``sqlite+aiosqlite:///path``) is the embedded default: WAL journal,
``synchronous=FULL`` so a committed transaction survives a power cut, foreign
keys on, and a busy timeout. PostgreSQL (``postgresql+asyncpg://...``) is
used when several nodes share one database.

Every write goes through :meth:`Database.transaction`, which commits before
returning, so anything acknowledged to a client is on disk. SQLite allows one
writer at a time; the transaction lock serialises this process's writers so
they queue in asyncio instead of failing with "database is locked".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from signaling.store import migrations

log = logging.getLogger("anruf.store")

#: Seconds SQLite waits for a lock held by another process before failing.
SQLITE_BUSY_TIMEOUT_MS = 10_000

#: A pooled PostgreSQL connection that sat unused this long is pinged before it is
#: used again (a database restart or a firewall may have cut it). Busy connections
#: are not: a ping on every checkout is a round trip more on every request.
IDLE_PING_SECONDS = 1.0

#: Execution option: begin SQLite transactions with BEGIN IMMEDIATE.
_BEGIN_IMMEDIATE = "anruf_begin_immediate"


class Database:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, pool_size: int = 20, max_overflow: int = 20) -> Database:
        """Connect to ``url`` and bring its schema to the latest version.

        ``pool_size`` and ``max_overflow`` size a PostgreSQL connection pool.

        Raises :class:`~signaling.store.migrations.SchemaVersionError` for a
        database whose schema is newer than this code.
        """
        parsed = make_url(url)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            path = parsed.database or ""
            if path and path != ":memory:" and not path.startswith("file:"):
                await asyncio.to_thread(_prepare_sqlite_file, path)
            else:
                # An in-memory database exists only on its one connection.
                kwargs["poolclass"] = StaticPool
        else:
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow)
        engine = create_async_engine(parsed, **kwargs)
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine)
        else:
            _ping_idle_connections(engine)
        db = cls(engine)
        try:
            await migrations.upgrade(db._schema_transaction)
        except BaseException:
            await engine.dispose()
            raise
        log.info("database open: %s", parsed.render_as_string(hide_password=True))
        return db

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on normal exit, rolled back on error.

        Do not nest: on SQLite the inner call would wait for the outer forever.
        """
        if self.is_sqlite:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _schema_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction that takes SQLite's write lock at once.

        Migrations read the version and then write: with a deferred BEGIN, two
        processes could both read and then fail to write.
        """
        if self.is_sqlite:
            async with self._write_lock, self.engine.connect() as conn:
                await conn.execution_options(**{_BEGIN_IMMEDIATE: True})
                async with conn.begin():
                    yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (WAL lets SQLite readers run beside the writer)."""
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        """Raise if the database cannot answer ``SELECT 1``."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def database_unreachable(exc: BaseException) -> bool:
    """A lost or refused database connection (not a bad statement): worth a retry."""
    if isinstance(exc, sa.exc.DBAPIError):
        return (
            exc.connection_invalidated
            or exc.statement is None  # raised while connecting
            or isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
        )
    return isinstance(exc, ConnectionError | TimeoutError)


def _prepare_sqlite_file(path: str) -> None:
    """Create the file (and its directory) in WAL mode, before the engine connects.

    Switching to WAL does not wait for a busy database: processes that create
    one new file at the same moment could fail there. Here they retry instead;
    a file already in WAL mode stays so, and the engine's own switch is a no-op.
    """
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        conn = sqlite3.connect(file, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
        finally:
            conn.close()
        time.sleep(0.01)


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Like SQLAlchemy's pool_pre_ping, but only for connections idle over
    IDLE_PING_SECONDS. A connection that fails mid-use makes SQLAlchemy
    invalidate the whole pool, so after a restart at most the requests already
    running on old connections fail."""
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in = record.info.get("checked_in")
        if checked_in is None or time.monotonic() - checked_in < IDLE_PING_SECONDS:
            return  # new, or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool drops this connection and checks out another (a new one).
            raise sa.exc.DisconnectionError(str(exc)) from exc


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin
        # (the pysqlite driver otherwise defers BEGIN and breaks atomicity).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_BEGIN_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


#: The transaction (or read connection) a store function works in: opaque outside
#: signaling/store/, handed from ``Database.transaction()`` to the store's functions
#: so one transaction can hold several tables' writes (a CDR and its events).
Connection = AsyncConnection
#: A write broke a unique constraint (e.g. another node took the sequence number).
IntegrityError = sa.exc.IntegrityError

__all__ = ["Connection", "Database", "IntegrityError", "database_unreachable"]
