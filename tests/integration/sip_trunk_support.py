"""What the SIP trunk tests share: SIPp runs, a trunk on 127.0.0.1, an event recorder
and a lossy UDP forwarder. Everything stays on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

from signaling.sip.message import ParseError, Request, Response, parse_message
from signaling.sip.trunk import CallEvent, IncomingCall, SipTrunk, TrunkSettings
from tests.integration.sipp import SCENARIOS, sipp_binary
from tests.ports import free_port

CALLER = "+4917700000001"
CALLEE = "+4930555000100"
SDP = (
    "v=0\r\no=- 4711 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


class Sipp:
    """One SIPp process playing one call of a scenario (a file in tests/sip, or a
    built-in one), on 127.0.0.1. ``exit_code()`` is 0 when the call went as scripted."""

    def __init__(
        self,
        workdir: Path,
        *,
        scenario: str | None = None,
        builtin: str | None = None,
        port: int | None = None,
        remote: str | None = None,
        transport: str = "u1",
        args: tuple[str, ...] = (),
        timeout: float = 20.0,
    ) -> None:
        self.port = port or free_port(
            socket.SOCK_STREAM if transport.startswith("t") else socket.SOCK_DGRAM
        )
        command = [sipp_binary()]
        command += ["-sf", str(SCENARIOS / scenario)] if scenario else ["-sn", builtin or "uas"]
        command += [
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-mp",
            str(free_port(socket.SOCK_DGRAM)),
        ]
        command += ["-t", transport, "-m", "1", "-nostdin", "-timeout", f"{timeout:g}s"]
        command += ["-timeout_error", "-trace_err", "-trace_msg", *args]
        if remote:
            command.append(remote)
        self.workdir = workdir
        self.process = subprocess.Popen(
            command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def ready(self) -> None:
        """Give a listening SIPp a moment to bind its port."""
        await asyncio.sleep(0.3)
        assert self.process.poll() is None, self.log()

    async def exit_code(self, timeout: float = 20.0) -> int:
        try:
            return int(await asyncio.to_thread(self.process.wait, timeout))
        except subprocess.TimeoutExpired:
            self.stop()
            return int(self.process.wait())

    def log(self) -> str:
        """The tail of SIPp's message and error logs, for assertion messages."""
        parts = []
        for pattern in ("*_errors.log", "*_messages.log"):
            for path in sorted(self.workdir.glob(pattern)):
                parts.append(f"== {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Events:
    """Call events as they arrive, with waiting."""

    def __init__(self) -> None:
        self.items: list[CallEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: CallEvent) -> None:
        self.items.append(event)
        self._changed.set()

    async def wait_for(self, kind: type, timeout: float = 10.0) -> CallEvent:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.items:
                    if isinstance(event, kind):
                        return event
                self._changed.clear()
                await self._changed.wait()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


async def answer_after_ringing(call: IncomingCall) -> None:
    await call.progress(180)
    await call.answer(SDP)


@asynccontextmanager
async def running_trunk(
    settings: TrunkSettings,
    on_incoming: Callable[[IncomingCall], Awaitable[None]] = answer_after_ringing,
    *,
    on_state_change: Callable[[bool], None] | None = None,
) -> AsyncIterator[SipTrunk]:
    trunk = SipTrunk(settings, on_incoming, on_state_change=on_state_change)
    await trunk.start()
    try:
        yield trunk
    finally:
        await trunk.stop()


def trunk_port(trunk: SipTrunk) -> int:
    return trunk.addresses[0][2]


class LossyForwarder(asyncio.DatagramProtocol):
    """A UDP forwarder between our trunk and a SIPp peer that drops chosen datagrams:
    ``drop(message)`` returning True loses it (each rule is asked once per datagram).

    The trunk side listens on ``port``; datagrams from the trunk go to ``peer`` from a
    second socket, and what comes back on that socket goes to the trunk's last address.
    """

    def __init__(self, peer: tuple[str, int], drop: Callable[[Request | Response], bool]) -> None:
        self.peer = peer
        self.drop = drop
        self.dropped: list[Request | Response] = []
        self.near: asyncio.DatagramTransport | None = None
        self.far: asyncio.DatagramTransport | None = None
        self.trunk_address: tuple[str, int] | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.near, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self, near=True), local_addr=("127.0.0.1", 0)
        )
        self.far, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self, near=False), local_addr=("127.0.0.1", 0)
        )
        self.port = self.near.get_extra_info("sockname")[1]

    def forward(self, data: bytes, addr: tuple[str, int], near: bool) -> None:
        try:
            message = parse_message(data)
        except ParseError:
            message = None
        if message is not None and self.drop(message):
            self.dropped.append(message)
            return
        if near:
            self.trunk_address = addr
            assert self.far is not None
            self.far.sendto(data, self.peer)
        elif self.trunk_address is not None:
            assert self.near is not None
            self.near.sendto(data, self.trunk_address)

    def close(self) -> None:
        for transport in (self.near, self.far):
            if transport is not None:
                transport.close()


class _Side(asyncio.DatagramProtocol):
    def __init__(self, forwarder: LossyForwarder, *, near: bool) -> None:
        self.forwarder = forwarder
        self.near = near

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.forwarder.forward(data, (str(addr[0]), int(addr[1])), self.near)


def first_only(test: Callable[[Request | Response], bool]) -> Callable[[Request | Response], bool]:
    """A drop rule that loses only the first message ``test`` picks."""
    state = {"done": False}

    def rule(message: Request | Response) -> bool:
        if not state["done"] and test(message):
            state["done"] = True
            return True
        return False

    return rule


class RawPeer(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 that collects every datagram it gets."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @classmethod
    async def open(cls) -> RawPeer:
        peer = cls()
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.received.append(data)

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    async def exchange(self, data: bytes, port: int, wait: float = 0.15) -> list[Response]:
        """Send one datagram; the responses to it (its Call-ID) within ``wait``. Others
        are earlier requests' final responses, retransmitted (Timer G) for want of an ACK."""
        found = re.search(rb"Call-ID: (\S+)", data)
        call_id = found.group(1).decode() if found else None
        before = len(self.received)
        self.send(data, port)
        await asyncio.sleep(wait)
        responses = []
        for raw in self.received[before:]:
            try:
                message = parse_message(raw)
            except ParseError:
                continue
            assert isinstance(message, Response)
            if message.call_id == call_id:
                responses.append(message)
        return responses

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
