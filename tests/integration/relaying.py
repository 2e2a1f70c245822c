"""Helpers for tests that put app media endpoints through a relay, as the server does."""

from __future__ import annotations

import asyncio

from voice.client.media import MediaEndpoint
from voice.relay.api import MediaRelay


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
