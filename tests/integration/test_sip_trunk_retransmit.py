"""Lost datagrams on UDP, recovered by our retransmissions: a UDP forwarder between the
trunk and SIPp loses the first INVITE (Timer A) or our first 200 OK (§13.3.1.4)."""

from __future__ import annotations

from pathlib import Path

from signaling.sip.message import Request, Response, SipTarget
from signaling.sip.trunk import Answered, Ended, IncomingCall, TrunkSettings
from tests.integration.sip_trunk_support import (
    CALLEE,
    CALLER,
    SDP,
    Events,
    LossyForwarder,
    Sipp,
    first_only,
    running_trunk,
    trunk_port,
)


def is_invite(message: Request | Response) -> bool:
    return isinstance(message, Request) and message.method == "INVITE"


def is_invite_ok(message: Request | Response) -> bool:
    return (
        isinstance(message, Response) and message.status == 200 and message.cseq.method == "INVITE"
    )


async def test_a_lost_invite_is_sent_again(tmp_path: Path) -> None:
    sipp = Sipp(tmp_path, scenario="sip_uas_answer.xml")
    await sipp.ready()
    forwarder = LossyForwarder(("127.0.0.1", sipp.port), first_only(is_invite))
    await forwarder.start()
    settings = TrunkSettings(
        listen_port=0,
        sbc=(SipTarget("udp", "127.0.0.1", forwarder.port),),
        accepted_sources=("127.0.0.1",),
        options_interval=0.0,
        user_agent="Anruf",  # the scenario checks User-Agent
    )
    events = Events()
    try:
        async with running_trunk(settings) as trunk:
            call = await trunk.invite(
                to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events
            )
            await events.wait_for(Answered, timeout=5.0)
            assert [m.cseq.method for m in forwarder.dropped] == ["INVITE"]
            assert trunk.stats["retransmissions"] >= 1  # Timer A, 0.5 s after the first
            await call.bye("caller hung up")
            assert await sipp.exit_code() == 0, sipp.log()
    finally:
        forwarder.close()


async def test_a_lost_200_ok_is_sent_again_until_the_ack(tmp_path: Path) -> None:
    events = Events()

    async def on_incoming(call: IncomingCall) -> None:
        call.on_event = events
        await call.progress(180)
        await call.answer(SDP)

    settings = TrunkSettings(
        listen_port=0, accepted_sources=("127.0.0.1",), options_interval=0, user_agent="Anruf"
    )
    async with running_trunk(settings, on_incoming) as trunk:
        # SIPp's Via asks for rport, so our responses go back through the forwarder.
        forwarder = LossyForwarder(("127.0.0.1", trunk_port(trunk)), first_only(is_invite_ok))
        await forwarder.start()
        try:
            sipp = Sipp(
                tmp_path,
                scenario="sip_uac_call.xml",
                remote=f"127.0.0.1:{forwarder.port}",
                args=("-s", CALLEE),
            )
            assert await sipp.exit_code() == 0, sipp.log()
        finally:
            forwarder.close()
        assert len(forwarder.dropped) == 1
        assert trunk.stats["retransmissions"] >= 1  # the 2xx again after T1
        assert await events.wait_for(Ended) == Ended(None, "bye", True, "Normal call clearing")
        assert trunk.stats["no_ack"] == 0
