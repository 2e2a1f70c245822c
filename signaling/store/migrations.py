"""Schema migrations: upgrade an existing database in place.

The schema has a version. ``schema_migrations`` holds one row per version the
database went through (with the time it was applied); the highest is the
database's version. :func:`upgrade` brings a database to :data:`LATEST`:

* an empty database gets the current schema (``schema.metadata``) at once and
  is stamped with the latest version;
* a database made before versions were recorded (tables but no
  ``schema_migrations``) is recognised by its tables as version 1, 2 or 3 and
  stamped with that version;
* an older database gets the missing migrations, in order, each in a
  transaction of its own, each logged;
* a database newer than this code is refused (:class:`SchemaVersionError`):
  older code must not write into a schema it does not know.

Every step runs under a lock: on PostgreSQL a transaction-scoped advisory lock,
so nodes starting together migrate one after the other and each migration is
applied once; on SQLite the write lock of ``BEGIN IMMEDIATE``.

Migrations are plain functions over a synchronous SQLAlchemy connection that
use only portable DDL (SQLite and PostgreSQL). They carry frozen copies of the
tables as they were at that version, never the live ones from ``schema``,
since those keep changing. A change to ``schema.py`` needs a new migration
here that brings an existing database to the same shape; the migration tests
compare an upgraded database with a fresh one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from signaling.store.schema import metadata, schema_migrations

log = logging.getLogger("anruf.store")

#: Key of the PostgreSQL advisory lock held while the schema is checked or migrated.
MIGRATION_LOCK_KEY = 0x616E_7275_6600  # "anruf\0"


class SchemaVersionError(RuntimeError):
    """The database cannot be used by this code (newer, or not what it expects)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sa.Connection], None]


# -- Helpers -------------------------------------------------------------------


def _create_tables(conn: sa.Connection, *tables: sa.Table) -> None:
    for table in tables:
        table.create(conn)


