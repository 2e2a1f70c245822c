"""ICE settings shared by the relay and the Python client.

aioice gathers host candidates on every interface except loopback, and
aiortc falls back to a public STUN server when given no ICE servers. Both are
wrong for a media relay whose addresses are configuration: these helpers are
the one place where we choose them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_original_get_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Make aioice gather host candidates only on `addresses` (process-wide).

    The seam: aioice.ice.Connection.gather_candidates() calls the module
    function aioice.ice.get_host_addresses(use_ipv4, use_ipv6); we replace
    it with one returning our configured list (127.0.0.1 allowed), filtered
    by address family as aioice would. An empty sequence restores aioice's
    own interface discovery.
    """
    chosen = [str(ipaddress.ip_address(address)) for address in addresses]
    if not chosen:
        _install(_original_get_host_addresses)
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            address
            for address in chosen
            if (use_ipv4 and ipaddress.ip_address(address).version == 4)
            or (use_ipv6 and ipaddress.ip_address(address).version == 6)
        ]

    _install(get_host_addresses)


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
