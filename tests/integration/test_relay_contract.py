"""The relay contract (voice/relay/api.py), the same for every backend.

Each test runs against the relay in this process, a pool of worker processes,
and a pool of one relay host (a RelayHost in this process, registered in Redis
logical database 7, reached over its authenticated control port). App media
endpoints and an RTP/AVP peer talk through it over real UDP on 127.0.0.1, the
way CallService drives it: the caller's leg answered, the callee's offered,
both of one call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import require_redis
from tests.integration.relaying import LegEvents, call_through, hear_each_other, wait_connected
from tests.ports import free_port
from voice.audio import tone_fraction
from voice.client.media import SAMPLE_RATE, MediaEndpoint
from voice.loadtest.rtp_peer import PlainRtpPeer
from voice.relay import LegStats, MediaRelay, NoOpusError, UnknownLegError
from voice.relay.avp import Direction, NoCommonCodecError, parse_audio
from voice.relay.host import HostSettings, RelayHost
from voice.relay.pool import RelayPool
from voice.relay.registry import RedisHostDirectory
from voice.relay.relay import Relay
from voice.relay.server import WorkerSettings

pytestmark = pytest.mark.timeout(60)

REDIS_DB = 7
SECRET = "test-relay-secret-contract"
BACKENDS = ["in_process", "worker_processes", "relay_host"]


@pytest.fixture
def digits() -> LegEvents:
    return LegEvents()


@pytest.fixture(params=BACKENDS)
async def relay(request: pytest.FixtureRequest, digits: LegEvents) -> AsyncIterator[MediaRelay]:
    backend: MediaRelay
    host: RelayHost | None = None
    if request.param == "in_process":
        backend = Relay(bind_address="127.0.0.1")
    elif request.param == "worker_processes":
        backend = RelayPool.of_processes(bind_address="127.0.0.1", workers=1)
    else:
        url = require_redis(REDIS_DB)
        host = RelayHost(
            HostSettings(
                host_id="contract",
                control_listen=f"127.0.0.1:{free_port()}",
                control_announce="",
                redis_url=url,
                secret=SECRET,
                media=WorkerSettings(
                    bind_address="127.0.0.1",
                    announce_address="",
                    ice_servers=(),
                    media_timeout=20.0,
                    connect_timeout=10.0,
                    relay_mode="forward",
                ),
                heartbeat=0.5,
                ttl=1.5,
            )
        )
        await host.start()
        backend = RelayPool.of_hosts(RedisHostDirectory(url), secret=SECRET, discovery_interval=0.5)
    backend.on_dtmf = digits
    try:
        yield backend
    finally:
        await backend.close()
        if host is not None:
            await host.close()
        assert backend.active_legs == 0


async def settled_stats(relay: MediaRelay, leg_id: str) -> LegStats:
    """The leg's counters once a pool has had a report to give (at most a second)."""
    async with asyncio.timeout(3):
        while relay.stats(leg_id).packets_received == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return relay.stats(leg_id)


async def test_bridged_endpoints_hear_each_other(
    relay: MediaRelay, endpoints: tuple[MediaEndpoint, MediaEndpoint]
) -> None:
    caller, callee = endpoints
    a, b = await call_through(relay, caller, callee, call_id="c")
    # Early media: the caller hears ringback before the callee answers.
    await caller.wait_for_tone(425, timeout=5)

    relay.bridge(a, b)
    caller.mark("bridged")
    callee.mark("bridged")
    await hear_each_other(caller, callee, listen=2.5)

    if isinstance(relay, Relay):
        # The relay's own receivers never fed aiortc's jitter buffer or decoder.
        for leg_id in (a, b):
            leg = relay._legs[leg_id]
            receiver = leg.transceiver.receiver
            jitter_buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
            assert all(packet is None for packet in jitter_buffer._packets)
            assert receiver._RTCRtpReceiver__remote_streams == {}  # type: ignore[attr-defined]
            assert leg.decoder_bypassed_packets > 100

    reported = await settled_stats(relay, a)
    final_a = await relay.close_leg(a)
    final_b = await relay.close_leg(b)
    for final in (final_a, final_b):
        assert final.packets_received > 100 and final.packets_sent > 100
        assert final.bytes_received > 0 and final.bytes_sent > 0
        assert final.packets_lost == 0
    assert final_a.packets_received >= reported.packets_received
    # Ringback and forwarded packets went out on leg a.
    assert final_a.packets_sent > final_b.packets_sent
    assert relay.active_legs == 0
    assert await relay.close_leg(a) == LegStats()


