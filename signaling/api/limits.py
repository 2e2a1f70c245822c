"""Abuse and overload guards around the API and the calls.

- Per-source rate limits on the REST endpoints that cost money or could brute-force a
  code: ``POST /v1/verification`` (codes sent) and ``POST /v1/devices`` (code
  attempts, across numbers). The source is the peer address, or, when the peer is one
  of ``trusted_proxies``, the client that X-Forwarded-For names. Over the limit: 429
  problem JSON (code ``too_many_requests``) with ``Retry-After``. The per-number limits
  stay with IdentityService (``code_sends_per_hour``, ``code_attempts``). Test numbers
  (``test_number_prefix`` with ``test_code``) are exempt, like the per-number limits.
- Call attempts per device (``call_attempts_per_minute``, burst
  ``call_attempt_burst``): ``call.invite`` beyond it gets the WebSocket error
  ``rate_limited`` (devices of test numbers are exempt).
- Overload (``LoadGuard``): a node with ``max_calls`` calls in progress, or whose
  event loop lags more than ``overload_loop_lag``, refuses new calls at once
  (``call.ended`` ``failed``/``overloaded``; trunk INVITEs 503 with Retry-After).
  While the loop lags, HTTP requests other than health and metrics get 503 with
  Retry-After. Calls in progress are never touched.

``create_app`` (signaling/app.py) builds one ``Limits`` per application, puts
``limits_middleware`` in front of the routes, gives CallService ``Limits.admit_call``
and runs the lag sampler (``Limits.start``/``stop``) while the application runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

import wire
from signaling.api.problems import PROBLEM_TYPE_PREFIX, problem
from signaling.config import Config
from signaling.identity.numbers import InvalidNumber
from signaling.identity.numbers import normalise as normalise_number
from signaling.identity.service import IdentityError
from signaling.metrics import Metrics
from signaling.ratelimit import KeyedLimiter

logger = logging.getLogger("anruf.limits")

#: End detail of a call refused because this node is at capacity.
OVERLOADED = wire.Detail.OVERLOADED.value
#: Retry-After (seconds) of what an overloaded node refuses.
OVERLOAD_RETRY_AFTER = 2
#: A lagging loop counts as overloaded this long after its last slow sample.
OVERLOAD_HOLD = 1.0
#: Seconds between event-loop lag samples.
SAMPLE_INTERVAL = 0.1
#: The loop lags when the median of this many latest samples is over the limit: a
#: sustained lag (a saturated loop is late at every sample), not one slow callback.
LAG_WINDOW = 5
#: Never refused for overload: what load balancers and monitoring ask.
UNGUARDED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: Sources and devices each limiter remembers (least recently seen forgotten first).
MAX_TRACKED_KEYS = 20_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """IPs or CIDRs; raises ValueError naming a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"setting trusted_proxies: {value!r} is not an IP or CIDR") from None
    return tuple(networks)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The request's source: ``peer``, or when ``peer`` is a trusted proxy, the
    rightmost X-Forwarded-For entry that is not a trusted proxy (entries further
    left were written by the client and prove nothing)."""
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop[:64]
    return hops[0][:64] if hops else peer


class LoadGuard:
    """Is this node at capacity? ``max_calls`` calls in progress (0: no limit) or an
    event-loop lag above ``loop_lag_limit`` (0: never): the median of the latest
    ``LAG_WINDOW`` samples taken by ``run()``, and for ``hold`` seconds after that."""

    def __init__(
        self,
        *,
        max_calls: int,
        loop_lag_limit: float,
        metrics: Metrics | None = None,
        interval: float = SAMPLE_INTERVAL,
        hold: float = OVERLOAD_HOLD,
    ) -> None:
        self.max_calls = max_calls
        self.loop_lag_limit = loop_lag_limit
        self.interval = interval
        self.hold = hold
        self.lag = 0.0
        self._samples: deque[float] = deque(maxlen=LAG_WINDOW)
        self._metrics = metrics
        self._slow_until = -math.inf

    def note_lag(self, lag: float, now: float) -> None:
        """One sample: how late a timer of ``interval`` fired, at ``now``."""
        self.lag = max(0.0, lag)
        self._samples.append(self.lag)
        # The median of the window, a missing sample (just started) counting as 0.
        window = sorted([*self._samples, *[0.0] * (LAG_WINDOW - len(self._samples))])
        level = window[LAG_WINDOW // 2]
        if self.loop_lag_limit > 0 and level > self.loop_lag_limit:
            if now >= self._slow_until:
                logger.warning("overloaded: the event loop lags %.3f s", level)
            self._slow_until = now + self.hold
        if self._metrics is not None:
            self._metrics.loop_lag.set(self.lag)
            self._metrics.overloaded.set(1 if self.lagging(now) else 0)

    def lagging(self, now: float) -> bool:
        return now < self._slow_until

    def refusal(self, active_calls: int, now: float) -> str | None:
        """Why a new call is refused now (``max_calls``, ``loop_lag``), or None."""
        if self.max_calls > 0 and active_calls >= self.max_calls:
            return "max_calls"
        if self.lagging(now):
            return "loop_lag"
        return None

    async def run(self) -> None:
        """Sample the event loop's lag until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.note_lag(now - started - self.interval, now)


