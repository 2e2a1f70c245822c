"""Rate limits (sans-I/O: time is an argument).

- ``TokenBucket``: one bucket (a rate and a burst).
- ``KeyedLimiter``: one bucket per key (a source address, a device), in a bounded LRU:
  a flood of new keys (spoofed sources) forgets the least recently seen keys instead
  of growing without bound. A forgotten key starts again with a full burst.
- ``FloodGuard``: a ``KeyedLimiter`` that also puts a key on a block list once it has
  been over its rate for ``block_after`` seconds, for ``block_seconds``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

#: Keys a limiter tracks by default before it forgets the least recently seen.
DEFAULT_MAX_KEYS = 10_000


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated: float | None = None

    def _refill(self, now: float) -> None:
        if self._updated is not None and now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        if self._updated is None or now > self._updated:
            self._updated = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        self._refill(now)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there (0 when they are now)."""
        self._refill(now)
        missing = cost - self._tokens
        if missing <= 0:
            return 0.0
        if self.rate <= 0:
            return math.inf
        return missing / self.rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self.burst


class KeyedLimiter:
    """A token bucket per key; at most ``max_keys`` buckets (least recently used
    forgotten first)."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate {rate} must be a positive number")
        if burst < 1:
            raise ValueError(f"burst {burst} must be at least 1")
        if max_keys < 1:
            raise ValueError(f"max_keys {max_keys} must be at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        return self._bucket(key).allow(now, cost)

    def check(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` from ``key``'s bucket: 0.0 when allowed, else the seconds
        until it would be (nothing is taken then)."""
        bucket = self._bucket(key)
        if bucket.allow(now, cost):
            return 0.0
        return max(bucket.retry_after(now, cost), 1e-3)


class Verdict(Enum):
    ALLOWED = "allowed"
    #: Over the rate: this one is refused.
    LIMITED = "limited"
    #: On the block list: everything from the key is dropped until the block ends.
    BLOCKED = "blocked"


@dataclass
class _Offence:
    #: Start of the current stretch of refusals (none more than a second apart).
    since: float
    last: float


class FloodGuard:
    """Per-key rate limit plus a block list: a key refused at least once a second for
    ``block_after`` seconds is blocked for ``block_seconds``; ``block_after`` 0 means
    never. Both maps are bounded by ``max_keys``."""

    #: Refusals further apart than this start a new stretch.
    GAP = 1.0

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        block_after: float = 0.0,
        block_seconds: float = 60.0,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if block_after < 0 or math.isinf(block_after):
            raise ValueError(f"block_after {block_after} must be >= 0")
        if not block_seconds > 0 or math.isinf(block_seconds):
            raise ValueError(f"block_seconds {block_seconds} must be a positive number")
        self.limiter = KeyedLimiter(rate, burst, max_keys=max_keys)
        self.block_after = block_after
        self.block_seconds = block_seconds
        self.max_keys = max_keys
        self._offences: OrderedDict[str, _Offence] = OrderedDict()
        #: key -> when its block ends
        self._blocked: dict[str, float] = {}
        #: Blocks put in place so far (a key blocked twice counts twice).
        self.blocks = 0

    def blocked_until(self, key: str, now: float) -> float | None:
        """When ``key``'s block ends, or None when it is not blocked (an expired
        block is lifted here)."""
        until = self._blocked.get(key)
        if until is None:
            return None
        if now >= until:
            del self._blocked[key]
            return None
        return until

    def blocked_keys(self, now: float) -> list[str]:
        """The keys blocked at ``now`` (expired blocks are lifted)."""
        for key in [k for k, until in self._blocked.items() if now >= until]:
            del self._blocked[key]
        return list(self._blocked)

    def check(self, key: str, now: float, cost: float = 1.0, *, may_block: bool = True) -> Verdict:
        """Take ``cost`` from ``key``'s bucket. ``may_block`` False: the key is only
        rate-limited, never blocked."""
        if self._blocked and self.blocked_until(key, now) is not None:
            return Verdict.BLOCKED
        if self.limiter.allow(key, now, cost):
            return Verdict.ALLOWED
        if self.block_after > 0 and may_block:
            offence = self._offences.get(key)
            if offence is None or now - offence.last > self.GAP:
                offence = _Offence(now, now)
                self._offences[key] = offence
                while len(self._offences) > self.max_keys:
                    self._offences.popitem(last=False)
            offence.last = now
            self._offences.move_to_end(key)
            if now - offence.since >= self.block_after:
                del self._offences[key]
                if len(self._blocked) >= self.max_keys:
                    self.blocked_keys(now)
                if len(self._blocked) < self.max_keys:
                    self._blocked[key] = now + self.block_seconds
                    self.blocks += 1
                    return Verdict.BLOCKED
        return Verdict.LIMITED


__all__ = ["DEFAULT_MAX_KEYS", "FloodGuard", "KeyedLimiter", "TokenBucket", "Verdict"]
