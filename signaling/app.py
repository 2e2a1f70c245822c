"""The composition root: create_app(config) builds and wires every part."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web

from signaling.api import openapi, operator, rest
from signaling.api.problems import problem_middleware
from signaling.calls.service import CallService
from signaling.carrier.delivery import EventDelivery
from signaling.carrier.operators import OperatorStore
from signaling.carrier.policy import CarrierPolicy
from signaling.config import Config
from signaling.identity.service import Device, IdentityService, make_sender
from signaling.keys import (
    CALLS,
    CDRS,
    CONFIG,
    DATABASE,
    DELIVERY,
    IDENTITY,
    METRICS,
    OPERATORS,
    POLICY,
    PRESENCE,
    RELAY,
    TRUNK,
)
from signaling.metrics import Metrics, metrics_handler
from signaling.presence import Presence
from signaling.sip.trunk import IncomingCall, SipTrunk, trunk_settings
from signaling.store.cdrs import CallRecordStore
from signaling.store.database import Database
from signaling.web import ROUTES as WEB_ROUTES
from signaling.ws import close_device, websocket
from voice.ice import restrict_host_addresses, set_media_ports
from voice.relay.relay import Relay
from voice.relay.transcode import TranscodingRelay
from voice.relay.workers import WorkerRelay

logger = logging.getLogger("anruf")

ROUTES = [
    web.post("/v1/verification", rest.request_code),
    web.post("/v1/devices", rest.register_device),
    web.get("/v1/devices", rest.list_devices),
    web.delete("/v1/devices/{device_id}", rest.revoke_device),
    web.post("/v1/contacts/discover", rest.discover_contacts),
    web.get("/v1/calls", rest.call_history),
    web.get("/v1/ws", websocket),
    web.get("/healthz", rest.healthz),
    web.get("/metrics", metrics_handler),
    web.get("/openapi.json", openapi.openapi_json),
    *operator.ROUTES,
    *WEB_ROUTES,  # the web app: / and /app/*
]


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=256 * 1024)
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[PRESENCE] = Presence()
    app.add_routes(ROUTES)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_delivery)
    app.cleanup_ctx.append(_media)
    app.cleanup_ctx.append(_trunk)
    app.cleanup_ctx.append(_calls)
    app.on_shutdown.append(_close_websockets)
    return app


async def _store(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    database = await Database.open(config.resolved_database_url)
    app[DATABASE] = database
    sender = make_sender(
        config.sms_sender,
        database,
        default_operator=config.sms_default_operator,
        notify=lambda: notify_delivery(app),
    )
    app[IDENTITY] = IdentityService(database, config, sender)
    app[CDRS] = CallRecordStore(database)
    app[POLICY] = CarrierPolicy(database)
    app[OPERATORS] = OperatorStore(database, default_region=config.default_region)
    app[IDENTITY].add_registration_hook(app[POLICY])
    app[POLICY].on_events(lambda: notify_delivery(app))

    def revoked(device: Device) -> None:
        asyncio.get_running_loop().create_task(close_device(app, device))

    app[IDENTITY].on_revoked(revoked)
    yield
    await database.close()


async def _delivery(app: web.Application) -> AsyncIterator[None]:
    """The outbox worker: signed events to operators (signaling/carrier/delivery.py)."""
    delivery = EventDelivery(app[DATABASE], app[CONFIG], app[METRICS])
    app[DELIVERY] = delivery
    await delivery.start()
    yield
    await delivery.stop()


def notify_delivery(app: web.Application) -> None:
    """Wake the outbox worker: call after committing events."""
    delivery = app.get(DELIVERY)
    if delivery is not None:
        delivery.notify()


async def _media(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    restrict_host_addresses([config.media_bind_address])
    set_media_ports(config.media_port_min, config.media_port_max)

    def leg_failed(leg_id: str, detail: str) -> None:
        app[CALLS].leg_failed(leg_id, detail)

    if config.relay_mode not in ("forward", "transcode"):
        raise ValueError(f"relay_mode must be forward or transcode, not {config.relay_mode!r}")
    relay: Relay | WorkerRelay
    if config.relay_workers:
        # Legs live in worker processes that own their sockets, one per core by default.
        relay = WorkerRelay(
            bind_address=config.media_bind_address,
            announce_address=config.media_announce_address,
            ice_servers=config.ice_servers,
            media_timeout=config.media_timeout,
            on_leg_failed=leg_failed,
            workers=config.relay_workers if config.relay_workers > 0 else None,
            relay_mode=config.relay_mode,
            media_ports=(config.media_port_min, config.media_port_max),
        )
        await relay.start()  # fail at startup, not on the first call
    else:
        relay_class = TranscodingRelay if config.relay_mode == "transcode" else Relay
        relay = relay_class(
            bind_address=config.media_bind_address,
            announce_address=config.media_announce_address,
            ice_servers=config.ice_servers,
            media_timeout=config.media_timeout,
            on_leg_failed=leg_failed,
        )
    app[RELAY] = relay
    yield
    await relay.close()


async def _trunk(app: web.Application) -> AsyncIterator[None]:
    """The operator's SIP trunk (signaling/sip), when `sip_listen` is set."""
    settings = trunk_settings(app[CONFIG])
    if settings is None:
        yield
        return

    async def incoming(call: IncomingCall) -> None:
        await app[CALLS].incoming_from_trunk(call)

    trunk = SipTrunk(settings, on_incoming=incoming)
    await trunk.start()
    app[TRUNK] = trunk
    yield
    await trunk.stop()


async def _calls(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[CALLS] = CallService(
        presence=app[PRESENCE],
        relay=app[RELAY],
        directory=app[IDENTITY],
        records=app[CDRS],
        metrics=app[METRICS],
        ring_timeout=config.ring_timeout,
        reconnect_grace=config.reconnect_grace,
        policy=app[POLICY],
        trunk=app.get(TRUNK),
    )

    def dtmf(leg_id: str, digit: str) -> None:
        app[CALLS].dtmf_received(leg_id, digit)

    app[RELAY].on_dtmf = dtmf
    yield
    await app[CALLS].shutdown()


async def _close_websockets(app: web.Application) -> None:
    await app[CALLS].shutdown()
    for link in app[PRESENCE].links():
        await link.close(WSCloseCode.GOING_AWAY, "server shutting down")