def _add_column(conn: sa.Connection, table: str, column: sa.Column[Any]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` (a column needs a default to be NOT NULL)."""
    sa.Table(table, sa.MetaData(), column)  # CreateColumn wants the column in a table
    spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    quoted = conn.dialect.identifier_preparer.quote(table)
    conn.exec_driver_sql(f"ALTER TABLE {quoted} ADD COLUMN {spec}")


# -- The migrations --------------------------------------------------------------
#
# Version 1 is the first release's schema (commit b4a1069): devices,
# verifications, code_sends and calls. Nothing creates it step by step: an empty
# database gets the current schema at once, and an older one already has it.


def _carrier(conn: sa.Connection) -> None:
    """Version 2 (commit 4770c31): the carrier partnership, and rating on calls."""
    md = sa.MetaData()
    _create_tables(
        conn,
        sa.Table(
            "operators",
            md,
            sa.Column("operator_id", sa.String(32), primary_key=True),
            sa.Column("name", sa.String(64), nullable=False),
            sa.Column("webhook_url", sa.String(512), nullable=False, server_default=""),
            sa.Column("sms_url", sa.String(512), nullable=False, server_default=""),
            sa.Column("signing_secret", sa.String(128), nullable=False),
            sa.Column("previous_signing_secret", sa.String(128), nullable=True),
            sa.Column("created_at", sa.Float, nullable=False),
        ),
        sa.Table(
            "operator_keys",
            md,
            sa.Column("key_id", sa.String(32), primary_key=True),
            sa.Column("operator_id", sa.String(32), nullable=False),
            sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("revoked_at", sa.Float, nullable=True),
            sa.Index("ix_operator_keys_operator", "operator_id"),
        ),
        sa.Table(
            "bundles",
            md,
            sa.Column("bundle_id", sa.String(32), primary_key=True),
            sa.Column("operator_id", sa.String(32), nullable=False),
            sa.Column("name", sa.String(64), nullable=False),
            sa.Column("app_calls_included", sa.Boolean, nullable=False),
            sa.Column("phone_minutes", sa.Integer, nullable=False),
            sa.Column("period_seconds", sa.Integer, nullable=True),
            sa.Column("increment_first", sa.Integer, nullable=False),
            sa.Column("increment_next", sa.Integer, nullable=False),
            sa.Column("fair_use_minutes", sa.Integer, nullable=True),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Column("retired_at", sa.Float, nullable=True),
            sa.Index("ix_bundles_operator", "operator_id"),
        ),
        sa.Table(
            "subscribers",
            md,
            sa.Column("number", sa.String(20), primary_key=True),
            sa.Column("operator_id", sa.String(32), nullable=False),
            sa.Column("bundle_id", sa.String(32), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("activated_at", sa.Float, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Index("ix_subscribers_operator", "operator_id"),
        ),
        sa.Table(
            "usage_thresholds",
            md,
            sa.Column("number", sa.String(20), primary_key=True),
            sa.Column("period_start", sa.Float, primary_key=True),
            sa.Column("percent", sa.Integer, primary_key=True),
            sa.Column("raised_at", sa.Float, nullable=False),
        ),
        sa.Table(
            "idempotency_keys",
            md,
            sa.Column("operator_id", sa.String(32), primary_key=True),
            sa.Column("key", sa.String(255), primary_key=True),
            sa.Column("request_hash", sa.String(64), nullable=False),
            sa.Column("status", sa.Integer, nullable=False),
            sa.Column("response", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
        ),
        sa.Table(
            "events",
            md,
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("event_id", sa.String(40), nullable=False, unique=True),
            sa.Column("operator_id", sa.String(32), nullable=False),
            sa.Column("type", sa.String(40), nullable=False),
            sa.Column("ordering_key", sa.String(64), nullable=False),
            sa.Column("sequence", sa.Integer, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("body", sa.Text, nullable=False),
            sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("next_attempt_at", sa.Float, nullable=False),
            sa.Column("locked_until", sa.Float, nullable=True),
            sa.Column("delivered_at", sa.Float, nullable=True),
            sa.Column("last_error", sa.String(512), nullable=False, server_default=""),
            sa.UniqueConstraint(
                "ordering_key", "sequence", "operator_id", name="uq_events_key_sequence"
            ),
            sa.Index("ix_events_operator_seq", "operator_id", "seq"),
            sa.Index("ix_events_due", "status", "next_attempt_at"),
        ),
    )
    # Records written before rating existed: no operator or bundle, an app call,
    # not billable, nothing rated.
    for column in (
        sa.Column("operator_id", sa.String(32), nullable=True),
        sa.Column("bundle_id", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(8), nullable=False, server_default="app"),
        sa.Column("billable", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("rated_seconds", sa.Integer, nullable=False, server_default="0"),
    ):
        _add_column(conn, "calls", column)


def _nodes(conn: sa.Connection) -> None:
    """Version 3 (commit ac50db8): several nodes, and the calls they hold."""
    md = sa.MetaData()
    _create_tables(
        conn,
        sa.Table(
            "nodes",
            md,
            sa.Column("node_id", sa.String(64), primary_key=True),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("started_at", sa.Float, nullable=False),
            sa.Column("heartbeat_at", sa.Float, nullable=False),
            sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("stopped_at", sa.Float, nullable=True),
        ),
        sa.Table(
            "live_calls",
            md,
            sa.Column("call_id", sa.String(64), primary_key=True),
            sa.Column("node_id", sa.String(64), nullable=False),
            sa.Column("caller", sa.String(20), nullable=False),
            sa.Column("callee", sa.String(20), nullable=False),
            sa.Column("caller_device", sa.String(64), nullable=False),
            sa.Column("callee_device", sa.String(64), nullable=True),
            sa.Column("invited_at", sa.Float, nullable=False),
            sa.Column("ringing_at", sa.Float, nullable=True),
            sa.Column("answered_at", sa.Float, nullable=True),
            sa.Column("devices", sa.JSON, nullable=False),
            sa.Column("rating", sa.JSON, nullable=False),
            sa.Index("ix_live_calls_node", "node_id"),
        ),
    )


def _fraud_guards(conn: sa.Connection) -> None:
    """Version 4: toll-fraud guards on bundles (destination allow-list, velocity).

    Existing bundles reach any destination and take the deployment's velocity
    defaults, as before.
    """
    for column in (
        sa.Column("allowed_destinations", sa.String(1024), nullable=False, server_default=""),
        sa.Column("max_phone_calls_per_hour", sa.Integer, nullable=True),
        sa.Column("max_phone_minutes_per_hour", sa.Integer, nullable=True),
    ):
        _add_column(conn, "bundles", column)


#: The first version; a database older than the version table is at least this.
BASELINE = 1

#: Every migration after the baseline, in order. Append only; never edit one
#: that has shipped.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "carrier: operators, bundles, subscribers, events; rating on calls", _carrier),
    Migration(3, "nodes: nodes and live_calls", _nodes),
    Migration(4, "fraud guards: destinations and velocity limits on bundles", _fraud_guards),
)

#: The version this code writes and reads.
LATEST = MIGRATIONS[-1].version if MIGRATIONS else BASELINE

#: How to tell an unversioned database's version: the newest version whose
#: first new table is there. Before the version table, every start created all
#: missing tables and columns in one transaction, so no database is in between.
_UNVERSIONED_MARKERS = ((3, "nodes"), (2, "operators"), (1, "devices"))


# -- The runner ------------------------------------------------------------------


def current_version(conn: sa.Connection) -> int | None:
    """The database's recorded version; None if it has no version table."""
    if not sa.inspect(conn).has_table(schema_migrations.name):
        return None
    version = conn.execute(sa.select(sa.func.max(schema_migrations.c.version))).scalar()
    return int(version) if version is not None else None


def step(conn: sa.Connection) -> int | None:
    """One step towards :data:`LATEST` in the caller's transaction.

    Returns the version reached, or None when the database was already at the
    latest version (after checking it has every table and column of the schema).
    """
    _lock(conn)
    tables = set(sa.inspect(conn).get_table_names())
    if schema_migrations.name not in tables:
        schema_migrations.create(conn)
        if "devices" not in tables:
            metadata.create_all(conn)
            _record(conn, LATEST, "created empty database at the latest schema")
            return LATEST
        found = next(version for version, table in _UNVERSIONED_MARKERS if table in tables)
        _record(conn, found, f"found a database from before versions were recorded (v{found})")
        return found
    version = current_version(conn)
    if version is None:
        raise SchemaVersionError("the database has an empty schema_migrations table")
    if version > LATEST:
        raise SchemaVersionError(
            f"the database schema is version {version}, newer than this Anruf, which knows "
            f"versions up to {LATEST}: run a newer Anruf release against it (or restore "
            "a backup taken before the upgrade)"
        )
    if version == LATEST:
        _check_complete(conn)
        return None
    migration = next(m for m in MIGRATIONS if m.version > version)
    migration.apply(conn)
    _record(conn, migration.version, migration.name)
    return migration.version


async def upgrade(
    transaction: Callable[[], AbstractAsyncContextManager[AsyncConnection]],
) -> int:
    """Migrate to :data:`LATEST`, one transaction per step; returns the version.

    ``transaction`` opens a write transaction that holds the database's write
    lock from its first statement (``BEGIN IMMEDIATE`` on SQLite).
    """
    while True:
        async with transaction() as conn:
            reached = await conn.run_sync(step)
        if reached is None:
            return LATEST


def _lock(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))


def _record(conn: sa.Connection, version: int, name: str) -> None:
    conn.execute(
        schema_migrations.insert().values(version=version, name=name, applied_at=time.time())
    )
    log.info("database schema at version %d: %s", version, name)


def _check_complete(conn: sa.Connection) -> None:
    """Refuse a schema that lacks a table or column of ``schema.py``.

    That happens only when ``schema.py`` changed without a migration.
    """
    inspector = sa.inspect(conn)
    present = {
        table: {column["name"] for column in columns}
        for (_, table), columns in inspector.get_multi_columns().items()
    }
    missing: list[str] = []
    for table in metadata.sorted_tables:
        if table.name not in present:
            missing.append(f"table {table.name}")
            continue
        columns = present[table.name]
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in columns]
    if missing:
        raise SchemaVersionError(
            f"the database is at schema version {LATEST} but lacks {', '.join(missing)}: "
            "a change to signaling/store/schema.py needs a migration in "
            "signaling/store/migrations.py"
        )


__all__ = [
    "BASELINE",
    "LATEST",
    "MIGRATIONS",
    "Migration",
    "SchemaVersionError",
    "current_version",
    "schema_migrations",
    "step",
    "upgrade",
]
