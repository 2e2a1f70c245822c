"""UDP and TCP for SIP on asyncio (RFC 3261 §18): the only part of the stack doing I/O.

One UDP socket and one TCP listener on the same address and port. UDP datagrams go
up unparsed (the trunk rate-limits before parsing); TCP streams are framed by a
``StreamParser`` per connection and go up as messages (or their ParseError). TCP
connections are reused in both directions, keyed by the peer's address: a response
goes back on the connection its request came on, and a request to the SBC opens
a connection when there is none. A connection whose framing breaks is closed.

Who may hold a TCP connection and for how long is decided by the sans-I/O
``ConnectionTable`` (signaling/sip/connections.py): a cap per source, slots
reserved for accepted sources, idle and message timeouts; connections we open are
never refused. This module only opens, times and closes the sockets it names, on
one timer re-armed at the table's next deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import cast

from signaling.sip.connections import ConnectionTable, TcpLimits
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
#: Is this host an accepted source (the SBC)? Such hosts may use the reserved slots.
SourceFilter = Callable[[str], bool]

#: How long a TCP connect to a peer may take before its messages are given up.
CONNECT_TIMEOUT = 5.0
#: Seconds between two warnings about refused or timed-out TCP connections.
_WARN_EVERY = 10.0


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        host, port = addr[0], addr[1]
        self.owner.on_datagram(data, SipTarget("udp", str(host), int(port)))

    def error_received(self, exc: Exception) -> None:
        logger.debug("SIP UDP error: %s", exc)


class _Stream(asyncio.Protocol):
    def __init__(self, owner: SipTransport, *, outbound: bool = False) -> None:
        self.owner = owner
        self.outbound = outbound
        self.parser = StreamParser(max_size=owner.max_message_bytes, max_headers=owner.max_headers)
        self.transport: asyncio.Transport | None = None
        self.peer: SipTarget | None = None
        #: The connection's id in the owner's table; None until admitted.
        self.connection: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's TCPTransport does not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        host, port = self.transport.get_extra_info("peername")[:2]
        self.peer = SipTarget("tcp", str(host), int(port))
        if not self.owner.admit_peer(self.peer.host):
            transport.close()
            return
        self.connection = self.owner._opened(self)
        if self.connection is None:
            transport.close()
            return
        self.owner.connections[(self.peer.host, self.peer.port)] = self

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        if self.connection is None or self.transport.is_closing():
            return
        if not self.owner.admit_peer(self.peer.host):
            self.transport.close()  # blocked since it connected
            return
        try:
            items = self.parser.feed(data)
        except ParseError as exc:
            self.owner.on_stream(exc, self.peer)
            self.transport.close()
            return
        self.owner._received(self, len(items))
        for item in items:
            self.owner.on_stream(item, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._closed(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.owner._sent(self)


class SipTransport:
    """UDP and TCP on one address.

    ``tcp_limits`` bound the TCP connections (see signaling/sip/connections.py);
    ``accepted_source(host)`` tells which peers (the SBC) may use the slots reserved
    for them and are not capped per source; ``stats`` counts refusals and timeouts
    (``tcp_refused_full``, ``tcp_refused_per_source``, ``tcp_idle_closed``,
    ``tcp_message_timeout``): pass the trunk's counters to export them in /metrics.
    """

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
        tcp_limits: TcpLimits | None = None,
        admit_peer: PeerFilter | None = None,
        accepted_source: SourceFilter | None = None,
        stats: Counter[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.transports = transports
        self.on_datagram = on_datagram
        self.on_stream = on_stream
        self.on_error = on_error
        self.max_message_bytes = max_message_bytes
        self.max_headers = max_headers
        self.admit_peer: PeerFilter = admit_peer or (lambda host: True)
        self.accepted_source: SourceFilter = accepted_source or (lambda host: False)
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.table = ConnectionTable(tcp_limits)
        self.connections: dict[tuple[str, int], _Stream] = {}
        self._streams: dict[int, _Stream] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._connecting: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._last_warning = -_WARN_EVERY
        self.bound_port = 0

    @property
    def tcp_limits(self) -> TcpLimits:
        return self.table.limits

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
                    lambda: _Stream(self, outbound=True), peer.host, peer.port
                )
        except (OSError, TimeoutError) as exc:
            logger.info("SIP TCP connect to %s failed: %s", peer, exc)
            self._pending.pop(key, None)
            self.on_error(peer)
            return
        for data in self._pending.pop(key, []):
            protocol.write(data)

    # The connection table's events, from the streams -------------------------------

    def _opened(self, stream: _Stream) -> int | None:
        """Admit a new connection into the table: its id, or None to close it."""
        assert stream.peer is not None
        now = asyncio.get_running_loop().time()
        host = stream.peer.host
        if stream.outbound:
            connection = self.table.open_outbound(host, now=now)
        else:
            admission = self.table.open_inbound(host, accepted=self.accepted_source(host), now=now)
            if admission.refused is not None:
                self.stats[admission.refused.value] += 1
                self._warn(
                    "SIP TCP: connection from %s refused (%s; %d inbound, %d from it)",
                    stream.peer,
                    admission.refused.name.lower(),
                    self.table.inbound,
                    self.table.from_source(host),
                )
                return None
            if admission.evicted is not None:
                self.stats["tcp_evicted"] += 1
                self._drop(admission.evicted)
            assert admission.connection is not None
            connection = admission.connection
        self._streams[connection] = stream
        self._arm(self.table.deadline(connection))
        return connection

    def _received(self, stream: _Stream, completed: int) -> None:
        if stream.connection is None:
            return
        self.table.received(
            stream.connection,
            asyncio.get_running_loop().time(),
            in_message=stream.parser.in_message,
            completed=completed,
        )
        self._arm(self.table.deadline(stream.connection))

    def _sent(self, stream: _Stream) -> None:
        if stream.connection is not None:
            self.table.sent(stream.connection, asyncio.get_running_loop().time())

    def _closed(self, stream: _Stream) -> None:
        if stream.connection is not None:
            self.table.close(stream.connection)
            if self._streams.get(stream.connection) is stream:
                del self._streams[stream.connection]
        if stream.peer is not None:
            key = (stream.peer.host, stream.peer.port)
            if self.connections.get(key) is stream:
                del self.connections[key]

    def _drop(self, connection: int) -> None:
        """Close a connection the table has let go of."""
        stream = self._streams.pop(connection, None)
        if stream is None:
            return
        if stream.peer is not None:
            key = (stream.peer.host, stream.peer.port)
            if self.connections.get(key) is stream:
                del self.connections[key]
        if stream.transport is not None:
            stream.transport.close()

    def _arm(self, deadline: float | None) -> None:
        """Make the timer fire at ``deadline`` unless it fires earlier already."""
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for connection, why in self.table.expired(asyncio.get_running_loop().time()):
            self.stats[why.value] += 1
            stream = self._streams.get(connection)
            self._warn("SIP TCP: closing %s (%s)", stream.peer if stream else "?", why.name.lower())
            self._drop(connection)
        self._arm(self.table.next_deadline())

    def _warn(self, text: str, *args: object) -> None:
        """A warning at most every few seconds (a flood of refusals is counted, not
        logged line by line); the others go to debug."""
        now = asyncio.get_running_loop().time()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            logger.warning(text, *args)
        else:
            logger.debug(text, *args)


__all__ = ["SipTransport"]
