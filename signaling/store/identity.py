"""The identity tables (``verifications``, ``code_sends``, ``devices``): the
statements of signaling/identity/service.py, which holds the rules (limits, code
checks, hooks) and the transactions.

The registration path's statements are built once with bind parameters: building
them anew for every request cost more of a node's CPU than executing them
(bench/registrations.py; docs/performance.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from signaling.store.database import Connection
from signaling.store.schema import code_sends, devices, verifications

#: Records a code send if the number had fewer than :limit in the window.
_RECORD_SEND = code_sends.insert().from_select(
    ["number", "sent_at"],
    sa.select(sa.bindparam("number", type_=sa.String), sa.bindparam("now", type_=sa.Float)).where(
        sa.select(sa.func.count())
        .select_from(code_sends)
        .where(
            code_sends.c.number == sa.bindparam("number", type_=sa.String),
            code_sends.c.sent_at > sa.bindparam("window_start", type_=sa.Float),
        )
        .scalar_subquery()
        < sa.bindparam("limit", type_=sa.Integer)
    ),
)
#: Spends one attempt on the number's unexpired code and returns it.
_SPEND_ATTEMPT = (
    verifications.update()
    .where(
        verifications.c.number == sa.bindparam("spend_number"),
        verifications.c.attempts_left > 0,
        verifications.c.expires_at > sa.bindparam("now"),
    )
    .values(attempts_left=verifications.c.attempts_left - 1)
    .returning(verifications.c.code_hash, verifications.c.attempts_left)
)
_DELETE_CODE = verifications.delete().where(verifications.c.number == sa.bindparam("code_number"))
_other = devices.alias("other")
#: Inserts a device and returns how many other active devices its number has.
_INSERT_DEVICE = devices.insert().returning(
    sa.select(sa.func.count())
    .select_from(_other)
    .where(
        _other.c.number == sa.bindparam("other_number", type_=sa.String),
        _other.c.revoked_at.is_(None),
        _other.c.device_id != sa.bindparam("new_device_id", type_=sa.String),
    )
    .scalar_subquery()
)


@functools.cache
def _code_upsert(dialect: str) -> Any:
    """Inserts a number's code, replacing any outstanding one (and its attempts)."""
    upsert: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    else:
        raise RuntimeError(f"no upsert for the {dialect} database")
    statement = upsert(verifications)
    replaced = ("code_hash", "created_at", "expires_at", "attempts_left")
    return statement.on_conflict_do_update(
        index_elements=[verifications.c.number],
        set_={key: statement.excluded[key] for key in replaced},
    )


def check_dialect(dialect: str) -> None:
    """RuntimeError for a database these statements cannot run on."""
    _code_upsert(dialect)


# -- codes --------------------------------------------------------------------------


async def record_send(
    conn: Connection, number: str, now: float, window_start: float, limit: int
) -> bool:
    """Count the number's sends since ``window_start`` and, if under ``limit``,
    record this one (one statement); True when it was recorded."""
    recorded = await conn.execute(
        _RECORD_SEND, {"number": number, "now": now, "window_start": window_start, "limit": limit}
    )
    return bool(recorded.rowcount == 1)


async def store_code(
    conn: Connection, number: str, code_hash: str, now: float, expires_at: float, attempts: int
) -> None:
    """The number's code, replacing any outstanding one (and its attempts)."""
    await conn.execute(
        _code_upsert(conn.dialect.name),
        {
            "number": number,
            "code_hash": code_hash,
            "created_at": now,
            "expires_at": expires_at,
            "attempts_left": attempts,
        },
    )


async def sends_since(conn: Connection, number: str, window_start: float) -> list[float]:
    """When codes were sent to the number since ``window_start``, oldest first."""
    result = await conn.execute(
        sa.select(code_sends.c.sent_at)
        .where(code_sends.c.number == number, code_sends.c.sent_at > window_start)
        .order_by(code_sends.c.sent_at)
    )
    return list(result.scalars().all())


