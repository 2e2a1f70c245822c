"""ICE consent freshness (RFC 7675): a device that stops answering the relay's
consent checks loses its leg, even while its media keeps arriving."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.relaying import call_through
from voice.client.media import MediaEndpoint
from voice.relay.relay import Relay

# aioice checks consent every 5 s and gives up after 6 failures in a row.
pytestmark = pytest.mark.timeout(90)


def stop_answering_consent_checks(endpoint: MediaEndpoint) -> None:
    """The device no longer sees STUN binding requests (type 0x0001); it still gets
    the answers to its own checks, and its RTP still flows."""
    pc: Any = endpoint._pc
    connection = pc.getTransceivers()[0].receiver.transport.transport._connection
    protocol = connection._nominated[1].protocol
    original = protocol.datagram_received

    def datagram_received(data: bytes, addr: tuple[str, int]) -> None:
        if data[:2] == b"\x00\x01":
            return
        original(data, addr)

    protocol.datagram_received = datagram_received


async def test_consent_expiry_fails_the_leg_while_media_still_flows() -> None:
    failures: list[tuple[str, str]] = []
    relay = Relay(
        bind_address="127.0.0.1",
        media_timeout=120.0,  # media keeps flowing: only consent can end this leg
        on_leg_failed=lambda leg, detail: failures.append((leg, detail)),
    )
    caller = MediaEndpoint(source="tone:440")
    callee = MediaEndpoint(source="tone:880")
    try:
        await call_through(relay, caller, callee)
        relay.bridge("a", "b")
        stop_answering_consent_checks(callee)
        async with asyncio.timeout(60):
            while not any(leg == "b" for leg, _ in failures):  # noqa: ASYNC110
                await asyncio.sleep(0.5)
        assert ("b", "consent_expired") in failures
        assert all(leg != "a" for leg, _ in failures)
    finally:
        await caller.close()
        await callee.close()
        await relay.close()
