"""A fixed UDP port range for media: every relay leg binds inside it, calls still work."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from signaling.keys import RELAY
from tests.conftest import ALICE, BOB, ServerFactory
from tests.integration.test_calls import connect
from voice.ice import set_media_ports

LOW, HIGH = 41000, 41049


@pytest.fixture(autouse=True)
def any_port_afterwards() -> Iterator[None]:
    yield
    set_media_ports(0, 0)  # the setting is process-wide


def candidate_ports(sdp: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ \d \S+ \d+ \S+ (\d+) typ", sdp)]


@pytest.mark.parametrize("relay_workers", [0, 2])
async def test_calls_use_only_ports_in_the_range(
    make_server: ServerFactory, relay_workers: int
) -> None:
    server = await make_server(media_port_min=LOW, media_port_max=HIGH, relay_workers=relay_workers)
    relay = server.app[RELAY]
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, _ = await connect(alice, bob)
    offer = await relay.offer("probe:leg")
    ports = candidate_ports(offer)
    assert ports and all(LOW <= port <= HIGH for port in ports), ports
    await relay.close_leg("probe:leg")
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"


@pytest.mark.parametrize(("low", "high"), [(80, 90), (5000, 4000), (60000, 70000)])
def test_bad_ranges_are_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="media port range"):
        set_media_ports(low, high)
