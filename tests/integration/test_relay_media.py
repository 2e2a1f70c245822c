"""Two app endpoints talking through the relay over real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.relaying import call_through
from voice.audio import tone_fraction
from voice.client.media import SAMPLE_RATE, MediaEndpoint
from voice.relay import Relay

pytestmark = pytest.mark.timeout(30)


async def test_bridged_endpoints_hear_each_other(
    relay: Relay, endpoints: tuple[MediaEndpoint, MediaEndpoint]
) -> None:
    caller, callee = endpoints
    await call_through(relay, caller, callee)
    # Early media: the caller hears ringback before the callee answers.
    await caller.wait_for_tone(425, timeout=5)

    relay.bridge("a", "b")
    caller.mark("bridged")
    callee.mark("bridged")
    bridged_at = time.monotonic()
    heard_880 = await caller.wait_for_tone(880, timeout=5)
    heard_440 = await callee.wait_for_tone(440, timeout=5)
    await asyncio.sleep(3.0)

    # Skip the switch-over itself (jitter buffers drain): judge from 0.5 s on.
    skip = SAMPLE_RATE // 2
    caller_audio = caller.received()[caller.markers["bridged"] + skip :]
    callee_audio = callee.received()[callee.markers["bridged"] + skip :]
    assert tone_fraction(caller_audio, SAMPLE_RATE, 880) >= 0.9
    assert tone_fraction(callee_audio, SAMPLE_RATE, 440) >= 0.9
    assert tone_fraction(caller_audio, SAMPLE_RATE, 425) == 0.0
    print(
        f"bridge->audio caller {1000 * (heard_880 - bridged_at):.0f} ms, "
        f"callee {1000 * (heard_440 - bridged_at):.0f} ms"
    )

    # The relay's own receivers never fed aiortc's jitter buffer or decoder.
    for leg_id in ("a", "b"):
        leg = relay._legs[leg_id]
        receiver = leg.transceiver.receiver
        jitter_buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        assert all(packet is None for packet in jitter_buffer._packets)
        assert receiver._RTCRtpReceiver__remote_streams == {}  # type: ignore[attr-defined]
        assert leg.decoder_bypassed_packets > 100

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
    # Ringback and forwarded packets went out on leg a.
    assert final_a.packets_sent > final_b.packets_sent
    assert relay.active_legs == 0
    assert await relay.close_leg("a") == type(final_a)()
