"""The ``nodes`` table: one row per signaling node, its heartbeat and its end.

What signaling/cluster/node.py reads and writes; it decides who is alive and
what to do about the dead, these functions only run the statements.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from signaling.store.database import Database
from signaling.store.schema import live_calls, nodes


@dataclass(frozen=True)
class NodeSeen:
    """A node's row as a heartbeat reads it."""

    node_id: str
    heartbeat_at: float
    stopped_at: float | None


async def add(db: Database, node_id: str, name: str, now: float) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            nodes.insert().values(node_id=node_id, name=name, started_at=now, heartbeat_at=now)
        )


async def set_draining(db: Database, node_id: str) -> None:
    async with db.transaction() as conn:
        await conn.execute(nodes.update().where(nodes.c.node_id == node_id).values(draining=True))


async def set_stopped(db: Database, node_id: str, now: float) -> None:
    async with db.transaction() as conn:
        await conn.execute(nodes.update().where(nodes.c.node_id == node_id).values(stopped_at=now))


async def beat(db: Database, node_id: str, now: float, draining: bool) -> bool:
    """Refresh the node's heartbeat; False when its row says it stopped (others
    declared it dead)."""
    async with db.transaction() as conn:
        result = await conn.execute(
            nodes.update()
            .where(nodes.c.node_id == node_id, nodes.c.stopped_at.is_(None))
            .values(heartbeat_at=now, draining=draining)
        )
    return bool(result.rowcount)


async def survey(
    db: Database, node_id: str, name: str, now: float, since: float
) -> tuple[list[str], list[NodeSeen]]:
    """Stop the earlier processes under ``name`` (this node replaces them) and read
    every node seen since ``since``: (the replaced node ids, the nodes)."""
    async with db.transaction() as conn:
        earlier = nodes.c.node_id.in_(
            sa.select(nodes.c.node_id).where(
                nodes.c.name == name,
                nodes.c.node_id != node_id,
                nodes.c.stopped_at.is_(None),
            )
        )
        replaced = list(await conn.scalars(sa.select(nodes.c.node_id).where(earlier)))
        if replaced:
            await conn.execute(
                nodes.update().where(nodes.c.node_id.in_(replaced)).values(stopped_at=now)
            )
        rows = (
            await conn.execute(
                sa.select(nodes.c.node_id, nodes.c.heartbeat_at, nodes.c.stopped_at).where(
                    nodes.c.heartbeat_at >= since
                )
            )
        ).all()
    return replaced, [NodeSeen(r.node_id, r.heartbeat_at, r.stopped_at) for r in rows]


async def bury(
    db: Database, node_id: str, now: float, cutoff: float
) -> tuple[list[str], list[tuple[str, float]]]:
    """Mark nodes silent since before ``cutoff`` stopped; (their ids, and the
    stopped or unknown nodes other than ``node_id`` that still have calls in
    ``live_calls``, with their last heartbeat or ``now``)."""
    async with db.transaction() as conn:
        silent = [
            row.node_id
            for row in await conn.execute(
                sa.select(nodes.c.node_id).where(
                    nodes.c.stopped_at.is_(None), nodes.c.heartbeat_at < cutoff
                )
            )
        ]
        if silent:
            await conn.execute(
                nodes.update()
                .where(nodes.c.node_id.in_(silent))
                .values(stopped_at=sa.func.coalesce(nodes.c.stopped_at, now))
            )
        orphaned = await conn.execute(
            sa.select(live_calls.c.node_id, nodes.c.heartbeat_at)
            .distinct()
            .select_from(live_calls.outerjoin(nodes, nodes.c.node_id == live_calls.c.node_id))
            .where(
                live_calls.c.node_id != node_id,
                sa.or_(nodes.c.node_id.is_(None), nodes.c.stopped_at.is_not(None)),
            )
        )
        orphans = [(row.node_id, row.heartbeat_at or now) for row in orphaned]
    return silent, orphans


__all__ = ["NodeSeen", "add", "beat", "bury", "set_draining", "set_stopped", "survey"]
