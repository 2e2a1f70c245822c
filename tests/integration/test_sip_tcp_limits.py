"""TCP connection limits of the SIP transport on real sockets on 127.0.0.x: an address
holding many idle or unfinished connections does not lock out the SBC, idle and
unfinished connections are closed after their timeouts, and our own connection to a
TCP SBC is made when every inbound slot is taken.

Loopback is 127.0.0.0/8 on Linux: the SBC connects from 127.0.0.2, strangers from
127.0.0.1 and 127.0.0.3+; short timeouts come in through TcpLimits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial

from signaling.sip.connections import TcpLimits
from signaling.sip.message import ParseError, Request, Response, SipTarget
from signaling.sip.transport import SipTransport
from signaling.sip.trunk import TrunkSettings
from tests.integration.sip_trunk_support import running_trunk, trunk_port, until

SBC_HOST = "127.0.0.2"

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def sbc_holds(sip: SipTransport, count: int) -> bool:
    return sip.table.from_source(SBC_HOST) == count


def options(n: int, local_port: int) -> bytes:
    return (
        f"OPTIONS sip:+4930555000100@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{local_port};branch=z9hG4bKlimits{n}\r\n"
        f"From: <sip:+4917700000001@127.0.0.1>;tag=l{n}\r\n"
        f"To: <sip:+4930555000100@127.0.0.1>\r\n"
        f"Call-ID: limits-{n}\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Received:
    def __init__(self) -> None:
        self.items: list[tuple[Request | Response | ParseError, SipTarget]] = []

    def __call__(self, item: Request | Response | ParseError, source: SipTarget) -> None:
        self.items.append((item, source))

    def call_ids(self) -> list[str]:
        return [m.call_id for m, _ in self.items if isinstance(m, Request | Response)]


@contextlib.asynccontextmanager
async def transport(
    limits: TcpLimits, received: Received, accepted: Callable[[str], bool]
) -> AsyncIterator[SipTransport]:
    sip = SipTransport(
        "127.0.0.1",
        0,
        ("tcp",),
        on_datagram=lambda data, source: None,
        on_stream=received,
        on_error=lambda peer: None,
        max_message_bytes=16384,
        tcp_limits=limits,
        accepted_source=accepted,
    )
    await sip.start()
    try:
        yield sip
    finally:
        await sip.stop()


async def connect(port: int, source: str = "127.0.0.1") -> Connection:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_by_peer(connection: Connection, timeout: float = 2.0) -> bool:
    """Whether the other side closes ``connection`` within ``timeout``."""
    reader, _ = connection
    try:
        async with asyncio.timeout(timeout):
            return await reader.read() == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def still_open(connection: Connection, wait: float = 0.1) -> bool:
    return not await closed_by_peer(connection, wait)


def close_all(connections: list[Connection]) -> None:
    for _, writer in connections:
        writer.close()


async def test_strangers_holding_connections_do_not_lock_out_the_sbc() -> None:
    limits = TcpLimits(max_connections=8, reserved_for_accepted=2, max_per_source=3)
    received = Received()
    held: list[Connection] = []
    async with transport(limits, received, lambda host: host == SBC_HOST) as sip:
        port = sip.bound_port
        try:
            # One address: three connections, the fourth is refused.
            for _ in range(4):
                held.append(await connect(port))
            assert await closed_by_peer(held[-1])
            assert sip.stats["tcp_refused_per_source"] == 1
            # Other addresses fill the six slots that are not reserved: one idle, one
            # with a message that never ends.
            for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
                held.append(await connect(port, source))
            _, unfinished = held[-1]
            unfinished.write(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n")
            held.append(await connect(port, "127.0.0.6"))
            assert await closed_by_peer(held[-1])
            assert sip.stats["tcp_refused_full"] == 1
            await until(lambda: sip.table.inbound == 6, 2.0)

            # The SBC takes the reserved slots, and then a stranger's slot.
            sbc: list[Connection] = []
            for n in range(1, 4):
                sbc.append(await connect(port, SBC_HOST))
                await until(partial(sbc_holds, sip, n), 2.0)
            assert sip.stats["tcp_evicted"] == 1
            assert sip.table.inbound == 8
            for n, (_, writer) in enumerate(sbc):
                writer.write(options(n, writer.get_extra_info("sockname")[1]))
            await until(lambda: len(received.items) == 3, 2.0)
            assert sorted(received.call_ids()) == ["limits-0", "limits-1", "limits-2"]
            assert all(source.host == SBC_HOST for _, source in received.items)
            # The stranger that had been idle longest lost its slot.
            assert await closed_by_peer(held[0])
            close_all(sbc)
        finally:
            close_all(held)


async def test_idle_and_unfinished_connections_are_closed_after_their_timeouts() -> None:
    limits = TcpLimits(idle_timeout=0.6, message_timeout=0.4)
    received = Received()
    async with transport(limits, received, lambda host: False) as sip:
        port = sip.bound_port
        idle = await connect(port)
        # A message that never ends, one whose Content-Length is beyond its body, and
        # one trickled a byte at a time (never idle, never done).
        never_ends = await connect(port)
        never_ends[1].write(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n")
        long_body = await connect(port)
        head = options(1, 1).replace(b"Content-Length: 0", b"Content-Length: 900")
        long_body[1].write(head + b"only a few bytes")
        trickle = await connect(port)
        # Alive: CRLF keep-alives (RFC 5626 §3.5.1) and a whole message.
        alive = await connect(port)
        started = asyncio.get_running_loop().time()

        async def keep_busy() -> None:
            for byte in b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n" * 4:
                trickle[1].write(bytes([byte]))
                alive[1].write(b"\r\n")
                await asyncio.sleep(0.05)

        busy = asyncio.create_task(keep_busy())
        try:
            for connection in (never_ends, long_body, trickle):
                assert await closed_by_peer(connection, 2.0)
            assert await closed_by_peer(idle, 2.0)
            elapsed = asyncio.get_running_loop().time() - started
            assert elapsed < 1.5
            assert await still_open(alive)
            alive[1].write(options(2, alive[1].get_extra_info("sockname")[1]))
            await until(lambda: received.call_ids() == ["limits-2"], 2.0)
        finally:
            busy.cancel()
            close_all([idle, never_ends, long_body, trickle, alive])
        assert sip.stats["tcp_message_timeout"] == 3
        assert sip.stats["tcp_idle_closed"] == 1
        await until(lambda: sip.table.inbound == 0, 2.0)


async def test_our_connection_to_a_tcp_sbc_is_made_when_inbound_slots_are_full() -> None:
    limits = TcpLimits(max_connections=2, reserved_for_accepted=0, max_per_source=2)
    got = asyncio.get_running_loop().create_future()

    async def sbc_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    sbc = await asyncio.start_server(sbc_side, SBC_HOST, 0)
    sbc_port = sbc.sockets[0].getsockname()[1]
    received = Received()
    held: list[Connection] = []
    try:
        async with transport(limits, received, lambda host: host == SBC_HOST) as sip:
            for _ in range(2):
                held.append(await connect(sip.bound_port))
            await until(lambda: sip.table.inbound == 2, 2.0)
            held.append(await connect(sip.bound_port, "127.0.0.3"))
            assert await closed_by_peer(held[-1])

            sip.send(SipTarget("tcp", SBC_HOST, sbc_port), options(7, sip.bound_port))
            async with asyncio.timeout(3.0):
                data = await got
            assert b"Call-ID: limits-7" in data
            assert sip.table.inbound == 2
            assert sip.stats["tcp_refused_full"] == 1
    finally:
        close_all(held)
        sbc.close()
        await sbc.wait_closed()


async def test_the_trunk_holds_its_transport_to_the_tcp_limits_of_its_settings() -> None:
    limits = TcpLimits(max_connections=8, reserved_for_accepted=2, max_per_source=1)
    settings = TrunkSettings(
        listen_port=0,
        transports=("tcp",),
        accepted_sources=(SBC_HOST,),
        options_interval=0,
        tcp_limits=limits,
    )
    held: list[Connection] = []
    async with running_trunk(settings) as trunk:
        port = trunk_port(trunk)
        held.append(await connect(port, "127.0.0.3"))
        held.append(await connect(port, "127.0.0.3"))
        try:
            assert await closed_by_peer(held[-1])
            assert await still_open(held[0])
            assert trunk.stats["tcp_refused_per_source"] == 1
        finally:
            close_all(held)
