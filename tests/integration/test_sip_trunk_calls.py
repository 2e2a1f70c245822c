"""The trunk against SIPp as the operator's SBC, on 127.0.0.1: calls both ways, early
media, CANCEL, busy, hold and resume, TCP, Timer B and the OPTIONS keep-alive; and a
raw socket as the SBC where SIPp cannot say it (tags, P-Asserted-Identity)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from signaling.sip.message import Address, Request, SipTarget, parse_message
from signaling.sip.transaction import TimerValues
from signaling.sip.trunk import (
    Answered,
    Ended,
    IncomingCall,
    Progress,
    TrunkSettings,
    TrunkUnavailable,
)
from tests.integration.sip_trunk_support import (
    CALLEE,
    CALLER,
    SDP,
    Events,
    RawPeer,
    Sipp,
    running_trunk,
    trunk_port,
    until,
)
from tests.ports import free_port

#: Shortened timers (T1 = 50 ms: Timer B/F = 3.2 s) where a test waits for a timeout.
FAST = TimerValues(t1=0.05, t2=0.4, t4=0.5, d=0.5)


def inbound_settings(**changes: object) -> TrunkSettings:
    base: dict[str, object] = {
        "listen_port": 0,
        "accepted_sources": ("127.0.0.1",),
        "options_interval": 0.0,
        # The scenarios check that Server and User-Agent carry this setting.
        "user_agent": "Anruf",
    }
    return TrunkSettings(**{**base, **changes})  # type: ignore[arg-type]


def outbound_settings(sipp: Sipp, transport: str = "udp", **changes: object) -> TrunkSettings:
    target = SipTarget(transport, "127.0.0.1", sipp.port)
    return inbound_settings(sbc=(target,), **changes)


async def test_sbc_calls_an_app_user_and_hangs_up(tmp_path: Path) -> None:
    calls: list[IncomingCall] = []
    events = Events()

    async def on_incoming(call: IncomingCall) -> None:
        calls.append(call)
        call.on_event = events
        await call.progress(180)
        await call.answer(SDP)

    async with running_trunk(inbound_settings(), on_incoming) as trunk:
        sipp = Sipp(
            tmp_path,
            scenario="sip_uac_call.xml",
            remote=f"127.0.0.1:{trunk_port(trunk)}",
            args=("-s", CALLEE),
        )
        assert await sipp.exit_code() == 0, sipp.log()
        ended = await events.wait_for(Ended)
        assert ended == Ended(None, "bye", True, "Normal call clearing")
        (call,) = calls
        assert (call.from_number, call.to_number) == (CALLER, CALLEE)
        assert "m=audio" in call.offer_sdp and "PCMA/8000" in call.offer_sdp
        assert call.request.headers.get("P-Asserted-Identity") is not None
        assert trunk.active_calls == 0
        assert trunk.stats["calls_incoming"] == 1


async def test_our_call_is_answered_and_we_hang_up(tmp_path: Path) -> None:
    sipp = Sipp(tmp_path, scenario="sip_uas_answer.xml")
    await sipp.ready()
    events = Events()
    async with running_trunk(outbound_settings(sipp)) as trunk:
        call = await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events)
        assert await events.wait_for(Progress) == Progress(180, None)
        answered = await events.wait_for(Answered)
        assert isinstance(answered, Answered) and "m=audio" in answered.sdp
        assert trunk.active_calls == 1
        await call.bye("caller hung up")
        assert events.items[-1] == Ended(None, "bye", False, "caller hung up")
        assert await sipp.exit_code() == 0, sipp.log()
        assert trunk.active_calls == 0


async def test_busy_ends_the_call_with_486(tmp_path: Path) -> None:
    sipp = Sipp(tmp_path, scenario="sip_uas_busy.xml")
    await sipp.ready()
    events = Events()
    async with running_trunk(outbound_settings(sipp)) as trunk:
        await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events)
        assert await events.wait_for(Ended) == Ended(486, "rejected", True, "User busy")
        assert await sipp.exit_code() == 0, sipp.log()  # it got our ACK


async def test_early_media_then_our_cancel(tmp_path: Path) -> None:
    sipp = Sipp(tmp_path, scenario="sip_uas_ring_cancel.xml")
    await sipp.ready()
    events = Events()
    async with running_trunk(outbound_settings(sipp)) as trunk:
        call = await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events)
        progress = await events.wait_for(Progress)
        assert isinstance(progress, Progress) and progress.status == 183
        assert progress.sdp is not None and "m=audio" in progress.sdp
        await call.cancel("caller gave up")
        assert await events.wait_for(Ended) == Ended(487, "cancel", False, "caller gave up")
        assert await sipp.exit_code() == 0, sipp.log()


async def test_sbc_cancels_while_the_app_rings(tmp_path: Path) -> None:
    events = Events()

    async def on_incoming(call: IncomingCall) -> None:
        await call.progress(180)
        call.on_event = events  # set late on purpose: earlier events are kept

    async with running_trunk(inbound_settings(), on_incoming) as trunk:
        sipp = Sipp(
            tmp_path,
            scenario="sip_uac_cancel.xml",
            remote=f"127.0.0.1:{trunk_port(trunk)}",
            args=("-s", CALLEE),
        )
        assert await sipp.exit_code() == 0, sipp.log()
        assert await events.wait_for(Ended) == Ended(
            487, "cancel", True, "Call completed elsewhere"
        )


async def test_app_user_busy_is_a_486(tmp_path: Path) -> None:
    events = Events()

    async def on_incoming(call: IncomingCall) -> None:
        call.on_event = events
        await call.reject(486)

    async with running_trunk(inbound_settings(), on_incoming) as trunk:
        sipp = Sipp(
            tmp_path,
            scenario="sip_uac_rejected.xml",
            remote=f"127.0.0.1:{trunk_port(trunk)}",
            args=("-s", CALLEE),
        )
        assert await sipp.exit_code() == 0, sipp.log()
        assert await events.wait_for(Ended) == Ended(486, "rejected", False, "")


async def test_hold_and_resume_reach_on_reoffer(tmp_path: Path) -> None:
    offers: list[str] = []

    async def reoffer(offer: str) -> str:
        offers.append(offer)
        direction = "recvonly" if "a=sendonly" in offer else "sendrecv"
        return SDP.replace("a=sendrecv", f"a={direction}")

    async def on_incoming(call: IncomingCall) -> None:
        call.on_reoffer = reoffer
        await call.answer(SDP)

    async with running_trunk(inbound_settings(), on_incoming) as trunk:
        sipp = Sipp(
            tmp_path,
            scenario="sip_uac_hold.xml",
            remote=f"127.0.0.1:{trunk_port(trunk)}",
            args=("-s", CALLEE),
        )
        assert await sipp.exit_code() == 0, sipp.log()
    assert ["a=sendonly" in o for o in offers] == [True, False]


async def calls_over_tcp_both_ways(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    inbound = Events()

    async def on_incoming(call: IncomingCall) -> None:
        call.on_event = inbound
        await call.answer(SDP)

    async with running_trunk(inbound_settings(), on_incoming) as trunk:
        sipp_in = Sipp(
            tmp_path / "in",
            scenario="sip_uac_call.xml",
            remote=f"127.0.0.1:{trunk_port(trunk)}",
            transport="t1",
            args=("-s", CALLEE),
        )
        assert await sipp_in.exit_code() == 0, sipp_in.log()
        assert await inbound.wait_for(Ended) == Ended(None, "bye", True, "Normal call clearing")

    sipp_out = Sipp(tmp_path / "out", scenario="sip_uas_answer.xml", transport="t1")
    await sipp_out.ready()
    outbound = Events()
    async with running_trunk(outbound_settings(sipp_out, "tcp")) as trunk:
        call = await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=outbound)
        await outbound.wait_for(Answered)
        await call.bye("caller hung up")
        assert await sipp_out.exit_code() == 0, sipp_out.log()
        assert trunk.stats["retransmissions"] == 0  # none over TCP


async def test_calls_over_tcp_both_ways(tmp_path: Path) -> None:
    await calls_over_tcp_both_ways(tmp_path)


def test_calls_over_tcp_on_uvloop(tmp_path: Path) -> None:
    """The server runs uvloop, whose transports are not asyncio.Transport subclasses."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(calls_over_tcp_both_ways(tmp_path))


