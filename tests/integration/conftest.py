"""Fixtures for the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from voice.client.media import MediaEndpoint
from voice.relay.relay import Relay


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    """A forwarding relay in this process, on 127.0.0.1."""
    relay = Relay(bind_address="127.0.0.1")
    yield relay
    await relay.close()


@pytest.fixture
async def endpoints() -> AsyncIterator[tuple[MediaEndpoint, MediaEndpoint]]:
    """A caller playing 440 Hz and a callee playing 880 Hz, closed after the test."""
    caller = MediaEndpoint(source="tone:440")
    callee = MediaEndpoint(source="tone:880")
    yield caller, callee
    await caller.close()
    await callee.close()
