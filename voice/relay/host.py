"""A relay host: the media relay as a process of its own, for signaling nodes elsewhere.

`anruf relay` runs one of these. It forwards media with one Relay (one core:
run one per core, each with its own control port and media port range) and:

- takes control connections from signaling nodes on TCP, serves only those
  that prove they know the relay secret (voice/relay/control_auth.py) and
  serves each the same control channel as a relay worker process
  (voice/relay/control.py, served by voice/relay/server.py: `serve_channel`,
  `ChannelServer`). Several nodes may be connected at once; each connection's
  legs and calls are its own (their ids carry the connection's prefix inside
  the Relay), and its legs are closed when the connection ends.
- registers itself in Redis (voice/relay/registry.py) every `heartbeat`
  seconds with its id, control and media addresses, load and capacity; the
  registration expires `ttl` seconds after the last refresh.
- on `drain()` (SIGTERM or SIGINT) takes no new calls (its registration
  says "draining"), lets the calls it carries go on for up to
  `drain_timeout` seconds, then removes its registration and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

from voice.relay.control import MAX_AUTH_FRAME, ProtocolError, encode_message
from voice.relay.control_auth import (
    AUTH_TIMEOUT,
    AuthError,
    authenticated,
    challenge,
    check_auth_request,
    check_relay_secret,
    new_nonce,
)
from voice.relay.registry import DRAINING, UP, HostRecord, RedisRegistrar, parse_address
from voice.relay.relay import Relay
from voice.relay.server import (
    ChannelServer,
    WorkerSettings,
    make_relay,
    read_frame,
    serve_channel,
    writer_send,
)

__all__ = ["HostIdInUse", "HostSettings", "RelayHost"]

logger = logging.getLogger(__name__)


class HostIdInUse(RuntimeError):
    """Another relay host is registered under this id."""


@dataclass(frozen=True)
class HostSettings:
    host_id: str
    #: HOST:PORT the control listener binds.
    control_listen: str
    #: HOST:PORT signaling nodes connect to, as registered; empty = control_listen.
    control_announce: str
    redis_url: str
    media: WorkerSettings
    #: Shared with the signaling nodes: only they may use the control port.
    secret: str = ""
    #: Legs this host holds before it takes no new calls; 0 = no limit.
    capacity: int = 1000
    heartbeat: float = 1.0
    ttl: float = 3.0
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        check_relay_secret(self.secret)
        host, _ = parse_address(self.control_listen)
        if self.control_announce:
            parse_address(self.control_announce)
        elif host in ("0.0.0.0", "::", ""):
            raise ValueError(
                f"control address {self.control_listen} is a wildcard: "
                "give the address nodes reach (relay_control_announce)"
            )
        if self.media.relay_mode not in ("forward", "transcode"):
            raise ValueError(
                f"relay_mode must be forward or transcode, not {self.media.relay_mode!r}"
            )
        if self.capacity < 0:
            raise ValueError(f"capacity must be 0 (no limit) or more, not {self.capacity}")
        if self.heartbeat <= 0 or self.ttl <= self.heartbeat:
            raise ValueError(
                f"the registration TTL ({self.ttl} s) must exceed "
                f"the heartbeat ({self.heartbeat} s)"
            )
        if self.drain_timeout < 0:
            raise ValueError(f"drain timeout must be 0 or more, not {self.drain_timeout}")


class RelayHost:
    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        self.control = settings.control_announce or settings.control_listen
        self.host_id = settings.host_id or self.control
        self.draining = False
        self.started = time.time()
        self._relay: Relay | None = None
        self._registrar = RedisRegistrar(settings.redis_url, settings.ttl)
        self._server: asyncio.Server | None = None
        self._channels: dict[str, ChannelServer] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._next_channel = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self._stop_now = asyncio.Event()
        self._closed = False
        self._registered = False

    @property
    def relay(self) -> Relay:
        assert self._relay is not None, "start() first"
        return self._relay

    @property
    def port(self) -> int:
        """The control port bound (useful with port 0)."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind, register, and take control connections; HostIdInUse if the id is taken."""
        current = await self._registrar.current(self.host_id)
        if current is not None and current.control != self.control:
            raise HostIdInUse(
                f"relay host id {self.host_id!r} is registered by the host at {current.control}"
            )
        self._relay = make_relay(self.settings.media)
        self._relay.on_leg_failed = self._leg_failed
        self._relay.on_dtmf = self._dtmf
        host, port = parse_address(self.settings.control_listen)
        self._server = await asyncio.start_server(self._connection, host, port)
        await self._registrar.register(self.record())
        self._registered = True
        self._heartbeat = asyncio.create_task(self._beat())
        logger.info(
            "relay host %s: control on %s, media on %s (%s), capacity %d legs",
            self.host_id,
            self.control,
            self.settings.media.announce_address or self.settings.media.bind_address,
            self.settings.media.relay_mode,
            self.settings.capacity,
        )

    # -- registration -----------------------------------------------------------

    def record(self) -> HostRecord:
        calls = self._relay_calls()
        return HostRecord(
            id=self.host_id,
            control=self.control,
            media=self.settings.media.announce_address or self.settings.media.bind_address,
            legs=self.relay.active_legs,
            calls=len(calls),
            cores=os.cpu_count() or 1,
            capacity=self.settings.capacity,
            state=DRAINING if self.draining else UP,
            pid=os.getpid(),
            started=self.started,
        )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await self._registrar.register(self.record())
            except Exception as exc:
                # The registration expires meanwhile; nodes then stop using this host.
                logger.warning("relay host %s: registration failed: %s", self.host_id, exc)

    # -- control connections ---------------------------------------------------------

    def _relay_calls(self) -> set[str]:
        """The calls of every connection, as the Relay knows them."""
        return {call for channel in self._channels.values() for call in channel.calls}

    def _admit(self, call: str) -> bool:
        """Whether the Relay takes a new leg of this call: always for one it carries already."""
        if call in self._relay_calls():
            return True
        capacity = self.settings.capacity
        return not self.draining and (capacity <= 0 or self.relay.active_legs < capacity)

    def _channel_of(self, leg_id: str) -> ChannelServer | None:
        prefix, sep, _ = leg_id.partition("/")
        return self._channels.get(prefix + sep) if sep else None

    def _leg_failed(self, leg_id: str, detail: str) -> None:
        channel = self._channel_of(leg_id)
        if channel is not None:
            channel.leg_failed(leg_id, detail)

    def _dtmf(self, leg_id: str, digit: str) -> None:
        channel = self._channel_of(leg_id)
        if channel is not None:
            channel.dtmf(leg_id, digit)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._closed:
            writer.close()
            return
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                await self._authenticate(reader, writer)
        except (AuthError, ProtocolError, TimeoutError, OSError, EOFError) as exc:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            if isinstance(exc, EOFError):  # IncompleteReadError
                reason = "closed before it authenticated"
            logger.warning(
                "relay host %s: control connection from %s refused: %s", self.host_id, peer, reason
            )
            writer.close()
            return
        self._next_channel += 1
        prefix = f"{self._next_channel}/"
        channel = ChannelServer(
            self.relay, writer_send(writer), prefix=prefix, admit=self._admit, owns_relay=False
        )
        self._channels[prefix] = channel
        self._writers.add(writer)
        logger.info("relay host %s: control connection from %s", self.host_id, peer)
        try:
            channel.send_ready()
            await serve_channel(reader, channel, self.settings.media.stats_interval)
        except ProtocolError as exc:
            logger.warning("control connection from %s: %s; closing it", peer, exc)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            logger.exception("control connection from %s failed", peer)
        finally:
            legs = len(channel.legs)
            del self._channels[prefix]
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                await channel.release()
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            logger.info(
                "relay host %s: control connection from %s closed (%d legs closed)",
                self.host_id,
                peer,
                legs,
            )

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Challenge the node, check its proof and give ours; AuthError if it fails."""
        secret = self.settings.secret
        host_nonce = new_nonce()
        writer.write(encode_message(challenge(host_nonce)))
        request = await read_frame(reader, MAX_AUTH_FRAME)
        node_nonce = check_auth_request(secret, host_nonce, request)
        writer.write(encode_message(authenticated(secret, host_nonce, node_nonce)))

    # -- stopping -----------------------------------------------------------------

    def stop_now(self) -> None:
        """End a drain at once (a second SIGTERM or SIGINT)."""
        self._stop_now.set()

    async def drain(self) -> None:
        """Take no new calls; wait up to drain_timeout for the ones in progress to end."""
        if not self.draining:
            self.draining = True
            logger.info(
                "relay host %s: draining %d legs (up to %g s)",
                self.host_id,
                self.relay.active_legs,
                self.settings.drain_timeout,
            )
            with contextlib.suppress(Exception):
                await self._registrar.register(self.record())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout
        while self.relay.active_legs and not self._stop_now.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.2, remaining)):
                    await self._stop_now.wait()

    async def close(self) -> None:
        """Remove the registration, close every leg and connection, and stop."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._registered:  # never another host's registration under our id
            try:
                await self._registrar.remove(self.host_id)
            except Exception as exc:
                logger.warning("relay host %s: registration not removed: %s", self.host_id, exc)
        if self._server is not None:
            self._server.close()
        left = self._relay.active_legs if self._relay is not None else 0
        if self._relay is not None:
            await self._relay.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
        await self._registrar.close()
        if self._server is not None:
            logger.info("relay host %s stopped (%d legs were still open)", self.host_id, left)
