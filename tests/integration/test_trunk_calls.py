"""Calls between app users and phone numbers over the operator's SIP trunk.

SIPp plays the operator's network on 127.0.0.1: it answers our INVITEs (and
echoes our audio back, RFC 4733 digits included), rings, is busy, hangs up,
and calls our app users with an A-law tone.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from signaling.keys import CDRS, TRUNK
from tests.conftest import ALICE, BOB, Server, ServerFactory
from tests.integration.baresip import Baresip
from tests.integration.provisioning import (
    add_bundle,
    add_operator,
    add_past_call,
    add_subscriber,
)
from tests.integration.sipp import Sipp
from tests.integration.test_calls import heard
from tests.ports import free_port
from voice.audio.analysis import tone_fraction
from voice.client.client import Call

RATE = 48000
LANDLINE = "+4930555000100"


def trunk_port(server: Server) -> int:
    for transport, _host, port in server.app[TRUNK].addresses:
        if transport == "udp":
            return int(port)
    raise AssertionError("the trunk listens on no UDP port")


@pytest.fixture
async def network(
    make_server: ServerFactory, tmp_path: Path
) -> AsyncIterator[tuple[Server, int, Callable[..., Sipp]]]:
    """A server whose trunk points at a SIPp port, Alice provisioned with minutes."""
    sbc_port = free_port(socket.SOCK_DGRAM)
    server = await make_server(
        sip_listen="127.0.0.1:0",
        sip_sbc=(f"udp:127.0.0.1:{sbc_port}",),
        sip_accepted_sources=("127.0.0.1",),
        # No OPTIONS keep-alive: SIPp would count it as its one call (-m 1).
        sip_options_interval=0.0,
    )
    operator = await add_operator(server)
    bundle = await add_bundle(server, operator, phone_minutes=100)
    await add_subscriber(server, ALICE, operator, bundle)
    runs: list[Sipp] = []

    def sipp(scenario: str, **options: object) -> Sipp:
        workdir = tmp_path / f"sipp{len(runs)}"
        workdir.mkdir()
        options.setdefault("port", sbc_port)
        run = Sipp(scenario, workdir=workdir, **options)  # type: ignore[arg-type]
        runs.append(run)
        return run

    yield server, sbc_port, sipp
    for run in runs:
        run.stop()


async def trunk_up(server: Server, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not server.app[TRUNK].up:
        assert asyncio.get_running_loop().time() < deadline, "the trunk never came up"
        await asyncio.sleep(0.1)


async def test_an_app_user_calls_a_phone_number_and_hears_it(
    network: tuple[Server, int, Callable[..., Sipp]],
) -> None:
    server, _port, sipp = network
    far_end = sipp("trunk_uas_echo.xml", echo=True)
    await trunk_up(server)
    alice = await server.phone(ALICE)
    outgoing = await alice.call(LANDLINE, source="tone:440")
    await outgoing.ringing(timeout=10)
    assert outgoing.phone_network  # the app can offer its keypad
    assert await outgoing.connected(timeout=10)
    await asyncio.sleep(3.0)
    # Digits go out as RFC 4733 events, and the network's echo brings them back.
    await outgoing.send_dtmf("19#")
    assert await outgoing.digits(3, timeout=10) == "19#"
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    assert await far_end.finished(timeout=10) == 0, far_end.errors()

    # Alice's 440 Hz went to G.711 and back through the network's echo.
    echoed = heard(outgoing)[RATE : 3 * RATE]
    assert tone_fraction(echoed, RATE, 440) >= 0.7
    cdr = await server.app[CDRS].get(outgoing.call_id or "")
    assert cdr is not None and cdr.kind == "phone" and cdr.billable
    assert cdr.end_reason == "completed" and cdr.rated_seconds == 60  # 60/60 increments


async def test_a_busy_phone_number(network: tuple[Server, int, Callable[..., Sipp]]) -> None:
    server, _port, sipp = network
    far_end = sipp("trunk_uas_busy.xml")
    await trunk_up(server)
    alice = await server.phone(ALICE)
    outgoing = await alice.call(LANDLINE, source="tone:440")
    assert await outgoing.ended(timeout=10) == "busy"
    assert await far_end.finished(timeout=10) == 0, far_end.errors()


async def test_the_caller_gives_up_while_the_phone_rings(
    network: tuple[Server, int, Callable[..., Sipp]],
) -> None:
    server, _port, sipp = network
    far_end = sipp("trunk_uas_cancelled.xml")
    await trunk_up(server)
    alice = await server.phone(ALICE)
    outgoing = await alice.call(LANDLINE, source="tone:440")
    await outgoing.ringing(timeout=10)
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "cancelled"
    assert await far_end.finished(timeout=10) == 0, far_end.errors()  # CANCEL arrived


async def test_the_phone_number_hangs_up(network: tuple[Server, int, Callable[..., Sipp]]) -> None:
    server, _port, sipp = network
    far_end = sipp("trunk_uas_hangs_up.xml")
    await trunk_up(server)
    alice = await server.phone(ALICE)
    outgoing = await alice.call(LANDLINE, source="tone:440")
    assert await outgoing.connected(timeout=10)
    assert await outgoing.ended(timeout=10) == "completed"
    assert await far_end.finished(timeout=10) == 0, far_end.errors()


def alaw_tone(path: Path, frequency: int, seconds: int) -> Path:
    subprocess.run(
        [
            *("sox", "-n", "-r", "8000", "-c", "1", "-e", "a-law", "-b", "8", "-t", "raw"),
            *(str(path), "synth", str(seconds), "sine", str(frequency), "vol", "0.5"),
        ],
        check=True,
    )
    return path


async def test_a_phone_number_calls_an_app_user_who_hears_it(
    network: tuple[Server, int, Callable[..., Sipp]], tmp_path: Path
) -> None:
    server, _port, sipp = network
    bob = await server.phone(BOB)
    tone = alaw_tone(tmp_path / "tone.raw", 1000, 8)
    caller = sipp(
        "trunk_uac_tone.xml",
        port=free_port(socket.SOCK_DGRAM),
        remote=f"127.0.0.1:{trunk_port(server)}",
        service=BOB,
        files={"tone.raw": tone.read_bytes()},
    )
    incoming: Call = await bob.incoming(timeout=10, source="tone:880")
    assert incoming.peer == LANDLINE and incoming.phone_network
    await incoming.accept()
    assert await incoming.connected(timeout=10)
    assert await incoming.ended(timeout=15) == "completed"  # the network hung up
    assert await caller.finished(timeout=10) == 0, caller.errors()
    assert tone_fraction(heard(incoming)[RATE // 2 : 3 * RATE], RATE, 1000) >= 0.7
    cdr = await server.app[CDRS].get(incoming.call_id or "")
    assert cdr is not None and cdr.caller == LANDLINE and cdr.callee == BOB
    assert cdr.kind == "phone" and not cdr.billable


async def test_a_call_from_the_network_to_a_number_without_the_app(
    network: tuple[Server, int, Callable[..., Sipp]],
) -> None:
    server, _port, sipp = network
    caller = sipp(
        "trunk_uac_unknown.xml",
        port=free_port(socket.SOCK_DGRAM),
        remote=f"127.0.0.1:{trunk_port(server)}",
        service="+4917700000099",
    )
    assert await caller.finished(timeout=15) == 0, caller.errors()  # 404 Not Found


async def provisioned_trunk_server(make_server: ServerFactory, sbc_port: int) -> Server:
    server = await make_server(
        sip_listen="127.0.0.1:0",
        sip_sbc=(f"udp:127.0.0.1:{sbc_port}",),
        sip_accepted_sources=("127.0.0.1",),
        sip_options_interval=1.0,
    )
    operator = await add_operator(server)
    await add_subscriber(server, ALICE, operator, await add_bundle(server, operator))
    return server


async def test_a_phone_on_the_network_answers_an_app_call(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    phone = Baresip(tmp_path / "baresip", tone=1200, seconds=15, user=LANDLINE)
    try:
        server = await provisioned_trunk_server(make_server, phone.port)
        await trunk_up(server)
        alice = await server.phone(ALICE)
        outgoing = await alice.call(LANDLINE, source="tone:440")
        assert await outgoing.connected(timeout=10), phone.output()
        await asyncio.sleep(3.0)
        await outgoing.hangup()
        assert await outgoing.ended(timeout=5) == "completed"
        assert tone_fraction(heard(outgoing)[RATE : 3 * RATE], RATE, 1200) >= 0.7
        await asyncio.sleep(0.5)
        samples, rate = phone.heard()
        assert tone_fraction(samples[rate : 3 * rate], rate, 440) >= 0.7
    finally:
        phone.stop()


async def test_a_phone_on_the_network_calls_an_app_user(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await provisioned_trunk_server(make_server, free_port(socket.SOCK_DGRAM))
    bob = await server.phone(BOB)
    phone = Baresip(
        tmp_path / "baresip",
        tone=1200,
        seconds=8,
        dial=f"sip:{BOB}@127.0.0.1:{trunk_port(server)}",
    )
    try:
        incoming = await bob.incoming(timeout=10, source="tone:880")
        await incoming.accept()
        assert await incoming.connected(timeout=10)
        assert await incoming.ended(timeout=20) == "completed"  # baresip hangs up on exit
        assert tone_fraction(heard(incoming)[RATE : 3 * RATE], RATE, 1200) >= 0.7
        samples, rate = phone.heard()
        assert tone_fraction(samples[rate : 3 * rate], rate, 880) >= 0.7
    finally:
        phone.stop()


async def test_early_media_then_hold_and_resume_from_the_network(
    network: tuple[Server, int, Callable[..., Sipp]],
) -> None:
    server, _port, sipp = network
    far_end = sipp("trunk_uas_early_media_hold.xml", echo=True)
    await trunk_up(server)
    alice = await server.phone(ALICE)
    outgoing = await alice.call(LANDLINE, source="tone:440")
    assert await outgoing.connected(timeout=10)
    await asyncio.sleep(5.0)  # 1 s talk, 1.5 s on hold, then talk again
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    assert await far_end.finished(timeout=10) == 0, far_end.errors()

    before_answer = heard(outgoing, start="", end="connected")
    # Early media: the network's audio (the echo of Alice) before the answer.
    assert tone_fraction(before_answer[-RATE:], RATE, 440) >= 0.7
    talk = heard(outgoing)
    assert tone_fraction(talk[int(0.2 * RATE) : int(0.9 * RATE)], RATE, 440) >= 0.7
    # On hold the relay stops sending to the network, so nothing comes back.
    assert tone_fraction(talk[int(1.6 * RATE) : int(2.3 * RATE)], RATE, 440) <= 0.3
    assert tone_fraction(talk[int(3.2 * RATE) : int(4.5 * RATE)], RATE, 440) >= 0.7


async def test_a_call_to_a_phone_number_is_cut_when_the_minutes_run_out(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    sbc_port = free_port(socket.SOCK_DGRAM)
    server = await make_server(
        sip_listen="127.0.0.1:0",
        sip_sbc=(f"udp:127.0.0.1:{sbc_port}",),
        sip_accepted_sources=("127.0.0.1",),
        sip_options_interval=0.0,
    )
    operator = await add_operator(server)
    bundle = await add_bundle(server, operator, phone_minutes=1, increment=(1, 1))
    await add_subscriber(server, ALICE, operator, bundle)
    await add_past_call(server, ALICE, BOB, 56)  # 4 s of the minute left
    far_end = Sipp("trunk_uas_echo.xml", port=sbc_port, echo=True, workdir=tmp_path)
    try:
        alice = await server.phone(ALICE)
        outgoing = await alice.call(LANDLINE, source="tone:440")
        assert await outgoing.connected(timeout=10)
        assert await outgoing.ended(timeout=10) == "quota_exhausted"
        assert outgoing.quota_warnings  # warned at once: less than a minute was left
        assert await far_end.finished(timeout=10) == 0, far_end.errors()  # BYE reached it
        cdr = await server.app[CDRS].get(outgoing.call_id or "")
        assert cdr is not None and cdr.kind == "phone" and 3.5 <= cdr.duration <= 5.0
        assert cdr.rated_seconds <= 4
    finally:
        far_end.stop()
