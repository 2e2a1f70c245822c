"""Call lifecycles between two trunks and against a raw socket: a failing handler, stop()
during calls, our 2xx without an ACK (§13.3.1.4) and our BYE held back until the ACK
(§15)."""

from __future__ import annotations

import asyncio
import re

import pytest

from signaling.sip.message import Request, Response, SipTarget, parse_message
from signaling.sip.transaction import TimerValues
from signaling.sip.trunk import (
    Answered,
    CallError,
    Ended,
    IncomingCall,
    Progress,
    SipTrunk,
    TrunkSettings,
)
from tests.integration.sip_trunk_support import (
    CALLEE,
    CALLER,
    SDP,
    Events,
    RawPeer,
    running_trunk,
    trunk_port,
    until,
)

FAST = TimerValues(t1=0.05, t2=0.4, t4=0.5, d=0.5)


def network_side(**changes: object) -> TrunkSettings:
    base: dict[str, object] = {
        "listen_port": 0,
        "accepted_sources": ("127.0.0.1",),
        "options_interval": 0.0,
    }
    return TrunkSettings(**{**base, **changes})  # type: ignore[arg-type]


def caller_side(network: SipTrunk) -> TrunkSettings:
    return network_side(sbc=(SipTarget("udp", "127.0.0.1", trunk_port(network)),))


async def test_a_failing_handler_answers_500() -> None:
    async def on_incoming(call: IncomingCall) -> None:
        raise RuntimeError("no route")

    events = Events()
    async with (
        running_trunk(network_side(), on_incoming) as network,
        running_trunk(caller_side(network)) as trunk,
    ):
        await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events)
        assert await events.wait_for(Ended) == Ended(500, "rejected", True, "Server Internal Error")


async def test_stop_ends_ringing_and_answered_calls() -> None:
    incoming: list[IncomingCall] = []
    incoming_events = Events()

    async def on_incoming(call: IncomingCall) -> None:
        incoming.append(call)
        call.on_event = incoming_events
        await call.progress(180)
        if call.to_number.endswith("1"):
            await call.answer(SDP)
            with pytest.raises(CallError):
                await call.answer(SDP)  # once only

    network = SipTrunk(network_side(), on_incoming)
    await network.start()
    answered, ringing = Events(), Events()
    async with running_trunk(caller_side(network)) as trunk:
        await trunk.invite(
            to_number="+4930555000101", from_number=CALLER, sdp=SDP, on_event=answered
        )
        await answered.wait_for(Answered)
        await trunk.invite(
            to_number="+4930555000102", from_number=CALLER, sdp=SDP, on_event=ringing
        )
        await ringing.wait_for(Progress)
        await network.stop()
        assert await answered.wait_for(Ended) == Ended(None, "bye", True, "shutdown")
        assert await ringing.wait_for(Ended) == Ended(503, "rejected", True, "Service Unavailable")
        await until(lambda: trunk.active_calls == 0)
    assert incoming_events.items == [Ended(None, "shutdown", False)] * 2
    assert network.active_calls == 0


async def test_a_failing_event_callback_costs_nothing() -> None:
    incoming: list[IncomingCall] = []

    async def on_incoming(call: IncomingCall) -> None:
        incoming.append(call)
        await call.answer(SDP)

    def broken(event: object) -> None:
        raise ValueError(f"cannot handle {event}")

    async with (
        running_trunk(network_side(), on_incoming) as network,
        running_trunk(caller_side(network)) as trunk,
    ):
        await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=broken)
        await until(lambda: bool(incoming) and incoming[0].state == "answered")
        await incoming[0].bye()
        await until(lambda: trunk.active_calls == 0)
        assert trunk.stats["internal_errors"] == 0


def raw_invite(peer: RawPeer, n: int = 1) -> bytes:
    body = SDP.encode()
    return (
        f"INVITE sip:{CALLEE}@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKinv{n};rport\r\n"
        f"From: <sip:{CALLER}@127.0.0.1>;tag=sbc{n}\r\n"
        f"To: <sip:{CALLEE}@127.0.0.1>\r\n"
        f"Call-ID: life-{n}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:{CALLER}@127.0.0.1:{peer.port}>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def raw_ack(peer: RawPeer, ok: Response, n: int = 1) -> bytes:
    return (
        f"ACK sip:{CALLEE}@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKack{n};rport\r\n"
        f"From: {ok.headers.get('From')}\r\nTo: {ok.headers.get('To')}\r\n"
        f"Call-ID: {ok.call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def received(peer: RawPeer) -> list[Request | Response]:
    return [parse_message(raw) for raw in peer.received]


def oks(peer: RawPeer) -> list[Response]:
    return [m for m in received(peer) if isinstance(m, Response) and m.status == 200]


def byes(peer: RawPeer) -> list[Request]:
    return [m for m in received(peer) if isinstance(m, Request) and m.method == "BYE"]


async def test_no_ack_for_our_200_ends_the_call_with_bye() -> None:
    events = Events()

    async def on_incoming(call: IncomingCall) -> None:
        call.on_event = events
        await call.answer(SDP)

    peer = await RawPeer.open()
    try:
        async with running_trunk(network_side(timers=FAST), on_incoming) as trunk:
            peer.send(raw_invite(peer), trunk_port(trunk))
            ended = await events.wait_for(Ended, timeout=10.0)
            assert ended == Ended(None, "timeout", False, "no ACK")
            # The 200 went out again at T1, 2*T1 … capped at T2, for 64*T1 = 3.2 s.
            assert len(oks(peer)) >= 8
            await until(lambda: bool(byes(peer)))
            (bye, *_) = byes(peer)
            assert bye.headers.get("Reason") == 'Q.850;cause=16;text="no ACK"'
            assert trunk.stats["no_ack"] == 1
    finally:
        peer.close()


async def test_our_bye_waits_for_the_ack() -> None:
    calls: list[IncomingCall] = []

    async def on_incoming(call: IncomingCall) -> None:
        calls.append(call)
        await call.answer(SDP)
        await call.bye("app hung up")  # before the ACK: held back (§15)

    peer = await RawPeer.open()
    try:
        async with running_trunk(network_side(), on_incoming) as trunk:
            peer.send(raw_invite(peer), trunk_port(trunk))
            await until(lambda: bool(oks(peer)))
            await asyncio.sleep(0.7)  # one 200 retransmission (T1), and no BYE yet
            assert len(oks(peer)) >= 2
            assert byes(peer) == []
            peer.send(raw_ack(peer, oks(peer)[0]), trunk_port(trunk))
            await until(lambda: bool(byes(peer)))
            (bye,) = byes(peer)
            assert bye.to_addr.tag == "sbc1" and bye.uri.port == peer.port
            count = len(oks(peer))
            await asyncio.sleep(0.6)
            assert len(oks(peer)) == count  # the ACK stopped the retransmissions
            assert re.search(r'text="app hung up"', bye.headers.get("Reason") or "")
            assert trunk.stats["no_ack"] == 0
    finally:
        peer.close()
