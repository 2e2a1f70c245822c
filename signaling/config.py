"""Settings: built-in defaults, then a TOML file, then ANRUF_* environment, then flags.

The settings are grouped in typed sections, each a frozen dataclass of its own
(``ServerSettings``, ``DatabaseSettings``, ``RelaySettings`` ...; ``SECTIONS`` lists
them in order). ``Config`` is all of them at once: it inherits every section, so its
fields stay flat (``config.relay_mode``, ``Config(relay_workers=0)``,
``ANRUF_RELAY_MODE``, ``relay_mode = "..."`` in the file) while a part that needs only
one section can say so in its signature (``def f(settings: RelaySettings)`` takes a
Config). Choices are ``Literal`` types, checked once when a Config is made, with an
error that names the setting and the choices; settings that only make sense together
are checked by their section's ``check`` when the configuration is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from voice.relay.control_auth import check_relay_secret

#: How `anruf serve` and `anruf relay` run their event loop.
EventLoop = Literal["auto", "uvloop", "asyncio"]
#: Where verification codes go (signaling/identity/senders.py).
SmsSender = Literal["console", "carrier"]
#: How the relay carries Opus between two WebRTC legs.
RelayMode = Literal["forward", "transcode"]
#: Where a node's relay legs live.
RelaySource = Literal["local", "registry"]


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Section:
    """A group of settings; ``SECTION`` is its name in docs and file tables."""

    SECTION: ClassVar[str] = ""


@dataclass(frozen=True)
class ServerSettings(Section):
    """The process: where it listens, its event loop, its files."""

    SECTION: ClassVar[str] = "server"

    host: str = "127.0.0.1"
    port: int = 8080
    #: "auto" (uvloop when installed), "uvloop" or "asyncio".
    event_loop: EventLoop = "auto"
    data_dir: Path = Path("data")
    #: Region used to read numbers written in national format.
    default_region: str = "DE"


@dataclass(frozen=True)
class DatabaseSettings(Section):
    """Persistence (signaling/store): SQLite in data_dir, or PostgreSQL."""

    SECTION: ClassVar[str] = "database"

    #: SQLAlchemy URL; empty means an SQLite file in data_dir.
    database_url: str = ""
    #: PostgreSQL connections a node keeps open, and how many more it may open in a
    #: burst (each closed again when it is returned: costly for both sides).
    database_pool_size: int = 20
    database_max_overflow: int = 20


@dataclass(frozen=True)
class IdentitySettings(Section):
    """Verification codes and their delivery (signaling/identity)."""

    SECTION: ClassVar[str] = "identity"

    code_ttl: float = 300.0
    code_attempts: int = 5
    code_sends_per_hour: int = 5
    #: Numbers starting with this E.164 prefix verify with test_code and get no SMS.
    test_number_prefix: str = ""
    test_code: str = ""
    #: "console" (the code goes to the log) or "carrier" (an sms.send event to the
    #: operator of the number, POSTed to its sms_url; signaling/identity/senders.py).
    sms_sender: SmsSender = "console"
    #: With sms_sender "carrier": the operator_id that sends codes to numbers no
    #: operator provisioned; empty refuses them (503 code_delivery_failed).
    sms_default_operator: str = ""


@dataclass(frozen=True)
class CallSettings(Section):
    """Calls (signaling/calls)."""

    SECTION: ClassVar[str] = "calls"

    ring_timeout: float = 45.0
    #: How long a call waits for a device whose WebSocket dropped.
    reconnect_grace: float = 10.0


@dataclass(frozen=True)
class MediaSettings(Section):
    """Media legs: which address ICE binds and announces (never the wildcard)."""

    SECTION: ClassVar[str] = "media"

    media_bind_address: str = "127.0.0.1"
    media_announce_address: str = ""
    #: UDP ports the relay's media may use (firewalls open them); 0, 0 = any.
    media_port_min: int = 0
    media_port_max: int = 0
    #: STUN/TURN URLs for the relay; empty on loopback. Never a public default.
    ice_servers: tuple[str, ...] = ()
    #: A leg that sends no RTP this long fails (media_timeout).
    media_timeout: float = 20.0


@dataclass(frozen=True)
class RelaySettings(Section):
    """The media relay: in this process, worker processes, or relay hosts
    (`anruf relay`, docs/architecture.md, "Relay hosts")."""

    SECTION: ClassVar[str] = "relay"

    #: "forward" (Opus packets forwarded, never decoded) or "transcode" (aiortc's
    #: MediaRelay decodes and re-encodes every frame: a baseline for load tests only).
    relay_mode: RelayMode = "forward"
    #: Relay worker processes: -1 = one per core, N = N workers, 0 = in this process.
    relay_workers: int = -1
    #: Where relay legs live: "local" (relay_workers on this host) or "registry"
    #: (relay hosts registered in Redis by `anruf relay`; needs redis_url).
    relay_source: RelaySource = "local"
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


@dataclass(frozen=True)
class WebSocketSettings(Section):
    """Devices' WebSockets (signaling/ws.py)."""

    SECTION: ClassVar[str] = "websocket"

    ws_max_message_bytes: int = 64 * 1024
    ws_messages_per_second: float = 20.0
    ws_message_burst: int = 40
    ws_heartbeat: float = 20.0


