"""The outbox's statements: leases on due events, outcomes under a lease, release."""

from __future__ import annotations

from signaling.carrier import events
from signaling.store import outbox
from signaling.store.database import Database

NOW = 1_700_000_000.0
OPERATOR = "op_test"
KEY = "call-1"


async def append(db: Database, key: str = KEY, count: int = 1) -> None:
    async with db.transaction() as conn:
        for _ in range(count):
            await events.append(
                conn,
                operator_id=OPERATOR,
                type="call.started",
                data={"call_id": key},
                ordering_key=key,
                now=NOW,
            )


async def test_a_lease_takes_the_due_head_and_the_run_behind_it_once(db: Database) -> None:
    await append(db, count=3)
    await append(db, key="call-2")
    async with db.transaction() as conn:
        due = await outbox.due(conn, NOW, 10)
        # Only the heads of their keys are due: the rest wait behind them.
        assert len(due) == 2
        leased = await outbox.lease(conn, NOW, NOW + 20, 16, keys=[(OPERATOR, KEY)])
    assert [(row["ordering_key"], row["sequence"]) for row in leased] == [
        (KEY, 1),
        (KEY, 2),
        (KEY, 3),
    ]
    assert leased[0]["operator_known"] is None  # no such operator (yet)
    async with db.transaction() as conn:
        # A second worker at the same moment finds the key taken.
        assert await outbox.lease(conn, NOW, NOW + 20, 16, keys=[(OPERATOR, KEY)]) == []
        assert len(await outbox.due(conn, NOW, 10)) == 1  # call-2 only
        # Once the lease lapses, the head is due again.
        assert len(await outbox.due(conn, NOW + 21, 10)) == 2


async def test_outcomes_hold_only_under_the_lease_and_release_frees_events(db: Database) -> None:
    await append(db, count=2)
    async with db.transaction() as conn:
        head, second = await outbox.lease(conn, NOW, NOW + 20, 16, keys=[(OPERATOR, KEY)])
        # A worker whose lease was superseded writes nothing.
        assert not await outbox.mark_failed(conn, head["seq"], NOW + 5, error="HTTP 503")
        assert await outbox.mark_failed(
            conn, head["seq"], NOW + 20, error="HTTP 503", next_attempt_at=NOW + 60
        )
        await outbox.release(conn, [(second["seq"], NOW + 20)])
        # The head waits for its retry; the event behind it waits for the head.
        assert await outbox.due(conn, NOW, 10) == []
        assert await outbox.due(conn, NOW + 60, 10) == [head["seq"]]
        await outbox.mark_delivered(conn, [head["seq"]], NOW + 61)
        assert await outbox.due(conn, NOW + 61, 10) == [second["seq"]]
        stored = await events.list_events(conn, OPERATOR)
    assert [(e.status, e.attempts, e.last_error) for e in stored] == [
        (outbox.DELIVERED, 2, ""),
        (outbox.PENDING, 0, ""),
    ]
