"""Prometheus metrics, one registry per application (no import-time globals)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from signaling.keys import METRICS


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


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
