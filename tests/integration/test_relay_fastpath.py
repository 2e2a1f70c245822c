"""The relay's fast path (voice/relay/fastpath.py) with real endpoints on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.relaying import call_through, hear_each_other
from tests.integration.test_relay_failures import Failures
from voice.audio import tone_fraction
from voice.client.media import SAMPLE_RATE, MediaEndpoint
from voice.relay import fastpath
from voice.relay.relay import Relay

pytestmark = pytest.mark.timeout(40)


async def test_bridged_audio_takes_the_fast_path_both_ways(
    relay: Relay, endpoints: tuple[MediaEndpoint, MediaEndpoint]
) -> None:
    caller, callee = endpoints
    await call_through(relay, caller, callee)
    await caller.wait_for_tone(425, timeout=5)
    leg_a, leg_b = relay._legs["a"], relay._legs["b"]
    # Connected but not bridged: aiortc's path, nothing forwarded fast.
    assert leg_a.fast_path_packets == 0 and leg_b.fast_path_packets == 0

    relay.bridge("a", "b")
    caller.mark("bridged")
    callee.mark("bridged")
    before = {leg: leg.reception.packets_received for leg in (leg_a, leg_b)}
    # RTT must keep coming from RTCP while RTP takes the fast path.
    leg_a.rtt = leg_b.rtt = None
    await hear_each_other(caller, callee, listen=3.0)

    for leg in (leg_a, leg_b):
        assert leg.fast_path is not None and leg.fast_path.current()
        received = leg.reception.packets_received - before[leg]
        assert received > 150
        # All but the packets already queued in aiortc when the bridge happened.
        assert leg.fast_path_packets >= received - 5, (leg.fast_path_packets, received)
        assert leg.fast_path.srtp_errors == 0
        assert leg.rtt is not None, "no RTT measured while bridged"
    for leg_id in ("a", "b"):
        stats = relay.stats(leg_id)
        assert stats.packets_lost == 0
        assert stats.rtt_ms is not None and stats.rtt_ms < 50
        assert stats.jitter_ms < 20
    print("fast path a", leg_a.fast_path_packets, relay.stats("a").as_dict())
    print("fast path b", leg_b.fast_path_packets, relay.stats("b").as_dict())

    # Closing uninstalls the interception from aioice's protocol.
    protocol = leg_a.fast_path.protocol
    await relay.close_leg("a")
    assert "datagram_received" not in vars(protocol)
    assert leg_a.fast_path is None


async def test_switched_off_fast_path_forwards_through_aiortc(
    relay: Relay, endpoints: tuple[MediaEndpoint, MediaEndpoint]
) -> None:
    caller, callee = endpoints
    await call_through(relay, caller, callee)
    relay.bridge("a", "b")
    await caller.wait_for_tone(880, timeout=5)
    leg_a = relay._legs["a"]
    assert leg_a.fast_path is not None
    protocol = leg_a.fast_path.protocol
    fastpath.set_enabled(False)
    try:
        assert "datagram_received" not in vars(protocol)
        counted = leg_a.fast_path_packets
        received = leg_a.reception.packets_received
        caller.mark("off")
        callee.mark("off")
        await asyncio.sleep(1.5)
        assert leg_a.fast_path_packets == counted
        assert leg_a.reception.packets_received > received + 50
        callee_audio = callee.received()[callee.markers["off"] + SAMPLE_RATE // 2 :]
        assert tone_fraction(callee_audio, SAMPLE_RATE, 440) >= 0.9
    finally:
        fastpath.set_enabled(True)
    # Back on: the next packet reinstalls it.
    await asyncio.sleep(0.5)
    assert leg_a.fast_path is not None and leg_a.fast_path.current()
    assert leg_a.fast_path_packets > counted


async def test_media_timeout_fires_when_a_bridged_device_stops_sending() -> None:
    failures = Failures()
    relay = Relay(bind_address="127.0.0.1", media_timeout=1.0, on_leg_failed=failures)
    caller = MediaEndpoint(source="tone:440")
    callee = MediaEndpoint(source="tone:880")
    try:
        await call_through(relay, caller, callee)
        relay.bridge("a", "b")
        await callee.wait_for_tone(440, timeout=5)
        leg_a = relay._legs["a"]
        assert leg_a.fast_path_packets > 0
        # The caller's device stops sending RTP; ICE consent and RTCP go on.
        caller._track.stop()
        stopped = time.monotonic()
        await asyncio.wait_for(failures.event.wait(), 8)
        assert [(leg, detail) for leg, detail, _ in failures.calls] == [("a", "media_timeout")]
        assert 0.8 <= failures.calls[0][2] - stopped <= 3.0
    finally:
        await caller.close()
        await callee.close()
        await relay.close()
