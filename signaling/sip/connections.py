"""The TCP connection table of the SIP transport: who may hold a slot, for how long. Sans-I/O.

RFC 3261 §18.3 lets a server close connections it no longer wants; it says nothing
of how many a peer may hold. Without limits any address can open every slot and
keep it (a message that never ends, a Content-Length beyond the body, a silent
connection), and the operator's SBC is then refused. So, per connection:

- an idle timeout: no byte either way for ``idle_timeout`` seconds closes a
  stranger's connection, ``accepted_idle_timeout`` one of the SBC or one we opened
  (longer than any call may ring: the final answer to an INVITE goes back on the
  connection it came on); a CRLF keep-alive (RFC 5626 §3.5.1) counts as traffic;
- a message timeout: a message must be complete within ``message_timeout`` seconds
  of its first byte;

and at admission:

- at most ``max_per_source`` connections from one address that is not accepted;
- ``reserved_for_accepted`` of the ``max_connections`` inbound slots only accepted
  sources (the SBC addresses the trunk accepts) may take, and when even those are
  full, an accepted source takes the slot of the longest-idle connection from a
  source that is not accepted;
- connections we open (to the SBC) take no inbound slot and are never refused.

The table is fed events with the time as an argument and answers with verdicts and
deadlines (``next_deadline()``, ``expired(now)``); the asyncio transport closes the
sockets it names.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TcpLimits:
    """How many TCP connections, from whom, for how long."""

    #: Inbound connections at once, the reserved ones included.
    max_connections: int = 256
    #: Of those, slots that only accepted sources may take.
    reserved_for_accepted: int = 32
    #: Inbound connections at once from one address that is not an accepted source.
    max_per_source: int = 8
    #: Seconds without a byte either way before a stranger's connection is closed.
    idle_timeout: float = 120.0
    #: The same for an accepted source's connection and for those we opened.
    accepted_idle_timeout: float = 600.0
    #: Seconds from a message's first byte to its last before the connection is closed.
    message_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections: {self.max_connections} must be >= 1")
        if not 0 <= self.reserved_for_accepted <= self.max_connections:
            raise ValueError(
                f"reserved_for_accepted: {self.reserved_for_accepted} must be 0 to "
                f"max_connections ({self.max_connections})"
            )
        if self.max_per_source < 1:
            raise ValueError(f"max_per_source: {self.max_per_source} must be >= 1")
        for name in ("idle_timeout", "accepted_idle_timeout", "message_timeout"):
            value = getattr(self, name)
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name}: {value} must be a positive number")


class Refusal(enum.Enum):
    """Why an inbound connection was not admitted."""

    #: Every slot that this source may take is in use.
    FULL = "tcp_refused_full"
    #: The source holds ``max_per_source`` connections already.
    PER_SOURCE = "tcp_refused_per_source"


class Expiry(enum.Enum):
    """Why a connection is to be closed."""

    IDLE = "tcp_idle_closed"
    MESSAGE = "tcp_message_timeout"


@dataclass(frozen=True)
class Admission:
    """The verdict on a new inbound connection: its id, or why not; and a connection
    to close to make room for it (an accepted source took its slot)."""

    connection: int | None
    refused: Refusal | None = None
    evicted: int | None = None


@dataclass
class _Entry:
    host: str
    inbound: bool
    accepted: bool
    last_activity: float
    #: When the first byte of the message being read arrived; None between messages.
    message_started: float | None = None


class ConnectionTable:
    """The open TCP connections, their sources and deadlines."""

    def __init__(self, limits: TcpLimits | None = None) -> None:
        self.limits = limits or TcpLimits()
        self._entries: dict[int, _Entry] = {}
        self._per_source: dict[str, int] = {}
        self._inbound = 0
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, connection: object) -> bool:
        return connection in self._entries

    @property
    def inbound(self) -> int:
        """Inbound connections open (those we opened are not counted)."""
        return self._inbound

    def from_source(self, host: str) -> int:
        """Inbound connections open from ``host``."""
        return self._per_source.get(host, 0)

    def open_inbound(self, host: str, *, accepted: bool, now: float) -> Admission:
        """A peer connected to us. ``accepted``: ``host`` is an accepted source."""
        limits = self.limits
        evicted: int | None = None
        if not accepted:
            if self._per_source.get(host, 0) >= limits.max_per_source:
                return Admission(None, Refusal.PER_SOURCE)
            if self._inbound >= limits.max_connections - limits.reserved_for_accepted:
                return Admission(None, Refusal.FULL)
        elif self._inbound >= limits.max_connections:
            evicted = self._longest_idle_unaccepted()
            if evicted is None:
                return Admission(None, Refusal.FULL)
            self.close(evicted)
        connection = self._add(_Entry(host, True, accepted, now))
        self._inbound += 1
        self._per_source[host] = self._per_source.get(host, 0) + 1
        return Admission(connection, None, evicted)

    def open_outbound(self, host: str, *, now: float) -> int:
        """We connected to a peer (the SBC): never refused, no inbound slot taken."""
        return self._add(_Entry(host, False, True, now))

    def received(
        self, connection: int, now: float, *, in_message: bool, completed: int = 0
    ) -> None:
        """Bytes arrived, completing ``completed`` messages; ``in_message``: a message
        is now partly read (the parser holds bytes of one). The clock of a message
        starts with the bytes that began it: now, unless the one being read began in
        an earlier chunk (a busy peer's messages that never end on a chunk boundary
        each get their own ``message_timeout``)."""
        entry = self._entries.get(connection)
        if entry is None:
            return
        entry.last_activity = now
        if not in_message:
            entry.message_started = None
        elif entry.message_started is None or completed:
            entry.message_started = now

    def sent(self, connection: int, now: float) -> None:
        """Bytes went out: the connection is not idle."""
        entry = self._entries.get(connection)
        if entry is not None:
            entry.last_activity = now

    def close(self, connection: int) -> None:
        """The connection is gone (closed by either side); forgetting it twice is fine."""
        entry = self._entries.pop(connection, None)
        if entry is None or not entry.inbound:
            return
        self._inbound -= 1
        left = self._per_source[entry.host] - 1
        if left:
            self._per_source[entry.host] = left
        else:
            del self._per_source[entry.host]

    def deadline(self, connection: int) -> float | None:
        """When ``connection`` expires unless something arrives."""
        entry = self._entries.get(connection)
        return None if entry is None else self._deadline(entry)

    def next_deadline(self) -> float | None:
        """The earliest time at which some connection expires, if any is open."""
        return min((self._deadline(e) for e in self._entries.values()), default=None)

    def expired(self, now: float) -> list[tuple[int, Expiry]]:
        """The connections to close at ``now`` and why; they are forgotten here."""
        due: list[tuple[int, Expiry]] = []
        limits = self.limits
        for connection, entry in self._entries.items():
            if (
                entry.message_started is not None
                and now >= entry.message_started + limits.message_timeout
            ):
                due.append((connection, Expiry.MESSAGE))
            elif now >= entry.last_activity + self._idle_timeout(entry):
                due.append((connection, Expiry.IDLE))
        for connection, _ in due:
            self.close(connection)
        return due

    def _idle_timeout(self, entry: _Entry) -> float:
        return self.limits.accepted_idle_timeout if entry.accepted else self.limits.idle_timeout

    def _deadline(self, entry: _Entry) -> float:
        idle = entry.last_activity + self._idle_timeout(entry)
        if entry.message_started is None:
            return idle
        return min(idle, entry.message_started + self.limits.message_timeout)

    def _add(self, entry: _Entry) -> int:
        connection = self._next_id
        self._next_id += 1
        self._entries[connection] = entry
        return connection

    def _longest_idle_unaccepted(self) -> int | None:
        candidates = [
            (entry.last_activity, connection)
            for connection, entry in self._entries.items()
            if entry.inbound and not entry.accepted
        ]
        return min(candidates)[1] if candidates else None


__all__ = ["Admission", "ConnectionTable", "Expiry", "Refusal", "TcpLimits"]
