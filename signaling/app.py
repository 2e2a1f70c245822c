"""The composition root: every part of a process is built and wired here.

- ``create_app(config)``: a signaling node (`anruf serve`), its parts in typed
  ``web.AppKey``s (signaling/keys.py) opened and closed in ``cleanup_ctx``.
- ``trunk_settings(config)``: the SIP trunk's settings (signaling/sip), built once
  by ``create_app`` before anything opens.
- ``relay_host_settings(config)`` and ``run_relay_host(settings)``: a relay host
  (`anruf relay`, voice/relay/host.py).

Other modules build nothing of their own and reach no other part: they are handed
what they use here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, web

from signaling.api import health, openapi, operator, rest
from signaling.api.limits import LIMITS, Limits, limits_middleware
from signaling.api.metrics import metrics_handler
from signaling.api.problems import problem_middleware
from signaling.calls.service import CallService
from signaling.carrier.delivery import EventDelivery
from signaling.carrier.policy import CarrierPolicy, FraudRules
from signaling.cluster.bus import Bus, LocalBus, Message, RedisBus
from signaling.cluster.node import Node
from signaling.config import Config, ConfigError, SipSettings
from signaling.identity.service import Device, IdentityService, make_sender
from signaling.keys import (
    CALLS,
    CDRS,
    CONFIG,
    DATABASE,
    DELIVERY,
    DRAIN_TASK,
    IDENTITY,
    METRICS,
    NODE,
    OPERATORS,
    POLICY,
    PRESENCE,
    RELAY,
    TRUNK,
)
from signaling.metrics import Metrics
from signaling.presence import Presence
from signaling.sip.connections import TcpLimits
from signaling.sip.message import SipTarget
from signaling.sip.trunk import IncomingCall, SettingsError, SipTrunk, TrunkSettings
from signaling.store.cdrs import CallRecordStore
from signaling.store.database import Database
from signaling.store.live_calls import LiveCalls
from signaling.store.operators import OperatorStore
from signaling.web import ROUTES as WEB_ROUTES
from signaling.ws import close_device, dispatch, drain, websocket
from voice.ice import restrict_host_addresses, set_media_ports
from voice.relay.pool import RelayPool
from voice.relay.relay import Relay
from voice.relay.server import WorkerSettings
from voice.relay.transcode import TranscodingRelay

if TYPE_CHECKING:
    from voice.relay.host import HostSettings

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
    web.get("/readyz", health.readyz),
    web.get("/metrics", metrics_handler),
    web.get("/openapi.json", openapi.openapi_json),
    *operator.ROUTES,
    *WEB_ROUTES,  # the web app: / and /app/*
]


def create_app(config: Config) -> web.Application:
    trunk = trunk_settings(config)  # a bad sip_* setting fails before anything opens
    # Problems (RFC 9457) outside, then rate limits and overload protection
    # (signaling/api/limits.py) in front of every route.
    app = web.Application(
        middlewares=[problem_middleware, limits_middleware], client_max_size=256 * 1024
    )
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[LIMITS] = Limits(config, app[METRICS])
    app.add_routes(ROUTES)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_cluster)
    app.cleanup_ctx.append(_delivery)
    app.cleanup_ctx.append(_media)
    app.cleanup_ctx.append(functools.partial(_trunk, settings=trunk))
    app.cleanup_ctx.append(_calls)
    app.cleanup_ctx.append(_overload)
    app.on_shutdown.append(_close_websockets)
    return app


async def _store(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    database = await Database.open(
        config.resolved_database_url, config.database_pool_size, config.database_max_overflow
    )
    app[DATABASE] = database
    sender = make_sender(
        config.sms_sender,
        database,
        default_operator=config.sms_default_operator,
        notify=lambda: notify_delivery(app),
    )
    app[IDENTITY] = IdentityService(database, config, sender)
    app[CDRS] = CallRecordStore(database)
    app[POLICY] = CarrierPolicy(database, rules=FraudRules.from_config(config))
    app[OPERATORS] = OperatorStore(database, default_region=config.default_region)
    app[IDENTITY].add_registration_hook(app[POLICY])
    app[POLICY].on_events(lambda: notify_delivery(app))

    def revoked(device: Device) -> None:
        asyncio.get_running_loop().create_task(close_device(app, device))

    app[IDENTITY].on_revoked(revoked)
    yield
    await database.close()


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    """This node among the others (signaling/cluster): the bus, presence, heartbeat."""
    config = app[CONFIG]
    node = Node(
        app[DATABASE],
        name=config.node_name or f"{config.host}:{config.port}",
        heartbeat=config.node_heartbeat,
        dead_after=config.node_dead_after,
    )
    bus: Bus = (
        RedisBus(node.node_id, config.redis_url) if config.redis_url else LocalBus(node.node_id)
    )

    async def on_message(message: Message) -> None:
        try:
            await _bus_message(app, message)
        except Exception:
            logger.exception("cluster message %s failed", message.get("op"))

    await bus.start(on_message)
    app[NODE] = node
    app[PRESENCE] = Presence(bus, node.alive)
    yield
    await bus.close()


async def _bus_message(app: web.Application, message: Message) -> None:
    """Messages from other nodes (or this one): to our devices, about our calls."""
    if await app[PRESENCE].handle(message):
        return
    calls = app.get(CALLS)
    if calls is None:
        return
    op = message.get("op")
    device = str(message.get("device", ""))
    if op == "device":
        if message.get("online"):
            calls.device_connected(device)
        else:
            calls.device_disconnected(device)
    elif op == "input":  # a device on another node, about a call held here

        async def reply(text: str) -> None:
            await app[PRESENCE].send(device, text)

        await dispatch(app, device, str(message.get("number", "")), str(message["text"]), reply)


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

    # relay_mode and relay_source are checked when the Config is made.
    relay: Relay | RelayPool
    if config.relay_source == "registry":
        from voice.relay.registry import RedisHostDirectory

        # Legs live on relay hosts (`anruf relay`) found in Redis; least loaded first.
        relay = RelayPool.of_hosts(
            RedisHostDirectory(config.redis_url),
            on_leg_failed=leg_failed,
            discovery_interval=config.relay_heartbeat,
            secret=config.relay_secret,
        )
        await relay.start()  # reads the registry: fails at startup when Redis cannot be read
    elif config.relay_workers:
        # Legs live in worker processes that own their sockets, one per core by default.
        relay = RelayPool.of_processes(
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


async def _trunk(app: web.Application, *, settings: TrunkSettings | None) -> AsyncIterator[None]:
    """The operator's SIP trunk (signaling/sip), when `sip_listen` is set."""
    if settings is None:
        yield
        return

    async def incoming(call: IncomingCall) -> None:
        await app[CALLS].incoming_from_trunk(call)

    trunk = SipTrunk(settings, on_incoming=incoming)
    await trunk.start()
    app[TRUNK] = trunk
    app[METRICS].trunk = trunk  # its counters on /metrics
    yield
    app[METRICS].trunk = None
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
        live=LiveCalls(app[DATABASE]),
    )

    def dtmf(leg_id: str, digit: str) -> None:
        app[CALLS].dtmf_received(leg_id, digit)

    app[RELAY].on_dtmf = dtmf
    app[CALLS].admission = app[LIMITS].admit_call  # overload: max_calls, loop lag
    node = app[NODE]
    node.on_dead(app[CALLS].end_orphans, app[PRESENCE].forget_node)
    await node.start()  # from now on other nodes see this one alive
    yield
    await app[CALLS].shutdown()
    await node.stop()


