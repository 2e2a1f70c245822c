"""The database handle: file creation, SQLite settings, health check, rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from signaling.store.database import Database
from signaling.store.schema import code_sends


async def test_open_creates_directory_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "anruf.sqlite3"
    db = await Database.open(f"sqlite+aiosqlite:///{path}")
    try:
        assert path.exists()
        async with db.read() as conn:
            tables = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
            assert {"devices", "verifications", "code_sends", "calls"} <= tables
            assert (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(sa.text("PRAGMA synchronous"))).scalar() == 2  # FULL
        await db.ping()
    finally:
        await db.close()
    # Opening again keeps the existing schema and data.
    db = await Database.open(f"sqlite+aiosqlite:///{path}")
    await db.close()


async def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'anruf.sqlite3'}")
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute(code_sends.insert().values(number="+4917700000001", sent_at=1.0))
                raise RuntimeError("abort")
        async with db.read() as conn:
            assert (
                await conn.execute(sa.select(sa.func.count()).select_from(code_sends))
            ).scalar() == 0
    finally:
        await db.close()


async def test_in_memory_database() -> None:
    db = await Database.open("sqlite+aiosqlite://")
    try:
        async with db.transaction() as conn:
            await conn.execute(code_sends.insert().values(number="+4917700000001", sent_at=1.0))
        async with db.read() as conn:
            assert (
                await conn.execute(sa.select(sa.func.count()).select_from(code_sends))
            ).scalar() == 1
    finally:
        await db.close()
