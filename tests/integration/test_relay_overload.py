"""Relay resources: a bounded receive queue (overload drops and counts datagrams,
the leg keeps working) and no idle decoder threads."""

from __future__ import annotations

import asyncio
import threading

from tests.integration.relaying import call_through
from voice.client.media import MediaEndpoint
from voice.relay.leg import RECEIVE_QUEUE_LIMIT
from voice.relay.relay import Relay


async def test_a_burst_beyond_the_queue_is_dropped_and_counted(
    relay: Relay, endpoints: tuple[MediaEndpoint, MediaEndpoint]
) -> None:
    caller, callee = endpoints
    await call_through(relay, caller, callee)
    leg = relay._legs["a"]
    connection = leg._ice_transport()._connection
    # A burst arrives faster than the relay drains it: 300 datagrams at once.
    for _ in range(300):
        connection.data_received(b"\x80\x6f" + bytes(30), 1)
    assert connection._queue.qsize() <= RECEIVE_QUEUE_LIMIT
    assert relay.stats("a").packets_dropped >= 300 - RECEIVE_QUEUE_LIMIT
    # The leg drains the queue and carries audio again.
    relay.bridge("a", "b")
    callee.mark("bridged")
    await asyncio.sleep(1.0)
    assert connection._queue.qsize() < RECEIVE_QUEUE_LIMIT
    assert await callee.wait_for_tone(440, timeout=5)
    assert relay.stats("a").as_dict()["packets_dropped"] >= 300 - RECEIVE_QUEUE_LIMIT


async def test_forwarding_legs_keep_no_decoder_threads(
    relay: Relay, endpoints: tuple[MediaEndpoint, MediaEndpoint]
) -> None:
    caller, callee = endpoints
    earlier = set(threading.enumerate())  # an earlier test's decoder may still be ending
    await call_through(relay, caller, callee)
    relay.bridge("a", "b")
    await callee.wait_for_tone(440, timeout=5)
    decoders = [t for t in threading.enumerate() if t.name == "audio-decoder" and t not in earlier]
    assert len(decoders) == 2  # the two app endpoints decode; the relay's legs do not
