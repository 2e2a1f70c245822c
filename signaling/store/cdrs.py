"""Persistence of call detail records and the per-number call history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from signaling.calls.records import MISSED_REASONS, CallRecord
from signaling.store.database import Connection, Database
from signaling.store.schema import calls, live_calls

#: Upper bound on one page of history, whatever the caller asks for.
MAX_HISTORY_LIMIT = 200


async def calls_of_kind_since(conn: Connection, caller: str, kind: str, since: float) -> list[Any]:
    """The caller's records of ``kind`` invited or ended after ``since``:
    (call_id, invited_at, answered_at, ended_at, end_reason) rows."""
    query = sa.select(
        calls.c.call_id,
        calls.c.invited_at,
        calls.c.answered_at,
        calls.c.ended_at,
        calls.c.end_reason,
    ).where(
        calls.c.caller == caller,
        calls.c.kind == kind,
        sa.or_(calls.c.invited_at >= since, calls.c.ended_at > since),
    )
    return list((await conn.execute(query)).all())


async def calls_in_progress_of(conn: Connection, caller: str) -> list[Any]:
    """The caller's calls in progress on any node (``live_calls``):
    (call_id, invited_at, answered_at, rating) rows."""
    query = sa.select(
        live_calls.c.call_id,
        live_calls.c.invited_at,
        live_calls.c.answered_at,
        live_calls.c.rating,
    ).where(live_calls.c.caller == caller)
    return list((await conn.execute(query)).all())


async def usage_totals(
    conn: Connection, caller: str, start: float, end: float
) -> tuple[int, int, int]:
    """The caller's answered calls that ended in [start, end): (billable rated
    seconds, all rated seconds, how many calls)."""
    query = sa.select(
        sa.func.coalesce(
            sa.func.sum(sa.case((calls.c.billable, calls.c.rated_seconds), else_=0)), 0
        ),
        sa.func.coalesce(sa.func.sum(calls.c.rated_seconds), 0),
        sa.func.count(),
    ).where(
        calls.c.caller == caller,
        calls.c.ended_at >= start,
        calls.c.ended_at < end,
        calls.c.answered_at.is_not(None),
    )
    billable, total, count = (await conn.execute(query)).one()
    return int(billable), int(total), int(count)


class CallRecordStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def save(
        self,
        record: CallRecord,
        also: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        """Store ``record``; saving the same call_id again keeps the first copy.

        ``also(conn)`` runs in the same transaction after the insert (the
        operator's events are committed with the record or not at all).
        """
        values = {
            "call_id": record.call_id,
            "caller": record.caller,
            "callee": record.callee,
            "caller_device": record.caller_device,
            "callee_device": record.callee_device,
            "invited_at": record.invited_at,
            "ringing_at": record.ringing_at,
            "answered_at": record.answered_at,
            "ended_at": record.ended_at,
            "end_reason": record.end_reason,
            "end_detail": record.end_detail[:512],
            "media": record.media,
            "operator_id": record.operator_id,
            "bundle_id": record.bundle_id,
            "kind": record.kind,
            "billable": record.billable,
            "rated_seconds": record.rated_seconds,
        }
        dialect = self._db.engine.dialect.name
        stmt: Any
        if dialect == "sqlite":
            stmt = sqlite.insert(calls).values(values).on_conflict_do_nothing()
        elif dialect == "postgresql":
            stmt = postgresql.insert(calls).values(values).on_conflict_do_nothing()
        else:  # pragma: no cover - only SQLite and PostgreSQL are supported
            stmt = None
        async with self._db.transaction() as conn:
            if stmt is not None:
                inserted = (await conn.execute(stmt)).rowcount == 1
            else:
                exists = await conn.scalar(
                    sa.select(calls.c.call_id).where(calls.c.call_id == record.call_id)
                )
                inserted = exists is None
                if inserted:
                    await conn.execute(calls.insert().values(values))
            if inserted and also is not None:
                await also(conn)

    async def get(self, call_id: str) -> CallRecord | None:
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(calls).where(calls.c.call_id == call_id))).first()
        return None if row is None else _record(row._mapping)

    async def history(
        self, number: str, limit: int = 50, before: float | None = None
    ) -> list[dict[str, Any]]:
        """Calls of ``number``, newest first, as seen from that number.

        ``before`` pages backwards: pass the ``invited_at`` of the last call
        of the previous page.
        """
        limit = max(1, min(limit, MAX_HISTORY_LIMIT))
        # Two index-friendly halves instead of one OR over two columns.
        parts: list[Any] = []
        for column in (calls.c.caller, calls.c.callee):
            query = sa.select(calls).where(column == number)
            if before is not None:
                query = query.where(calls.c.invited_at < before)
            parts.append(query.order_by(calls.c.invited_at.desc()).limit(limit))
        async with self._db.read() as conn:
            rows: list[Any] = []
            for part in parts:
                rows.extend(r._mapping for r in await conn.execute(part))
        seen: set[str] = set()
        unique: list[Any] = []
        for row in sorted(rows, key=lambda r: (r["invited_at"], r["call_id"]), reverse=True):
            if row["call_id"] not in seen:  # a call to oneself appears in both halves
                seen.add(row["call_id"])
                unique.append(row)
        return [_history_entry(_record(row), number) for row in unique[:limit]]


def _record(row: Any) -> CallRecord:
    return CallRecord(
        call_id=row["call_id"],
        caller=row["caller"],
        callee=row["callee"],
        caller_device=row["caller_device"],
        callee_device=row["callee_device"],
        invited_at=row["invited_at"],
        ringing_at=row["ringing_at"],
        answered_at=row["answered_at"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"],
        end_detail=row["end_detail"],
        media=dict(row["media"] or {}),
        operator_id=row["operator_id"],
        bundle_id=row["bundle_id"],
        kind=row["kind"],
        billable=bool(row["billable"]),
        rated_seconds=row["rated_seconds"],
    )


def _history_entry(record: CallRecord, number: str) -> dict[str, Any]:
    outgoing = record.caller == number
    return {
        "call_id": record.call_id,
        "direction": "outgoing" if outgoing else "incoming",
        "peer": record.callee if outgoing else record.caller,
        "invited_at": record.invited_at,
        "answered_at": record.answered_at,
        "ended_at": record.ended_at,
        "duration": record.duration,
        "end_reason": record.end_reason,
        "end_detail": record.end_detail,
        "missed": (not outgoing) and record.end_reason in MISSED_REASONS,
    }


__all__ = ["MAX_HISTORY_LIMIT", "CallRecordStore"]
