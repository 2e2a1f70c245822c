"""The devices' WebSocket endpoint: authenticates, then feeds protocol messages to
CallService. Protocol errors are answered with an error message; the socket stays up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, WSMsgType, web

import wire
from signaling.api.auth import require_device
from signaling.api.limits import admit_call_attempt
from signaling.api.problems import problem
from signaling.identity.service import Device
from signaling.keys import CALLS, CONFIG, IDENTITY, METRICS, PRESENCE
from signaling.ratelimit import TokenBucket

logger = logging.getLogger("anruf.ws")

AUTH_TIMEOUT = 10.0
#: Application close codes (4000-4999 are ours, RFC 6455 section 7.4.2).
CLOSE_UNAUTHENTICATED = 4001
#: The server is restarting: connect again, and the load balancer picks another node.
CLOSE_RECONNECT = 4002
CLOSE_REVOKED = 4003
#: Messages refused in a row before a flooding device is disconnected.
FLOOD_LIMIT = 50


class WebSocketLink:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        if not self._ws.closed:
            # A device gone mid-reply: its read loop ends and presence lets it go.
            with contextlib.suppress(ConnectionResetError):
                await self._ws.send_str(text)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())


async def websocket(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    if request.app[CALLS].draining:
        return problem(
            503,
            "Service Unavailable",
            "this server is restarting: connect again (another server takes over)",
            headers={"Retry-After": "1"},
        )
    device: Device | None = None
    if "Authorization" in request.headers:
        device = await require_device(request)
    ws = web.WebSocketResponse(
        heartbeat=config.ws_heartbeat, max_msg_size=config.ws_max_message_bytes
    )
    if not ws.can_prepare(request).ok:
        return problem(400, "WebSocket upgrade required", "connect with a WebSocket client")
    await ws.prepare(request)
    if device is None:
        device = await _first_message_auth(request, ws)
        if device is None:
            return ws
    await _serve(request, ws, device)
    return ws


async def _first_message_auth(request: web.Request, ws: web.WebSocketResponse) -> Device | None:
    """Browsers cannot set headers on a WebSocket: the first message may carry the token."""
    try:
        msg = await ws.receive(timeout=AUTH_TIMEOUT)
    except TimeoutError:
        await WebSocketLink(ws).send(
            wire.error(wire.ErrorCode.UNAUTHENTICATED, "authenticate first")
        )
        await ws.close(code=CLOSE_UNAUTHENTICATED, message=b"unauthenticated")
        return None
    if msg.type != WSMsgType.TEXT:
        await ws.close(code=CLOSE_UNAUTHENTICATED, message=b"unauthenticated")
        return None
    message: wire.Message | None = None
    try:
        message = wire.parse(msg.data)
    except wire.ProtocolError as exc:
        ref = exc.ref
    else:
        ref = message.id
    device = None
    if isinstance(message, wire.Auth):
        device = await request.app[IDENTITY].authenticate(message.token)
    if device is None:
        await WebSocketLink(ws).send(
            wire.error(wire.ErrorCode.UNAUTHENTICATED, "unknown or revoked credential", ref)
        )
        await ws.close(code=CLOSE_UNAUTHENTICATED, message=b"unauthenticated")
    return device


async def _serve(request: web.Request, ws: web.WebSocketResponse, device: Device) -> None:
    app = request.app
    config, presence, metrics = app[CONFIG], app[PRESENCE], app[METRICS]
    link = WebSocketLink(ws)
    await presence.attach(device.device_id, device.number, link)
    metrics.connected_devices.set(len(presence))
    await link.send(
        wire.encode_message(
            wire.Welcome(device.device_id, protocol=wire.PROTOCOL_VERSION, number=device.number)
        )
    )
    bucket = TokenBucket(config.ws_messages_per_second, config.ws_message_burst)
    refused = 0
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                await link.send(wire.error(wire.ErrorCode.BAD_MESSAGE, "send JSON text frames"))
                continue
            if not bucket.allow(time.monotonic()):
                refused += 1
                metrics.ws_errors.labels(code=wire.ErrorCode.RATE_LIMITED).inc()
                if refused >= FLOOD_LIMIT:
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"flood")
                    break
                await link.send(wire.error(wire.ErrorCode.RATE_LIMITED, "slow down"))
                continue
            refused = 0
            await dispatch(app, device.device_id, device.number, msg.data, link.send)
    finally:
        await presence.detach(device.device_id, device.number, link)
        metrics.connected_devices.set(len(presence))
        if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            logger.info("device %s sent an oversized frame", device.device_id)


async def dispatch(
    app: web.Application,
    device_id: str,
    number: str,
    text: str,
    reply: Callable[[str], Awaitable[None]],
) -> None:
    """One message from a device. A request about a call another node holds is
    forwarded there (the "input" bus message), and that node answers the device."""
    calls = app[CALLS]
    try:
        message = wire.parse(text)
    except wire.ProtocolError as exc:
        app[METRICS].ws_errors.labels(code=exc.code).inc()
        await reply(wire.error(exc.code, exc.message, exc.ref))
        return
    call_id = getattr(message, "call_id", None)
    if call_id is not None and not calls.holds(call_id):
        node = await app[PRESENCE].call_node(call_id)
        if node is not None and node != app[PRESENCE].node_id:
            await app[PRESENCE].forward(
                node, {"op": "input", "device": device_id, "number": number, "text": text}
            )
            return
    try:
        match message:
            case wire.CallInvite():
                if await admit_call_attempt(app, device_id, number, message.id, reply):
                    await calls.invite(device_id, number, message)
            case wire.CallAccept():
                await calls.accept(device_id, message)
            case wire.CallReject():
                await calls.reject(device_id, message)
            case wire.CallHangup():
                await calls.hangup(device_id, message)
            case wire.CallDtmf():
                await calls.dtmf(device_id, message)
            case wire.CallRenegotiate():
                await calls.renegotiate(device_id, message)
            case wire.Ping():
                await reply(wire.encode_message(wire.Pong(ref=message.id)))
            case wire.Auth():
                await reply(wire.encode_message(wire.Welcome(device_id, ref=message.id)))
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("device %s: message failed", device_id)
        await reply(wire.error(wire.ErrorCode.INTERNAL, "internal error", message.id))


async def close_device(app: web.Application, device: Device) -> None:
    """A revoked device loses its connection at once, on whichever node it is."""
    await app[PRESENCE].close(
        device.device_id,
        CLOSE_REVOKED,
        "revoked",
        wire.error(wire.ErrorCode.UNAUTHENTICATED, "device revoked"),
    )


async def drain(app: web.Application) -> None:
    """This node is stopping: its devices are asked to reconnect (to another node)."""
    presence = app[PRESENCE]
    for device_id in presence.device_ids():
        link = presence.link(device_id)
        if link is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await link.send(wire.encode_message(wire.Reconnect(wire.RECONNECT_DRAINING)))
                await link.close(CLOSE_RECONNECT, "server restarting: reconnect")
