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
        self.ws_errors = Counter(
            "anruf_ws_errors",
            "Protocol errors sent to devices, by code",
            ["code"],
            registry=self.registry,
        )


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