async def _overload(app: web.Application) -> AsyncIterator[None]:
    """The event-loop lag sampler of overload protection (signaling/api/limits.py)."""
    limits = app[LIMITS]
    limits.start()
    yield
    await limits.stop()


async def _close_websockets(app: web.Application) -> None:
    await app[CALLS].shutdown()
    for link in app[PRESENCE].links():
        await link.close(WSCloseCode.GOING_AWAY, "server shutting down")


def drain_on_sigterm(app: web.Application) -> None:
    """For `anruf serve`: SIGTERM drains (`drain_node`), a second one stops; a node the
    others declared dead stops at once (a process manager starts it again)."""

    def stop() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # aiohttp's graceful exit

    async def install(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: _spawn_drain(app))
        app[NODE].on_fenced(stop)

    app.on_startup.append(install)


def _spawn_drain(app: web.Application) -> None:
    if app[CALLS].draining:
        logger.info("second SIGTERM: stopping now")
        os.kill(os.getpid(), signal.SIGINT)  # aiohttp's graceful exit
        return
    task = asyncio.get_running_loop().create_task(drain_node(app))
    app[DRAIN_TASK] = task


async def drain_node(app: web.Application) -> None:
    """Stop taking calls, send the devices elsewhere, let the calls in progress go on
    (up to drain_timeout), then stop the process."""
    calls, config = app[CALLS], app[CONFIG]
    calls.draining = True
    logger.info(
        "draining: %d calls in progress, up to %.0f s", calls.active_calls, config.drain_timeout
    )
    try:
        await app[NODE].drain()
    except Exception:
        logger.exception("draining: the node's state could not be recorded")
    await drain(app)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(calls.idle.wait(), config.drain_timeout)
    logger.info("drained (%d calls left): stopping", calls.active_calls)
    os.kill(os.getpid(), signal.SIGINT)


