"""The two backends of a RelayPool: worker processes of our own, and relay hosts.

Both hand the pool (voice/relay/pool.py) control channels
(voice/relay/channel.py) that speak voice/relay/control.py to a serving side
running voice/relay/server.py; they differ only in where the channels come
from and what happens when one ends. Neither imports the pool: they use it
through `ChannelPool`.

- ProcessBackend: `workers` processes (multiprocessing "spawn" context), each
  reached over a socket pair. One that exits or hangs is killed, reaped (no
  zombie) and replaced, retrying with backoff until a replacement is ready.
- HostBackend: TCP control connections to the relay hosts in a HostDirectory
  (voice.relay.registry.RedisHostDirectory), each authenticated both ways with
  the relay secret (voice/relay/control_auth.py). The directory is read every
  `discovery_interval`: a new host is connected, one whose registration
  expired or changed is lost like an exited worker (its legs fail with
  WORKER_LOST), and a host is never replaced by us. A host's load is its own
  report of the legs others hold plus ours; a draining or full host gets no
  new calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from multiprocessing.process import BaseProcess

from voice.relay.api import RelayUnavailable
from voice.relay.channel import Channel, ChannelPool
from voice.relay.control import MAX_AUTH_FRAME, encode_message
from voice.relay.control_auth import (
    AuthError,
    auth_request,
    check_authenticated,
    check_relay_secret,
)
from voice.relay.registry import Candidate, HostDirectory, HostRecord
from voice.relay.server import WorkerSettings, read_frame, worker_main

__all__ = ["HostBackend", "HostChannel", "ProcessBackend", "ProcessChannel"]

logger = logging.getLogger(__name__)


# -- worker processes ------------------------------------------------------------------


class ProcessChannel(Channel):
    """The socket pair to a worker process we spawned."""

    def __init__(
        self,
        index: int,
        process: BaseProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(index, reader, writer)
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    @property
    def name(self) -> str:
        return f"relay worker {self.pid}"

    def how_lost(self) -> str:
        return f"exited (code {self.process.exitcode})"

    def candidate(self) -> Candidate:
        return Candidate(key=("", self.index), load=len(self.legs))

    def kill(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def reap(self, grace: float, stop_timeout: float) -> None:
        """Wait for the process to exit and collect it (no zombie); kill it after grace s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.process.is_alive():
            if loop.time() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                deadline = loop.time() + stop_timeout
            await asyncio.sleep(0.02)
        self.process.join(0)


