"""Bad input over raw sockets: garbage, truncated, oversized and wrong messages, an
unknown source and a flood. The trunk answers what can be answered, drops the rest,
never falls over, and serves a SIPp call afterwards."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

from signaling.sip.message import Response, parse_message
from signaling.sip.trunk import RATE_LIMIT_RETRY_AFTER, SipTrunk, TrunkSettings
from tests.integration.sip_trunk_support import (
    CALLEE,
    RawPeer,
    Sipp,
    running_trunk,
    trunk_port,
    until,
)


def trunk_has_read(trunk: SipTrunk, count: int) -> bool:
    return trunk.stats["messages_received"] >= count


def request(
    peer: RawPeer,
    method: str = "OPTIONS",
    *,
    n: int = 1,
    to_tag: str = "",
    extra: str = "",
    body: bytes = b"",
) -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    head = (
        f"{method} sip:{CALLEE}@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKraw{n};rport\r\n"
        f"From: <sip:+4917700000001@127.0.0.1>;tag=raw{n}\r\n"
        f"To: <sip:{CALLEE}@127.0.0.1>{tag}\r\n"
        f"Call-ID: raw-{n}@127.0.0.1\r\n"
        f"CSeq: {n} {method}\r\n"
        f"Max-Forwards: 70\r\n"
        f"User-Agent: raw-socket-test\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def statuses(responses: list[Response]) -> list[int]:
    return [r.status for r in responses]


async def sipp_call_works(trunk: SipTrunk, workdir: Path) -> None:
    sipp = Sipp(
        workdir,
        scenario="sip_uac_call.xml",
        remote=f"127.0.0.1:{trunk_port(trunk)}",
        args=("-s", CALLEE),
    )
    assert await sipp.exit_code() == 0, sipp.log()


#: user_agent: sip_uac_call.xml checks that Server carries the setting.
SETTINGS = TrunkSettings(
    listen_port=0, accepted_sources=("127.0.0.1",), options_interval=0, user_agent="Anruf"
)


async def test_bad_datagrams_get_400_or_are_dropped(tmp_path: Path) -> None:
    peer = await RawPeer.open()
    try:
        async with running_trunk(SETTINGS) as trunk:
            port = trunk_port(trunk)
            ok = await peer.exchange(request(peer), port)
            assert statuses(ok) == [200]
            assert ok[0].headers.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"]
            assert ok[0].headers.get("Accept") == "application/sdp"

            # Garbage and keep-alives: nothing to answer.
            assert await peer.exchange(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", port) == []
            assert await peer.exchange(b"\r\n\r\n", port) == []
            assert await peer.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", port) == []
            # Without CSeq no response can be built: dropped.
            no_cseq = request(peer, n=2).replace(b"CSeq: 2 OPTIONS\r\n", b"")
            assert await peer.exchange(no_cseq, port) == []

            # Truncated (the datagram ends inside the headers): 400 with a Warning.
            truncated = await peer.exchange(request(peer, n=3)[:-40], port)
            assert statuses(truncated) == [400]
            assert "399 anruf" in (truncated[0].headers.get("Warning") or "")
            # Content-Length beyond the datagram, a CSeq for another method: 400.
            long_body = request(peer, n=4).replace(b"Content-Length: 0", b"Content-Length: 900")
            assert statuses(await peer.exchange(long_body, port)) == [400]
            wrong_cseq = request(peer, n=5).replace(b"CSeq: 5 OPTIONS", b"CSeq: 5 INVITE")
            assert statuses(await peer.exchange(wrong_cseq, port)) == [400]
            # Oversized (over sip_max_message_bytes): 513 Message Too Large.
            big = request(peer, n=6, extra=f"X-Padding: {'a' * 20000}\r\n")
            assert statuses(await peer.exchange(big, port)) == [513]
            # Another SIP version: 505; a URI scheme we do not know: 416.
            v3 = request(peer, n=7).replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia", 1)
            assert statuses(await peer.exchange(v3, port)) == [505]
            mailto = request(peer, n=8).replace(b"OPTIONS sip:", b"OPTIONS mailto:", 1)
            assert statuses(await peer.exchange(mailto, port)) == [416]

            # Well-formed but not for us.
            assert statuses(await peer.exchange(request(peer, "FROB", n=9), port)) == [501]
            register = await peer.exchange(request(peer, "REGISTER", n=10), port)
            assert statuses(register) == [405] and register[0].headers.get("Allow")
            stray_bye = request(peer, "BYE", n=11, to_tag="nosuchcall")
            assert statuses(await peer.exchange(stray_bye, port)) == [481]
            no_sdp = request(peer, "INVITE", n=12, extra="Contact: <sip:x@127.0.0.1>\r\n")
            assert 488 in statuses(await peer.exchange(no_sdp, port))
            hops = request(peer, "INVITE", n=13).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
            assert 483 in statuses(await peer.exchange(hops, port))
            required = request(peer, "INVITE", n=14, extra="Require: 100rel\r\n")
            unsupported = await peer.exchange(required, port)
            assert 420 in statuses(unsupported)
            assert unsupported[-1].headers.get("Unsupported") == "100rel"

            assert trunk.stats["messages_malformed"] == 9
            await sipp_call_works(trunk, tmp_path)
    finally:
        peer.close()


async def test_unknown_sources_get_403() -> None:
    peer = await RawPeer.open()
    settings = TrunkSettings(listen_port=0, accepted_sources=("192.0.2.0/24",), options_interval=0)
    try:
        async with running_trunk(settings) as trunk:
            port = trunk_port(trunk)
            (forbidden,) = await peer.exchange(request(peer, "INVITE"), port)
            assert forbidden.status == 403
            # A scanner does not learn the product (user_agent is empty by default).
            assert "Server" not in forbidden.headers
            truncated = request(peer, n=2)[:-40]
            assert statuses(await peer.exchange(truncated, port)) == [403]
            assert await peer.exchange(request(peer, "ACK", n=3), port) == []
            assert trunk.stats["requests_forbidden"] == 3
            assert trunk.stats["calls_incoming"] == 0
    finally:
        peer.close()


async def test_a_flood_from_one_source_is_rate_limited(tmp_path: Path) -> None:
    peer = await RawPeer.open()
    try:
        async with running_trunk(SETTINGS) as trunk:  # 50 requests/s, bursts of 100
            port = trunk_port(trunk)
            started = time.monotonic()
            for n in range(1000):
                peer.send(request(peer, n=n), port)
                if n % 20 == 19:
                    # Bursts of 20, each as soon as the trunk has read all but one
                    # burst of the earlier ones: the trunk and this sender share one
                    # loop, and a kernel receive queue that overflows drops datagrams.
                    await until(partial(trunk_has_read, trunk, n + 1 - 20), 2.0)
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.5)
            responses = [parse_message(raw) for raw in peer.received]
            answered = [r for r in responses if isinstance(r, Response) and r.status == 200]
            refused = [r for r in responses if isinstance(r, Response) and r.status == 503]
            received = trunk.stats["messages_received"]
            assert received > 800, received
            assert len(answered) <= 100 + 50 * (elapsed + 0.5) + 5
            assert trunk.stats["requests_rate_limited"] >= received - len(answered) - 1
            assert trunk.stats["requests_rate_limited"] > 700
            # At most one 503 a second, telling the source when to come back.
            assert 1 <= len(refused) <= elapsed + 2
            assert refused[0].headers.get("Retry-After") == str(RATE_LIMIT_RETRY_AFTER)
            # The source's bucket refills and the trunk serves a call.
            await asyncio.sleep(1.0)
            await sipp_call_works(trunk, tmp_path)
    finally:
        peer.close()


async def test_broken_tcp_streams_are_closed() -> None:
    async with running_trunk(SETTINGS) as trunk:
        port = trunk_port(trunk)
        for garbage in (b"HELLO WORLD\r\n\r\n", b"A" * 20000, b"OPTIONS sip:x SIP/2.0\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(garbage)
            await writer.drain()
            async with asyncio.timeout(2.0):
                assert await reader.read() == b""  # closed by the trunk
            writer.close()
        # A good request on a fresh connection is still answered.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        local_port = writer.get_extra_info("sockname")[1]
        options = (
            f"OPTIONS sip:{CALLEE}@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 127.0.0.1:{local_port};branch=z9hG4bKtcp1\r\n"
            "From: <sip:+4917700000001@127.0.0.1>;tag=t1\r\n"
            f"To: <sip:{CALLEE}@127.0.0.1>\r\nCall-ID: tcp-1\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        writer.write(options.encode())
        async with asyncio.timeout(2.0):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"SIP/2.0 200 OK\r\n")
        writer.close()


#: Tight limits for the flood tests below: 20 messages/s (bursts of 40), then blocked.
STRANGERS = TrunkSettings(
    listen_port=0,
    accepted_sources=("192.0.2.0/24",),
    options_interval=0,
    requests_per_second_per_source=20.0,
    block_after=1.0,
    block_seconds=60.0,
)


async def test_responses_from_an_unknown_source_are_charged_and_get_it_blocked() -> None:
    """Datagrams that parse as responses count against the source like requests."""
    peer = await RawPeer.open()
    response = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKfake\r\n"
        b"From: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:b@127.0.0.1>;tag=b\r\n"
        b"Call-ID: fake\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    try:
        async with running_trunk(STRANGERS) as trunk:
            port = trunk_port(trunk)
            sent = 0
            async with asyncio.timeout(10.0):
                while not trunk.blocked_sources():
                    for _ in range(10):
                        peer.send(response, port)
                    sent += 10
                    await until(partial(trunk_has_read, trunk, sent - 10), 2.0)
                    await asyncio.sleep(0.02)
            assert trunk.blocked_sources() == ["127.0.0.1"]
            assert trunk.stats["sources_blocked"] == 1
            assert trunk.stats["responses_dropped"] > 0
            assert peer.received == []
            # Blocked: even a request is now dropped unanswered.
            assert await peer.exchange(request(peer, "OPTIONS"), port) == []
            assert trunk.stats["requests_blocked"] >= 1
    finally:
        peer.close()


async def test_well_framed_malformed_tcp_requests_get_their_source_blocked() -> None:
    malformed = (
        f"OPTIONS sip:{CALLEE}@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKbad\r\n"
        "From: <sip:+4917700000001@127.0.0.1>;tag=t1\r\n"
        f"To: <sip:{CALLEE}@127.0.0.1>\r\nCall-ID: bad-1\r\nCSeq: banana\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    async with running_trunk(STRANGERS) as trunk:
        port = trunk_port(trunk)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(10.0):
                while not trunk.blocked_sources():
                    writer.write(malformed * 10)
                    await writer.drain()
                    await asyncio.sleep(0.05)
                # The connection of a blocked source is closed on its next bytes.
                writer.write(malformed)
                while await reader.read(65536):
                    pass
        finally:
            writer.close()
        assert trunk.stats["sources_blocked"] == 1
        assert trunk.stats["messages_malformed"] > 20
