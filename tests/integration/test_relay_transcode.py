"""The transcoding baseline relay: endpoints through it, and whole calls through the server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from signaling.keys import RELAY
from tests.conftest import ALICE, BOB, ServerFactory
from tests.integration.relaying import call_through
from tests.integration.test_calls import connect, heard
from voice.audio import tone_fraction
from voice.client.media import SAMPLE_RATE, MediaEndpoint
from voice.relay import LegStats, NoOpusError, UnknownLegError
from voice.relay.relay import Relay
from voice.relay.transcode import TranscodingRelay

pytestmark = pytest.mark.timeout(40)

RATE = 48000


@pytest.fixture
async def relay() -> AsyncIterator[TranscodingRelay]:
    relay = TranscodingRelay(bind_address="127.0.0.1")
    yield relay
    await relay.close()


def test_is_a_relay_with_the_same_interface() -> None:
    assert issubclass(TranscodingRelay, Relay)
    relay = TranscodingRelay(bind_address="127.0.0.1", media_timeout=5.0, connect_timeout=3.0)
    assert relay.active_legs == 0
    assert relay.stats("nope") == LegStats()


async def test_bad_input_raises_like_the_forwarding_relay(relay: TranscodingRelay) -> None:
    caller = MediaEndpoint(source="tone:440")
    try:
        offer = await caller.create_offer()
        with pytest.raises(NoOpusError):
            await relay.answer("x", offer.replace("opus/48000/2", "foo/48000/2"))
        with pytest.raises(UnknownLegError):
            await relay.accept_answer("missing", offer)
        with pytest.raises(UnknownLegError):
            relay.start_ringback("missing")
        await relay.answer("a", offer)
        with pytest.raises(ValueError, match="already exists"):
            await relay.answer("a", offer)
        with pytest.raises(ValueError, match="itself"):
            relay.bridge("a", "a")
        with pytest.raises(UnknownLegError):
            relay.bridge("a", "missing")
        assert await relay.close_leg("missing") == LegStats()
    finally:
        await caller.close()


async def test_bridged_endpoints_hear_each_other(
    relay: TranscodingRelay, endpoints: tuple[MediaEndpoint, MediaEndpoint]
) -> None:
    caller, callee = endpoints
    await call_through(relay, caller, callee)
    # Early media: the ringback track is encoded on leg a while b rings.
    await caller.wait_for_tone(425, timeout=5)
    await asyncio.sleep(1.0)  # the caller's decoded audio must not pile up meanwhile

    relay.bridge("a", "b")
    caller.mark("bridged")
    callee.mark("bridged")
    bridged_at = time.monotonic()
    heard_880 = await caller.wait_for_tone(880, timeout=5)
    heard_440 = await callee.wait_for_tone(440, timeout=5)
    await asyncio.sleep(3.0)

    skip = SAMPLE_RATE // 2
    caller_audio = caller.received()[caller.markers["bridged"] + skip :]
    callee_audio = callee.received()[callee.markers["bridged"] + skip :]
    caller_fraction = tone_fraction(caller_audio, SAMPLE_RATE, 880)
    callee_fraction = tone_fraction(callee_audio, SAMPLE_RATE, 440)
    print(
        f"bridge->audio caller {1000 * (heard_880 - bridged_at):.0f} ms, "
        f"callee {1000 * (heard_440 - bridged_at):.0f} ms; "
        f"tone fractions {caller_fraction:.2f} {callee_fraction:.2f}"
    )
    assert caller_fraction >= 0.85
    assert callee_fraction >= 0.85
    assert tone_fraction(caller_audio, SAMPLE_RATE, 425) == 0.0

    # The media went through aiortc's receivers (jitter buffer, decoder), not around them.
    for leg_id in ("a", "b"):
        leg = relay._legs[leg_id]
        assert leg.decoder_bypassed_packets == 0
        receiver = leg.transceiver.receiver
        assert receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]

    stats_a = relay.stats("a")
    final_a = await relay.close_leg("a")
    final_b = await relay.close_leg("b")
    print("leg a", final_a.as_dict())
    print("leg b", final_b.as_dict())
    for final in (final_a, final_b):
        assert final.packets_received > 100
        assert final.packets_sent > 100
        assert final.bytes_received > 0 and final.bytes_sent > 0
        assert final.packets_lost == 0
    assert final_a.packets_received >= stats_a.packets_received
    assert final_a.packets_sent > final_b.packets_sent  # ringback went out on a
    assert relay.active_legs == 0


async def test_a_whole_call_through_the_server_in_transcode_mode(
    make_server: ServerFactory,
) -> None:
    server = await make_server(relay_mode="transcode")
    relay = server.app[RELAY]
    assert isinstance(relay, TranscodingRelay)
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob)
    await asyncio.sleep(3.0)
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    assert await incoming.ended(timeout=5) == "completed"
    skip = RATE // 2
    assert tone_fraction(heard(outgoing)[skip:], RATE, 880) >= 0.85, "alice did not hear bob"
    assert tone_fraction(heard(incoming)[skip:], RATE, 440) >= 0.85, "bob did not hear alice"
    assert relay.active_legs == 0
