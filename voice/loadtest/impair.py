"""Network impairment on the media path: an in-process UDP proxy that drops and delays RTP.

This kernel has no netem, so `anruf loadtest --impair loss=5%,jitter=30ms,delay=50ms`
puts a userspace forwarder between the load generator's endpoints and the relay:

- `Impairment`: what to do (loss fraction, one-way delay, jitter), parsed from a spec.
- `ImpairmentSchedule`: the sans-I/O core. Fed the arrival time of a packet, it
  returns when to deliver it, or None to drop it. Seeded, so runs repeat.
- `ImpairmentProxy`: the asyncio wrapper on 127.0.0.1. `rewrite_sdp` points the
  relay's ICE candidates in an SDP from the server at proxy ports, and
  `rewrite_client_sdp` does the same for a client's candidates in the SDP it
  sends the server; each client reaches the relay from its own upstream socket.

Only RTP and RTCP (SRTP/SRTCP: first byte 128..191, RFC 7983) are impaired;
STUN and DTLS pass at once, so ICE and the DTLS handshake complete as they
would on a lossy network with a working control path. Like netem's uniform
jitter, delayed packets may overtake each other (reordering).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import socket
from dataclasses import dataclass, field, fields

__all__ = [
    "DirectionStats",
    "Impairment",
    "ImpairmentProxy",
    "ImpairmentSchedule",
    "ProxyStats",
    "is_rtp_or_rtcp",
]

PROXY_HOST = "127.0.0.1"
# Larger than any datagram WebRTC sends on loopback.
MAX_DATAGRAM = 65535

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


@dataclass(frozen=True)
class Impairment:
    """Loss (a fraction, 0..1), one-way delay and jitter (seconds) applied per packet."""

    loss: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "delay", "jitter"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"impairment {name} must be a finite number >= 0, not {value!r}")
        if self.loss > 1:
            raise ValueError(f"impairment loss must be a fraction 0..1, not {self.loss!r}")

    def __bool__(self) -> bool:
        return bool(self.loss or self.delay or self.jitter)

    def __str__(self) -> str:
        if not self:
            return "none"
        return (
            f"loss={self.loss * 100:g}%,delay={self.delay * 1000:g}ms,"
            f"jitter={self.jitter * 1000:g}ms"
        )

    @classmethod
    def parse(cls, spec: str) -> Impairment:
        """Parse "loss=5%,jitter=30ms,delay=50ms" (any order, any subset).

        loss: a percentage ("5%") or a fraction ("0.05"). delay, jitter: with
        a unit ("50ms", "0.05s", "500us") or bare seconds ("0.05"). An empty
        spec or "none" is no impairment.
        """
        text = spec.strip()
        if text.lower() in ("", "none", "off"):
            return cls()
        values: dict[str, float] = {}
        known = {f.name for f in fields(cls)}
        for item in text.split(","):
            key, sep, raw = item.partition("=")
            key, raw = key.strip().lower(), raw.strip().lower()
            if not sep or not key or not raw:
                raise ValueError(
                    f"impairment {spec!r}: expected key=value items like "
                    f"loss=5%,delay=50ms,jitter=30ms; got {item.strip()!r}"
                )
            if key not in known:
                raise ValueError(
                    f"impairment {spec!r}: unknown key {key!r} (known: loss, delay, jitter)"
                )
            if key in values:
                raise ValueError(f"impairment {spec!r}: {key} given twice")
            values[key] = _parse_loss(spec, raw) if key == "loss" else _parse_time(spec, key, raw)
        return cls(**values)


def _parse_loss(spec: str, raw: str) -> float:
    match = re.fullmatch(_NUMBER + r"\s*(%?)", raw)
    if match is None:
        raise ValueError(f"impairment {spec!r}: loss {raw!r} is not a percentage or fraction")
    value = float(match.group(1))
    if match.group(2):
        value /= 100.0
    if value > 1:
        raise ValueError(
            f"impairment {spec!r}: loss {raw!r} is above 100 % "
            "(give a fraction like 0.05 or a percentage like 5%)"
        )
    return value


def _parse_time(spec: str, key: str, raw: str) -> float:
    match = re.fullmatch(_NUMBER + r"\s*([a-zµ]*)", raw)
    if match is None or match.group(2) not in _TIME_UNITS:
        raise ValueError(
            f"impairment {spec!r}: {key} {raw!r} is not a duration like 50ms, 0.05s or 0.05"
        )
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


class ImpairmentSchedule:
    """When to deliver each packet (sans-I/O: the caller passes the time).

    Loss is independent per packet (Bernoulli). A delivered packet is held
    for delay + a uniform jitter in [-jitter, +jitter] (netem's default
    distribution), never less than zero; so packets may be reordered.
    """

    def __init__(self, impairment: Impairment, seed: int = 0) -> None:
        self.impairment = impairment
        self._random = random.Random(seed)

    def schedule(self, now: float) -> float | None:
        """Delivery time of a packet arriving at `now`, or None if it is dropped."""
        impairment = self.impairment
        if impairment.loss and self._random.random() < impairment.loss:
            return None
        hold = impairment.delay
        if impairment.jitter:
            hold += self._random.uniform(-impairment.jitter, impairment.jitter)
        return now + max(0.0, hold)


def is_rtp_or_rtcp(datagram: bytes) -> bool:
    """RFC 7983 demultiplexing: 128..191 is RTP/RTCP; STUN is 0..3, DTLS 20..63."""
    return bool(datagram) and 128 <= datagram[0] <= 191


@dataclass
class DirectionStats:
    """Datagrams through the proxy in one direction.

    forwarded: sent on (at once or later); dropped: lost on purpose;
    delayed: held before sending (part of forwarded once sent); passed:
    not RTP/RTCP (STUN, DTLS), forwarded untouched (part of forwarded).
    """

    forwarded: int = 0
    dropped: int = 0
    delayed: int = 0
    passed: int = 0

    @property
    def impaired(self) -> int:
        """RTP/RTCP datagrams that went through the schedule."""
        return self.forwarded - self.passed + self.dropped

    @property
    def loss_fraction(self) -> float:
        return self.dropped / self.impaired if self.impaired else 0.0


@dataclass
class ProxyStats:
    """upstream: client → relay; downstream: relay → client."""

    upstream: DirectionStats = field(default_factory=DirectionStats)
    downstream: DirectionStats = field(default_factory=DirectionStats)

    def as_dict(self) -> dict[str, int]:
        """Flat counters ("upstream_dropped", ...): easy to sum over workers or to print."""
        flat: dict[str, int] = {}
        for name in ("upstream", "downstream"):
            direction: DirectionStats = getattr(self, name)
            for counter in fields(direction):
                flat[f"{name}_{counter.name}"] = getattr(direction, counter.name)
        return flat


class _StandIn:
    """A proxy socket on 127.0.0.1 standing for one real address (of the relay or a client).

    A datagram arriving here from y is sent to `real` from the stand-in of y
    on the other side, so each party only ever sees the other's stand-in.
    """

    def __init__(self, real: tuple[str, int], for_relay: bool, now: float) -> None:
        self.real = real
        self.for_relay = for_relay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((PROXY_HOST, 0))
        self.address: tuple[str, int] = self.sock.getsockname()
        self.last_activity = now


class ImpairmentProxy:
    """An impairing UDP proxy on 127.0.0.1 between WebRTC clients and the relay.

    Every SDP the server sends a client (the relay's answer to the client's
    offer, or the relay's offer) goes through `rewrite_sdp`: each relay
    candidate is replaced by a proxy port standing for it. Every SDP a client
    sends the server (its offer, or its answer) goes through
    `rewrite_client_sdp`: each client candidate is replaced by a proxy port
    standing for the client, which is also the client's upstream socket.

    Both are needed: ICE checks run both ways, and a relay that knows a
    client's real address checks it directly and may nominate that pair
    (aioice nominates the first pair that succeeds), bypassing the proxy.
    Through both rewrites each side knows only the other's stand-in, so the
    one path ICE finds runs through the proxy, and every datagram from a
    client to a relay port leaves from that client's own upstream socket;
    replies come back through the proxy port the client sent to. A datagram
    from an address no SDP named gets a stand-in on first sight.

    With `both_directions=False` only client → relay is impaired. Stand-ins
    idle for `idle_timeout` seconds are closed.
    """

    def __init__(
        self,
        impairment: Impairment,
        *,
        seed: int = 0,
        both_directions: bool = True,
        idle_timeout: float = 120.0,
    ) -> None:
        self.impairment = impairment
        self.both_directions = both_directions
        self.idle_timeout = idle_timeout
        self.stats = ProxyStats()
        self._upstream = ImpairmentSchedule(impairment, seed)
        self._downstream = ImpairmentSchedule(impairment, seed + 1)
        # (stands for a relay address?, real address) -> its stand-in
        self._stand_ins: dict[tuple[bool, tuple[str, int]], _StandIn] = {}
        self._own: set[tuple[str, int]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("the impairment proxy is closed")
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._reaper = asyncio.create_task(self._reap())

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for stand_in in self._stand_ins.values():
            self._release(stand_in)
        self._stand_ins.clear()
        self._own.clear()

    async def __aenter__(self) -> ImpairmentProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def relay_ports(self) -> dict[tuple[str, int], tuple[str, int]]:
        """Relay address → the proxy address clients use for it."""
        return {key[1]: s.address for key, s in self._stand_ins.items() if key[0]}

    @property
    def client_ports(self) -> dict[tuple[str, int], tuple[str, int]]:
        """Client address → the proxy address the relay sees it as (its upstream socket)."""
        return {key[1]: s.address for key, s in self._stand_ins.items() if not key[0]}

    # -- SDP ---------------------------------------------------------------

    def rewrite_sdp(self, sdp: str) -> str:
        """An SDP from the server: point the relay's UDP IPv4 candidates at proxy ports."""
        return self._rewrite(sdp, for_relay=True)

    def rewrite_client_sdp(self, sdp: str) -> str:
        """A client's SDP for the server: the relay sees the client's proxy ports instead."""
        return self._rewrite(sdp, for_relay=False)

    def _rewrite(self, sdp: str, *, for_relay: bool) -> str:
        if not self._started or self._closed:
            raise RuntimeError("the impairment proxy is not running (start() it first)")
        newline = "\r\n" if "\r\n" in sdp else "\n"
        lines = sdp.split(newline)
        # (m= line index, c= line index) of each media section, to fix the default address.
        sections: list[tuple[int, int | None]] = []
        for index, line in enumerate(lines):
            if line.startswith("m="):
                sections.append((index, None))
            elif line.startswith("c=") and sections:
                sections[-1] = (sections[-1][0], index)
            elif line.startswith("a=candidate:"):
                lines[index] = self._rewrite_candidate(line, for_relay)
        for m_index, c_index in sections:
            if c_index is None:
                continue
            c_fields = lines[c_index].split()
            m_fields = lines[m_index].split()
            if len(c_fields) < 3 or c_fields[1] != "IP4" or len(m_fields) < 2:
                continue
            if not m_fields[1].isdigit():
                continue
            stand_in = self._stand_ins.get((for_relay, (c_fields[2], int(m_fields[1]))))
            if stand_in is None:
                continue
            lines[c_index] = f"c=IN IP4 {stand_in.address[0]}"
            m_fields[1] = str(stand_in.address[1])
            lines[m_index] = " ".join(m_fields)
        return newline.join(lines)

    def _rewrite_candidate(self, line: str, for_relay: bool) -> str:
        # RFC 8839 §5.1: foundation component transport priority address port typ ...
        parts = line.split(" ")
        if len(parts) < 8 or parts[2].lower() != "udp" or not parts[5].isdigit():
            return line
        try:
            socket.inet_pton(socket.AF_INET, parts[4])
        except OSError:
            return line  # IPv6 or an mDNS name: left alone
        stand_in = self._stand_in((parts[4], int(parts[5])), for_relay)
        parts[4], parts[5] = stand_in.address[0], str(stand_in.address[1])
        return " ".join(parts)

    # -- datagrams ---------------------------------------------------------

    def _stand_in(self, real: tuple[str, int], for_relay: bool) -> _StandIn:
        assert self._loop is not None
        stand_in = self._stand_ins.get((for_relay, real))
        if stand_in is None:
            stand_in = _StandIn(real, for_relay, self._loop.time())
            self._stand_ins[(for_relay, real)] = stand_in
            self._own.add(stand_in.address)
            self._loop.add_reader(stand_in.sock.fileno(), self._readable, stand_in)
        return stand_in

    def _release(self, stand_in: _StandIn) -> None:
        self._own.discard(stand_in.address)
        if self._loop is not None and stand_in.sock.fileno() >= 0:
            self._loop.remove_reader(stand_in.sock.fileno())
        stand_in.sock.close()

    def _readable(self, stand_in: _StandIn) -> None:
        assert self._loop is not None
        now = self._loop.time()
        stand_in.last_activity = now
        # Arriving at a relay's stand-in: client -> relay.
        upstream = stand_in.for_relay
        stats = self.stats.upstream if upstream else self.stats.downstream
        schedule = self._upstream if upstream else self._downstream
        impair = upstream or self.both_directions
        for data, source in _receive_all(stand_in.sock):
            if source in self._own:
                continue  # never proxy to ourselves
            out = self._stand_in(source, not stand_in.for_relay)
            out.last_activity = now
            self._deliver(data, out.sock, stand_in.real, stats, schedule, impair=impair, now=now)

    def _deliver(
        self,
        data: bytes,
        sock: socket.socket,
        destination: tuple[str, int],
        stats: DirectionStats,
        schedule: ImpairmentSchedule,
        *,
        impair: bool,
        now: float,
    ) -> None:
        media = is_rtp_or_rtcp(data)
        if not media:
            stats.passed += 1
        if not media or not impair or not self.impairment:
            stats.forwarded += 1
            _send(sock, data, destination)
            return
        due = schedule.schedule(now)
        if due is None:
            stats.dropped += 1
            return
        stats.forwarded += 1
        if due <= now:
            _send(sock, data, destination)
            return
        stats.delayed += 1
        assert self._loop is not None
        handle: asyncio.TimerHandle | None = None

        def send_later() -> None:
            self._timers.discard(handle)
            if sock.fileno() >= 0:
                _send(sock, data, destination)

        handle = self._loop.call_at(due, send_later)
        self._timers.add(handle)

    async def _reap(self) -> None:
        assert self._loop is not None
        interval = max(0.5, min(10.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            limit = self._loop.time() - self.idle_timeout
            for key, stand_in in list(self._stand_ins.items()):
                if stand_in.last_activity < limit:
                    del self._stand_ins[key]
                    self._release(stand_in)


def _receive_all(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    received: list[tuple[bytes, tuple[str, int]]] = []
    while True:
        try:
            data, address = sock.recvfrom(MAX_DATAGRAM)
        except OSError:  # BlockingIOError: drained
            return received
        received.append((data, (address[0], address[1])))


def _send(sock: socket.socket, data: bytes, destination: tuple[str, int]) -> None:
    # A full socket buffer or a vanished peer loses the datagram, as a network would.
    with contextlib.suppress(OSError):
        sock.sendto(data, destination)
