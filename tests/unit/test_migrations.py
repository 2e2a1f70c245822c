"""The migration list and the check that the schema has every table and column."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from signaling.store.database import Database
from signaling.store.migrations import BASELINE, LATEST, MIGRATIONS, SchemaVersionError


def test_versions_follow_each_other() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(BASELINE + 1, LATEST + 1))
    assert all(m.name for m in MIGRATIONS)


async def test_schema_change_without_migration_is_refused(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'anruf.sqlite3'}"
    db = await Database.open(url)
    try:
        async with db.transaction() as conn:
            # As if schema.py had gained calls.rated_seconds and live_calls with no migration.
            await conn.execute(sa.text("ALTER TABLE calls DROP COLUMN rated_seconds"))
            await conn.execute(sa.text("DROP TABLE live_calls"))
    finally:
        await db.close()
    with pytest.raises(SchemaVersionError) as refused:
        await Database.open(url)
    message = str(refused.value)
    assert "lacks calls.rated_seconds, table live_calls:" in message
    assert "needs a migration" in message
