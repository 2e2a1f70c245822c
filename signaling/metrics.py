"""Prometheus metrics, one registry per application (no import-time globals).

A leaf of the server: the services count into it, it imports none of them (the
HTTP handler that serves the registry is ``signaling/api/metrics.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class TrunkCounters(Protocol):
    """What /metrics reads of the SIP trunk (``SipTrunk``) at each scrape."""

    @property
    def stats(self) -> Mapping[str, int]: ...

    @property
    def active_calls(self) -> int: ...

    @property
    def up(self) -> bool: ...

    def blocked_sources(self) -> Collection[str]: ...

    def locked_out(self) -> Collection[tuple[str, str]]: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connected_devices = Gauge(
            "anruf_connected_devices", "Devices with an open WebSocket", registry=self.registry
        )
        self.active_calls = Gauge(
            "anruf_active_calls", "Calls not yet ended", registry=self.registry
        )
        self.call_attempts = Counter(
            "anruf_call_attempts",
            "Calls that ended, by end reason",
            ["outcome"],
            registry=self.registry,
        )
        self.setup_seconds = Histogram(
            "anruf_call_setup_seconds",
            "Post-dial delay: call.invite received to call.ringing sent",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        self.renegotiations = Counter(
            "anruf_call_renegotiations",
            "Devices that moved their call to a new leg (a network change)",
            registry=self.registry,
        )
        self.ws_errors = Counter(
            "anruf_ws_errors",
            "Protocol errors sent to devices, by code",
            ["code"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "anruf_webhook_deliveries",
            "Event delivery attempts to operators, by outcome "
            "(delivered, failed, dead, replay_only)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_dead_letters = Counter(
            "anruf_webhook_dead_letters",
            "Events given up on after webhook_max_age without a 2xx",
            registry=self.registry,
        )
        self.webhook_latency = Histogram(
            "anruf_webhook_latency_seconds",
            "Event created to delivered (2xx from the operator)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 600.0, 3600.0, 86400.0),
            registry=self.registry,
        )
        # Abuse and overload (signaling/api/limits.py)
        self.rate_limited = Counter(
            "anruf_rate_limited",
            "Requests refused by a rate limit, by limit (verification_source, "
            "verification_number, registration_source, registration_number, call_attempts)",
            ["limit"],
            registry=self.registry,
        )
        self.calls_refused = Counter(
            "anruf_calls_refused",
            "New calls refused because this node is at capacity, by cause "
            "(max_calls, loop_lag) and direction (app, trunk)",
            ["cause", "direction"],
            registry=self.registry,
        )
        self.http_overload_refusals = Counter(
            "anruf_http_overload_refusals",
            "HTTP requests answered 503 while the event loop lagged",
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "anruf_event_loop_lag_seconds",
            "Latest event-loop lag sample (how late a timer fired)",
            registry=self.registry,
        )
        self.overloaded = Gauge(
            "anruf_overloaded",
            "1 while the event-loop lag is above overload_loop_lag",
            registry=self.registry,
        )
        #: The SIP trunk whose counters /metrics exports (set once it runs).
        self.trunk: TrunkCounters | None = None
        self.registry.register(_TrunkCollector(self))


class _TrunkCollector(Collector):
    """The SIP trunk's counters (``SipTrunk.stats``) and block list, read at scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        trunk = self._metrics.trunk
        if trunk is None:
            return
        events = CounterMetricFamily(
            "anruf_sip_events",
            "SIP trunk counters by event (docs/sip.md, Counters): requests_blocked are "
            "messages dropped unparsed from blocked sources, sources_blocked the blocks",
            labels=["event"],
        )
        for name, value in sorted(trunk.stats.items()):
            events.add_metric([name], value)
        yield events
        yield GaugeMetricFamily(
            "anruf_sip_blocked_sources",
            "Source addresses on the SIP block list",
            value=len(trunk.blocked_sources()),
        )
        yield GaugeMetricFamily(
            "anruf_sip_auth_locked_out",
            "Source and username pairs locked out after wrong digest responses "
            "(anruf_sip_events: auth_failures, auth_lockouts)",
            value=len(trunk.locked_out()),
        )
        yield GaugeMetricFamily(
            "anruf_sip_active_calls", "Calls on the SIP trunk", value=trunk.active_calls
        )
        yield GaugeMetricFamily("anruf_sip_trunk_up", "1 while the trunk is up", value=trunk.up)

    def describe(self) -> Iterator[Metric]:
        return iter(())


__all__ = ["Metrics", "TrunkCounters"]
