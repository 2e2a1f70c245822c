"""Fixtures for the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from voice.relay import Relay


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    """A forwarding relay in this process, on 127.0.0.1."""
    relay = Relay(bind_address="127.0.0.1")
    yield relay
    await relay.close()
