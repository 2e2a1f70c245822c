"""Plain-RTP legs: a WebRTC endpoint (aiortc, DTLS-SRTP) and an RTP/AVP peer (real UDP)
talking through the relay on 127.0.0.1, transcoded (G.711) or forwarded (Opus)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tests.integration.relaying import wait_connected
from voice.audio import tone_fraction
from voice.client.media import SAMPLE_RATE, MediaEndpoint
from voice.ice import restrict_host_addresses
from voice.loadtest.rtp_peer import PlainRtpPeer
from voice.relay.avp import Direction, NoCommonCodecError, parse_audio
from voice.relay.relay import Relay
from voice.relay.rtp_leg import WebRtcTap

pytestmark = pytest.mark.timeout(60)

restrict_host_addresses(["127.0.0.1"])

#: Judge the audio from this long after both sides started hearing each other.
SKIP = 0.5


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    relay = Relay(bind_address="127.0.0.1")
    yield relay
    await relay.close()


@pytest.fixture
async def app_caller() -> AsyncIterator[MediaEndpoint]:
    caller = MediaEndpoint(source="tone:440")
    yield caller
    await caller.close()


async def connect_app_leg(relay: Relay, caller: MediaEndpoint) -> None:
    answer = await relay.answer("call:app", await caller.create_offer())
    await caller.accept_answer(answer)
    relay.start_ringback("call:app")


async def outbound_rtp_leg(relay: Relay, codec: str, loss: float = 0.0) -> PlainRtpPeer:
    """The relay offers (our INVITE), the peer answers with `codec` (the operator's 200)."""
    peer = PlainRtpPeer(codec=codec, tone=880.0, loss=loss)
    await peer.open()
    offer = await relay.offer_rtp("call:sip")
    await relay.accept_rtp_answer("call:sip", peer.answer(offer))
    return peer


async def talk(
    caller: MediaEndpoint, peer: PlainRtpPeer, seconds: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Both play; returns what each heard after both heard the other (plus SKIP)."""
    await caller.wait_for_tone(880, timeout=5)
    async with asyncio.timeout(5):
        while tone_fraction(peer.recorded()[-peer.sample_rate // 5 :], peer.sample_rate, 440) < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    caller.mark("talk")
    peer_start = peer.mark()
    await asyncio.sleep(seconds)
    app_heard = caller.received()[caller.markers["talk"] + int(SKIP * SAMPLE_RATE) :]
    peer_heard = peer.recorded()[peer_start + int(SKIP * peer.sample_rate) :]
    return app_heard, peer_heard


@pytest.mark.parametrize("codec", ["PCMA", "PCMU"])
async def test_g711_leg_hears_and_is_heard(
    relay: Relay, app_caller: MediaEndpoint, codec: str
) -> None:
    await connect_app_leg(relay, app_caller)
    peer = await outbound_rtp_leg(relay, codec)
    try:
        await wait_connected(app_caller)
        peer.start()
        relay.bridge("call:app", "call:sip")
        app_heard, peer_heard = await talk(app_caller, peer)
        assert tone_fraction(app_heard, SAMPLE_RATE, 880) >= 0.8
        assert tone_fraction(peer_heard, 8000, 440) >= 0.8
        rtp_leg = relay.rtp_leg("call:sip")
        assert rtp_leg.transcoding and rtp_leg.frames_to_webrtc > 100
        assert rtp_leg.frames_from_webrtc > 100 and rtp_leg.forwarded_packets == 0
        # Every packet to the peer is G.711 of the negotiated type (never raw Opus).
        assert set(peer.received_payload_types) == {0 if codec == "PCMU" else 8}
        # The app's Opus took the tap on its nominated pair (no aiortc path per packet).
        app_leg = relay._legs["call:app"]
        assert isinstance(app_leg.fast_path, WebRtcTap)
        assert app_leg.fast_path_packets > 100
        stats = await relay.close_leg("call:sip")
        assert stats.packets_received > 150 and stats.packets_sent > 150
        assert stats.packets_lost == 0
        assert stats.jitter_ms < 20
    finally:
        await peer.close()


async def test_opus_on_the_rtp_leg_is_forwarded(relay: Relay, app_caller: MediaEndpoint) -> None:
    await connect_app_leg(relay, app_caller)
    peer = await outbound_rtp_leg(relay, "opus")
    try:
        await wait_connected(app_caller)
        peer.start()
        relay.bridge("call:sip", "call:app")  # either order
        app_heard, peer_heard = await talk(app_caller, peer)
        assert tone_fraction(app_heard, SAMPLE_RATE, 880) >= 0.8
        assert tone_fraction(peer_heard, 48000, 440) >= 0.8
        rtp_leg = relay.rtp_leg("call:sip")
        assert not rtp_leg.transcoding
        assert rtp_leg.frames_to_webrtc == 0 and rtp_leg.frames_from_webrtc == 0
        assert rtp_leg._encoder is None and rtp_leg._decoder is None
        assert rtp_leg.forwarded_packets > 200
        assert set(peer.received_payload_types) == {111}
    finally:
        await peer.close()


async def test_early_media_then_answer(relay: Relay, app_caller: MediaEndpoint) -> None:
    """183 with SDP: the caller hears the network's ringback; the 200 and a second
    bridge() change nothing audible."""
    await connect_app_leg(relay, app_caller)
    await wait_connected(app_caller)
    await app_caller.wait_for_tone(425, timeout=5)  # the relay's own ringback first
    peer = PlainRtpPeer(codec="PCMA", tone=880.0)
    await peer.open()
    try:
        offer = await relay.offer_rtp("call:sip")
        answer = peer.answer(offer)
        await relay.accept_rtp_answer("call:sip", answer)  # 183
        peer.start()
        relay.bridge("call:app", "call:sip")
        await app_caller.wait_for_tone(880, timeout=5)
        await relay.accept_rtp_answer("call:sip", answer)  # 200, same SDP
        relay.bridge("call:app", "call:sip")
        app_caller.mark("answered")
        await asyncio.sleep(1.5)
        heard = app_caller.received()[app_caller.markers["answered"] + SAMPLE_RATE // 4 :]
        assert tone_fraction(heard, SAMPLE_RATE, 880) >= 0.8
        assert tone_fraction(heard, SAMPLE_RATE, 425) == 0.0
    finally:
        await peer.close()


async def test_dtmf_both_ways(relay: Relay, app_caller: MediaEndpoint) -> None:
    received: list[tuple[str, str]] = []
    relay.on_dtmf = lambda leg_id, digit: received.append((leg_id, digit))
    await connect_app_leg(relay, app_caller)
    peer = await outbound_rtp_leg(relay, "PCMA")
    try:
        await wait_connected(app_caller)
        peer.start()
        relay.bridge("call:app", "call:sip")
        await app_caller.wait_for_tone(880, timeout=5)
        relay.send_dtmf("call:sip", "19*#")
        relay.send_dtmf("call:sip", "A")  # queued behind the first ones
        peer.send_dtmf("5#")
        async with asyncio.timeout(5):
            while len(peer.digits) < 5 or len(received) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # retransmitted end packets must not count again
        assert peer.digits == ["1", "9", "*", "#", "A"]
        assert received == [("call:sip", "5"), ("call:sip", "#")]
        assert peer.received_payload_types.get(101, 0) >= 5 * 7
    finally:
        await peer.close()


async def test_hold_and_resume(relay: Relay, app_caller: MediaEndpoint) -> None:
    await connect_app_leg(relay, app_caller)
    peer = await outbound_rtp_leg(relay, "PCMA")
    try:
        await wait_connected(app_caller)
        peer.start()
        relay.bridge("call:app", "call:sip")
        await app_caller.wait_for_tone(880, timeout=5)
        for hold, expected in (
            (peer.sdp(Direction.SENDONLY, 2), Direction.RECVONLY),
            (peer.sdp(Direction.INACTIVE, 3), Direction.INACTIVE),
            (peer.sdp(version=4).replace("IN IP4 127.0.0.1", "IN IP4 0.0.0.0"), None),
        ):
            answer = parse_audio(await relay.update_rtp("call:sip", hold))
            if expected is not None:
                assert answer.direction is expected
            else:
                assert not answer.direction.sends
            await asyncio.sleep(0.2)  # packets in flight
            count = peer.received
            await asyncio.sleep(0.6)
            assert peer.received == count, f"packets sent while on hold ({hold!r})"
        # Resume on a new port: the relay sends there.
        moved = PlainRtpPeer(codec="PCMA", tone=880.0)
        await moved.open()
        try:
            answer = parse_audio(await relay.update_rtp("call:sip", moved.sdp(version=5)))
            assert answer.direction is Direction.SENDRECV
            await asyncio.sleep(0.6)
            assert moved.received > 15
        finally:
            await moved.close()
    finally:
        await peer.close()


async def test_lossy_rtp_leg_still_delivers_the_tone(
    relay: Relay, app_caller: MediaEndpoint
) -> None:
    await connect_app_leg(relay, app_caller)
    peer = await outbound_rtp_leg(relay, "PCMA", loss=0.05)
    try:
        await wait_connected(app_caller)
        peer.start()
        relay.bridge("call:app", "call:sip")
        app_heard, _ = await talk(app_caller, peer, seconds=4.0)
        assert tone_fraction(app_heard, SAMPLE_RATE, 880) >= 0.8
        rtp_leg = relay.rtp_leg("call:sip")
        assert rtp_leg._jitter.concealed > 0
        stats = relay.stats("call:sip")
        assert stats.packets_lost == pytest.approx(peer.dropped, abs=3)
    finally:
        await peer.close()


async def test_answer_rtp_chooses_a_codec(relay: Relay) -> None:
    peer = PlainRtpPeer(codec="PCMU")
    await peer.open()
    try:
        answer = parse_audio(await relay.answer_rtp("call:in", peer.sdp()))
        assert [c.name for c in answer.codecs] == ["PCMU", "telephone-event"]
        assert answer.port == relay.rtp_leg("call:in").port
        g729 = (
            peer.sdp()
            .replace("RTP/AVP 0 101", "RTP/AVP 18")
            .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000")
        )
        with pytest.raises(NoCommonCodecError):
            await relay.answer_rtp("call:other", g729)
        assert relay.active_legs == 1
    finally:
        await peer.close()


async def test_media_timeout_only_once_rtp_flowed() -> None:
    failures: list[tuple[str, str]] = []
    relay = Relay(
        bind_address="127.0.0.1",
        media_timeout=0.6,
        on_leg_failed=lambda leg_id, detail: failures.append((leg_id, detail)),
    )
    peer = PlainRtpPeer(codec="PCMA")
    await peer.open()
    try:
        offer = await relay.offer_rtp("call:sip")
        await relay.accept_rtp_answer("call:sip", peer.answer(offer))  # a 183, no media yet
        await asyncio.sleep(1.5)
        assert failures == []
        peer.start()
        await asyncio.sleep(0.5)
        await peer.close()  # the network goes silent
        await asyncio.sleep(1.5)
        assert failures == [("call:sip", "media_timeout")]
    finally:
        await peer.close()
        await relay.close()


async def test_rtcp_reports_and_round_trip_time(relay: Relay, app_caller: MediaEndpoint) -> None:
    await connect_app_leg(relay, app_caller)
    peer = await outbound_rtp_leg(relay, "PCMA")
    try:
        assert peer.rtcp_transport is not None, "the port after the peer's was taken"
        rtp_leg = relay.rtp_leg("call:sip")
        assert rtp_leg.rtcp_transport is not None
        assert rtp_leg.rtcp_transport.get_extra_info("sockname")[1] == rtp_leg.port + 1
        rtp_leg.rtcp_interval = 0.4
        await wait_connected(app_caller)
        peer.start()
        relay.bridge("call:app", "call:sip")
        async with asyncio.timeout(5):
            while relay.stats("call:sip").rtt_ms is None:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert "RtcpSrPacket" in peer.rtcp_packets and "RtcpSdesPacket" in peer.rtcp_packets
        assert 0 <= (relay.stats("call:sip").rtt_ms or 0) < 50  # loopback
        await relay.close_leg("call:sip")
        await asyncio.sleep(0.1)
        assert peer.rtcp_packets[-1] == "RtcpByePacket"
    finally:
        await peer.close()
