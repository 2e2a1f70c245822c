"""The operators' tables (``operators``, ``subscribers`` ...): the statements that
other parts than signaling/carrier/operators.py need."""

from __future__ import annotations

import sqlalchemy as sa

from signaling.store.database import Connection
from signaling.store.schema import operators, subscribers


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


__all__ = ["operator_of", "sms_url_of"]
