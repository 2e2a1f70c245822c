"""The ``events`` table: the outbox of what operators are told.

The statements only. The envelope, the event types and what a row means are the
carrier's (signaling/carrier/events.py); when to claim, send, retry and give up is
the event delivery's (signaling/carrier/delivery.py, whose docstring explains the
leases these statements take and check).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from signaling.store.database import Connection
from signaling.store.schema import events, operators

# An event's status.
PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
#: The operator has no URL for the event: kept for the event list, never sent.
REPLAY_ONLY = "replay_only"


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
            status=PENDING,
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


# -- delivery ------------------------------------------------------------------------


def _due_condition() -> sa.ColumnElement[bool]:
    """The events that may be claimed at ``:now``: pending, due, not leased, and
    no earlier event of their key pending."""
    now = sa.bindparam("now", type_=sa.Float)
    earlier = events.alias("earlier")
    blocked = (
        sa.select(earlier.c.seq)
        .where(
            earlier.c.operator_id == events.c.operator_id,
            earlier.c.ordering_key == events.c.ordering_key,
            earlier.c.sequence < events.c.sequence,
            earlier.c.status == PENDING,
        )
        .exists()
    )
    return sa.and_(
        events.c.status == PENDING,
        events.c.next_attempt_at <= now,
        sa.or_(events.c.locked_until.is_(None), events.c.locked_until < now),
        ~blocked,
    )


#: Built once (executed with {"now": ...}): building it is costlier than running it.
_DUE = _due_condition()
_KEY = sa.tuple_(events.c.operator_id, events.c.ordering_key)
#: Earliest due first (the order of ix_events_due, so the scan stops at the limit).
_CANDIDATES = (
    sa.select(events.c.seq)
    .where(_DUE)
    .order_by(events.c.next_attempt_at, events.c.seq)
    .limit(sa.bindparam("limit"))
)
_WITH_OPERATOR = sa.select(
    events,
    operators.c.operator_id.label("operator_known"),
    operators.c.webhook_url,
    operators.c.sms_url,
    operators.c.signing_secret,
    operators.c.previous_signing_secret,
).select_from(events.outerjoin(operators, operators.c.operator_id == events.c.operator_id))
_RELEASE = (
    events.update()
    .where(
        events.c.seq == sa.bindparam("b_seq"),
        events.c.status == PENDING,
        events.c.locked_until == sa.bindparam("b_lease"),
    )
    .values(locked_until=None)
)


async def due(conn: Connection, now: float, limit: int) -> list[int]:
    """Up to ``limit`` events (seqs) that may be claimed at ``now``, earliest due first."""
    result = await conn.execute(_CANDIDATES, {"now": now, "limit": limit})
    return list(result.scalars())


async def lease(
    conn: Connection,
    now: float,
    until: float,
    run: int,
    *,
    seqs: Sequence[int] = (),
    keys: Iterable[tuple[str, str]] = (),
) -> list[Mapping[Any, Any]]:
    """Lease (``locked_until = until``) the due heads among ``seqs`` or the keys
    ``keys`` and, behind each, the next events of its key (up to ``run`` in all).
    Returns the events leased with their operator's URLs and secrets
    (``operator_known`` None: no such operator), by key and sequence.

    A conditional UPDATE re-checks that each head is still due, so of several
    workers racing for a key exactly one gets it. Behind a head this worker
    holds, nobody else can lease its key's events (none of them is due), so
    every pending event in the run's range is taken, without gaps.
    """
    which = _KEY.in_(list(keys)) if keys else events.c.seq.in_(list(seqs))
    params = {"now": now}
    heads = await _update_returning(
        conn,
        events.update().where(which, _DUE).values(locked_until=until),
        params,
        events.c.operator_id,
        events.c.ordering_key,
        events.c.sequence,
    )
    if not heads:
        return []
    won = [row.seq for row in heads]
    if run > 1:
        behind = sa.or_(
            *(
                sa.and_(
                    events.c.operator_id == head.operator_id,
                    events.c.ordering_key == head.ordering_key,
                    events.c.sequence > head.sequence,
                    events.c.sequence < head.sequence + run,
                )
                for head in heads
            )
        )
        lease_free = sa.or_(events.c.locked_until.is_(None), events.c.locked_until < now)
        rest = await _update_returning(
            conn,
            events.update()
            .where(events.c.status == PENDING, lease_free, behind)
            .values(locked_until=until),
            params,
        )
        won += [row.seq for row in rest]
    rows = await conn.execute(
        _WITH_OPERATOR.where(events.c.seq.in_(won)).order_by(
            events.c.operator_id, events.c.ordering_key, events.c.sequence
        )
    )
    return [row._mapping for row in rows]


async def _update_returning(
    conn: Connection,
    update: sa.Update,
    params: dict[str, Any],
    *columns: sa.ColumnElement[Any],
) -> list[sa.Row[Any]]:
    """Run a conditional UPDATE; returns seq (and ``columns``) of the rows it changed."""
    returned = (events.c.seq, *columns)
    if conn.dialect.update_returning:
        return list(await conn.execute(update.returning(*returned), params))
    # SQLite before 3.35: find the rows, then one conditional UPDATE each.
    where = update.whereclause
    assert where is not None
    found = list(await conn.execute(sa.select(*returned).where(where), params))
    changed = []
    for row in found:
        result = await conn.execute(update.where(events.c.seq == row.seq), params)
        if result.rowcount == 1:
            changed.append(row)
    return changed


async def mark_delivered(conn: Connection, seqs: Sequence[int], at: float) -> None:
    """Delivered is the truth whoever holds the lease now: one statement for a batch."""
    await conn.execute(
        events.update()
        .where(events.c.seq.in_(list(seqs)), events.c.status == PENDING)
        .values(
            status=DELIVERED,
            delivered_at=at,
            attempts=events.c.attempts + 1,
            locked_until=None,
            last_error="",
        )
    )


async def mark_failed(
    conn: Connection,
    seq: int,
    lease: float,
    *,
    error: str,
    status: str | None = None,
    attempted: bool = True,
    next_attempt_at: float | None = None,
) -> bool:
    """Record an attempt that did not deliver, if this lease still holds the event:
    the lease cleared, ``error`` kept, the attempt counted (``attempted``), and a
    new ``status`` or retry time; False when another worker has it now."""
    values: dict[str, Any] = {"locked_until": None, "last_error": error}
    if status is not None:
        values["status"] = status
    if attempted:
        values["attempts"] = events.c.attempts + 1
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    updated = await conn.execute(
        events.update()
        .where(events.c.seq == seq, events.c.status == PENDING, events.c.locked_until == lease)
        .values(**values)
    )
    return bool(updated.rowcount == 1)


async def release(conn: Connection, leases: Iterable[tuple[int, float]]) -> None:
    """Clear these (seq, lease) leases where they still hold: the events are due
    again for any worker."""
    params = [{"b_seq": seq, "b_lease": until} for seq, until in leases]
    if params:
        await conn.execute(_RELEASE, params)


# -- reads -----------------------------------------------------------------------------


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


__all__ = [
    "DEAD",
    "DELIVERED",
    "PENDING",
    "REPLAY_ONLY",
    "alert_raised",
    "due",
    "insert",
    "last_sequence",
    "lease",
    "mark_delivered",
    "mark_failed",
    "release",
    "select",
]
