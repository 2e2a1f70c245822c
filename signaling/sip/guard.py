"""Who may talk to the trunk, and how much. Sans-I/O: time is an argument.

- ``SourceGuard``: the accepted sources (IPs or CIDRs, the SBC hosts by default),
  the per-source flood control (``ratelimit.FloodGuard``: a request rate, then a
  block list for sources that are not accepted) and the pacing of the 503 an
  accepted source gets when it is over its rate. Every message is charged to its
  source before it is parsed, whatever it turns out to be: a response, a request
  or bytes that are not SIP at all.
- ``AuthGuard``: failed digest responses per (source, username); after
  ``max_failures`` of them in a row the pair is locked out for ``lockout_seconds``
  and its credentials are not even checked, so guessing a password from an
  accepted source costs minutes per handful of guesses, not 50 a second.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections import OrderedDict

from signaling.ratelimit import FloodGuard
from signaling.ratelimit import Verdict as RateVerdict

#: Sources (and source/username pairs) a guard remembers before it forgets the
#: least recently seen: a flood of spoofed sources cannot grow them without bound.
MAX_TRACKED_SOURCES = 4096

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Admission(enum.Enum):
    """What to do with one message from a source, decided before it is parsed."""

    #: Handle it.
    ADMITTED = "admitted"
    #: Over the source's rate: drop it (an accepted source may get a paced 503).
    LIMITED = "limited"
    #: The source is on the block list: drop it unparsed. ``newly`` below says
    #: whether this message put it there.
    BLOCKED = "blocked"


class SourceGuard:
    def __init__(
        self,
        networks: tuple[Network, ...],
        *,
        rate: float,
        block_after: float,
        block_seconds: float,
        max_keys: int = MAX_TRACKED_SOURCES,
    ) -> None:
        self.networks = networks
        self.max_keys = max_keys
        self._accepted: dict[str, bool] = {}
        self.flood = FloodGuard(
            rate,
            max(1, math.ceil(2 * rate)),
            block_after=block_after,
            block_seconds=block_seconds,
            max_keys=max_keys,
        )
        self._last_503: dict[str, float] = {}
        #: Whether the last ``charge`` that returned BLOCKED put the source on the list.
        self.newly_blocked = False

    def accepted(self, host: str) -> bool:
        """``host`` is one of the accepted sources (cached per host)."""
        known = self._accepted.get(host)
        if known is None:
            try:
                address = ipaddress.ip_address(host)
                known = any(address in network for network in self.networks)
            except ValueError:
                known = False
            if len(self._accepted) > self.max_keys:
                self._accepted.clear()
            self._accepted[host] = known
        return known

    def blocked(self, host: str, now: float) -> bool:
        """``host`` is on the block list (an expired block is lifted here)."""
        return self.flood.blocked_until(host, now) is not None

    def blocked_sources(self, now: float) -> list[str]:
        return self.flood.blocked_keys(now)

    def charge(self, host: str, now: float) -> Admission:
        """One message from ``host``, before it is parsed. A source that is not
        accepted and stays over its rate is blocked; an accepted one never is."""
        self.newly_blocked = False
        if self.blocked(host, now):
            return Admission.BLOCKED
        verdict = self.flood.check(host, now, may_block=not self.accepted(host))
        if verdict is RateVerdict.BLOCKED:
            self.newly_blocked = True
            return Admission.BLOCKED
        if verdict is RateVerdict.LIMITED:
            return Admission.LIMITED
        return Admission.ADMITTED

    def may_answer_503(self, host: str, now: float) -> bool:
        """At most one 503 a second to an accepted source over its rate; none to
        other sources (an answer would only feed a flood)."""
        if not self.accepted(host):
            return False
        last = self._last_503.get(host)
        if last is not None and now - last < 1.0:
            return False
        if len(self._last_503) > self.max_keys:
            self._last_503.clear()
        self._last_503[host] = now
        return True


class AuthGuard:
    """Failed digest responses per (source, username), and lockouts after them."""

    def __init__(
        self, max_failures: int, lockout_seconds: float, *, max_keys: int = MAX_TRACKED_SOURCES
    ) -> None:
        self.max_failures = max_failures
        self.lockout_seconds = lockout_seconds
        self.max_keys = max_keys
        self._failures: OrderedDict[tuple[str, str], int] = OrderedDict()
        #: (source, username) -> when its lockout ends
        self._locked: OrderedDict[tuple[str, str], float] = OrderedDict()

    def locked_out(self, source: str, username: str, now: float) -> bool:
        key = (source, username)
        until = self._locked.get(key)
        if until is None:
            return False
        if now >= until:
            del self._locked[key]
            return False
        return True

    def locked(self, now: float) -> list[tuple[str, str]]:
        """The (source, username) pairs locked out at ``now``."""
        for key in [k for k, until in self._locked.items() if now >= until]:
            del self._locked[key]
        return list(self._locked)

    def failed(self, source: str, username: str, now: float) -> bool:
        """A wrong digest response; True when this one locks the pair out."""
        if self.max_failures <= 0:
            return False
        key = (source, username)
        count = self._failures.pop(key, 0) + 1
        if count < self.max_failures:
            self._failures[key] = count
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
            return False
        self._locked[key] = now + self.lockout_seconds
        self._locked.move_to_end(key)
        while len(self._locked) > self.max_keys:
            self._locked.popitem(last=False)
        return True

    def succeeded(self, source: str, username: str) -> None:
        self._failures.pop((source, username), None)


__all__ = ["MAX_TRACKED_SOURCES", "Admission", "AuthGuard", "SourceGuard"]