async def spend_attempt(conn: Connection, number: str, now: float) -> Any | None:
    """Spend an attempt on the number's unexpired code and read it in one
    conditional statement (``code_hash``, ``attempts_left``); None: no attempt."""
    return (await conn.execute(_SPEND_ATTEMPT, {"spend_number": number, "now": now})).first()


async def delete_code(conn: Connection, number: str) -> None:
    await conn.execute(_DELETE_CODE, {"code_number": number})


async def code_expiry(conn: Connection, number: str) -> float | None:
    """When the number's code expires; None when it has none."""
    row = (
        await conn.execute(
            sa.select(verifications.c.expires_at).where(verifications.c.number == number)
        )
    ).first()
    return None if row is None else float(row.expires_at)


async def prune(conn: Connection, now: float, send_window: float) -> None:
    """Delete expired codes and send records older than ``send_window``."""
    await conn.execute(verifications.delete().where(verifications.c.expires_at <= now))
    await conn.execute(code_sends.delete().where(code_sends.c.sent_at <= now - send_window))


# -- devices ------------------------------------------------------------------------


async def insert_device(
    conn: Connection,
    *,
    device_id: str,
    number: str,
    name: str,
    token_hash: str,
    created_at: float,
) -> int:
    """A new device; returns how many other active devices its number has (counted by
    the INSERT itself, a subquery in RETURNING: one round trip fewer)."""
    previous = await conn.scalar(
        _INSERT_DEVICE,
        {
            "device_id": device_id,
            "number": number,
            "name": name,
            "token_hash": token_hash,
            "created_at": created_at,
            "last_seen_at": None,
            "revoked_at": None,
            "other_number": number,
            "new_device_id": device_id,
        },
    )
    return int(previous or 0)


async def device_by_token(conn: Connection, token_hash: str) -> Any | None:
    """The active device row holding the token, if any."""
    return (
        await conn.execute(
            sa.select(devices).where(
                devices.c.token_hash == token_hash, devices.c.revoked_at.is_(None)
            )
        )
    ).first()


async def device_of(conn: Connection, number: str, device_id: str) -> Any | None:
    """One of the number's active device rows, if it exists."""
    return (
        await conn.execute(
            sa.select(devices).where(
                devices.c.device_id == device_id,
                devices.c.number == number,
                devices.c.revoked_at.is_(None),
            )
        )
    ).first()


async def devices_of(conn: Connection, number: str) -> list[Any]:
    """The number's active device rows, oldest first."""
    rows = await conn.execute(
        sa.select(devices)
        .where(devices.c.number == number, devices.c.revoked_at.is_(None))
        .order_by(devices.c.created_at, devices.c.device_id)
    )
    return list(rows)


async def set_last_seen(conn: Connection, device_id: str, now: float) -> None:
    await conn.execute(
        devices.update().where(devices.c.device_id == device_id).values(last_seen_at=now)
    )


async def set_revoked(conn: Connection, device_id: str, now: float) -> None:
    await conn.execute(
        devices.update().where(devices.c.device_id == device_id).values(revoked_at=now)
    )


async def registered(conn: Connection, numbers: Sequence[str]) -> set[str]:
    """Those of ``numbers`` with an active device (keep a call under SQLite's
    host-parameter limit: a few hundred numbers)."""
    rows = await conn.execute(
        sa.select(devices.c.number)
        .where(devices.c.number.in_(numbers), devices.c.revoked_at.is_(None))
        .distinct()
    )
    return set(rows.scalars())


__all__ = [
    "check_dialect",
    "code_expiry",
    "delete_code",
    "device_by_token",
    "device_of",
    "devices_of",
    "insert_device",
    "prune",
    "record_send",
    "registered",
    "sends_since",
    "set_last_seen",
    "set_revoked",
    "spend_attempt",
    "store_code",
]
