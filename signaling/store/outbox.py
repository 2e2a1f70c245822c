"""The ``events`` table: the outbox of what operators are told.

The statements only. The envelope, the event types and what a row means are the
carrier's (signaling/carrier/events.py); claiming and delivering rows is
signaling/carrier/delivery.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from signaling.store.database import Connection
from signaling.store.schema import events


async def last_sequence(conn: Connection, operator_id: str, ordering_key: str) -> int:
    """The highest ``sequence`` of an ordering key's events for an operator (0: none)."""
    last = await conn.scalar(
        sa.select(sa.func.max(events.c.sequence)).where(
            events.c.ordering_key == ordering_key, events.c.operator_id == operator_id
        )
    )
    return int(last or 0)


async def insert(
    conn: Connection,
    *,
    event_id: str,
    operator_id: str,
    type: str,
    ordering_key: str,
    sequence: int,
    now: float,
    body: str,
) -> None:
    """A new pending event, due at once."""
    await conn.execute(
        events.insert().values(
            event_id=event_id,
            operator_id=operator_id,
            type=type,
            ordering_key=ordering_key,
            sequence=sequence,
            created_at=now,
            body=body,
            status="pending",
            attempts=0,
            next_attempt_at=now,
        )
    )


async def select(
    conn: Connection,
    operator_id: str,
    *,
    after: int = 0,
    limit: int = 100,
    types: Sequence[str] = (),
    status: str | None = None,
) -> list[Any]:
    """One operator's event rows after the cursor ``after`` (a seq), oldest first."""
    query = (
        sa.select(events)
        .where(events.c.operator_id == operator_id, events.c.seq > after)
        .order_by(events.c.seq)
        .limit(limit)
    )
    if types:
        query = query.where(events.c.type.in_(types))
    if status is not None:
        query = query.where(events.c.status == status)
    return list(await conn.execute(query))


async def alert_raised(
    conn: Connection, operator_id: str, ordering_key: str, rule: str, since: float
) -> bool:
    """Was a fraud.alert for ``rule`` written under the key after ``since``?"""
    found = await conn.scalar(
        sa.select(sa.func.count()).where(
            events.c.operator_id == operator_id,
            events.c.ordering_key == ordering_key,
            events.c.type == "fraud.alert",
            events.c.created_at > since,
            # The body is canonical JSON (sorted keys, no spaces).
            events.c.body.contains(f'"rule":"{rule}"', autoescape=True),
        )
    )
    return bool(found)


__all__ = ["alert_raised", "insert", "last_sequence", "select"]
