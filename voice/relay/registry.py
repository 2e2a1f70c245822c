"""Relay hosts in Redis: their registrations, and the choice of one for a call.

A relay host (`anruf relay`, voice/relay/host.py) writes its registration
every heartbeat to the key ``anruf:relay:<id>`` as a JSON object that
expires after a few heartbeats, and deletes it when it stops cleanly:

    {"id": "relay-a", "control": "10.0.0.5:7400", "media": "203.0.113.7",
     "legs": 12, "calls": 6, "cores": 8, "capacity": 1000,
     "state": "up" | "draining", "pid": 4242, "started": 1764049200.5}

Signaling nodes read every registration (`RedisHostDirectory`), keep a
control connection to each host that is up, and place a new call on the
least-loaded one (`choose`). The parsing and the choice are sans-I/O; only
the two small classes at the end talk to Redis.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = [
    "KEY_PREFIX",
    "Candidate",
    "HostDirectory",
    "HostRecord",
    "RedisHostDirectory",
    "RedisRegistrar",
    "choose",
    "encode_record",
    "host_key",
    "parse_address",
    "parse_record",
]

logger = logging.getLogger(__name__)

KEY_PREFIX = "anruf:relay:"
UP = "up"
DRAINING = "draining"
_STATES = (UP, DRAINING)
_MAX_ID = 200


@dataclass(frozen=True)
class HostRecord:
    """One relay host's registration."""

    id: str
    control: str  # HOST:PORT of its control listener
    media: str  # the address its media candidates announce
    legs: int = 0
    calls: int = 0
    cores: int = 1
    capacity: int = 0  # legs it takes before it refuses new calls; 0 = no limit
    state: str = UP
    pid: int = 0
    started: float = 0.0

    @property
    def accepting(self) -> bool:
        return self.state == UP and (self.capacity <= 0 or self.legs < self.capacity)

    @property
    def control_address(self) -> tuple[str, int]:
        return parse_address(self.control)


def host_key(host_id: str) -> str:
    return KEY_PREFIX + host_id


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [ADDR]:PORT) to (host, port); ValueError when it is not one."""
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return host, port


def encode_record(record: HostRecord) -> str:
    return json.dumps(asdict(record), separators=(",", ":"))


def parse_record(raw: bytes | str) -> HostRecord:
    """A registration as stored; ValueError with the reason when it is not one."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"registration is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("registration is not a JSON object")

    def text(name: str, *, required: bool = True) -> str:
        value = data.get(name, "" if not required else None)
        if not isinstance(value, str) or (required and not value):
            raise ValueError(f"registration field {name!r} must be a non-empty string")
        return value

    def count(name: str, default: int) -> int:
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"registration field {name!r} must be a whole number >= 0")
        return value

    host_id = text("id")
    if len(host_id) > _MAX_ID:
        raise ValueError(f"registration id is longer than {_MAX_ID} characters")
    control = text("control")
    parse_address(control)
    state = data.get("state", UP)
    if state not in _STATES:
        raise ValueError(f"registration state {state!r} is not one of {', '.join(_STATES)}")
    started = data.get("started", 0.0)
    if isinstance(started, bool) or not isinstance(started, int | float):
        raise ValueError("registration field 'started' must be a number")
    return HostRecord(
        id=host_id,
        control=control,
        media=text("media", required=False),
        legs=count("legs", 0),
        calls=count("calls", 0),
        cores=count("cores", 1),
        capacity=count("capacity", 0),
        state=str(state),
        pid=count("pid", 0),
        started=float(started),
    )


# -- the choice (sans-I/O) ----------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A relay (worker process or host) that could take a new call.

    `load` counts the legs it holds (for a host: all nodes' legs, as far as
    this node knows); `capacity` 0 means no limit.
    """

    key: tuple[str, int]  # tie-break: the host id (or ""), then the worker's index
    load: int
    capacity: int = 0
    accepting: bool = True


def choose(candidates: Sequence[Candidate]) -> Candidate | None:
    """The accepting candidate with the lowest load (relative to its capacity), or None.

    A full candidate (load at or above a non-zero capacity) is passed over;
    ties go to the smallest key, so the choice is deterministic.
    """
    usable = [c for c in candidates if c.accepting and (c.capacity <= 0 or c.load < c.capacity)]
    if not usable:
        return None
    return min(usable, key=lambda c: (c.load / max(c.capacity, 1), c.load, c.key))


# -- Redis -------------------------------------------------------------------------


class HostDirectory(Protocol):
    """Where relay hosts are registered, as a signaling node reads them."""

    async def hosts(self) -> list[HostRecord]: ...

    async def close(self) -> None: ...


class RedisHostDirectory:
    """The relay hosts registered in Redis, as a signaling node reads them."""

    def __init__(self, url: str) -> None:
        if not url:
            raise ValueError("relay hosts from the registry need redis_url")
        import redis.asyncio as aioredis

        self.url = url
        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=5)
        self._bad: set[tuple[str, bytes]] = set()  # each bad value is logged once

    async def hosts(self) -> list[HostRecord]:
        """Every valid registration; a malformed one is logged and left out."""
        keys = [key async for key in self._redis.scan_iter(match=KEY_PREFIX + "*", count=500)]
        if not keys:
            return []
        values = await self._redis.mget(keys)
        found: list[HostRecord] = []
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue  # expired between SCAN and MGET
            name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
            try:
                record = parse_record(value)
                if host_key(record.id) != name:
                    raise ValueError(f"id {record.id!r} does not match the key")
            except ValueError as exc:
                marker = (name, bytes(value) if isinstance(value, bytes) else str(value).encode())
                if marker not in self._bad:
                    self._bad.add(marker)
                    logger.warning("relay registration %s ignored: %s", name, exc)
                continue
            found.append(record)
        return found

    async def close(self) -> None:
        await self._redis.aclose()


class RedisRegistrar:
    """A relay host's own registration: written every heartbeat, deleted on a clean stop."""

    def __init__(self, url: str, ttl: float) -> None:
        if not url:
            raise ValueError("a relay host needs redis_url to register")
        if ttl <= 0:
            raise ValueError(f"registration TTL must be positive, not {ttl}")
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=5)
        self._ttl_ms = max(1, round(ttl * 1000))

    async def current(self, host_id: str) -> HostRecord | None:
        raw = await self._redis.get(host_key(host_id))
        if raw is None:
            return None
        try:
            return parse_record(raw)
        except ValueError:
            return None

    async def register(self, record: HostRecord) -> None:
        await self._redis.set(host_key(record.id), encode_record(record), px=self._ttl_ms)

    async def remove(self, host_id: str) -> None:
        await self._redis.delete(host_key(host_id))

    async def close(self) -> None:
        await self._redis.aclose()
