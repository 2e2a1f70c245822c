"""Subscriptions as the calls see them: who provisioned a number on which bundle,
where its verification SMS go, and the usage thresholds already raised.

(The operator API's own reads and writes of these tables are OperatorStore's,
signaling/store/operators.py.)"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from signaling.store.database import Connection
from signaling.store.schema import bundles, operators, subscribers, usage_thresholds


async def operator_of(conn: Connection, number: str) -> str | None:
    """The operator that provisioned ``number``, if any."""
    found = await conn.scalar(
        sa.select(subscribers.c.operator_id).where(subscribers.c.number == number)
    )
    return str(found) if found else None


async def sms_url_of(conn: Connection, operator_id: str) -> str:
    """Where the operator's verification SMS go; empty when it has no sms_url."""
    found = await conn.scalar(
        sa.select(operators.c.sms_url).where(operators.c.operator_id == operator_id)
    )
    return str(found or "")


async def subscription(
    conn: Connection, number: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The number's ``subscribers`` row and its bundle's row, as dicts by column
    name; None if no operator provisioned it."""
    row = (
        await conn.execute(
            sa.select(subscribers, bundles)
            .join(bundles, bundles.c.bundle_id == subscribers.c.bundle_id)
            .where(subscribers.c.number == number)
        )
    ).first()
    if row is None:
        return None
    m = row._mapping
    return {c.name: m[c] for c in subscribers.c}, {c.name: m[c] for c in bundles.c}


async def threshold_raised(
    conn: Connection, number: str, period_start: float, percent: int
) -> bool:
    found = await conn.scalar(
        sa.select(sa.func.count()).where(
            usage_thresholds.c.number == number,
            usage_thresholds.c.period_start == period_start,
            usage_thresholds.c.percent == percent,
        )
    )
    return bool(found)


async def add_threshold(
    conn: Connection, number: str, period_start: float, percent: int, now: float
) -> None:
    await conn.execute(
        usage_thresholds.insert().values(
            number=number, period_start=period_start, percent=percent, raised_at=now
        )
    )


__all__ = [
    "add_threshold",
    "operator_of",
    "sms_url_of",
    "subscription",
    "threshold_raised",
]
