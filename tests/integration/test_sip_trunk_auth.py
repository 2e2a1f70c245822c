"""Digest authentication on the trunk: the SBC (SIPp) challenges our INVITE, we
challenge the SBC's INVITE, and SHA-256 between two trunks (SIPp 3.6 knows only MD5);
wrong passwords lock a source out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prometheus_client import generate_latest

from signaling.metrics import Metrics
from signaling.sip.message import SipTarget
from signaling.sip.trunk import Answered, Ended, IncomingCall, TrunkSettings
from tests.integration.sip_trunk_support import (
    CALLEE,
    CALLER,
    SDP,
    Events,
    Sipp,
    running_trunk,
    trunk_port,
)


async def test_we_answer_the_sbcs_challenge(tmp_path: Path) -> None:
    sipp = Sipp(tmp_path, scenario="sip_uas_challenge.xml")
    await sipp.ready()
    settings = TrunkSettings(
        listen_port=0,
        sbc=(SipTarget("udp", "127.0.0.1", sipp.port),),
        username="anruf-trunk",
        password="s3cret-trunk",
        options_interval=0.0,
    )
    events = Events()
    async with running_trunk(settings) as trunk:
        call = await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events)
        await events.wait_for(Answered)
        assert trunk.stats["challenges_answered"] == 1
        await call.bye()
        assert await sipp.exit_code() == 0, sipp.log()


async def test_a_wrong_password_ends_with_the_sbcs_403(tmp_path: Path) -> None:
    sipp = Sipp(tmp_path, scenario="sip_uas_challenge.xml")
    await sipp.ready()
    settings = TrunkSettings(
        listen_port=0,
        sbc=(SipTarget("udp", "127.0.0.1", sipp.port),),
        username="anruf-trunk",
        password="not-the-password",
        options_interval=0.0,
    )
    events = Events()
    async with running_trunk(settings) as trunk:
        await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events)
        assert await events.wait_for(Ended) == Ended(403, "rejected", True, "Forbidden")
        await sipp.exit_code()


async def test_the_sbc_answers_our_challenge(tmp_path: Path) -> None:
    calls: list[IncomingCall] = []

    async def on_incoming(call: IncomingCall) -> None:
        calls.append(call)
        await call.answer(SDP)

    settings = TrunkSettings(
        listen_port=0,
        accepted_sources=("127.0.0.1",),
        inbound_username="operator-sbc",
        inbound_password="in-s3cret",
        # SIPp 3.6 answers only the topmost challenge, and only MD5 (no RFC 8760 §2.4):
        # such a peer needs sip_inbound_algorithms = ["MD5"].
        inbound_algorithms=("MD5",),
        options_interval=0.0,
        user_agent="Anruf",  # the scenario checks Server
    )
    async with running_trunk(settings, on_incoming) as trunk:
        port = trunk_port(trunk)
        # The digest uri must be the Request-URI (SIPp's default is sip:HOST:PORT).
        request_uri = f"{CALLEE}@127.0.0.1:{port};user=phone"
        sipp = Sipp(
            tmp_path,
            scenario="sip_uac_auth.xml",
            remote=f"127.0.0.1:{port}",
            args=(
                "-s",
                CALLEE,
                "-au",
                "operator-sbc",
                "-ap",
                "in-s3cret",
                "-auth_uri",
                request_uri,
            ),
        )
        assert await sipp.exit_code() == 0, sipp.log()
        assert trunk.stats["challenges_sent"] == 1
        (call,) = calls  # only the authenticated INVITE became a call
        authorization = call.request.headers.get("Authorization") or ""
        assert "algorithm=MD5" in authorization


def network_settings(**changes: object) -> TrunkSettings:
    """The operator's side: it challenges our INVITEs (SHA-256 first)."""
    base = TrunkSettings(
        listen_port=0,
        accepted_sources=("127.0.0.1",),
        inbound_username="anruf",
        inbound_password="sha-s3cret",
        options_interval=0.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def test_sha256_between_two_trunks_and_bad_credentials() -> None:
    answered: list[IncomingCall] = []

    async def on_incoming(call: IncomingCall) -> None:
        answered.append(call)
        await call.answer(SDP)

    async with running_trunk(network_settings(), on_incoming) as sbc:
        target = SipTarget("udp", "127.0.0.1", trunk_port(sbc))
        ours = TrunkSettings(
            listen_port=0,
            sbc=(target,),
            username="anruf",
            password="sha-s3cret",
            options_interval=0.0,
        )
        events = Events()
        async with running_trunk(ours) as trunk:
            call = await trunk.invite(
                to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events
            )
            await events.wait_for(Answered)
            await call.bye()
        (incoming,) = answered
        assert "algorithm=SHA-256" in (incoming.request.headers.get("Authorization") or "")

        wrong = TrunkSettings(
            listen_port=0, sbc=(target,), username="anruf", password="guess", options_interval=0
        )
        events = Events()
        async with running_trunk(wrong) as trunk:
            await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events)
            assert await events.wait_for(Ended) == Ended(403, "rejected", True, "Forbidden")
        assert sbc.stats["auth_failures"] == 1
        assert len(answered) == 1


async def test_wrong_passwords_lock_the_source_out_and_show_in_metrics() -> None:
    """Guessing the SBC's password costs a lockout after a few tries, not 50 a second."""
    answered: list[IncomingCall] = []

    async def on_incoming(call: IncomingCall) -> None:
        answered.append(call)
        await call.answer(SDP)

    network = network_settings(auth_max_failures=2, auth_lockout_seconds=60.0)
    async with running_trunk(network, on_incoming) as sbc:
        target = SipTarget("udp", "127.0.0.1", trunk_port(sbc))
        wrong = TrunkSettings(
            listen_port=0, sbc=(target,), username="anruf", password="guess", options_interval=0
        )
        right = dataclasses.replace(wrong, password="sha-s3cret")
        for settings in (wrong, wrong, right):
            events = Events()
            async with running_trunk(settings) as trunk:
                await trunk.invite(to_number=CALLEE, from_number=CALLER, sdp=SDP, on_event=events)
                assert await events.wait_for(Ended) == Ended(403, "rejected", True, "Forbidden")
        # The right password too is refused while the lockout lasts: it was not checked.
        assert answered == []
        assert sbc.stats["auth_failures"] == 2
        assert sbc.stats["auth_lockouts"] == 1
        assert sbc.stats["auth_locked_out"] == 1
        assert sbc.locked_out() == [("127.0.0.1", "anruf")]

        metrics = Metrics()
        metrics.trunk = sbc
        text = generate_latest(metrics.registry).decode()
        assert 'anruf_sip_events_total{event="auth_failures"} 2.0' in text
        assert 'anruf_sip_events_total{event="auth_lockouts"} 1.0' in text
        assert "anruf_sip_auth_locked_out 1.0" in text
