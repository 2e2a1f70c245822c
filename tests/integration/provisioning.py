"""Operators, bundles and subscribers written straight into a server's database.

For tests of what the call policy and the event outbox do with them; the
operator API that provisions them in production has tests of its own.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import sqlalchemy as sa

from signaling.calls.records import CallRecord
from signaling.carrier.events import StoredEvent
from signaling.keys import CDRS, DATABASE
from signaling.store.schema import bundles, events, operators, subscribers
from tests.conftest import Server


async def add_operator(server: Server, name: str = "Netz Eins", **fields: Any) -> str:
    operator_id = "op_" + secrets.token_hex(6)
    async with server.app[DATABASE].transaction() as conn:
        await conn.execute(
            operators.insert().values(
                operator_id=operator_id,
                name=name,
                signing_secret=secrets.token_hex(32),
                created_at=time.time(),
                **fields,
            )
        )
    return operator_id


async def add_bundle(
    server: Server,
    operator_id: str,
    *,
    app_calls_included: bool = True,
    phone_minutes: int = 100,
    increment: tuple[int, int] = (60, 60),
    period_seconds: int | None = None,
    fair_use_minutes: int | None = None,
) -> str:
    bundle_id = "bd_" + secrets.token_hex(6)
    now = time.time()
    async with server.app[DATABASE].transaction() as conn:
        await conn.execute(
            bundles.insert().values(
                bundle_id=bundle_id,
                operator_id=operator_id,
                name="Talk 100",
                app_calls_included=app_calls_included,
                phone_minutes=phone_minutes,
                period_seconds=period_seconds,
                increment_first=increment[0],
                increment_next=increment[1],
                fair_use_minutes=fair_use_minutes,
                created_at=now,
                updated_at=now,
            )
        )
    return bundle_id


async def add_subscriber(
    server: Server,
    number: str,
    operator_id: str,
    bundle_id: str,
    *,
    status: str = "active",
    activated_at: float | None = None,
) -> None:
    now = time.time()
    async with server.app[DATABASE].transaction() as conn:
        await conn.execute(
            subscribers.insert().values(
                number=number,
                operator_id=operator_id,
                bundle_id=bundle_id,
                status=status,
                # Active for an hour already: earlier calls fall in this period.
                activated_at=now - 3600 if activated_at is None else activated_at,
                created_at=now,
                updated_at=now,
            )
        )


async def add_past_call(
    server: Server, caller: str, callee: str, rated_seconds: int, *, billable: bool = True
) -> None:
    """A call earlier in this period that used ``rated_seconds`` of the bundle."""
    now = time.time()
    record = CallRecord(
        call_id=secrets.token_hex(16),
        caller=caller,
        callee=callee,
        caller_device="earlier-phone",
        callee_device="earlier-phone",
        invited_at=now - rated_seconds - 10,
        ringing_at=now - rated_seconds - 9,
        answered_at=now - rated_seconds - 1,
        ended_at=now - 1,
        end_reason="completed",
        kind="app",
        billable=billable,
        rated_seconds=rated_seconds,
    )
    await server.app[CDRS].save(record)


async def outbox(server: Server, operator_id: str) -> list[StoredEvent]:
    async with server.app[DATABASE].read() as conn:
        rows = await conn.execute(
            sa.select(events).where(events.c.operator_id == operator_id).order_by(events.c.seq)
        )
        return [StoredEvent.from_row(row) for row in rows]
