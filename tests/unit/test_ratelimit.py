"""The sans-I/O limiters (signaling/ratelimit.py) and the pure parts of the API
guards (signaling/api/limits.py): time is an argument, no sockets."""

from __future__ import annotations

import pytest

from signaling.api.limits import LoadGuard, client_address, parse_networks
from signaling.ratelimit import FloodGuard, KeyedLimiter, TokenBucket, Verdict


def test_token_bucket_burst_then_rate_and_retry_after() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(0.0) == pytest.approx(0.5)
    assert not bucket.allow(0.4)
    assert bucket.allow(0.5)
    assert bucket.full(10.0)
    # A clock that goes backwards gives nothing back.
    assert [bucket.allow(5.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(4.0)


def test_keyed_limiter_keys_are_independent_and_retry_after_is_exact() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=2)
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) == pytest.approx(1.0)
    assert limiter.check("b", 0.0) == 0.0  # another source is untouched
    assert limiter.check("a", 0.25) == pytest.approx(0.75)  # refusals take nothing
    assert limiter.check("a", 1.0) == 0.0


def test_keyed_limiter_memory_is_bounded() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=1, max_keys=100)
    for n in range(100_000):  # a spoofed-source flood
        limiter.allow(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(limiter) == 100
    # The least recently seen are forgotten first: a key just used survives.
    limiter.allow("keep", 0.0)
    for n in range(99):
        limiter.allow(f"x{n}", 0.0)
    assert not limiter.allow("keep", 0.0)  # still there, still empty


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys"), [(0.0, 1, 1), (-1.0, 1, 1), (float("inf"), 1, 1), (1, 0, 1)]
)
def test_keyed_limiter_rejects_bad_settings(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError):
        KeyedLimiter(rate, burst, max_keys=max_keys)


def test_flood_guard_blocks_a_source_over_its_rate_for_block_after() -> None:
    guard = FloodGuard(10.0, 20, block_after=2.0, block_seconds=60.0)
    t = 0.0
    verdicts = []
    while t < 5.0:  # 100 requests/s from one source
        verdicts.append((t, guard.check("scanner", t)))
        t += 0.01
    first_refused = next(t for t, v in verdicts if v is Verdict.LIMITED)
    first_blocked = next(t for t, v in verdicts if v is Verdict.BLOCKED)
    assert first_refused == pytest.approx(0.2, abs=0.03)  # the burst of 20
    assert first_blocked == pytest.approx(first_refused + 2.0, abs=0.03)
    assert all(v is Verdict.BLOCKED for t, v in verdicts if t >= first_blocked)
    assert guard.blocks == 1
    assert guard.blocked_keys(10.0) == ["scanner"]
    assert guard.check("other", 10.0) is Verdict.ALLOWED
    # The block ends after block_seconds; the source starts over with a full burst.
    end = first_blocked + 60.0
    assert guard.blocked_until("scanner", end - 0.01) == pytest.approx(end)
    assert guard.check("scanner", end) is Verdict.ALLOWED
    assert guard.blocked_keys(end) == []


def test_flood_guard_a_source_at_its_rate_is_never_blocked() -> None:
    guard = FloodGuard(10.0, 20, block_after=2.0)
    t = 0.0
    while t < 30.0:
        assert guard.check("sbc", t) is Verdict.ALLOWED
        t += 0.1  # exactly the rate


def test_flood_guard_short_bursts_apart_start_over() -> None:
    guard = FloodGuard(1.0, 1, block_after=2.0)
    # Refused now and then, but never for 2 s in a row with gaps under a second.
    for start in (0.0, 3.0, 6.0, 9.0):
        assert guard.check("a", start) is Verdict.ALLOWED
        assert guard.check("a", start + 0.1) is Verdict.LIMITED
        assert guard.check("a", start + 0.5) is Verdict.LIMITED
    assert guard.blocks == 0


def test_flood_guard_may_block_false_only_limits() -> None:
    guard = FloodGuard(10.0, 1, block_after=0.5)
    t = 0.0
    while t < 5.0:
        assert guard.check("sbc", t, may_block=False) is not Verdict.BLOCKED
        t += 0.01
    assert guard.blocks == 0


def test_flood_guard_block_list_is_bounded() -> None:
    guard = FloodGuard(1.0, 1, block_after=0.1, block_seconds=60.0, max_keys=50)
    for n in range(500):
        key = f"s{n}"
        for t in (0.0, 0.05, 0.1, 0.2, 0.3):
            guard.check(key, t)
    assert len(guard.blocked_keys(0.3)) == 50
    assert len(guard.limiter) == 50


def test_client_address_trusts_only_configured_proxies() -> None:
    trusted = parse_networks(["10.0.0.0/8", "192.0.2.1"])
    assert client_address("198.51.100.7", "203.0.113.9", trusted) == "198.51.100.7"
    assert client_address("10.1.2.3", "203.0.113.9", trusted) == "203.0.113.9"
    # A client's own X-Forwarded-For entries (further left) prove nothing.
    assert client_address("10.1.2.3", "1.2.3.4, 203.0.113.9, 192.0.2.1", trusted) == ("203.0.113.9")
    assert client_address("10.1.2.3", "", trusted) == "10.1.2.3"
    assert client_address("10.1.2.3", None, ()) == "10.1.2.3"
    assert client_address("10.1.2.3", "garbage", trusted) == "garbage"
    with pytest.raises(ValueError, match="trusted_proxies"):
        parse_networks(["not-an-ip"])


def test_load_guard_max_calls_and_loop_lag_with_hold() -> None:
    guard = LoadGuard(max_calls=2, loop_lag_limit=0.25, hold=1.0)
    assert guard.refusal(1, 0.0) is None
    assert guard.refusal(2, 0.0) == "max_calls"
    guard.note_lag(0.1, 0.0)
    assert guard.refusal(0, 0.0) is None
    # One slow callback is a hiccup, not overload (the median of 5 samples decides).
    guard.note_lag(3.0, 0.1)
    guard.note_lag(0.0, 0.2)
    assert guard.refusal(0, 0.2) is None
    for t in (0.3, 0.4, 0.5):  # a saturated loop is late at every sample
        guard.note_lag(0.4, t)
    assert guard.refusal(0, 0.5) == "loop_lag"
    assert guard.lag == 0.4
    for t in (0.6, 0.7, 0.8):  # good samples: the median drops at the third (0.8)
        guard.note_lag(0.0, t)
    assert guard.lagging(1.69)  # held for a second after the last lagging median (0.7)
    assert not guard.lagging(1.7)
    unlimited = LoadGuard(max_calls=0, loop_lag_limit=0.0)
    unlimited.note_lag(5.0, 0.0)
    assert unlimited.refusal(10_000, 0.0) is None
