"""The Python app client: one device of a phone number, placing and taking calls.

phone = await Phone.open(server, token)
call = await phone.call("+4917700000002", source="tone:440")
await call.connected()
...
await call.hangup()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from voice.client.media import MediaEndpoint
from voice.client.signaling import ServerError, SignalingClient

logger = logging.getLogger("anruf.client")


class Call:
    """One call as this device sees it."""

    def __init__(
        self, phone: Phone, media: MediaEndpoint | None, *, peer: str, outgoing: bool
    ) -> None:
        self.phone = phone
        self.media = media
        self.peer = peer
        self.outgoing = outgoing
        self.call_id: str | None = None
        self.state = "inviting" if outgoing else "incoming"
        self.end_reason: str | None = None
        self.end_detail = ""
        self.invited_at = time.monotonic()
        self.connected_at: float | None = None
        self._events: dict[str, asyncio.Event] = {
            name: asyncio.Event() for name in ("progress", "ringing", "connected", "ended")
        }
        self.incoming_sdp = ""
        #: The other party is on the phone network (reached over the operator's trunk).
        self.phone_network = False
        #: Seconds left announced by the server (the caller's bundle runs out).
        self.quota_warnings: list[int] = []
        #: Digits the other party sent (a phone-network party's RFC 4733 events).
        self.dtmf: list[str] = []
        self._dtmf_arrived = asyncio.Event()
        #: Media of earlier networks (the call moved on with `move`), oldest first.
        self.earlier_media: list[MediaEndpoint] = []
        self._moving: asyncio.Future[str] | None = None
        #: The latest call.state the server sent when this device came back.
        self.server_state: str | None = None

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        media = self.media
        if kind == "call.progress" and media is not None:
            self.call_id = message["call_id"]
            self.phone_network = bool(message.get("phone_network", False))
            await media.accept_answer(message["sdp"])
            self._set("progress")
        elif kind == "call.ringing":
            self.state = "ringing"
            self._set("ringing")
        elif kind == "call.accepted":
            self.state = "connected"
            self.connected_at = time.monotonic()
            if media is not None:
                media.mark("connected")
            self._set("connected")
        elif kind == "call.renegotiated" and self._moving is not None:
            if not self._moving.done():
                self._moving.set_result(str(message["sdp"]))
        elif kind == "call.state":
            self.server_state = str(message.get("state"))
        elif kind == "call.dtmf":
            self.dtmf.append(str(message.get("digit", "")))
            self._dtmf_arrived.set()
        elif kind == "call.quota_warning":
            self.quota_warnings.append(int(message.get("seconds_left", 0)))
            if media is not None:
                media.mark("quota_warning")
        elif kind == "call.ended":
            self.state = "ended"
            self.end_reason = message.get("reason")
            self.end_detail = message.get("detail", "")
            await self._end(media)
        elif kind == "error" and self._moving is not None and not self._moving.done():
            self._moving.set_exception(ServerError(message.get("code", "error"), str(message)))
        elif kind == "error":
            self.state = "ended"
            self.end_reason = "error"
            self.end_detail = f"{message.get('code')}: {message.get('message')}"
            await self._end(media)

    async def _end(self, media: MediaEndpoint | None) -> None:
        self._set("ended")
        if media is not None:
            media.mark("ended")
            await media.close()

    def _set(self, name: str) -> None:
        self._events[name].set()
        if name == "ended":
            for event in self._events.values():
                event.set()  # nobody waits forever on a call that is over

    async def _wait(self, name: str, timeout: float) -> None:
        await asyncio.wait_for(self._events[name].wait(), timeout)

    async def ringing(self, timeout: float = 10) -> None:
        await self._wait("ringing", timeout)

    async def connected(self, timeout: float = 60) -> bool:
        await self._wait("connected", timeout)
        return self.state == "connected"

    async def ended(self, timeout: float = 60) -> str | None:
        await self._wait("ended", timeout)
        return self.end_reason

    async def accept(self) -> None:
        """Answer an incoming call."""
        if self.call_id is None or self.outgoing or self.media is None:
            raise RuntimeError("only an incoming call taken with Phone.incoming() can be accepted")
        sdp = await self.media.answer(self.incoming_sdp)
        await self.phone.signaling.send("call.accept", call_id=self.call_id, sdp=sdp)

    async def move(self, bind_address: str, timeout: float = 10) -> None:
        """This device's network changed: its media starts again from ``bind_address``
        on a fresh leg that the relay swaps into the call (no ICE restart needed)."""
        old = self.media
        if self.call_id is None or old is None or self.state == "ended":
            raise RuntimeError("only a call in progress can move")
        old.cut()  # the old network is gone
        media = MediaEndpoint(
            source=old.source,
            ice_servers=self.phone.ice_servers,
            bind_address=bind_address,
        )
        self._moving = asyncio.get_running_loop().create_future()
        try:
            offer = await media.create_offer()
            message_id = await self.phone.signaling.send(
                "call.renegotiate", call_id=self.call_id, sdp=offer
            )
            self.phone.expect(message_id, self)
            answer = await asyncio.wait_for(self._moving, timeout)
            await media.accept_answer(answer)
        except BaseException:
            await media.close()
            raise
        finally:
            self._moving = None
        self.earlier_media.append(old)
        self.media = media
        await old.close()  # the relay has closed its side already

    async def send_dtmf(self, digits: str) -> None:
        """Send digits to the other party (a call with a phone number)."""
        assert self.call_id is not None
        await self.phone.signaling.send("call.dtmf", call_id=self.call_id, digits=digits)

    async def digits(self, count: int, timeout: float = 10) -> str:
        """Wait until ``count`` digits arrived from the other party; returns them."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.dtmf) < count:
            self._dtmf_arrived.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            await asyncio.wait_for(self._dtmf_arrived.wait(), max(0.0, remaining))
        return "".join(self.dtmf)

    async def reject(self) -> None:
        assert self.call_id is not None
        await self.phone.signaling.send("call.reject", call_id=self.call_id)

    async def hangup(self) -> None:
        if self.call_id is not None and self.state != "ended":
            await self.phone.signaling.send("call.hangup", call_id=self.call_id)


