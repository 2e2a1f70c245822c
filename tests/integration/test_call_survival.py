"""Calls that survive what phones go through: a new network mid-call, a signaling
connection that drops and comes back."""

from __future__ import annotations

import asyncio
import time

from signaling.keys import CDRS
from tests.conftest import ALICE, BOB, Server, ServerFactory
from tests.integration.test_calls import RATE, connect, heard
from voice.audio.analysis import tone_fraction

#: A second loopback address: the caller's "new network" (Linux routes 127.0.0.0/8).
NEW_ADDRESS = "127.0.0.2"


async def test_a_caller_who_changes_network_keeps_talking(server: Server) -> None:
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob)
    await asyncio.sleep(1.0)
    assert incoming.media is not None and outgoing.media is not None
    outgoing.media.cut()  # the old network is gone: bob hears nothing from alice
    await asyncio.sleep(0.6)
    cut = time.monotonic()
    assert incoming.media.longest_pause(cut - 0.5, cut) >= 0.45
    incoming.media.mark("moved")
    await outgoing.move(NEW_ADDRESS)  # a new network is up
    await asyncio.sleep(2.5)
    assert outgoing.state == incoming.state == "connected"
    assert outgoing.media.bind_address == NEW_ADDRESS
    incoming.media.mark("checked")

    gap = incoming.media.longest_pause(cut, time.monotonic())
    assert gap < 1.0, f"bob heard nothing for {gap:.2f} s after alice moved"
    after = heard(incoming, start="moved", end="checked")
    assert tone_fraction(after[RATE:], RATE, 440) >= 0.9, "bob no longer hears alice"
    new_leg = outgoing.media.received()
    assert tone_fraction(new_leg[RATE // 2 :], RATE, 880) >= 0.9, "alice no longer hears bob"

    await incoming.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    record = await server.app[CDRS].get(str(outgoing.call_id))
    assert record is not None and record.end_reason == "completed"
    # Alice's leg stats add up both of her legs: 1 s + 2.5 s at 50 packets per second
    # (the new leg alone has about 130).
    assert record.media["caller"]["packets_received"] > 150


async def test_a_callee_who_changes_network_keeps_talking(server: Server) -> None:
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob)
    assert outgoing.media is not None
    outgoing.media.mark("moved")
    moved = time.monotonic()
    await incoming.move(NEW_ADDRESS)
    await asyncio.sleep(2.0)
    assert outgoing.media.longest_pause(moved, time.monotonic()) < 1.0
    after = heard(outgoing, start="moved", end="")
    assert tone_fraction(after[RATE:], RATE, 880) >= 0.9


async def test_moving_a_call_that_is_not_ours_or_with_a_bad_offer_is_refused(
    server: Server,
) -> None:
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob)
    await bob.signaling.send("call.renegotiate", call_id="no-such-call", sdp="v=0")
    await alice.signaling.send("call.renegotiate", call_id=outgoing.call_id, sdp="v=0\r\n")
    await asyncio.sleep(1.0)
    assert outgoing.state == incoming.state == "connected"  # nothing broke
    assert outgoing.media is not None
    outgoing.media.mark("after")
    await asyncio.sleep(1.0)
    assert tone_fraction(heard(outgoing, start="after", end=""), RATE, 880) >= 0.9


async def test_messages_sent_while_a_device_was_away_arrive_when_it_is_back(
    make_server: ServerFactory,
) -> None:
    server = await make_server(reconnect_grace=5.0)
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob)
    await alice.signaling.disconnect()  # alice's app loses its connection
    await alice.closed.wait()
    await asyncio.sleep(0.3)
    await incoming.hangup()  # bob hangs up while alice is away
    assert await incoming.ended(timeout=5) == "completed"
    await asyncio.sleep(0.5)
    assert outgoing.state == "connected"  # she has not heard yet
    await alice.connect()  # back within the grace period
    assert await outgoing.ended(timeout=5) == "completed"  # the held call.ended arrives


async def test_a_device_that_comes_back_is_told_the_state_of_its_calls(
    make_server: ServerFactory,
) -> None:
    server = await make_server(reconnect_grace=5.0)
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob)
    await bob.signaling.disconnect()
    await bob.closed.wait()
    await bob.connect()
    async with asyncio.timeout(5):
        while incoming.server_state is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert incoming.server_state == "connected"
    await outgoing.hangup()
    assert await incoming.ended(timeout=5) == "completed"