async def test_no_answer_at_all_is_timer_b() -> None:
    silent = SipTarget("udp", "127.0.0.1", free_port(socket.SOCK_DGRAM))
    events = Events()
    settings = inbound_settings(sbc=(silent,), timers=FAST)
    async with running_trunk(settings) as trunk:
        await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events)
        ended = await events.wait_for(Ended, timeout=10.0)
        assert ended == Ended(None, "timeout", False, "no response to INVITE")
        assert trunk.stats["retransmissions"] == 6  # Timer A: 0.05, 0.1, 0.2, … 1.6 s


async def test_options_keepalive_marks_the_trunk_up_and_down(tmp_path: Path) -> None:
    sipp = Sipp(tmp_path, builtin="uas", args=("-aa",), timeout=30.0)
    await sipp.ready()
    changes: list[bool] = []
    settings = outbound_settings(sipp, options_interval=0.3, timers=FAST)
    async with running_trunk(settings, on_state_change=changes.append) as trunk:
        await until(lambda: trunk.up, timeout=5.0)
        assert changes == [True]
        sipp.stop()  # the SBC is gone: OPTIONS time out (Timer F = 3.2 s here)
        await until(lambda: not trunk.up, timeout=10.0)
        assert changes == [True, False]
        assert trunk.stats["options_failed"] >= 1
        with pytest.raises(TrunkUnavailable, match="down"):
            await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=Events())


