"""The app's signaling client: REST for registration, a WebSocket for calls.

Speaks the protocol of docs/protocol.md through the wire package (its messages and
JSON); it does not import the server.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import aiohttp

import wire


class ServerError(Exception):
    """The server refused a request (HTTP problem JSON or a WebSocket error message)."""

    def __init__(self, status: int | str, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body or {}


class SignalingClient:
    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self.welcome: dict[str, Any] = {}

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        session = await self._http()
        async with session.request(
            method, self.server + path, json=body, headers=self._headers()
        ) as response:
            text = await response.text()
            data: dict[str, Any] = json.loads(text) if text else {}
            if response.status >= 400:
                raise ServerError(
                    response.status, data.get("detail") or data.get("title", text), data
                )
            return data

    # REST ------------------------------------------------------------------

    async def request_code(self, number: str) -> dict[str, Any]:
        return await self.request("POST", "/v1/verification", {"number": number})

    async def register(self, number: str, code: str, name: str = "") -> dict[str, Any]:
        body = {"number": number, "code": code}
        if name:
            body["name"] = name
        device = await self.request("POST", "/v1/devices", body)
        self.token = device["token"]
        return device

    async def devices(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/v1/devices"))["devices"])

    async def revoke(self, device_id: str) -> None:
        await self.request("DELETE", f"/v1/devices/{device_id}")

    async def discover(self, numbers: list[str]) -> list[str]:
        data = await self.request("POST", "/v1/contacts/discover", {"numbers": numbers})
        return list(data["registered"])

    async def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return list((await self.request("GET", f"/v1/calls?limit={limit}"))["calls"])

    # WebSocket -------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        session = await self._http()
        ws_url = self.server.replace("http", "ws", 1) + "/v1/ws"
        try:
            self._ws = await session.ws_connect(ws_url, headers=self._headers(), heartbeat=20)
        except aiohttp.WSServerHandshakeError as exc:
            raise ServerError(exc.status, exc.message) from exc
        welcome = await self.receive(timeout=10)
        if welcome.get("type") != wire.Welcome.type:
            raise ServerError(welcome.get("code", "protocol"), welcome.get("message", str(welcome)))
        self.welcome = welcome
        return welcome

    def next_id(self) -> str:
        """A message id not used before on this client (replies carry it as ``ref``)."""
        return str(next(self._ids))

    async def send_message(self, message: wire.Message) -> None:
        if self._ws is None:
            raise RuntimeError("not connected")
        await self._ws.send_str(wire.encode_message(message))

    async def send(self, kind: str, **fields: Any) -> str:
        """Send a message built by hand (tests send malformed ones); returns its id."""
        if self._ws is None:
            raise RuntimeError("not connected")
        message_id = self.next_id()
        await self._ws.send_str(json.dumps({"type": kind, "id": message_id, **fields}))
        return message_id

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next server message; raises ConnectionError when the socket closes."""
        if self._ws is None:
            raise RuntimeError("not connected")
        msg = await self._ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            data: dict[str, Any] = json.loads(msg.data)
            return data
        raise ConnectionError(f"signaling connection closed ({self._ws.close_code})")

    async def receive_message(self, timeout: float | None = None) -> wire.ServerMessage:
        """The next server message, typed; raises wire.ProtocolError for one we cannot read."""
        return wire.parse_server(await self.receive(timeout))

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def disconnect(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def close(self) -> None:
        await self.disconnect()
        if self._session is not None:
            await self._session.close()
            self._session = None
