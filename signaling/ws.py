"""The devices' WebSocket endpoint: authenticates, then feeds protocol messages to
CallService. Protocol errors are answered with an error message; the socket stays up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, WSMsgType, web

from signaling import protocol
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
            protocol.error(protocol.ErrorCode.UNAUTHENTICATED, "authenticate first")
        )
        await ws.close(code=CLOSE_UNAUTHENTICATED, message=b"unauthenticated")
        return None
    if msg.type != WSMsgType.TEXT:
        await ws.close(code=CLOSE_UNAUTHENTICATED, message=b"unauthenticated")
        return None
    message: protocol.Message | None = None
    try:
        message = protocol.parse(msg.data)
    except protocol.ProtocolError as exc:
        ref = exc.ref
    else:
        ref = message.id
    device = None
    if isinstance(message, protocol.Auth):
        device = await request.app[IDENTITY].authenticate(message.token)
    if device is None:
        await WebSocketLink(ws).send(
            protocol.error(protocol.ErrorCode.UNAUTHENTICATED, "unknown or revoked credential", ref)
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
        protocol.encode(
            "welcome",
            protocol=protocol.PROTOCOL_VERSION,
            device_id=device.device_id,
            number=device.number,
        )
    )
    bucket = TokenBucket(config.ws_messages_per_second, config.ws_message_burst)
    refused = 0
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                await link.send(
                    protocol.error(protocol.ErrorCode.BAD_MESSAGE, "send JSON text frames")
                )
                continue
            if not bucket.allow(time.monotonic()):
                refused += 1
                metrics.ws_errors.labels(code=protocol.ErrorCode.RATE_LIMITED).inc()
                if refused >= FLOOD_LIMIT:
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"flood")
                    break
                await link.send(protocol.error(protocol.ErrorCode.RATE_LIMITED, "slow down"))
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
        message = protocol.parse(text)
    except protocol.ProtocolError as exc:
        app[METRICS].ws_errors.labels(code=exc.code).inc()
        await reply(protocol.error(exc.code, exc.message, exc.ref))
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
            case protocol.CallInvite():
                if await admit_call_attempt(app, device_id, number, message.id, reply):
                    await calls.invite(device_id, number, message)
            case protocol.CallAccept():
                await calls.accept(device_id, message)
            case protocol.CallReject():
                await calls.reject(device_id, message)
            case protocol.CallHangup():
                await calls.hangup(device_id, message)
            case protocol.CallDtmf():
                await calls.dtmf(device_id, message)
            case protocol.CallRenegotiate():
                await calls.renegotiate(device_id, message)
            case protocol.Ping():
                await reply(protocol.encode("pong", ref=message.id))
            case protocol.Auth():
                await reply(protocol.encode("welcome", ref=message.id, device_id=device_id))
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("device %s: message failed", device_id)
        await reply(protocol.error(protocol.ErrorCode.INTERNAL, "internal error", message.id))


async def close_device(app: web.Application, device: Device) -> None:
    """A revoked device loses its connection at once, on whichever node it is."""
    await app[PRESENCE].close(
        device.device_id,
        CLOSE_REVOKED,
        "revoked",
        protocol.error(protocol.ErrorCode.UNAUTHENTICATED, "device revoked"),
    )


async def drain(app: web.Application) -> None:
    """This node is stopping: its devices are asked to reconnect (to another node)."""
    presence = app[PRESENCE]
    for device_id in presence.device_ids():
        link = presence.link(device_id)
        if link is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await link.send(protocol.encode("reconnect", reason="draining"))
                await link.close(CLOSE_RECONNECT, "server restarting: reconnect")
