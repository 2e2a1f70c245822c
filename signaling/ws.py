"""The devices' WebSocket endpoint: authenticates, then feeds protocol messages to
CallService. Protocol errors are answered with an error message; the socket stays up."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSCloseCode, WSMsgType, web

from signaling import protocol
from signaling.api.auth import require_device
from signaling.api.problems import problem
from signaling.identity.service import Device
from signaling.keys import CALLS, CONFIG, IDENTITY, METRICS, PRESENCE
from signaling.ratelimit import TokenBucket

logger = logging.getLogger("anruf.ws")

AUTH_TIMEOUT = 10.0
#: Application close codes (4000-4999 are ours, RFC 6455 section 7.4.2).
CLOSE_REPLACED = 4000
CLOSE_UNAUTHENTICATED = 4001
CLOSE_REVOKED = 4003
#: Messages refused in a row before a flooding device is disconnected.
FLOOD_LIMIT = 50


class WebSocketLink:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        if not self._ws.closed:
            await self._ws.send_str(text)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())


async def websocket(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
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
        await ws.send_str(protocol.error(protocol.ErrorCode.UNAUTHENTICATED, "authenticate first"))
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
        await ws.send_str(
            protocol.error(protocol.ErrorCode.UNAUTHENTICATED, "unknown or revoked credential", ref)
        )
        await ws.close(code=CLOSE_UNAUTHENTICATED, message=b"unauthenticated")
    return device


async def _serve(request: web.Request, ws: web.WebSocketResponse, device: Device) -> None:
    app = request.app
    config, calls, presence, metrics = app[CONFIG], app[CALLS], app[PRESENCE], app[METRICS]
    link = WebSocketLink(ws)
    previous = presence.attach(device.device_id, device.number, link)
    if previous is not None:
        await previous.close(CLOSE_REPLACED, "replaced by a newer connection")
    calls.device_connected(device.device_id)
    metrics.connected_devices.set(len(presence))
    await ws.send_str(
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
            await _dispatch(request, link, device, msg.data)
    finally:
        if presence.detach(device.device_id, device.number, link):
            calls.device_disconnected(device.device_id)
        metrics.connected_devices.set(len(presence))
        if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            logger.info("device %s sent an oversized frame", device.device_id)


async def _dispatch(request: web.Request, link: WebSocketLink, device: Device, text: str) -> None:
    calls = request.app[CALLS]
    try:
        message = protocol.parse(text)
    except protocol.ProtocolError as exc:
        request.app[METRICS].ws_errors.labels(code=exc.code).inc()
        await link.send(protocol.error(exc.code, exc.message, exc.ref))
        return
    try:
        match message:
            case protocol.CallInvite():
                await calls.invite(device.device_id, device.number, message)
            case protocol.CallAccept():
                await calls.accept(device.device_id, message)
            case protocol.CallReject():
                await calls.reject(device.device_id, message)
            case protocol.CallHangup():
                await calls.hangup(device.device_id, message)
            case protocol.CallDtmf():
                await calls.dtmf(device.device_id, message)
            case protocol.Ping():
                await link.send(protocol.encode("pong", ref=message.id))
            case protocol.Auth():
                await link.send(
                    protocol.encode("welcome", ref=message.id, device_id=device.device_id)
                )
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("device %s: message failed", device.device_id)
        await link.send(protocol.error(protocol.ErrorCode.INTERNAL, "internal error", message.id))


async def close_device(app: web.Application, device: Device) -> None:
    """A revoked device loses its connection at once."""
    link = app[PRESENCE].link(device.device_id)
    if link is not None:
        await link.send(protocol.error(protocol.ErrorCode.UNAUTHENTICATED, "device revoked"))
        await link.close(CLOSE_REVOKED, "revoked")
