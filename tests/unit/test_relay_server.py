"""The serving side of the control channel (voice/relay/server.py) on an in-memory relay:
what a relay host's connection does with leg and call ids, refusals and bad requests."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.test_relay_pool import MemoryRelay
from voice.relay.api import Answer, CloseLeg, LegStats, Offer, StartRingback
from voice.relay.control import Correlator, FrameDecoder, Ping, Reply, encode_request
from voice.relay.server import ChannelServer


class Sent(list[dict[str, Any]]):
    def __call__(self, message: dict[str, Any]) -> None:
        self.append(message)


async def served(server: ChannelServer, frame: bytes) -> None:
    (message,) = FrameDecoder().feed(frame)
    await server.handle(message)
    while server.tasks:  # negotiation runs beside the channel
        await asyncio.gather(*server.tasks)


async def test_a_connections_legs_and_calls_carry_its_prefix_inside_the_relay() -> None:
    relay, sent = MemoryRelay(), Sent()
    asked: list[str] = []

    def admit(call: str) -> bool:
        asked.append(call)
        return True

    server = ChannelServer(relay, sent, prefix="3/", admit=admit, owns_relay=False)
    await served(server, encode_request(1, Answer("x:caller", "v=0", "x")))
    await served(server, encode_request(2, Offer("x:callee", "x")))
    await served(server, encode_request(3, Offer("solo")))
    assert relay.legs == {"3/x:caller": "3/x", "3/x:callee": "3/x", "3/solo": ""}
    assert asked == ["3/x", "3/x", "3/solo"]  # a leg without a call is a call of its own
    assert server.calls == {"3/x", "3/solo"}
    assert sent[:3] == [
        {"id": 1, "result": "v=0 3/x:caller"},
        {"id": 2, "result": "v=0 3/x:callee"},
        {"id": 3, "result": "v=0 3/solo"},
    ]

    # Events and replies speak the connection's own ids.
    server.leg_failed("3/x:caller", "ice_failed")
    assert sent[-1] == {"event": "leg_failed", "args": ["x:caller", "ice_failed"]}
    await served(server, encode_request(4, CloseLeg("x:caller")))
    correlator = Correlator()
    request_id, _ = correlator.request(CloseLeg("x:caller"))
    reply = correlator.receive({**sent[-1], "id": request_id})
    assert reply == Reply(request_id, LegStats(packets_received=len("3/x:caller")))
    assert "3/x:caller" not in relay.legs and server.calls == {"3/x", "3/solo"}

    # The connection ends: only its own legs close.
    relay.legs["4/other"] = "4/other"
    await server.release()
    assert relay.legs == {"4/other": "4/other"}


async def test_refusals_and_bad_requests_are_answered_with_their_error() -> None:
    relay, sent = MemoryRelay(), Sent()
    server = ChannelServer(relay, sent, prefix="1/", admit=lambda call: False, owns_relay=False)
    await served(server, encode_request(1, Offer("y:a", "y")))
    assert sent[-1]["error"] == {
        "kind": "RelayUnavailable",
        "message": "this relay host takes no new calls",
    }
    assert relay.legs == {}
    await served(server, encode_request(2, StartRingback("nobody")))
    assert sent[-1]["error"]["kind"] == "UnknownLegError"
    await served(server, encode_request(None, StartRingback("nobody")))  # a notification
    assert len(sent) == 2  # is never answered
    for request_id, message in enumerate(
        [
            {"id": 3, "op": "answer", "args": [5]},
            {"id": 4, "op": "bridge", "args": ["a"]},
            {"id": 5, "op": "teleport", "args": []},
        ],
        start=3,
    ):
        await server.handle(message)
        assert sent[-1]["id"] == request_id and sent[-1]["error"]["kind"] == "ValueError"
    await served(server, encode_request(6, Ping()))
    assert isinstance(sent[-1]["result"], int)