# The SIP trunk's settings ---------------------------------------------------------

#: The sip_* setting behind each field of TrunkSettings and TcpLimits.
_SIP_SETTING_OF = {
    "listen_host": "sip_listen",
    "listen_port": "sip_listen",
    "requests_per_second_per_source": "sip_requests_per_second",
    "reserved_for_accepted": "sip_tcp_reserved_connections",
    **{
        name: f"sip_tcp_{name}"
        for name in (
            "max_connections",
            "max_per_source",
            "idle_timeout",
            "accepted_idle_timeout",
            "message_timeout",
        )
    },
}


def trunk_settings(settings: SipSettings) -> TrunkSettings | None:
    """The trunk's settings from the sip section; None when ``sip_listen`` is empty.
    Raises ConfigError naming the setting for a bad value."""
    if not settings.sip_listen:
        return None
    listen = settings.sip_listen.strip()
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", listen)
    if match is None:
        raise ConfigError(f"setting sip_listen: {listen!r} is not HOST:PORT")
    targets = []
    for text in settings.sip_sbc:
        try:
            targets.append(SipTarget.parse(text))
        except ValueError as exc:
            raise ConfigError(f"setting sip_sbc: {exc}") from None
    try:
        tcp = TcpLimits(
            max_connections=settings.sip_tcp_max_connections,
            reserved_for_accepted=settings.sip_tcp_reserved_connections,
            max_per_source=settings.sip_tcp_max_per_source,
            idle_timeout=settings.sip_tcp_idle_timeout,
            accepted_idle_timeout=settings.sip_tcp_accepted_idle_timeout,
            message_timeout=settings.sip_tcp_message_timeout,
        )
        return TrunkSettings(
            listen_host=match.group(1) or match.group(3),
            listen_port=int(match.group(2) or match.group(4)),
            transports=tuple(t.lower() for t in settings.sip_transports),
            sbc=tuple(targets),
            accepted_sources=tuple(settings.sip_accepted_sources),
            domain=settings.sip_domain,
            username=settings.sip_username,
            password=settings.sip_password,
            inbound_username=settings.sip_inbound_username,
            inbound_password=settings.sip_inbound_password,
            inbound_algorithms=tuple(settings.sip_inbound_algorithms),
            max_calls_per_second=settings.sip_max_calls_per_second,
            max_concurrent_calls=settings.sip_max_concurrent_calls,
            options_interval=settings.sip_options_interval,
            max_message_bytes=settings.sip_max_message_bytes,
            requests_per_second_per_source=settings.sip_requests_per_second,
            block_after=settings.sip_block_after,
            block_seconds=settings.sip_block_seconds,
            user_agent=settings.sip_user_agent,
            auth_max_failures=settings.sip_auth_max_failures,
            auth_lockout_seconds=settings.sip_auth_lockout_seconds,
            tcp_limits=tcp,
        )
    except SettingsError as exc:
        field, message = exc.field, exc.message
    except ValueError as exc:  # TcpLimits: "field: message"
        field, _, message = str(exc).partition(": ")
    name = _SIP_SETTING_OF.get(field, f"sip_{field}")
    raise ConfigError(f"setting {name}: {message}")


# A relay host (`anruf relay`) -----------------------------------------------------


def relay_host_settings(config: Config) -> HostSettings:
    """What a relay host runs with, from the same settings as a node (the relay and
    media sections, redis_url); ConfigError or ValueError naming what is wrong."""
    from voice.relay.host import HostSettings

    if not config.redis_url:
        raise ConfigError("a relay host registers in Redis: give --redis-url")
    return HostSettings(
        host_id=config.relay_host_id,
        control_listen=config.relay_control_listen,
        control_announce=config.relay_control_announce,
        redis_url=config.redis_url,
        secret=config.relay_secret,
        media=WorkerSettings(
            bind_address=config.media_bind_address,
            announce_address=config.media_announce_address,
            ice_servers=config.ice_servers,
            media_timeout=config.media_timeout,
            connect_timeout=10.0,
            relay_mode=config.relay_mode,
            media_ports=(config.media_port_min, config.media_port_max),
        ),
        capacity=config.relay_capacity,
        heartbeat=config.relay_heartbeat,
        ttl=config.relay_host_ttl,
        drain_timeout=config.relay_drain_timeout,
    )


async def run_relay_host(settings: HostSettings) -> None:
    """A relay host until SIGTERM or SIGINT: then it drains (up to its drain timeout;
    a second signal ends the drain at once), deregisters and returns."""
    from voice.relay.host import RelayHost

    host = RelayHost(settings)
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            host.stop_now()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    try:
        await host.start()
        await stop.wait()
        await host.drain()
    finally:
        await host.close()
