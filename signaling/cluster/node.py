"""This signaling node among the others: heartbeat, who is alive, dead nodes' calls.

Every node has a row in ``nodes`` (signaling/store/schema.py) and refreshes
its heartbeat every `heartbeat` seconds. A node silent for `dead_after`
seconds, or one that stopped, is dead: the alive node with the smallest id
(the others skip the work) marks it stopped, asks the bus to forget its
devices and calls, and hands its calls in progress (rows in ``live_calls``)
to `on_dead` to be ended with a recorded reason. A node restarted under the
same name knows its earlier self is dead and ends that one's calls at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from signaling.store import nodes
from signaling.store.database import Database

log = logging.getLogger("anruf.cluster")

#: Nodes silent for longer than this (seconds) are no longer looked at: their
#: devices and calls were forgotten long ago.
FORGOTTEN_AFTER = 86400.0

#: on_dead(node_id, last_seen): end the dead node's calls in progress.
DeadNodeHandler = Callable[[str, float], Awaitable[None]]


class Node:
    def __init__(
        self,
        db: Database,
        *,
        name: str,
        heartbeat: float,
        dead_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.node_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.draining = False
        self._db = db
        self._heartbeat = heartbeat
        self._dead_after = dead_after
        self._clock = clock
        self._alive: set[str] = {self.node_id}
        self._dead: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._forget: list[Callable[[str], Awaitable[None]]] = []
        self._on_dead: list[DeadNodeHandler] = []
        self._fenced: list[Callable[[], None]] = []
        #: The others declared this node dead (it was silent for too long).
        self.fenced = False

    def on_dead(self, end_calls: DeadNodeHandler, forget: Callable[[str], Awaitable[None]]) -> None:
        self._on_dead.append(end_calls)
        self._forget.append(forget)

    def on_fenced(self, stop: Callable[[], None]) -> None:
        """``stop()`` is called if the other nodes declared this one dead: it must stop
        (its calls were ended on record elsewhere) and be started again."""
        self._fenced.append(stop)

    def alive(self, node_id: str) -> bool:
        """Not known to be dead: a node that started since our last heartbeat counts."""
        return node_id not in self._dead

    @property
    def alive_nodes(self) -> frozenset[str]:
        return frozenset(self._alive)

    async def start(self) -> None:
        await nodes.add(self._db, self.node_id, self.name, self._clock())
        log.info("node %s started", self.node_id)
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def drain(self) -> None:
        self.draining = True
        await nodes.set_draining(self._db, self.node_id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await nodes.set_stopped(self._db, self.node_id, self._clock())

    async def _run(self) -> None:
        while not self.fenced:
            await asyncio.sleep(self._heartbeat)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node %s: heartbeat failed", self.node_id)

    async def beat(self) -> None:
        """Refresh our heartbeat and the alive set; end dead nodes' calls (leader only)."""
        now = self._clock()
        cutoff = now - self._dead_after
        if not await nodes.beat(self._db, self.node_id, now, self.draining):
            # Declared dead (we were silent too long): our calls were ended elsewhere.
            log.critical("node %s was declared dead by the others: stopping", self.node_id)
            self.fenced = True
            for fenced in self._fenced:
                fenced()
            return
        # An earlier process under our name is dead: we are its replacement.
        replaced, rows = await nodes.survey(
            self._db, self.node_id, self.name, now, now - FORGOTTEN_AFTER
        )
        alive = {r.node_id for r in rows if r.stopped_at is None and r.heartbeat_at >= cutoff}
        self._alive = alive | {self.node_id}
        self._dead = {row.node_id for row in rows} - self._alive
        if replaced or min(self._alive) == self.node_id:
            await self._bury(now, cutoff, replaced)

    async def _bury(self, now: float, cutoff: float, replaced: list[str]) -> None:
        """Mark silent nodes stopped, forget their registry, end their calls."""
        silent, orphans = await nodes.bury(self._db, self.node_id, now, cutoff)
        for node_id in [*replaced, *silent]:
            log.warning("node %s is gone: forgetting its devices and calls", node_id)
            for forget in self._forget:
                await forget(node_id)
        for node_id, last_seen in orphans:
            for end_calls in self._on_dead:
                await end_calls(node_id, min(last_seen, now))


__all__ = ["DeadNodeHandler", "Node"]