@dataclass(frozen=True)
class WebhookSettings(Section):
    """Operator webhooks: delivery of the event outbox (signaling/carrier/delivery.py)."""

    SECTION: ClassVar[str] = "webhooks"

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


@dataclass(frozen=True)
class SipSettings(Section):
    """The SIP trunk to the mobile operator's SBC (signaling/sip). Each setting is a
    field of the trunk's ``TrunkSettings`` or ``TcpLimits``, described there and in
    docs/sip.md ("Configuration"); ``trunk_settings`` in signaling/app.py maps them."""

    SECTION: ClassVar[str] = "sip"

    #: HOST:PORT for UDP and TCP, e.g. "127.0.0.1:5060"; empty = no trunk.
    sip_listen: str = ""
    sip_transports: tuple[str, ...] = ("udp", "tcp")
    #: "udp:HOST:PORT" or "tcp:HOST:PORT", in order of preference.
    sip_sbc: tuple[str, ...] = ()
    sip_accepted_sources: tuple[str, ...] = ()
    sip_domain: str = "anruf.invalid"
    sip_username: str = ""
    sip_password: str = ""
    sip_inbound_username: str = ""
    sip_inbound_password: str = ""
    sip_inbound_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    sip_max_calls_per_second: float = 10.0
    sip_max_concurrent_calls: int = 100
    sip_options_interval: float = 30.0
    sip_max_message_bytes: int = 16384
    sip_requests_per_second: float = 50.0
    sip_user_agent: str = ""
    sip_auth_max_failures: int = 5
    sip_auth_lockout_seconds: float = 60.0
    sip_block_after: float = 2.0
    sip_block_seconds: float = 60.0
    sip_tcp_max_connections: int = 256
    sip_tcp_reserved_connections: int = 32
    sip_tcp_max_per_source: int = 8
    sip_tcp_idle_timeout: float = 120.0
    sip_tcp_accepted_idle_timeout: float = 600.0
    sip_tcp_message_timeout: float = 10.0


@dataclass(frozen=True)
class ClusterSettings(Section):
    """Several nodes (docs/operations.md)."""

    SECTION: ClassVar[str] = "cluster"

    #: redis://HOST:PORT/DB shared by the nodes; empty = one node, in-process bus.
    redis_url: str = ""
    #: This node's name in logs and in the cluster; empty = HOST:PORT.
    node_name: str = ""
    #: Seconds between a node's heartbeats, and of silence after which it is dead.
    node_heartbeat: float = 1.0
    node_dead_after: float = 5.0
    #: After SIGTERM: how long calls in progress may go on before they are ended.
    drain_timeout: float = 300.0


@dataclass(frozen=True)
class CarrierSettings(Section):
    """Toll-fraud guards on calls to phone numbers (signaling/carrier/policy.py)."""

    SECTION: ClassVar[str] = "carrier"

    #: E.164 prefixes no call may reach whatever the bundle (e.g. "+881" satellite).
    blocked_destinations: tuple[str, ...] = ()
    #: Calls and talk minutes to phone numbers per subscriber and rolling hour, for
    #: bundles that set none of their own; 0 = no limit.
    max_phone_calls_per_hour: int = 0
    max_phone_minutes_per_hour: int = 0


@dataclass(frozen=True)
class LimitsSettings(Section):
    """Abuse and overload limits (signaling/api/limits.py, docs/protocol.md)."""

    SECTION: ClassVar[str] = "limits"

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
    #: Calls in progress on this node before new ones are refused; 0 = no limit.
    max_calls: int = 0
    #: Event-loop lag (seconds) above which this node is overloaded: new calls are
    #: refused and HTTP requests get 503 (not health and metrics); 0 = never.
    overload_loop_lag: float = 0.25