class Phone:
    """One registered device with its signaling connection."""

    def __init__(
        self,
        signaling: SignalingClient,
        *,
        ice_servers: Sequence[str] = (),
        servers: Sequence[str] = (),
    ) -> None:
        self.signaling = signaling
        self.ice_servers = tuple(ice_servers)
        #: Servers to fail over to when the connection drops or the server drains,
        #: in order after the current one (what a load balancer would do).
        self.servers = list(servers)
        self._closing = False
        self._failover: asyncio.Task[None] | None = None
        self.calls: dict[str, Call] = {}
        self._pending: dict[str, Call] = {}  # message id of call.invite -> call
        self._replies: dict[str, Call] = {}  # message id of another request -> call
        self._incoming: asyncio.Queue[Call] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.device_id = ""
        self.number = ""

    @classmethod
    async def open(
        cls,
        server: str,
        token: str,
        *,
        ice_servers: Sequence[str] = (),
        servers: Sequence[str] = (),
    ) -> Phone:
        phone = cls(SignalingClient(server, token), ice_servers=ice_servers, servers=servers)
        await phone.connect()
        return phone

    async def connect(self) -> None:
        welcome = await self.signaling.connect()
        self.device_id = welcome["device_id"]
        self.number = welcome["number"]
        self.closed.clear()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def call(
        self, number: str, *, source: str = "silence", record: Path | None = None
    ) -> Call:
        media = MediaEndpoint(source=source, record=record, ice_servers=self.ice_servers)
        call = Call(self, media, peer=number, outgoing=True)
        offer = await media.create_offer()
        call.invited_at = time.monotonic()
        message_id = await self.signaling.send("call.invite", to=number, sdp=offer)
        self._pending[message_id] = call
        return call

    async def incoming(
        self, timeout: float = 30, *, source: str = "silence", record: Path | None = None
    ) -> Call:
        """The next incoming call (set up to play ``source`` once accepted)."""
        call = await asyncio.wait_for(self._incoming.get(), timeout)
        call.media = MediaEndpoint(source=source, record=record, ice_servers=self.ice_servers)
        return call

    def expect(self, message_id: str, call: Call) -> None:
        """Replies to ``message_id`` (by ``ref``) belong to ``call``."""
        self._replies[message_id] = call

    async def _read(self) -> None:
        try:
            while True:
                message = await self.signaling.receive()
                try:
                    await self._route(message)
                except Exception:
                    logger.exception("could not handle %s", message.get("type"))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.closed.set()
            if self.servers and not self._closing:
                self._failover = asyncio.get_running_loop().create_task(self._fail_over())

    async def _fail_over(self) -> None:
        """Reconnect to the next server that takes us, the calls in progress kept."""
        delay = 0.1
        while not self._closing:
            current = self.signaling.server
            order = self.servers[1:] + self.servers[:1]
            if current in self.servers:
                at = self.servers.index(current)
                order = self.servers[at + 1 :] + self.servers[: at + 1]
            for server in order:
                self.signaling.server = server.rstrip("/")
                try:
                    await self.connect()
                except (OSError, aiohttp.ClientError, ServerError, TimeoutError) as exc:
                    logger.info("signaling: %s refused (%s)", server, exc)
                    continue
                logger.info("signaling: reconnected to %s", server)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _route(self, message: dict[str, Any]) -> None:
        ref = message.get("ref")
        call: Call | None = None
        if ref is not None and ref in self._pending:
            call = self._pending.pop(ref)
            if "call_id" in message:
                call.call_id = message["call_id"]
                self.calls[call.call_id] = call
        elif message["type"] == "call.incoming":
            call = Call(self, None, peer=message["from"], outgoing=False)
            call.call_id = message["call_id"]
            call.incoming_sdp = message["sdp"]
            call.phone_network = bool(message.get("phone_network", False))
            self.calls[call.call_id] = call
            await self._incoming.put(call)
            return
        elif ref is not None and ref in self._replies:
            call = self._replies.pop(ref)
        elif "call_id" in message:
            call = self.calls.get(message["call_id"])
        if call is None:
            if message["type"] == "error":
                logger.warning("server error: %s", message)
            return
        await call._on_message(message)
        if call.state == "ended" and call.call_id is not None:
            self.calls.pop(call.call_id, None)  # the caller keeps its Call object

    async def close(self) -> None:
        self._closing = True
        if self._failover is not None:
            self._failover.cancel()
        for call in list(self.calls.values()):
            if call.state != "ended":
                with contextlib.suppress(Exception):
                    await call.hangup()
                if call.media is not None:
                    await call.media.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.signaling.close()