async def test_bad_requests_raise_their_own_errors(relay: MediaRelay) -> None:
    with pytest.raises(NoOpusError):
        await relay.answer(
            "c:a", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n", call_id="c"
        )
    with pytest.raises(ValueError, match="SDP"):
        await relay.answer("c:a", "not sdp", call_id="c")
    assert relay.active_legs == 0
    with pytest.raises(UnknownLegError):
        await relay.accept_answer("c:nobody", "v=0\r\n")
    with pytest.raises(UnknownLegError):
        relay.start_ringback("c:nobody")
    assert "m=audio" in await relay.offer("c:b", call_id="c")
    with pytest.raises(ValueError, match="already exists"):
        await relay.offer("c:b", call_id="c")
    with pytest.raises(NoOpusError):
        await relay.accept_answer("c:b", "v=0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    with pytest.raises(ValueError, match="itself"):
        relay.bridge("c:b", "c:b")
    assert relay.active_legs == 1
    assert await relay.close_leg("c:b") == await relay.close_leg("c:b")
    assert relay.active_legs == 0


async def test_an_rtp_leg_carries_g711_dtmf_and_hold(relay: MediaRelay, digits: LegEvents) -> None:
    app = MediaEndpoint(source="tone:440")
    peer = PlainRtpPeer(codec="PCMA", tone=880.0)
    await peer.open()
    try:
        answer = await relay.answer("call:app", await app.create_offer(), call_id="call")
        await app.accept_answer(answer)
        relay.start_ringback("call:app")
        offer = await relay.offer_rtp("call:sip", call_id="call")
        await relay.accept_rtp_answer("call:sip", peer.answer(offer))
        await wait_connected(app)
        peer.start()
        relay.bridge("call:app", "call:sip")

        await app.wait_for_tone(880, timeout=5)
        async with asyncio.timeout(5):
            while tone_fraction(peer.recorded()[-1600:], 8000, 440) < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        app.mark("talk")
        peer_start = peer.mark()
        await asyncio.sleep(2.0)
        app_heard = app.received()[app.markers["talk"] + SAMPLE_RATE // 2 :]
        peer_heard = peer.recorded()[peer_start + 4000 :]
        assert tone_fraction(app_heard, SAMPLE_RATE, 880) >= 0.8
        assert tone_fraction(peer_heard, 8000, 440) >= 0.8

        relay.send_dtmf("call:sip", "42")
        peer.send_dtmf("5")
        async with asyncio.timeout(5):
            while len(peer.digits) < 2 or not digits:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert peer.digits == ["4", "2"] and digits == [("call:sip", "5")]

        held = parse_audio(await relay.update_rtp("call:sip", peer.sdp(Direction.SENDONLY, 2)))
        assert held.direction is Direction.RECVONLY
        stats = await relay.close_leg("call:sip")
        assert stats.packets_received > 50 and stats.packets_sent > 50

        g729 = peer.sdp().replace("RTP/AVP 8 101", "RTP/AVP 18")
        with pytest.raises(NoCommonCodecError):
            await relay.answer_rtp("other:sip", g729, call_id="other")
        assert relay.active_legs == 1
        await relay.close_leg("call:app")
    finally:
        await peer.close()
        await app.close()