#: The sections in the order of the documentation and of ``anruf serve --help``.
SECTIONS: tuple[type[Section], ...] = (
    ServerSettings,
    DatabaseSettings,
    IdentitySettings,
    CallSettings,
    MediaSettings,
    RelaySettings,
    WebSocketSettings,
    WebhookSettings,
    SipSettings,
    ClusterSettings,
    CarrierSettings,
    LimitsSettings,
)


@dataclass(frozen=True)
class Config(
    LimitsSettings,
    CarrierSettings,
    ClusterSettings,
    SipSettings,
    WebhookSettings,
    WebSocketSettings,
    RelaySettings,
    MediaSettings,
    CallSettings,
    IdentitySettings,
    DatabaseSettings,
    ServerSettings,
):
    """Every setting: all sections at once, with flat fields (``config.port``)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"{name} must be {_one_of(choices)}, not {value!r}")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'anruf.sqlite3'}"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def section_of(name: str) -> str:
    """The section a setting belongs to ("relay" for relay_mode)."""
    return _SECTION_OF[name]


def choices_of(name: str) -> tuple[str, ...]:
    """The words a setting may be (its Literal type's), or () for a free value."""
    return _CHOICES.get(name, ())


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]


_TYPES: dict[str, Any] = typing.get_type_hints(Config)
_SECTION_OF: dict[str, str] = {
    f.name: section.SECTION for section in SECTIONS for f in fields(section)
}
#: Settings whose value is one of a few words (their Literal type's arguments).
_CHOICES: dict[str, tuple[str, ...]] = {
    f.name: typing.get_args(_TYPES[f.name])
    for f in fields(Config)
    if typing.get_origin(_TYPES[f.name]) is Literal
}


def _coerce(name: str, kind: Any, value: Any) -> Any:
    if typing.get_origin(kind) is Literal:
        return str(value)  # checked against its choices when the Config is made
    kind_name = getattr(kind, "__name__", str(kind))
    try:
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind is Path:
            return Path(value)
        if typing.get_origin(kind) is tuple:
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
    """Defaults < file (TOML) < ANRUF_* environment < explicit overrides (flags).

    In the file, a setting is a top-level key (``relay_mode = "forward"``) or a key of
    its section's table (``[relay]`` then ``relay_mode = "forward"``)."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    if file is None and environ.get("ANRUF_CONFIG"):
        file = Path(environ["ANRUF_CONFIG"])
    if file is not None:
        values.update(_from_file(file))
    for key, kind in _TYPES.items():
        env_value = environ.get(f"ANRUF_{key.upper()}")
        if env_value is not None:
            values[key] = _coerce(key, kind, env_value)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _TYPES:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, _TYPES[key], value)
    config = Config(**values)
    for check in _CHECKS:
        check(config)
    return config


def _from_file(file: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {file}: {exc}") from exc
    values: dict[str, Any] = {}
    sections = {section.SECTION for section in SECTIONS}
    for key, value in data.items():
        if key in sections and isinstance(value, dict):
            for name, item in value.items():
                if name not in _TYPES:
                    raise ConfigError(f"config file {file}: unknown setting {name!r} in [{key}]")
                if _SECTION_OF[name] != key:
                    raise ConfigError(
                        f"config file {file}: {name} belongs in [{_SECTION_OF[name]}], not [{key}]"
                    )
                values[name] = _coerce(name, _TYPES[name], item)
            continue
        if key not in _TYPES:
            raise ConfigError(f"config file {file}: unknown setting {key!r}")
        values[key] = _coerce(key, _TYPES[key], value)
    return values


def _check_relay(settings: Config) -> None:
    """relay_source "registry" finds relay hosts in Redis and must prove the secret."""
    if settings.relay_source == "registry":
        if not settings.redis_url:
            raise ConfigError('relay_source "registry" finds relay hosts in Redis: set redis_url')
        try:
            check_relay_secret(settings.relay_secret)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


#: Settings that only make sense together; ConfigError before anything starts.
_CHECKS = (_check_relay,)


__all__ = [
    "SECTIONS",
    "CallSettings",
    "CarrierSettings",
    "ClusterSettings",
    "Config",
    "ConfigError",
    "DatabaseSettings",
    "EventLoop",
    "IdentitySettings",
    "LimitsSettings",
    "MediaSettings",
    "RelayMode",
    "RelaySettings",
    "RelaySource",
    "Section",
    "ServerSettings",
    "SipSettings",
    "SmsSender",
    "WebSocketSettings",
    "WebhookSettings",
    "choices_of",
    "load_config",
    "section_of",
]
