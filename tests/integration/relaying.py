"""Helpers for tests that put app media endpoints through a relay, as the server does."""

from __future__ import annotations

import asyncio

from voice.audio import tone_fraction
from voice.client.media import SAMPLE_RATE, MediaEndpoint
from voice.relay.api import MediaRelay


class LegEvents(list[tuple[str, str]]):
    """A relay's per-leg callback (on_leg_failed, on_dtmf) as a list of (leg_id, value)."""

    def __call__(self, leg_id: str, value: str) -> None:
        self.append((leg_id, value))


async def wait_connected(*endpoints: MediaEndpoint, limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while any(e.connection_state != "connected" for e in endpoints):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def call_through(
    relay: MediaRelay, caller: MediaEndpoint, callee: MediaEndpoint, call_id: str = "call"
) -> tuple[str, str]:
    """Set up both legs of one call as the signaling server does: the caller offers
    (leg "a", with ringback), the relay offers the callee (leg "b"). Returns (a, b)."""
    answer = await relay.answer("a", await caller.create_offer(), call_id=call_id)
    await caller.accept_answer(answer)
    relay.start_ringback("a")
    offer = await relay.offer("b", call_id=call_id)
    await relay.accept_answer("b", await callee.answer(offer))
    await wait_connected(caller, callee)
    return "a", "b"


async def hear_each_other(caller: MediaEndpoint, callee: MediaEndpoint, listen: float) -> None:
    """Once both endpoints are marked "bridged": the caller hears the callee's 880 Hz,
    the callee the caller's 440 Hz and neither the ringback, for `listen` seconds."""
    await caller.wait_for_tone(880, timeout=5)
    await callee.wait_for_tone(440, timeout=5)
    await asyncio.sleep(listen)
    # Skip the switch-over itself (jitter buffers drain): judge from 0.5 s on.
    skip = SAMPLE_RATE // 2
    caller_audio = caller.received()[caller.markers["bridged"] + skip :]
    callee_audio = callee.received()[callee.markers["bridged"] + skip :]
    assert tone_fraction(caller_audio, SAMPLE_RATE, 880) >= 0.9
    assert tone_fraction(callee_audio, SAMPLE_RATE, 440) >= 0.9
    assert tone_fraction(caller_audio, SAMPLE_RATE, 425) == 0.0