async def test_limits_refuse_calls() -> None:
    target = SipTarget("udp", "127.0.0.1", free_port(socket.SOCK_DGRAM))
    settings = inbound_settings(sbc=(target,), max_concurrent_calls=1, timers=FAST)
    async with running_trunk(settings) as trunk:
        await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=Events())
        with pytest.raises(TrunkUnavailable, match="max_concurrent_calls"):
            await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=Events())
    settings = inbound_settings(sbc=(target,), max_calls_per_second=2.0, timers=FAST)
    async with running_trunk(settings) as trunk:
        for _ in range(2):
            await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=Events())
        with pytest.raises(TrunkUnavailable, match="max_calls_per_second"):
            await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=Events())
        await asyncio.sleep(0.6)  # the bucket refills at 2 calls/s
        await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=Events())


async def test_a_bye_with_a_wrong_from_tag_gets_481_and_the_call_goes_on() -> None:
    """RFC 3261 §12.2.2: a request is in the dialog only with its Call-ID, To tag and
    From tag; a BYE that guessed the first two does not end the call."""
    peer = await RawPeer.open()
    events = Events()

    async def on_incoming(call: IncomingCall) -> None:
        call.on_event = events
        await call.answer(SDP)

    def invite(n: int, method: str, from_tag: str, to_tag: str = "", body: str = "") -> bytes:
        to = f";tag={to_tag}" if to_tag else ""
        return (
            f"{method} sip:{CALLEE}@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKdlg{n};rport\r\n"
            f"From: <sip:{CALLER}@127.0.0.1>;tag={from_tag}\r\n"
            f"To: <sip:{CALLEE}@127.0.0.1>{to}\r\n"
            f"Call-ID: dialog-1@127.0.0.1\r\nCSeq: {n} {method}\r\n"
            f"Contact: <sip:{CALLER}@127.0.0.1:{peer.port}>\r\nMax-Forwards: 70\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()

    try:
        async with running_trunk(inbound_settings(), on_incoming) as trunk:
            port = trunk_port(trunk)
            responses = await peer.exchange(invite(1, "INVITE", "caller", body=SDP), port, 0.3)
            ok = responses[-1]
            assert ok.status == 200 and "Supported" in ok.headers
            ours = ok.to_addr.tag or ""
            peer.send(invite(1, "ACK", "caller", ours).replace(b"dlg1", b"dlg1ack"), port)
            forged = await peer.exchange(invite(2, "BYE", "not-the-caller", ours), port)
            assert [r.status for r in forged] == [481]
            await asyncio.sleep(0.1)
            assert trunk.active_calls == 1 and not events.items
            real = await peer.exchange(invite(3, "BYE", "caller", ours), port)
            assert [r.status for r in real] == [200]
            assert await events.wait_for(Ended) == Ended(None, "bye", True, "")
    finally:
        peer.close()


async def test_our_invite_asserts_the_callers_number() -> None:
    """RFC 3325: the operator's network takes the caller's verified number from
    P-Asserted-Identity; Supported is there, User-Agent only when set."""
    peer = await RawPeer.open()
    try:
        settings = inbound_settings(sbc=(SipTarget("udp", "127.0.0.1", peer.port),))
        settings = TrunkSettings(**{**settings.__dict__, "user_agent": ""})
        async with running_trunk(settings) as trunk:
            call = await trunk.invite(
                to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=Events()
            )
            await until(lambda: bool(peer.received), 2.0)
            invite = parse_message(peer.received[0])
            assert isinstance(invite, Request) and invite.method == "INVITE"
            asserted = Address.parse(invite.headers.get("P-Asserted-Identity") or "")
            assert asserted.uri.user == CALLER and asserted.uri.param("user") == "phone"
            assert "Supported" in invite.headers
            assert "User-Agent" not in invite.headers
            await call.cancel()
    finally:
        peer.close()
