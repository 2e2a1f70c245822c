"""Helpers for tests that put app media endpoints through a relay, as the server does."""

from __future__ import annotations

import asyncio

from voice.client.media import MediaEndpoint
from voice.relay import Relay


async def wait_connected(*endpoints: MediaEndpoint, limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while any(e.connection_state != "connected" for e in endpoints):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def call_through(relay: Relay, caller: MediaEndpoint, callee: MediaEndpoint) -> None:
    """Set up both legs as the signaling server does: caller offers, relay offers callee."""
    answer = await relay.answer("a", await caller.create_offer())
    await caller.accept_answer(answer)
    relay.start_ringback("a")
    offer = await relay.offer("b")
    await relay.accept_answer("b", await callee.answer(offer))
    await wait_connected(caller, callee)