class ProcessBackend:
    """Worker processes of our own, one per core by default (`workers`)."""

    kind = "relay worker"

    def __init__(self, settings: WorkerSettings, workers: int | None = None) -> None:
        count = workers if workers is not None else (os.cpu_count() or 1)
        if count < 1:
            raise ValueError(f"workers must be at least 1, not {count}")
        self.settings = settings
        self.workers = count
        self._context = multiprocessing.get_context("spawn")

    async def start(self, pool: ChannelPool) -> None:
        for index in range(self.workers):
            await self._launch(pool, index)
        starting = list(pool.channels)
        await asyncio.wait([channel.ready for channel in starting], timeout=pool.start_timeout)
        for channel in starting:
            if not channel.usable:
                logger.error("relay worker #%d did not start", channel.index)
                pool.lose(channel, kill=True)
                pool.spawn(self._replace(pool, channel))
        if not any(channel.usable for channel in pool.channels):
            raise RelayUnavailable("no relay worker started")
        logger.info("relay workers ready (%s): %s", self.settings.relay_mode, pool.worker_pids)

    async def _launch(self, pool: ChannelPool, index: int) -> ProcessChannel:
        parent_end, child_end = self._context.Pipe(duplex=True)
        sock = socket.socket(fileno=os.dup(parent_end.fileno()))
        parent_end.close()
        sock.setblocking(False)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            child_end.close()
            raise
        process = self._context.Process(
            target=worker_main,
            args=(child_end, self.settings),
            name=f"anruf-relay-{index}",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            writer.close()
            raise
        finally:
            child_end.close()  # the child's copy is its own now: its exit reads as EOF here
        channel = ProcessChannel(index, process, reader, writer)
        pool.attach(channel)
        return channel

    def lost(self, pool: ChannelPool, channel: Channel, in_service: bool) -> None:
        if in_service:
            # One that never became ready is retried by whoever started it.
            pool.spawn(self._replace(pool, channel))

    async def _replace(self, pool: ChannelPool, lost: Channel) -> None:
        """Start a worker in place of a lost one, retrying with backoff until one is ready."""
        await lost.reap(pool.stop_timeout, pool.stop_timeout)
        delay = 0.5
        while not pool.closing:
            try:
                channel = await self._launch(pool, lost.index)
            except Exception:
                logger.exception("relay worker #%d could not be started", lost.index)
            else:
                await asyncio.wait([channel.ready], timeout=pool.start_timeout)
                if channel.usable:
                    return
                pool.lose(channel, kill=True)
                await channel.reap(pool.stop_timeout, pool.stop_timeout)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        pass


# -- relay hosts ------------------------------------------------------------------------


class HostChannel(Channel):
    """The TCP control connection to a relay host."""

    def __init__(
        self,
        index: int,
        host: HostRecord,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(index, reader, writer)
        #: The host's registration, as of the latest reading of the directory.
        self.host = host

    @property
    def name(self) -> str:
        return f"relay host {self.host.id}"

    @property
    def host_id(self) -> str | None:
        return self.host.id

    @property
    def leaving(self) -> bool:
        return self.host.state != "up"

    def candidate(self) -> Candidate:
        return Candidate(
            key=(self.host.id, self.index),
            load=self.others + len(self.legs),
            capacity=self.host.capacity,
            accepting=self.host.state == "up",
        )


class HostBackend:
    """Control connections to the relay hosts registered in a directory."""

    kind = "relay host"

    def __init__(self, directory: HostDirectory, secret: str, discovery_interval: float) -> None:
        check_relay_secret(secret)
        self.directory = directory
        self.discovery_interval = discovery_interval
        self._secret = secret  # proves this node to the hosts (voice/relay/control_auth.py)
        self._connecting: set[str] = set()
        self._index = 0  # numbers the control connections
        self._retry_at: dict[str, tuple[float, float]] = {}  # host id: (when, backoff)

    async def start(self, pool: ChannelPool) -> None:
        """Connect to the hosts registered now; later ones are found every discovery_interval.

        Raises RelayUnavailable when the registry cannot be read at all; no host
        registered yet is not an error (answer() and offer() raise until one is).
        """
        try:
            connecting = await self._discover(pool)
        except Exception as exc:
            raise RelayUnavailable(f"relay hosts cannot be read: {exc}") from exc
        if connecting:
            # Each gives up by itself (request_timeout to connect, start_timeout to be ready).
            await asyncio.wait(connecting)
        pool.spawn(self._track(pool))
        logger.info("relay hosts in service: %s", sorted(pool.host_loads))

    def lost(self, pool: ChannelPool, channel: Channel, in_service: bool) -> None:
        pass  # a relay host is not ours to replace: the directory says when it is back

    async def close(self) -> None:
        await self.directory.close()

    async def _track(self, pool: ChannelPool) -> None:
        while not pool.closing:
            await asyncio.sleep(self.discovery_interval)
            try:
                await self._discover(pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Hosts stay in service while the registry is out of reach: their
                # connections (and stats heartbeat) still tell whether they are alive.
                logger.warning("relay hosts cannot be read: %s", exc)

    async def _discover(self, pool: ChannelPool) -> list[asyncio.Task[None]]:
        """Match the control connections to the registrations: connect, update, drop.

        Returns the connection attempts started.
        """
        records = {record.id: record for record in await self.directory.hosts()}
        if pool.closing:
            return []
        connected: set[str] = set()
        for channel in list(pool.channels):
            if not isinstance(channel, HostChannel) or not channel.alive:
                continue
            host = channel.host
            record = records.get(host.id)
            if record is None:
                logger.error("%s: its registration expired", channel.name)
                pool.lose(channel, kill=True)
            elif (record.control, record.started) != (host.control, host.started):
                logger.error("%s: registered anew (%s)", channel.name, record.control)
                pool.lose(channel, kill=True)
            else:
                channel.host = record
                connected.add(host.id)
        now = asyncio.get_running_loop().time()
        attempts: list[asyncio.Task[None]] = []
        for host_id, record in sorted(records.items()):
            if host_id in connected or host_id in self._connecting or record.state != "up":
                continue
            if self._retry_at.get(host_id, (0.0, 0.0))[0] > now:
                continue
            self._connecting.add(host_id)
            attempts.append(pool.spawn(self._connect(pool, record)))
        return attempts

    async def _connect(self, pool: ChannelPool, record: HostRecord) -> None:
        loop = asyncio.get_running_loop()
        channel: HostChannel | None = None
        try:
            host, port = record.control_address
            async with asyncio.timeout(pool.request_timeout):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    await self._authenticate(reader, writer)
                except BaseException:
                    writer.close()
                    raise
            self._index += 1
            channel = HostChannel(self._index, record, reader, writer)
            pool.attach(channel)
            await asyncio.wait([channel.ready], timeout=pool.start_timeout)
            if not channel.usable:
                raise RelayUnavailable("it did not say it is ready")
        except Exception as exc:
            if channel is not None:
                pool.lose(channel, kill=True)
            backoff = min(self._retry_at.get(record.id, (0.0, 0.5))[1] * 2, 30.0)
            self._retry_at[record.id] = (loop.time() + backoff, backoff)
            logger.warning(
                "relay host %s at %s: no control connection (%s); retry in %.0f s",
                record.id,
                record.control,
                exc,
                backoff,
            )
        else:
            self._retry_at.pop(record.id, None)
            logger.info("relay host %s at %s in service", record.id, record.control)
        finally:
            self._connecting.discard(record.id)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer the host's challenge and check its proof; AuthError if either fails."""
        try:
            first = await read_frame(reader, MAX_AUTH_FRAME)
            host_nonce, node_nonce, request = auth_request(self._secret, first)
            writer.write(encode_message(request))
            answer = await read_frame(reader, MAX_AUTH_FRAME)
        except asyncio.IncompleteReadError:
            raise AuthError(
                "the relay host closed the connection (is relay_secret the same on both?)"
            ) from None
        check_authenticated(self._secret, host_nonce, node_nonce, answer)
