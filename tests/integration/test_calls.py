"""Calls between app devices through the real server and relay, on loopback."""

from __future__ import annotations

import asyncio

import numpy as np

from signaling.keys import CDRS
from tests.conftest import ALICE, BOB, CAROL, Server, ServerFactory
from voice.audio.analysis import tone_fraction
from voice.client.client import Call, Phone

RATE = 48000


def heard(call: Call, start: str = "connected", end: str = "ended") -> np.ndarray:
    assert call.media is not None
    audio = call.media.received()
    markers = call.media.markers
    return audio[markers.get(start, 0) : markers.get(end, len(audio))]


async def connect(
    alice: Phone, bob: Phone, *, caller_tone: int = 440, callee_tone: int = 880
) -> tuple[Call, Call]:
    outgoing = await alice.call(BOB, source=f"tone:{caller_tone}")
    incoming = await bob.incoming(timeout=10, source=f"tone:{callee_tone}")
    assert incoming.peer == ALICE and not incoming.phone_network
    await outgoing.ringing(timeout=5)
    await incoming.accept()
    assert await outgoing.connected(timeout=10)
    assert await incoming.connected(timeout=10)
    return outgoing, incoming


async def test_each_party_hears_the_other_and_the_call_is_on_record(server: Server) -> None:
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing = await alice.call(BOB, source="tone:440")
    incoming = await bob.incoming(timeout=10, source="tone:880")
    await outgoing.ringing(timeout=5)
    await asyncio.sleep(1.5)  # alice hears ringback from the relay while bob's phone rings
    await incoming.accept()
    assert await outgoing.connected(timeout=10)
    await asyncio.sleep(4.0)
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    assert await incoming.ended(timeout=5) == "completed"

    ringback = heard(outgoing, start="", end="connected")
    assert tone_fraction(ringback[RATE // 2 :], RATE, 425) > 0.5, "the caller heard no ringback"
    assert tone_fraction(heard(outgoing), RATE, 880) >= 0.9, "alice did not hear bob"
    assert tone_fraction(heard(incoming), RATE, 440) >= 0.9, "bob did not hear alice"

    history = await alice.signaling.history()
    record = history[0]
    assert record["call_id"] == outgoing.call_id
    assert record["direction"] == "outgoing" and record["peer"] == BOB
    assert record["end_reason"] == "completed"
    assert 3.5 <= record["duration"] <= 5.5
    bob_history = await bob.signaling.history()
    assert bob_history[0]["direction"] == "incoming" and bob_history[0]["missed"] is False
    cdr = await server.app[CDRS].get(outgoing.call_id or "")
    assert cdr is not None
    for leg in ("caller", "callee"):
        assert cdr.media[leg]["packets_received"] > 100, cdr.media
        assert cdr.media[leg]["packets_lost"] <= 5, cdr.media


async def test_first_accept_wins_on_a_two_device_callee(server: Server) -> None:
    alice = await server.phone(ALICE)
    bob_phone = await server.phone(BOB, "phone")
    bob_tablet = await server.phone(BOB, "tablet")
    outgoing = await alice.call(BOB, source="tone:440")
    on_phone = await bob_phone.incoming(timeout=10)
    on_tablet = await bob_tablet.incoming(timeout=10, source="tone:880")
    await on_tablet.accept()
    assert await outgoing.connected(timeout=10)
    assert await on_phone.ended(timeout=5) == "answered_elsewhere"
    await asyncio.sleep(2.0)
    assert tone_fraction(heard(on_tablet), RATE, 440) >= 0.85
    await on_tablet.hangup()
    assert await outgoing.ended(timeout=5) == "completed"


async def test_second_device_declining_ends_the_call_for_all(server: Server) -> None:
    alice = await server.phone(ALICE)
    bob_phone = await server.phone(BOB, "phone")
    bob_tablet = await server.phone(BOB, "tablet")
    outgoing = await alice.call(BOB)
    on_phone = await bob_phone.incoming(timeout=10)
    on_tablet = await bob_tablet.incoming(timeout=10)
    await on_phone.reject()
    assert await outgoing.ended(timeout=5) == "declined"
    assert await on_phone.ended(timeout=5) == "declined"
    assert await on_tablet.ended(timeout=5) == "declined_elsewhere"


async def test_busy_when_the_callee_is_in_another_call(server: Server) -> None:
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    carol = await server.phone(CAROL)
    await connect(alice, bob)
    attempt = await carol.call(BOB)
    assert await attempt.ended(timeout=5) == "busy"


async def test_no_answer_after_the_ring_timeout_is_a_missed_call(
    make_server: ServerFactory,
) -> None:
    server = await make_server(ring_timeout=1.5)
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing = await alice.call(BOB)
    incoming = await bob.incoming(timeout=10)
    assert await outgoing.ended(timeout=5) == "no_answer"
    assert await incoming.ended(timeout=5) == "no_answer"
    missed = (await bob.signaling.history())[0]
    assert missed["missed"] is True and missed["peer"] == ALICE


async def test_caller_cancels_while_ringing(server: Server) -> None:
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing = await alice.call(BOB)
    incoming = await bob.incoming(timeout=10)
    await outgoing.ringing(timeout=5)
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "cancelled"
    assert await incoming.ended(timeout=5) == "cancelled"


async def test_unavailable_when_no_device_is_online_or_the_number_is_unknown(
    server: Server,
) -> None:
    alice = await server.phone(ALICE)
    await server.register(BOB)  # registered, but offline
    offline = await alice.call(BOB)
    assert await offline.ended(timeout=5) == "unavailable"
    assert offline.end_detail == "no_device_online"
    unknown = await alice.call(CAROL)
    assert await unknown.ended(timeout=5) == "unavailable"
    assert unknown.end_detail == "not_an_app_user"


async def test_dropped_websocket_mid_call_ends_it_after_the_grace_period(server: Server) -> None:
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, _ = await connect(alice, bob)
    await bob.signaling.disconnect()  # bob's app loses its connection, without hanging up
    assert await outgoing.ended(timeout=5) == "failed"
    assert outgoing.end_detail == "connection_lost"
    record = (await alice.signaling.history())[0]
    assert record["end_reason"] == "failed"


async def test_reconnecting_within_the_grace_period_keeps_the_call(
    make_server: ServerFactory,
) -> None:
    server = await make_server(reconnect_grace=3.0)
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob)
    await bob.signaling.disconnect()
    await bob.closed.wait()
    await bob.connect()
    await asyncio.sleep(3.5)
    assert outgoing.state == "connected"
    await incoming.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
