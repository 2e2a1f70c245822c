"""A scanner's SIP flood (SIPp from 127.0.0.2) against a real server's trunk: blocked
within seconds, dropped unparsed (UDP and TCP) while the SBC (127.0.0.1) still gets
through, counted in /metrics, and unblocked when the block time is over."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

from signaling.keys import TRUNK
from signaling.sip.trunk import SipTrunk
from tests.conftest import Server, ServerFactory
from tests.integration.sip_trunk_support import RawPeer
from tests.integration.sipp import SCENARIOS, sipp_binary
from tests.integration.test_limits import metric, metrics
from tests.integration.test_sip_trunk_bad_input import request, statuses
from tests.ports import free_port

SCANNER = "127.0.0.2"


def flood(
    workdir: Path, port: int, *, rate: int, total: int, source: str = SCANNER
) -> subprocess.Popen[bytes]:
    """SIPp sending OPTIONS at ``rate`` per second from ``source``, not waiting for answers."""
    command = [
        sipp_binary(),
        "-sf",
        str(SCENARIOS / "flood_options.xml"),
        "-i",
        source,
        "-p",
        str(free_port(socket.SOCK_DGRAM)),
        "-r",
        str(rate),
        "-m",
        str(total),
        "-nostdin",
        f"127.0.0.1:{port}",
    ]
    return subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def peer_at(address: str) -> RawPeer:
    peer = RawPeer()
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: peer, local_addr=(address, 0))
    return peer


def udp_port(trunk: SipTrunk) -> int:
    return next(port for transport, _host, port in trunk.addresses if transport == "udp")


async def flooding_server(make_server: ServerFactory) -> Server:
    return await make_server(
        sip_listen="127.0.0.1:0",
        sip_accepted_sources=("127.0.0.1",),
        sip_options_interval=0.0,
        sip_requests_per_second=20.0,  # bursts of 40
        sip_block_after=1.0,
        sip_block_seconds=3.0,
    )


async def test_a_flood_is_blocked_within_seconds_and_unblocked_later(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await flooding_server(make_server)
    trunk = server.app[TRUNK]
    port = udp_port(trunk)
    scanner = await peer_at(SCANNER)
    sbc = await peer_at("127.0.0.1")
    try:
        # Before the flood the scanner is answered (403: not an accepted source).
        assert statuses(await scanner.exchange(request(scanner, n=1), port)) == [403]

        sipp = flood(tmp_path, port, rate=200, total=2000)  # 10 s at 200/s
        started = time.monotonic()
        try:
            while SCANNER not in trunk.blocked_sources():
                assert time.monotonic() - started < 5.0, trunk.stats
                assert sipp.poll() is None, sipp.stderr.read() if sipp.stderr else ""
                await asyncio.sleep(0.02)
            blocked_after = time.monotonic() - started
            # The bucket (40) lasts 0.2 s at 200/s, then 1 s over the rate: blocked.
            assert 0.8 <= blocked_after <= 3.0, blocked_after
            handled = trunk.stats["requests_received"]

            await asyncio.sleep(1.0)
            # Dropped unparsed: nothing more reaches the transaction layer or is answered.
            assert trunk.stats["requests_received"] <= handled + 2
            assert trunk.stats["requests_blocked"] > 100
            assert await scanner.exchange(request(scanner, n=2), port) == []
            # A TCP connection from the blocked source is closed at once.
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(SCANNER, 0)
            )
            writer.write(request(scanner, n=3))
            async with asyncio.timeout(2.0):
                assert await reader.read() == b""
            writer.close()
            # The SBC still gets through.
            assert statuses(await sbc.exchange(request(sbc, n=4), port)) == [200]

            text = await metrics(server)
            assert metric(text, "anruf_sip_blocked_sources") == 1
            assert metric(text, "anruf_sip_events_total", event="sources_blocked") == 1
            assert metric(text, "anruf_sip_events_total", event="requests_blocked") > 100
            assert metric(text, "anruf_sip_events_total", event="requests_rate_limited") > 0
        finally:
            sipp.kill()
            sipp.wait()

        # The block ends after sip_block_seconds (3 s): the source is parsed and answered again.
        await asyncio.sleep(max(0.0, started + blocked_after + 3.2 - time.monotonic()))
        assert statuses(await scanner.exchange(request(scanner, n=5), port)) == [403]
        assert trunk.blocked_sources() == []
        assert metric(await metrics(server), "anruf_sip_blocked_sources") == 0
    finally:
        scanner.close()
        sbc.close()


async def test_the_sbc_flooding_is_rate_limited_but_never_blocked(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await flooding_server(make_server)
    trunk = server.app[TRUNK]
    port = udp_port(trunk)
    sipp = flood(tmp_path, port, rate=200, total=500, source="127.0.0.1")
    try:
        await asyncio.wait_for(asyncio.to_thread(sipp.wait), 10)
    finally:
        sipp.kill()
        sipp.wait()
    assert trunk.stats["requests_rate_limited"] > 200, trunk.stats
    assert trunk.blocked_sources() == []
    assert trunk.stats["sources_blocked"] == 0
    await asyncio.sleep(1.0)  # its bucket refills
    sbc = await peer_at("127.0.0.1")
    try:
        assert statuses(await sbc.exchange(request(sbc, n=9), port)) == [200]
    finally:
        sbc.close()