class Limits:
    """The limits of one application (built from its Config)."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.trusted = parse_networks(config.trusted_proxies)
        self.code_sends = KeyedLimiter(
            config.source_code_sends_per_hour / 3600.0,
            config.source_code_send_burst,
            max_keys=MAX_TRACKED_KEYS,
        )
        self.code_attempts = KeyedLimiter(
            config.source_code_attempts_per_hour / 3600.0,
            config.source_code_attempt_burst,
            max_keys=MAX_TRACKED_KEYS,
        )
        self.call_attempts = KeyedLimiter(
            config.call_attempts_per_minute / 60.0,
            config.call_attempt_burst,
            max_keys=MAX_TRACKED_KEYS,
        )
        self.load = LoadGuard(
            max_calls=config.max_calls, loop_lag_limit=config.overload_loop_lag, metrics=metrics
        )
        self._monitor: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sample the event loop's lag (overload protection) until ``stop``."""
        if self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self.load.run())

    async def stop(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    def admit_call(self, active_calls: int, direction: str) -> str | None:
        """For CallService: None when a new call may start, else why not (counted)."""
        cause = self.load.refusal(active_calls, asyncio.get_running_loop().time())
        if cause is not None:
            self.metrics.calls_refused.labels(cause=cause, direction=direction).inc()
        return cause

    def is_test_number(self, raw: object, region: object) -> bool:
        config = self.config
        if not (config.test_number_prefix and config.test_code) or not isinstance(raw, str):
            return False
        try:
            number = normalise_number(
                raw, region if isinstance(region, str) else config.default_region
            )
        except InvalidNumber:
            return False
        return number.startswith(config.test_number_prefix)


LIMITS: web.AppKey[Limits] = web.AppKey("limits")

#: (method, path) -> (which limiter, metric label, what the client is told)
_GUARDED: dict[tuple[str, str], tuple[str, str, str]] = {
    ("POST", "/v1/verification"): (
        "code_sends",
        "verification_source",
        "too many verification codes requested from your network",
    ),
    ("POST", "/v1/devices"): (
        "code_attempts",
        "registration_source",
        "too many registration attempts from your network",
    ),
}
#: Per-number refusals of IdentityService, counted under these labels.
_NUMBER_LIMITS = {"/v1/verification": "verification_number", "/v1/devices": "registration_number"}


def _too_many(detail: str, retry_after: float) -> web.Response:
    seconds = max(1, math.ceil(retry_after))
    return problem(
        429,
        "Too many requests",
        f"{detail}: try again in {seconds} s",
        type_=PROBLEM_TYPE_PREFIX + "too_many_requests",
        headers={"Retry-After": str(seconds)},
        code="too_many_requests",
        retry_after=seconds,
    )


async def _exempt(request: web.Request, limits: Limits) -> bool:
    """A request for a test number (load tests register them again and again)."""
    if not (limits.config.test_number_prefix and limits.config.test_code):
        return False
    try:
        data: Any = json.loads(await request.read())  # cached: the handler reads it again
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    return limits.is_test_number(data.get("number"), data.get("region"))


@web.middleware
async def limits_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    limits = request.app.get(LIMITS)
    if limits is None:
        return await handler(request)
    if request.path not in UNGUARDED_PATHS and limits.load.lagging(
        asyncio.get_running_loop().time()
    ):
        limits.metrics.http_overload_refusals.inc()
        return problem(
            503,
            "Service Unavailable",
            "this server is overloaded: try again shortly",
            type_=PROBLEM_TYPE_PREFIX + OVERLOADED,
            headers={"Retry-After": str(OVERLOAD_RETRY_AFTER)},
            code=OVERLOADED,
            retry_after=OVERLOAD_RETRY_AFTER,
        )
    guarded = _GUARDED.get((request.method, request.path))
    if guarded is None:
        return await handler(request)
    name, label, detail = guarded
    if not await _exempt(request, limits):
        source = client_address(
            request.remote or "", request.headers.get("X-Forwarded-For"), limits.trusted
        )
        limiter: KeyedLimiter = getattr(limits, name)
        retry_after = limiter.check(source, time.monotonic())
        if retry_after > 0:
            limits.metrics.rate_limited.labels(limit=label).inc()
            logger.info("%s %s from %s: rate-limited", request.method, request.path, source)
            return _too_many(detail, retry_after)
    try:
        return await handler(request)
    except IdentityError as exc:
        if exc.status == 429:
            limits.metrics.rate_limited.labels(limit=_NUMBER_LIMITS[request.path]).inc()
        raise


async def admit_call_attempt(
    app: web.Application,
    device_id: str,
    number: str,
    ref: str | None,
    reply: Callable[[str], Awaitable[None]],
) -> bool:
    """For ``call.invite``: False (the device told ``rate_limited``) when the device
    places calls faster than ``call_attempts_per_minute``. Devices of test numbers are
    exempt (load tests place calls back to back)."""
    limits = app.get(LIMITS)
    if limits is None or limits.is_test_number(number, None):
        return True
    retry_after = limits.call_attempts.check(device_id, time.monotonic())
    if retry_after <= 0:
        return True
    seconds = max(1, math.ceil(retry_after))
    limits.metrics.rate_limited.labels(limit="call_attempts").inc()
    limits.metrics.ws_errors.labels(code=wire.ErrorCode.RATE_LIMITED).inc()
    await reply(
        wire.error(
            wire.ErrorCode.RATE_LIMITED,
            f"too many calls placed: try again in {seconds} s",
            ref,
        )
    )
    return False


__all__ = [
    "LIMITS",
    "OVERLOADED",
    "OVERLOAD_RETRY_AFTER",
    "Limits",
    "LoadGuard",
    "admit_call_attempt",
    "client_address",
    "limits_middleware",
    "parse_networks",
]
