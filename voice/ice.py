"""ICE settings shared by the relay and the Python client.

aioice gathers host candidates on every interface except loopback, and
aiortc falls back to a public STUN server when given no ICE servers. Both are
wrong for a media relay whose addresses are configuration: these helpers are
the one place where we choose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import random
from collections.abc import Callable, Iterator, Sequence

import aioice.ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCConfiguration, RTCIceServer

logger = logging.getLogger(__name__)

_original_get_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
_chosen: list[str] = []
#: Addresses for the gathering going on in this context (one endpoint's), if not the default.
_gathering_on: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "gathering_on", default=None
)


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Make aioice gather host candidates only on `addresses` (process-wide).

    The seam: aioice.ice.Connection.gather_candidates() calls the module
    function aioice.ice.get_host_addresses(use_ipv4, use_ipv6); we replace
    it with one returning our configured list (127.0.0.1 allowed), filtered
    by address family as aioice would. An empty sequence restores aioice's
    own interface discovery.
    """
    _chosen[:] = [str(ipaddress.ip_address(address)) for address in addresses]
    _install(_get_host_addresses)


@contextlib.contextmanager
def gathering_on(addresses: Sequence[str]) -> Iterator[None]:
    """Gather host candidates only on ``addresses`` for what runs inside (one endpoint's
    offer or answer), e.g. a client whose network changed to a new address."""
    chosen = tuple(str(ipaddress.ip_address(address)) for address in addresses)
    token = _gathering_on.set(chosen)
    try:
        yield
    finally:
        _gathering_on.reset(token)


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _gathering_on.get() or _chosen
    if not chosen:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [
        address
        for address in chosen
        if (use_ipv4 and ipaddress.ip_address(address).version == 4)
        or (use_ipv6 and ipaddress.ip_address(address).version == 6)
    ]


def _install(function: Callable[[bool, bool], list[str]]) -> None:
    # aioice.ice.Connection.gather_candidates looks the name up at call time.
    setattr(aioice.ice, "get_host_addresses", function)  # noqa: B010


def ice_server(url: str) -> RTCIceServer:
    """One ICE server from a URL; TURN credentials may ride as 'turn:user:pass@host:port'."""
    scheme, _, rest = url.partition(":")
    if scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise ValueError(f"ICE server URL {url!r}: expected stun:, stuns:, turn: or turns:")
    if "@" in rest and scheme.startswith("turn"):
        credentials, _, host = rest.rpartition("@")
        username, _, password = credentials.partition(":")
        return RTCIceServer(urls=f"{scheme}:{host}", username=username, credential=password)
    return RTCIceServer(urls=url)


def ice_configuration(urls: Sequence[str]) -> RTCConfiguration:
    """RTCConfiguration with exactly these servers; [] means none at all.

    Never aiortc's default: with iceServers=None it asks stun.l.google.com.
    """
    return RTCConfiguration(iceServers=[ice_server(url) for url in urls])


def rewrite_candidate_addresses(sdp: str, bind_address: str, announce_address: str) -> str:
    """Replace the bind address by the announced one in candidate and c= lines.

    Behind NAT (or a container port mapping) the relay binds one address and
    is reached on another; host candidates must carry the reachable one.
    RFC 8839 §5.1: connection-address is the fifth field of a candidate.
    """
    if not announce_address or announce_address == bind_address:
        return sdp
    lines = sdp.split("\r\n")
    for index, line in enumerate(lines):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) > 5 and fields[4] == bind_address:
                fields[4] = announce_address
                lines[index] = " ".join(fields)
        elif line.startswith("c=IN IP") and line.endswith(" " + bind_address):
            family = "IP6" if ":" in announce_address else "IP4"
            lines[index] = f"c=IN {family} {announce_address}"
    return "\r\n".join(lines)


# Media port range --------------------------------------------------------

_original_get_component_candidates = aioice.ice.Connection.get_component_candidates
_port_range: tuple[int, int] | None = None


def set_media_ports(low: int, high: int) -> None:
    """Bind host candidates only on UDP ports low..high (process-wide; 0, 0 = any).

    Firewalls in front of a relay open a fixed range. aioice always binds port 0,
    so with a range set, host candidates are gathered here instead (plus
    server-reflexive ones from them); TURN allocations are still aioice's own.
    """
    global _port_range
    if (low, high) == (0, 0):
        _port_range = None
    elif not 1024 <= low <= high <= 65535:
        raise ValueError(f"media port range {low}-{high}: need 1024 <= low <= high <= 65535")
    else:
        _port_range = (low, high)
    aioice.ice.Connection.get_component_candidates = _get_component_candidates  # type: ignore[method-assign]


def media_port_range() -> tuple[int, int] | None:
    """The UDP port range media binds in (set_media_ports), or None for any port."""
    return _port_range


async def _bind_in_range(
    connection: aioice.ice.Connection, address: str, port_range: tuple[int, int]
) -> aioice.ice.StunProtocol | None:
    loop = asyncio.get_running_loop()
    low, high = port_range
    span = high - low + 1
    start = random.randrange(span)  # spread legs over the range, then probe upwards
    for offset in range(span):
        port = low + (start + offset) % span
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), local_addr=(address, port)
            )
        except OSError:
            continue  # taken (by another leg or worker): try the next port
        return protocol
    logger.warning("no free UDP port on %s in %d-%d", address, low, high)
    return None


async def _get_component_candidates(
    self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
) -> list[Candidate]:
    port_range = _port_range
    if port_range is None:
        return await _original_get_component_candidates(self, component, addresses, timeout)
    candidates: list[Candidate] = []
    protocols = []
    for address in addresses:
        protocol = await _bind_in_range(self, address, port_range)
        if protocol is None:
            continue
        host, port = protocol.transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=host,
            port=port,
            type="host",
        )
        protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    self._protocols += protocols
    if self.stun_server:
        reflexive = [
            aioice.ice.server_reflexive_candidate(p, self.stun_server)
            for p in protocols
            if ipaddress.ip_address(p.local_candidate.host).version == 4
        ]
        for result in await asyncio.gather(*reflexive, return_exceptions=True):
            if not isinstance(result, BaseException):
                candidates.append(result[0])
    # TURN (if any) the way aioice does it; it binds no host sockets for an empty list.
    candidates += await _original_get_component_candidates(self, component, [], timeout)
    return candidates
