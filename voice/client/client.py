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

import aiohttp

import wire
from voice.client.media import MediaEndpoint
from voice.client.signaling import ServerError, SignalingClient
from wire.call import (
    Connected,
    DeviceCall,
    DigitReceived,
    Ended,
    Phase,
    Progressed,
    QuotaWarned,
    Renegotiated,
    RenegotiationRefused,
    RequestRefused,
    Ringing,
    Send,
    StateReported,
)
from wire.reasons import DEVICE_ERROR

logger = logging.getLogger("anruf.client")


class Call:
    """One call as this device sees it: a wire.call.DeviceCall, its media and its waits."""

    def __init__(self, phone: Phone, media: MediaEndpoint | None, machine: DeviceCall) -> None:
        self.phone = phone
        self.media = media
        self.machine = machine
        self._events: dict[str, asyncio.Event] = {
            name: asyncio.Event() for name in ("progress", "ringing", "connected", "ended")
        }
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

    @property
    def peer(self) -> str:
        return self.machine.peer

    @property
    def outgoing(self) -> bool:
        return self.machine.outgoing

    @property
    def call_id(self) -> str | None:
        return self.machine.call_id

    @property
    def state(self) -> Phase:
        """inviting, incoming, ringing, connected or ended (a str)."""
        return self.machine.phase

    @property
    def end_reason(self) -> str | None:
        return self.machine.end_reason

    @property
    def end_detail(self) -> str:
        """The end detail; for a request the server refused, "<code>: <message>"."""
        if self.machine.end_reason == DEVICE_ERROR:
            return f"{self.machine.end_detail}: {self.machine.end_message}"
        return self.machine.end_detail

    @property
    def invited_at(self) -> float:
        """time.monotonic() when the call was placed (or came in)."""
        times = self.machine.times
        return times.get(Phase.INVITING, times.get(Phase.INCOMING, 0.0))

    @property
    def connected_at(self) -> float | None:
        return self.machine.times.get(Phase.CONNECTED)

    @property
    def incoming_sdp(self) -> str:
        """The relay's offer for this device's leg (an incoming call)."""
        return self.machine.offer

    @property
    def phone_network(self) -> bool:
        """The other party is on the phone network (reached over the operator's trunk)."""
        return self.machine.phone_network

    async def send(self, message: wire.Message | None) -> None:
        """Send a request of this call; its replies are routed back here."""
        if message is not None:
            self.phone.expect(message.id or "", self)
            await self.phone.signaling.send_message(message)

    async def _on_message(self, message: wire.ServerMessage) -> None:
        media = self.media
        for event in self.machine.receive(message, time.monotonic()):
            match event:
                case Send(message=request):
                    await self.send(request)
                case Progressed(sdp=sdp):
                    if media is not None:
                        await media.accept_answer(sdp)
                    self._set("progress")
                case Ringing():
                    self._set("ringing")
                case Connected():
                    if media is not None:
                        media.mark("connected")
                    self._set("connected")
                case Renegotiated(sdp=sdp):
                    if self._moving is not None and not self._moving.done():
                        self._moving.set_result(sdp)
                case RenegotiationRefused(code=code):
                    if self._moving is not None and not self._moving.done():
                        error = ServerError(code, str(wire.as_dict(message)))
                        self._moving.set_exception(error)
                case StateReported(state=state):
                    self.server_state = state
                case DigitReceived(digit=digit):
                    self.dtmf.append(digit)
                    self._dtmf_arrived.set()
                case QuotaWarned(seconds_left=seconds_left):
                    self.quota_warnings.append(seconds_left)
                    if media is not None:
                        media.mark("quota_warning")
                case RequestRefused():
                    logger.warning("server error: %s", wire.as_dict(message))
                case Ended():
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
        await self.send(self.machine.accept(sdp, time.monotonic()))

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
            await self.send(self.machine.renegotiate(offer, time.monotonic()))
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
        await self.send(self.machine.send_dtmf(digits, time.monotonic()))

    async def digits(self, count: int, timeout: float = 10) -> str:
        """Wait until ``count`` digits arrived from the other party; returns them."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.dtmf) < count:
            self._dtmf_arrived.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            await asyncio.wait_for(self._dtmf_arrived.wait(), max(0.0, remaining))
        return "".join(self.dtmf)

    async def reject(self) -> None:
        await self.send(self.machine.reject(time.monotonic()))

    async def hangup(self) -> None:
        if self.call_id is not None:
            await self.send(self.machine.hangup(time.monotonic()))


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
        self._replies: dict[str, Call] = {}  # message id of a request -> its call
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
        call = Call(self, media, DeviceCall.place(number, self.signaling.next_id, time.monotonic()))
        offer = await media.create_offer()
        await call.send(call.machine.invite(offer, time.monotonic()))
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
                data = await self.signaling.receive()
                try:
                    await self._route(wire.parse_server(data))
                except Exception:
                    logger.exception("could not handle %s", data.get("type"))
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

    async def _route(self, message: wire.ServerMessage) -> None:
        call: Call | None = None
        if message.ref is not None and message.ref in self._replies:
            call = self._replies[message.ref]
        elif isinstance(message, wire.CallIncoming):
            machine = DeviceCall.incoming(message, self.signaling.next_id, time.monotonic())
            call = Call(self, None, machine)
            self.calls[message.call_id] = call
            await self._incoming.put(call)
            return
        else:
            call_id = getattr(message, "call_id", None)
            call = self.calls.get(call_id) if call_id is not None else None
        if call is None:
            if isinstance(message, wire.ErrorReply):
                logger.warning("server error: %s", wire.as_dict(message))
            return
        await call._on_message(message)
        if call.call_id is not None:
            if call.state == Phase.ENDED:
                self.calls.pop(call.call_id, None)  # the caller keeps its Call object
                for ref in call.machine.requests:
                    self._replies.pop(ref, None)
            else:
                self.calls[call.call_id] = call

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
