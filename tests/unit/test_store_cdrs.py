"""Call detail records: save once, read back, history per number, restarts.

Runs on SQLite files and on the machine's PostgreSQL test database at
127.0.0.1:5432 (tables dropped around each test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling.calls.records import CallRecord
from signaling.store.cdrs import CallRecordStore
from signaling.store.database import Database
from signaling.store.schema import metadata
from tests.conftest import require_postgres

ALICE = "+4917700000001"
BOB = "+4917700000002"
CAROL = "+4917700000003"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'anruf.sqlite3'}"
        return
    url = require_postgres()
    db = await Database.open(url)
    async with db.transaction() as conn:
        await conn.run_sync(metadata.drop_all)
    await db.close()
    yield url
    db = await Database.open(url)
    async with db.transaction() as conn:
        await conn.run_sync(metadata.drop_all)
    await db.close()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await Database.open(db_url)
    yield database
    await database.close()


def record(
    call_id: str,
    caller: str,
    callee: str,
    invited_at: float,
    *,
    answered_after: float | None = None,
    talk: float = 0.0,
    end_reason: str = "hangup",
) -> CallRecord:
    answered_at = None if answered_after is None else invited_at + answered_after
    ended_at = (answered_at + talk) if answered_at is not None else invited_at + 30.0
    return CallRecord(
        call_id=call_id,
        caller=caller,
        callee=callee,
        caller_device="dev_caller",
        callee_device="dev_callee" if answered_at is not None else None,
        invited_at=invited_at,
        ringing_at=invited_at + 0.5,
        answered_at=answered_at,
        ended_at=ended_at,
        end_reason=end_reason,
        end_detail="",
        media={"caller": {"packets": 1500, "loss": 0.01}, "callee": {"packets": 1490}},
    )


async def test_save_and_get(db: Database) -> None:
    store = CallRecordStore(db)
    original = record("call-1", ALICE, BOB, 1000.0, answered_after=5.0, talk=60.0)
    await store.save(original)
    assert await store.get("call-1") == original
    assert await store.get("nope") is None


async def test_save_is_idempotent(db: Database) -> None:
    store = CallRecordStore(db)
    original = record("call-1", ALICE, BOB, 1000.0, answered_after=5.0, talk=60.0)
    await store.save(original)
    await store.save(original)
    await store.save(record("call-1", ALICE, BOB, 1000.0, end_reason="failed"))
    assert await store.get("call-1") == original
    assert len(await store.history(ALICE)) == 1


async def test_history_directions_and_missed(db: Database) -> None:
    store = CallRecordStore(db)
    await store.save(record("c1", ALICE, BOB, 1000.0, answered_after=3.0, talk=42.0))
    await store.save(record("c2", BOB, ALICE, 2000.0, end_reason="no_answer"))
    await store.save(record("c3", BOB, ALICE, 3000.0, end_reason="declined"))
    await store.save(record("c4", ALICE, CAROL, 4000.0, end_reason="no_answer"))
    await store.save(record("c5", BOB, CAROL, 5000.0))  # not Alice's

    history = await store.history(ALICE)
    assert [h["call_id"] for h in history] == ["c4", "c3", "c2", "c1"]
    by_id = {h["call_id"]: h for h in history}
    assert by_id["c1"] == {
        "call_id": "c1",
        "direction": "outgoing",
        "peer": BOB,
        "invited_at": 1000.0,
        "answered_at": 1003.0,
        "ended_at": 1045.0,
        "duration": 42.0,
        "end_reason": "hangup",
        "end_detail": "",
        "missed": False,
    }
    assert by_id["c2"]["direction"] == "incoming" and by_id["c2"]["peer"] == BOB
    assert by_id["c2"]["missed"] is True
    assert by_id["c3"]["missed"] is False  # declined is not missed
    assert by_id["c4"]["missed"] is False  # an unanswered outgoing call is not missed
    bob = {h["call_id"]: h for h in await store.history(BOB)}
    assert bob["c1"]["direction"] == "incoming" and bob["c1"]["missed"] is False
    assert bob["c2"]["direction"] == "outgoing" and bob["c2"]["missed"] is False


async def test_history_pages(db: Database) -> None:
    store = CallRecordStore(db)
    for i in range(10):
        caller, callee = (ALICE, BOB) if i % 2 else (BOB, ALICE)
        await store.save(record(f"c{i}", caller, callee, 1000.0 + i))
    first = await store.history(ALICE, limit=4)
    assert [h["call_id"] for h in first] == ["c9", "c8", "c7", "c6"]
    second = await store.history(ALICE, limit=4, before=first[-1]["invited_at"])
    assert [h["call_id"] for h in second] == ["c5", "c4", "c3", "c2"]
    third = await store.history(ALICE, limit=4, before=second[-1]["invited_at"])
    assert [h["call_id"] for h in third] == ["c1", "c0"]


async def test_call_to_self_listed_once(db: Database) -> None:
    store = CallRecordStore(db)
    await store.save(record("self", ALICE, ALICE, 1000.0))
    assert [h["call_id"] for h in await store.history(ALICE)] == ["self"]


async def test_records_survive_restart(db_url: str) -> None:
    db = await Database.open(db_url)
    await CallRecordStore(db).save(record("c1", ALICE, BOB, 1000.0, end_reason="unavailable"))
    await db.close()
    db = await Database.open(db_url)
    try:
        history = await CallRecordStore(db).history(BOB)
        assert [(h["call_id"], h["missed"]) for h in history] == [("c1", True)]
    finally:
        await db.close()
