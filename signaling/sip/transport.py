"""UDP and TCP for SIP on asyncio (RFC 3261 §18): the only part of the stack doing I/O.

One UDP socket and one TCP listener on the same address and port. UDP datagrams go
up unparsed (the trunk rate-limits before parsing); TCP streams are framed by a
``StreamParser`` per connection and go up as messages (or their ParseError). TCP
connections are reused in both directions, keyed by the peer's address: a response
goes back on the connection its request came on, and a request to the SBC opens
a connection when there is none. A connection whose framing breaks is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import cast

from signaling.sip.message import (
    DEFAULT_MAX_HEADERS,
    ParseError,
    Request,
    Response,
    SipTarget,
    StreamParser,
)

logger = logging.getLogger("anruf.sip")

DatagramHandler = Callable[[bytes, SipTarget], None]
StreamHandler = Callable[[Request | Response | ParseError, SipTarget], None]
ErrorHandler = Callable[[SipTarget], None]
#: May a TCP connection from this host be kept? (False: closed, its bytes unparsed.)
PeerFilter = Callable[[str], bool]

#: How long a TCP connect to a peer may take before its messages are given up.
CONNECT_TIMEOUT = 5.0


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        host, port = addr[0], addr[1]
        self.owner.on_datagram(data, SipTarget("udp", str(host), int(port)))

    def error_received(self, exc: Exception) -> None:
        logger.debug("SIP UDP error: %s", exc)


class _Stream(asyncio.Protocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.parser = StreamParser(max_size=owner.max_message_bytes, max_headers=owner.max_headers)
        self.transport: asyncio.Transport | None = None
        self.peer: SipTarget | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's TCPTransport does not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        host, port = self.transport.get_extra_info("peername")[:2]
        self.peer = SipTarget("tcp", str(host), int(port))
        if not self.owner.admit_peer(self.peer.host):
            transport.close()
            return
        if len(self.owner.connections) >= self.owner.max_connections:
            logger.warning(
                "SIP TCP: %d connections, closing one from %s",
                len(self.owner.connections),
                self.peer,
            )
            transport.close()
            return
        self.owner.connections[(self.peer.host, self.peer.port)] = self

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        if not self.owner.admit_peer(self.peer.host):
            self.transport.close()  # blocked since it connected
            return
        try:
            items = self.parser.feed(data)
        except ParseError as exc:
            self.owner.on_stream(exc, self.peer)
            self.transport.close()
            return
        for item in items:
            self.owner.on_stream(item, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            key = (self.peer.host, self.peer.port)
            if self.owner.connections.get(key) is self:
                del self.owner.connections[key]

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class SipTransport:
    def __init__(
        self,
        host: str,
        port: int,
        transports: tuple[str, ...],
        *,
        on_datagram: DatagramHandler,
        on_stream: StreamHandler,
        on_error: ErrorHandler,
        max_message_bytes: int,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_connections: int = 256,
        admit_peer: PeerFilter | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.transports = transports
        self.on_datagram = on_datagram
        self.on_stream = on_stream
        self.on_error = on_error
        self.max_message_bytes = max_message_bytes
        self.max_headers = max_headers
        self.max_connections = max_connections
        self.admit_peer: PeerFilter = admit_peer or (lambda host: True)
        self.connections: dict[tuple[str, int], _Stream] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._connecting: set[asyncio.Task[None]] = set()
        self.bound_port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            port = self.port
            try:
                if "udp" in self.transports:
                    self._udp, _ = await loop.create_datagram_endpoint(
                        lambda: _Datagrams(self), local_addr=(self.host, port)
                    )
                    port = self._udp.get_extra_info("sockname")[1]
                if "tcp" in self.transports:
                    self._server = await loop.create_server(
                        lambda: _Stream(self), self.host, port, reuse_address=True
                    )
                    port = self._server.sockets[0].getsockname()[1]
            except OSError:
                await self.stop()
                if attempt == attempts - 1:
                    raise
                continue
            self.bound_port = port
            return

    async def stop(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        self.connections.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    @property
    def addresses(self) -> list[tuple[str, str, int]]:
        return [(t, self.host, self.bound_port) for t in self.transports]

    def send(self, peer: SipTarget, data: bytes) -> None:
        if peer.transport == "udp":
            if self._udp is not None:
                self._udp.sendto(data, (peer.host, peer.port))
            return
        key = (peer.host, peer.port)
        connection = self.connections.get(key)
        if connection is not None:
            connection.write(data)
            return
        pending = self._pending.get(key)
        if pending is not None:
            pending.append(data)  # a connect is under way
            return
        self._pending[key] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(peer))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, peer: SipTarget) -> None:
        key = (peer.host, peer.port)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, protocol = await loop.create_connection(
                    lambda: _Stream(self), peer.host, peer.port
                )
        except (OSError, TimeoutError) as exc:
            logger.info("SIP TCP connect to %s failed: %s", peer, exc)
            self._pending.pop(key, None)
            self.on_error(peer)
            return
        for data in self._pending.pop(key, []):
            protocol.write(data)


__all__ = ["SipTransport"]
