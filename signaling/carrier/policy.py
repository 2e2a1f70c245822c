"""Carrier policy at call setup and end: who may call, for how long, and what it costs.

CarrierPolicy reads a number's subscription (operator, bundle, status), works
out the usage of the current period from the call records, decides at
invite time with `signaling.carrier.rating.authorize`, and at the end rates
the call and writes the operator's events in the same transaction as the
call record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from signaling.carrier.rating import Bundle, Increment, Usage, period_bounds
from signaling.store.database import Database
from signaling.store.schema import bundles, calls, subscribers

__all__ = ["CarrierPolicy", "Subscription", "UsageReport"]


@dataclass(frozen=True)
class Subscription:
    number: str
    operator_id: str
    bundle: Bundle
    status: str  # "active" or "suspended"
    activated_at: float

    @property
    def suspended(self) -> bool:
        return self.status != "active"


@dataclass(frozen=True)
class UsageReport:
    number: str
    bundle_id: str
    period_start: float
    period_end: float
    usage: Usage
    phone_minutes: int
    fair_use_minutes: int | None
    calls: int

    @property
    def billable_seconds_left(self) -> int:
        return max(0, self.phone_minutes * 60 - self.usage.billable_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "bundle_id": self.bundle_id,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "minutes_included": self.phone_minutes,
            "minutes_used": round(self.usage.billable_seconds / 60, 2),
            "minutes_left": round(self.billable_seconds_left / 60, 2),
            "seconds_used": self.usage.billable_seconds,
            "seconds_left": self.billable_seconds_left,
            "talk_seconds_all_calls": self.usage.total_seconds,
            "fair_use_minutes": self.fair_use_minutes,
            "calls": self.calls,
        }


def bundle_from_row(row: Any) -> Bundle:
    return Bundle(
        bundle_id=row["bundle_id"],
        app_calls_included=bool(row["app_calls_included"]),
        phone_minutes=row["phone_minutes"],
        increment=Increment(row["increment_first"], row["increment_next"]),
        period_seconds=row["period_seconds"],
        fair_use_minutes=row["fair_use_minutes"],
    )


class CarrierPolicy:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def subscription(
        self, number: str, conn: AsyncConnection | None = None
    ) -> Subscription | None:
        """The number's subscription, or None if no operator provisioned it."""
        query = (
            sa.select(subscribers, bundles)
            .join(bundles, bundles.c.bundle_id == subscribers.c.bundle_id)
            .where(subscribers.c.number == number)
        )
        if conn is None:
            async with self._db.read() as reader:
                row = (await reader.execute(query)).first()
        else:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        m = row._mapping
        return Subscription(
            number=number,
            operator_id=m[subscribers.c.operator_id],
            bundle=bundle_from_row(
                {c.name: m[c] for c in bundles.c}  # bundle columns by name
            ),
            status=m[subscribers.c.status],
            activated_at=m[subscribers.c.activated_at],
        )

    async def usage(
        self,
        subscription: Subscription,
        now: float | None = None,
        conn: AsyncConnection | None = None,
    ) -> UsageReport:
        """Usage of the subscription's current period, from the call records."""
        now = self._clock() if now is None else now
        bundle = subscription.bundle
        start, end = period_bounds(subscription.activated_at, now, bundle.period_seconds)
        query = sa.select(
            sa.func.coalesce(
                sa.func.sum(sa.case((calls.c.billable, calls.c.rated_seconds), else_=0)), 0
            ),
            sa.func.coalesce(sa.func.sum(calls.c.rated_seconds), 0),
            sa.func.count(),
        ).where(
            calls.c.caller == subscription.number,
            calls.c.ended_at >= start,
            calls.c.ended_at < end,
            calls.c.answered_at.is_not(None),
        )
        if conn is None:
            async with self._db.read() as reader:
                billable, total, count = (await reader.execute(query)).one()
        else:
            billable, total, count = (await conn.execute(query)).one()
        return UsageReport(
            number=subscription.number,
            bundle_id=bundle.bundle_id,
            period_start=start,
            period_end=end,
            usage=Usage(int(billable), int(total)),
            phone_minutes=bundle.phone_minutes,
            fair_use_minutes=bundle.fair_use_minutes,
            calls=int(count),
        )
