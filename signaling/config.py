"""Settings: built-in defaults, then a TOML file, then ANRUF_* environment, then flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from voice.relay.control_auth import check_relay_secret


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    #: "auto" (uvloop when installed), "uvloop" or "asyncio".
    event_loop: str = "auto"
    data_dir: Path = Path("data")
    #: SQLAlchemy URL; empty means an SQLite file in data_dir.
    database_url: str = ""
    #: PostgreSQL connections a node keeps open, and how many more it may open in a
    #: burst (each closed again when it is returned: costly for both sides).
    database_pool_size: int = 20
    database_max_overflow: int = 20
    #: Region used to read numbers written in national format.
    default_region: str = "DE"

    # Verification codes
    code_ttl: float = 300.0
    code_attempts: int = 5
    code_sends_per_hour: int = 5
    #: Numbers starting with this E.164 prefix verify with test_code and get no SMS.
    test_number_prefix: str = ""
    test_code: str = ""
    #: "console" (the code goes to the log) or "carrier" (an sms.send event to the
    #: operator of the number, POSTed to its sms_url; signaling/identity/senders.py).
    sms_sender: str = "console"
    #: With sms_sender "carrier": the operator_id that sends codes to numbers no
    #: operator provisioned; empty refuses them (503 code_delivery_failed).
    sms_default_operator: str = ""

    # Calls
    ring_timeout: float = 45.0
    #: How long a call waits for a device whose WebSocket dropped.
    reconnect_grace: float = 10.0
    media_timeout: float = 20.0

    # Media relay: which address ICE binds and announces (never the wildcard).
    media_bind_address: str = "127.0.0.1"
    media_announce_address: str = ""
    #: UDP ports the relay's media may use (firewalls open them); 0, 0 = any.
    media_port_min: int = 0
    media_port_max: int = 0
    #: STUN/TURN URLs for the relay; empty on loopback. Never a public default.
    ice_servers: tuple[str, ...] = ()
    #: "forward" (Opus packets forwarded, never decoded) or "transcode" (aiortc's
    #: MediaRelay decodes and re-encodes every frame: a baseline for load tests only).
    relay_mode: str = "forward"
    #: Relay worker processes: -1 = one per core, N = N workers, 0 = in this process.
    relay_workers: int = -1

    # WebSocket limits
    ws_max_message_bytes: int = 64 * 1024
    ws_messages_per_second: float = 20.0
    ws_message_burst: int = 40
    ws_heartbeat: float = 20.0

    # Operator webhooks: delivery of the event outbox (signaling/carrier/delivery.py)
    #: Ordering keys delivered at the same time (one key is always sequential).
    webhook_concurrency: int = 16
    #: Seconds an operator has to answer one POST (a claimed event's lease is twice this).
    webhook_timeout: float = 10.0
    #: Retry delay after the first failure; doubles per attempt, with jitter.
    webhook_backoff_base: float = 1.0
    webhook_backoff_max: float = 600.0
    #: Events still undelivered this many seconds after they were created are dead.
    webhook_max_age: float = 86400.0
    #: How often the outbox is checked when nothing notified the worker.
    webhook_poll_interval: float = 0.5

    # SIP trunk to the mobile operator's SBC (signaling/sip, docs/sip.md)
    #: HOST:PORT for UDP and TCP, e.g. "127.0.0.1:5060"; empty = no trunk.
    sip_listen: str = ""
    sip_transports: tuple[str, ...] = ("udp", "tcp")
    #: Where INVITE and OPTIONS go, in order: "udp:HOST:PORT" or "tcp:HOST:PORT".
    sip_sbc: tuple[str, ...] = ()
    #: IPs or CIDRs that may send us requests; empty = the SBC hosts.
    sip_accepted_sources: tuple[str, ...] = ()
    #: Host part of our From/To URIs and realm of our digest challenges.
    sip_domain: str = "anruf.invalid"
    #: Credentials for the SBC's 401/407 challenges.
    sip_username: str = ""
    sip_password: str = ""
    #: When set, the SBC's INVITEs are challenged (digest, SHA-256 and MD5).
    sip_inbound_username: str = ""
    sip_inbound_password: str = ""
    sip_inbound_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    sip_max_calls_per_second: float = 10.0
    sip_max_concurrent_calls: int = 100
    #: OPTIONS keep-alive to each SBC target; 0 = none (the trunk is always up).
    sip_options_interval: float = 30.0
    sip_max_message_bytes: int = 16384
    #: Messages per second (requests and responses) from one source IP before we
    #: drop them (and 503 an accepted source's requests).
    sip_requests_per_second: float = 50.0
    #: Server / User-Agent header of the trunk's messages; empty = none.
    sip_user_agent: str = ""
    #: Failed digest responses from one source and username before that pair is
    #: locked out for sip_auth_lockout_seconds; 0 = never.
    sip_auth_max_failures: int = 5
    sip_auth_lockout_seconds: float = 60.0

    # Several nodes (docs/operations.md)
    #: redis://HOST:PORT/DB shared by the nodes; empty = one node, in-process bus.
    redis_url: str = ""
    #: This node's name in logs and in the cluster; empty = HOST:PORT.
    node_name: str = ""
    #: Seconds between a node's heartbeats, and of silence after which it is dead.
    node_heartbeat: float = 1.0
    node_dead_after: float = 5.0
    #: After SIGTERM: how long calls in progress may go on before they are ended.
    drain_timeout: float = 300.0
    #: Where relay legs live: "local" (relay_workers on this host) or "registry"
    #: (relay hosts registered in Redis by `anruf relay`; needs redis_url).
    relay_source: str = "local"

    # Relay hosts: `anruf relay` (docs/architecture.md, "Relay hosts")
    #: HOST:PORT where a relay host takes control connections from signaling nodes.
    relay_control_listen: str = "127.0.0.1:7400"
    #: HOST:PORT the nodes connect to, as registered; empty = relay_control_listen.
    relay_control_announce: str = ""
    #: The relay host's id in Redis (key anruf:relay:<id>); empty = its control address.
    relay_host_id: str = ""
    #: Legs a relay host holds before it takes no new calls; 0 = no limit.
    relay_capacity: int = 1000
    #: Seconds between a relay host's registrations (and nodes' look-ups of them),
    #: and after which a registration not refreshed expires.
    relay_heartbeat: float = 1.0
    relay_host_ttl: float = 3.0
    #: After SIGTERM: how long a relay host's calls may go on before it stops.
    relay_drain_timeout: float = 30.0
    #: Shared by the relay hosts and the nodes with relay_source "registry" (at
    #: least 16 characters): a control connection that does not prove it knows it
    #: is refused. Give it in the config file or ANRUF_RELAY_SECRET.
    relay_secret: str = ""

    # Toll-fraud guards on calls to phone numbers (signaling/carrier/policy.py)
    #: E.164 prefixes no call may reach whatever the bundle (e.g. "+881" satellite).
    blocked_destinations: tuple[str, ...] = ()
    #: Calls and talk minutes to phone numbers per subscriber and rolling hour, for
    #: bundles that set none of their own; 0 = no limit.
    max_phone_calls_per_hour: int = 0
    max_phone_minutes_per_hour: int = 0

    # Abuse and overload limits (signaling/api/limits.py, docs/protocol.md, docs/sip.md)
    #: IPs or CIDRs of reverse proxies whose X-Forwarded-For names the client;
    #: empty = the peer address is the source.
    trusted_proxies: tuple[str, ...] = ()
    #: POST /v1/verification per source address (codes sent cost money).
    source_code_sends_per_hour: float = 30.0
    source_code_send_burst: int = 10
    #: POST /v1/devices (code attempts) per source address, across numbers.
    source_code_attempts_per_hour: float = 60.0
    source_code_attempt_burst: int = 20
    #: call.invite per device.
    call_attempts_per_minute: float = 10.0
    call_attempt_burst: int = 5
    #: A SIP source over sip_requests_per_second for this many seconds is blocked
    #: (its datagrams and connections dropped unparsed) for sip_block_seconds;
    #: 0 = never block. Sources in sip_accepted_sources are never blocked.
    sip_block_after: float = 2.0
    sip_block_seconds: float = 60.0
    #: Calls in progress on this node before new ones are refused; 0 = no limit.
    max_calls: int = 0
    #: Event-loop lag (seconds) above which this node is overloaded: new calls are
    #: refused and HTTP requests get 503 (not health and metrics); 0 = never.
    overload_loop_lag: float = 0.25

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'anruf.sqlite3'}"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


class ConfigError(ValueError):
    pass


def _coerce(name: str, kind: Any, value: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name in ("int",):
            return int(value)
        if kind_name in ("float",):
            return float(value)
        if kind_name == "Path":
            return Path(value)
        if kind_name.startswith("tuple"):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: {value!r} is not a valid {kind_name}") from exc


def load_config(
    file: Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Defaults < file (TOML) < ANRUF_* environment < explicit overrides (flags)."""
    environ = dict(os.environ) if environ is None else environ
    known = {f.name: f.type for f in fields(Config)}
    values: dict[str, Any] = {}
    if file is None and environ.get("ANRUF_CONFIG"):
        file = Path(environ["ANRUF_CONFIG"])
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"config file {file}: unknown setting {key!r}")
            values[key] = _coerce(key, known[key], value)
    for key, kind in known.items():
        env_value = environ.get(f"ANRUF_{key.upper()}")
        if env_value is not None:
            values[key] = _coerce(key, kind, env_value)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in known:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, known[key], value)
    config = Config(**values)
    _check(config)
    return config


def _check(config: Config) -> None:
    """Settings that only make sense together; ConfigError before anything starts."""
    if config.relay_source not in ("local", "registry"):
        raise ConfigError(f"relay_source must be local or registry, not {config.relay_source!r}")
    if config.relay_source == "registry":
        if not config.redis_url:
            raise ConfigError('relay_source "registry" finds relay hosts in Redis: set redis_url')
        try:
            check_relay_secret(config.relay_secret)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


__all__ = ["Config", "ConfigError", "load_config"]
