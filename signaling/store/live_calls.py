"""The live_calls table: calls in progress, on disk (signaling/calls/live.py).

The node holding a call writes its row once the call rings, updates it when
the call is answered, and deletes it in the transaction that stores the call
record (`remove`), so a call has a live row or a CDR, never neither.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from signaling.calls.live import LiveCall
from signaling.store.database import Database
from signaling.store.schema import live_calls


class LiveCalls:
    """The rows of live_calls (signaling.calls.live.LiveStore)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def ringing(self, call: LiveCall) -> None:
        values = {
            "call_id": call.call_id,
            "node_id": call.node_id,
            "caller": call.caller,
            "callee": call.callee,
            "caller_device": call.caller_device,
            "callee_device": call.callee_device,
            "invited_at": call.invited_at,
            "ringing_at": call.ringing_at,
            "answered_at": call.answered_at,
            "devices": list(call.devices),
            "rating": call.rating,
        }
        async with self._db.transaction() as conn:
            await conn.execute(live_calls.insert().values(values))

    async def answered(self, call_id: str, device_id: str, answered_at: float) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                live_calls.update()
                .where(live_calls.c.call_id == call_id)
                .values(callee_device=device_id, answered_at=answered_at, devices=[device_id])
            )

    @staticmethod
    async def remove(conn: AsyncConnection, call_id: str) -> None:
        """In the transaction that stores the call's record."""
        await conn.execute(live_calls.delete().where(live_calls.c.call_id == call_id))

    async def of_node(self, node_id: str) -> list[LiveCall]:
        async with self._db.read() as conn:
            rows = await conn.execute(sa.select(live_calls).where(live_calls.c.node_id == node_id))
            return [_live_call(row._mapping) for row in rows]


def _live_call(row: Any) -> LiveCall:
    return LiveCall(
        call_id=row["call_id"],
        node_id=row["node_id"],
        caller=row["caller"],
        callee=row["callee"],
        caller_device=row["caller_device"],
        callee_device=row["callee_device"],
        invited_at=row["invited_at"],
        ringing_at=row["ringing_at"],
        answered_at=row["answered_at"],
        devices=tuple(row["devices"] or ()),
        rating=dict(row["rating"] or {}),
    )


__all__ = ["LiveCalls"]
