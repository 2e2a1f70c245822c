"""A RelayPool's control channels and the backends they come from.

The pool (voice/relay/pool.py) and its backends (voice/relay/backends.py)
both build on this module and neither imports the other: a backend opens
`Channel`s and hands them to the pool through the `ChannelPool` surface, and
the pool sees its backend as a `WorkerBackend`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from voice.relay.control import Correlator
from voice.relay.registry import Candidate

__all__ = ["Channel", "ChannelPool", "WorkerBackend"]

T = TypeVar("T")


class Channel:
    """One control channel to where legs live: a worker process or a relay host."""

    def __init__(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        self.index = index
        self.reader = reader
        self.writer = writer
        #: Done (with the process id) once the serving side said it is ready.
        self.ready: asyncio.Future[int] = loop.create_future()
        #: When the channel last brought anything (the loop's clock).
        self.last_seen = loop.time()
        self.correlator = Correlator()
        self.waiters: dict[int, asyncio.Future[Any]] = {}
        self.legs: set[str] = set()
        self.alive = True
        self.loop = ""  # the serving side's event loop: "uvloop" or "asyncio"
        self.reader_task: asyncio.Task[None] | None = None
        #: The serving side's process id, from its ready event.
        self.remote_pid = 0
        #: Legs others (other signaling nodes) hold there, as of its latest report.
        self.others = 0

    @property
    def pid(self) -> int:
        return self.remote_pid

    @property
    def name(self) -> str:
        return f"relay channel {self.index}"

    @property
    def host_id(self) -> str | None:
        """The relay host's id (None for a worker process)."""
        return None

    @property
    def usable(self) -> bool:
        return self.alive and self.ready.done() and not self.ready.cancelled()

    @property
    def leaving(self) -> bool:
        """Going away on purpose (a draining host): its loss is no error."""
        return False

    def how_lost(self) -> str:
        return "lost its control connection"

    def candidate(self) -> Candidate:
        return Candidate(key=("", self.index), load=self.others + len(self.legs))

    def kill(self) -> None:
        """Make sure the serving side is gone (a process of ours is killed)."""

    async def reap(self, grace: float, stop_timeout: float) -> None:
        """Wait for the serving side to end, if it is ours to end."""

    def send(self, data: bytes) -> None:
        if self.alive and not self.writer.is_closing():
            self.writer.write(data)


class ChannelPool(Protocol):
    """What a backend may use of its pool (voice.relay.pool.RelayPool)."""

    channels: list[Channel]
    request_timeout: float
    start_timeout: float
    stop_timeout: float

    @property
    def closing(self) -> bool: ...

    @property
    def worker_pids(self) -> list[int]: ...

    @property
    def host_loads(self) -> dict[str, int]: ...

    def attach(self, channel: Channel) -> None:
        """A new channel of the backend's: the pool reads it from now on."""
        ...

    def lose(self, channel: Channel, *, kill: bool) -> None:
        """The channel is gone (or must be): its requests and legs fail."""
        ...

    def spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A background task, cancelled when the pool closes."""
        ...


class WorkerBackend(Protocol):
    """Where a pool's channels come from (voice/relay/backends.py)."""

    #: What its channels are called in messages: "relay worker", "relay host".
    kind: str

    async def start(self, pool: ChannelPool) -> None:
        """Open the first channels (pool.attach each); RelayUnavailable if none can be."""
        ...

    def lost(self, pool: ChannelPool, channel: Channel, in_service: bool) -> None:
        """A channel ended (after its legs were failed): replace it, or not."""
        ...

    async def close(self) -> None: ...
