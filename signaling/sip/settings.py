"""The trunk's settings: ``TrunkSettings``. Pure.

Every value is checked once, when the settings are made: a bad one raises
``SettingsError`` naming the field. The composition root (``trunk_settings`` in
signaling/app.py) builds them from the sip_* settings and names the setting instead.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

from signaling.sip.connections import TcpLimits
from signaling.sip.digest import supported
from signaling.sip.message import SipTarget
from signaling.sip.transaction import DEFAULT_TIMERS, TimerValues


class SettingsError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class TrunkSettings:
    """The trunk's settings (signaling/app.py builds them from the sip_* settings)."""

    listen_host: str = "127.0.0.1"
    #: 0 = any free port (UDP and TCP share it).
    listen_port: int = 5060
    transports: tuple[str, ...] = ("udp", "tcp")
    #: Where INVITE and OPTIONS go, in order of preference (the first one up).
    sbc: tuple[SipTarget, ...] = ()
    #: IPs or CIDRs allowed to send us requests; empty = the SBC hosts.
    accepted_sources: tuple[str, ...] = ()
    #: Host part of our From and To URIs, and the realm of our challenges.
    domain: str = "anruf.invalid"
    #: For the SBC's 401/407 challenges to our requests.
    username: str = ""
    password: str = ""
    #: When set, the SBC's INVITEs must carry digest credentials for these.
    inbound_username: str = ""
    inbound_password: str = ""
    #: Offered in this order (RFC 8760: the preferred first).
    inbound_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    max_calls_per_second: float = 10.0
    max_concurrent_calls: int = 100
    #: Seconds between OPTIONS to each SBC target; 0 = no keep-alive, always up.
    options_interval: float = 30.0
    max_message_bytes: int = 16384
    requests_per_second_per_source: float = 50.0
    #: A source over its request rate for this many seconds is blocked (everything
    #: it sends dropped unparsed) for ``block_seconds``; 0 = never. Accepted sources
    #: (the SBC) are only rate-limited, never blocked.
    block_after: float = 2.0
    block_seconds: float = 60.0
    timers: TimerValues = DEFAULT_TIMERS
    #: The Server (responses) and User-Agent (requests) header; empty = none, so a
    #: scanner does not learn the product from a 403 (RFC 3261 §20.35, §20.41).
    user_agent: str = ""
    #: Lifetime of our digest nonces (an older nonce gets a stale=true challenge).
    nonce_lifetime: float = 300.0
    #: Failed digest responses from one source for one username before that pair
    #: is locked out (every INVITE it sends answered 403 unchecked) for
    #: ``auth_lockout_seconds``; 0 = never. A success forgets the failures.
    auth_max_failures: int = 5
    auth_lockout_seconds: float = 60.0
    #: How many TCP connections, from whom, for how long (signaling/sip/connections.py).
    tcp_limits: TcpLimits = field(default_factory=TcpLimits)

    def __post_init__(self) -> None:
        try:
            address = ipaddress.ip_address(self.listen_host)
        except ValueError:
            raise SettingsError(
                "listen_host", f"{self.listen_host!r} is not an IP address"
            ) from None
        if address.is_unspecified:
            raise SettingsError(
                "listen_host", "must be a concrete address (it goes into Via and Contact)"
            )
        if not 0 <= self.listen_port <= 65535:
            raise SettingsError("listen_port", f"{self.listen_port} is not a port")
        if not self.transports or any(t not in ("udp", "tcp") for t in self.transports):
            raise SettingsError("transports", f"{self.transports!r}: expected udp and/or tcp")
        if len(set(self.transports)) != len(self.transports):
            raise SettingsError("transports", f"{self.transports!r} repeats a transport")
        for target in self.sbc:
            try:
                ipaddress.ip_address(target.host)
            except ValueError:
                raise SettingsError("sbc", f"{target}: the host must be an IP address") from None
            if target.transport not in self.transports:
                raise SettingsError("sbc", f"{target}: transport {target.transport} is not enabled")
        for source in self.accepted_sources:
            try:
                ipaddress.ip_network(source, strict=False)
            except ValueError:
                raise SettingsError(
                    "accepted_sources", f"{source!r} is not an IP or CIDR"
                ) from None
        if not self.domain or any(c in self.domain for c in " <>;@\"'"):
            raise SettingsError("domain", f"{self.domain!r} is not a host name")
        if bool(self.username) != bool(self.password):
            raise SettingsError("username", "username and password go together")
        if bool(self.inbound_username) != bool(self.inbound_password):
            raise SettingsError("inbound_username", "inbound username and password go together")
        if not self.inbound_algorithms or not all(supported(a) for a in self.inbound_algorithms):
            raise SettingsError(
                "inbound_algorithms", f"{self.inbound_algorithms!r}: use SHA-256, MD5"
            )
        positive = {
            "max_calls_per_second": self.max_calls_per_second,
            "max_concurrent_calls": self.max_concurrent_calls,
            "requests_per_second_per_source": self.requests_per_second_per_source,
        }
        for name, value in positive.items():
            if not value > 0 or math.isinf(value):
                raise SettingsError(name, f"{value} must be a positive number")
        if self.block_after < 0 or math.isinf(self.block_after):
            raise SettingsError("block_after", f"{self.block_after} must be >= 0")
        if not self.block_seconds > 0 or math.isinf(self.block_seconds):
            raise SettingsError("block_seconds", f"{self.block_seconds} must be a positive number")
        if self.auth_max_failures < 0:
            raise SettingsError("auth_max_failures", f"{self.auth_max_failures} must be >= 0")
        if not self.auth_lockout_seconds > 0 or math.isinf(self.auth_lockout_seconds):
            raise SettingsError(
                "auth_lockout_seconds", f"{self.auth_lockout_seconds} must be a positive number"
            )
        if any(c in self.user_agent for c in "\r\n"):
            raise SettingsError("user_agent", "must be one line")
        if self.options_interval < 0 or math.isinf(self.options_interval):
            raise SettingsError("options_interval", f"{self.options_interval} must be >= 0")
        if not 1024 <= self.max_message_bytes <= 65535:
            raise SettingsError("max_message_bytes", f"{self.max_message_bytes}: 1024 to 65535")

    @property
    def source_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        sources = self.accepted_sources or tuple(t.host for t in self.sbc)
        return tuple(ipaddress.ip_network(s, strict=False) for s in sources)


__all__ = ["SettingsError", "TrunkSettings"]
