"""Toll-fraud guards on calls to phone numbers, end to end: a real server with its
SIP trunk pointed at SIPp (the operator's network, logging every SIP message it
receives) and the operator's webhook receiver checking signatures.

A refused call never reaches the network: SIPp's message log holds only the
INVITEs of the calls that were let through.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from signaling.keys import CDRS, DATABASE
from signaling.store.schema import bundles
from signaling.store.schema import events as events_table
from tests.conftest import ALICE, Server, ServerFactory, fresh_postgres
from tests.integration.provisioning import add_bundle, add_subscriber
from tests.integration.sipp import SCENARIOS, Sipp, sipp_binary
from tests.integration.test_trunk_calls import trunk_up
from tests.integration.webhooks import Received, Receiver, add_operator
from tests.ports import free_port
from voice.client.client import Call

LANDLINE = "+4930555000100"
OTHER_LANDLINE = "+4930555000101"
AUSTRIAN_MOBILE = "+436760000001"  # fictional
SATELLITE = "+8816000000001"  # fictional, on a satellite network the deployment blocks
OPERATOR = "op_fraud"

#: Fast delivery and retries for tests.
FAST = {
    "webhook_poll_interval": 0.02,
    "webhook_backoff_base": 0.02,
    "webhook_backoff_max": 0.1,
    "webhook_timeout": 2.0,
}


class TracedSipp(Sipp):
    """SIPp as the operator's network for one call, writing every SIP message it
    sends and receives to messages.log (-trace_msg)."""

    def __init__(self, scenario: str, *, port: int, workdir: Path) -> None:
        self.log = workdir / "messages.log"
        args = [
            *(sipp_binary(), "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1"),
            *("-p", str(port), "-m", "1", "-nostdin", "-aa"),
            *("-timeout", "60s", "-timeout_error", "-trace_err"),
            *("-trace_msg", "-message_file", str(self.log)),
            *("-mp", str(free_port(socket.SOCK_DGRAM)), "-rtp_echo"),
        ]
        self.port = port
        self.workdir = workdir
        self.process = subprocess.Popen(
            args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def invited(self) -> list[str]:
        """The numbers of the INVITEs that reached the network, in order."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return re.findall(r"^INVITE sip:(\+?[0-9]+)@", text, flags=re.MULTILINE)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The server's SQLite default (""), or a database of its own on PostgreSQL."""
    if request.param == "sqlite":
        yield ""
    else:
        async with fresh_postgres("anruf_fraud") as url:
            yield url


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


async def trunk_server(
    make_server: ServerFactory,
    receiver: Receiver,
    sbc_port: int,
    database_url: str = "",
    **terms: Any,
) -> Server:
    """A server whose trunk points at ``sbc_port``; Alice on a bundle with ``terms``,
    her operator's webhook at ``receiver``."""
    server = await make_server(
        sip_listen="127.0.0.1:0",
        sip_sbc=(f"udp:127.0.0.1:{sbc_port}",),
        sip_accepted_sources=("127.0.0.1",),
        sip_options_interval=0.0,  # SIPp would take an OPTIONS for its one call
        blocked_destinations=("+881", "+882"),
        database_url=database_url,
        **FAST,
    )
    await add_operator(server.app[DATABASE], OPERATOR, webhook_url=receiver.url + "/events")
    bundle_id = await add_bundle(server, OPERATOR, phone_minutes=100)
    async with server.app[DATABASE].transaction() as conn:
        await conn.execute(bundles.update().where(bundles.c.bundle_id == bundle_id).values(terms))
    await add_subscriber(server, ALICE, OPERATOR, bundle_id)
    return server


def alerts(receiver: Receiver) -> list[Received]:
    return [r for r in receiver.requests if r.envelope["type"] == "fraud.alert"]


def call_ended(receiver: Receiver, call: Call) -> bool:
    return any(
        r.envelope["type"] == "call.ended" and r.envelope["data"]["call_id"] == call.call_id
        for r in receiver.accepted()
    )


async def outbox_alerts(server: Server) -> list[str]:
    async with server.app[DATABASE].read() as conn:
        rows = await conn.execute(
            sa.select(events_table.c.event_id).where(events_table.c.type == "fraud.alert")
        )
        return [event_id for (event_id,) in rows]


async def refused(server: Server, call: Call) -> tuple[str | None, str]:
    reason = await call.ended(timeout=10)
    cdr = await server.app[CDRS].get(call.call_id or "")
    assert cdr is not None and cdr.kind == "phone" and cdr.rated_seconds == 0
    assert cdr.ringing_at is None and cdr.answered_at is None
    assert (cdr.end_reason, cdr.end_detail) == (reason, call.end_detail)
    return reason, call.end_detail


async def test_calls_outside_the_bundles_destinations_never_reach_the_network(
    make_server: ServerFactory, receiver: Receiver, tmp_path: Path
) -> None:
    sbc_port = free_port(socket.SOCK_DGRAM)
    server = await trunk_server(make_server, receiver, sbc_port, allowed_destinations="+49,+41")
    network = TracedSipp("trunk_uas_echo.xml", port=sbc_port, workdir=tmp_path)
    try:
        await trunk_up(server)
        alice = await server.phone(ALICE)

        abroad = await alice.call(AUSTRIAN_MOBILE, source="tone:440")
        assert await refused(server, abroad) == ("not_allowed", "destination_not_allowed")
        satellite = await alice.call(SATELLITE, source="tone:440")
        assert await refused(server, satellite) == ("not_allowed", "destination_blocked")

        # Inside the list: placed, answered by the network, talked, hung up.
        allowed = await alice.call(LANDLINE, source="tone:440")
        assert await allowed.connected(timeout=10)
        await asyncio.sleep(1.0)
        await allowed.hangup()
        assert await allowed.ended(timeout=5) == "completed"
        assert await network.finished(timeout=10) == 0, network.errors()
        assert network.invited() == [LANDLINE]

        # The operator hears of each rule once, signed.
        await receiver.wait_for(lambda r: len(alerts(r)) == 2 and call_ended(r, allowed))
        found = {a.envelope["data"]["rule"]: a for a in alerts(receiver)}
        assert set(found) == {"destination_not_allowed", "destination_blocked"}
        for alert in found.values():
            assert alert.signature_error == "", alert.signature_error
            data = alert.envelope["data"]
            assert alert.envelope["ordering_key"] == ALICE
            assert data["number"] == ALICE and data["allowed_destinations"] == ["+49", "+41"]
        assert found["destination_not_allowed"].envelope["data"]["destination"] == AUSTRIAN_MOBILE
        assert found["destination_not_allowed"].envelope["data"]["call_id"] == abroad.call_id
        assert found["destination_blocked"].envelope["data"]["destination"] == SATELLITE
    finally:
        network.stop()


async def test_beyond_the_velocity_limit_calls_are_refused_and_alerted_once(
    make_server: ServerFactory, receiver: Receiver, tmp_path: Path, database_url: str
) -> None:
    sbc_port = free_port(socket.SOCK_DGRAM)
    server = await trunk_server(
        make_server, receiver, sbc_port, database_url, max_phone_calls_per_hour=1
    )
    network = TracedSipp("trunk_uas_echo.xml", port=sbc_port, workdir=tmp_path)
    try:
        await trunk_up(server)
        alice = await server.phone(ALICE, "phone")
        tablet = await server.phone(ALICE, "tablet")

        first = await alice.call(LANDLINE, source="tone:440")
        assert await first.connected(timeout=10)
        # The call in progress uses up the hour's one call.
        second = await tablet.call(OTHER_LANDLINE, source="tone:440")
        assert await refused(server, second) == ("not_allowed", "velocity_exceeded")
        await first.hangup()
        assert await first.ended(timeout=5) == "completed"
        assert await network.finished(timeout=10) == 0, network.errors()
        # Now its record does.
        third = await alice.call(OTHER_LANDLINE, source="tone:440")
        assert await refused(server, third) == ("not_allowed", "velocity_exceeded")
        assert network.invited() == [LANDLINE]

        await receiver.wait_for(lambda r: call_ended(r, third))
        await asyncio.sleep(0.5)  # time for a second alert, were there one
        assert len(await outbox_alerts(server)) == 1
        [alert] = alerts(receiver)
        assert alert.signature_error == "", alert.signature_error
        envelope = alert.envelope
        assert envelope["operator_id"] == OPERATOR and envelope["ordering_key"] == ALICE
        data = envelope["data"]
        assert data["rule"] == "velocity_exceeded" and data["call_id"] == second.call_id
        assert data["number"] == ALICE and data["destination"] == OTHER_LANDLINE
        assert data["limits"] == {"max_phone_calls_per_hour": 1, "max_phone_minutes_per_hour": None}
        assert data["counts"]["phone_calls"] == 1 and data["window_seconds"] == 3600

        # The operator's CDR says why.
        ended = [
            r.envelope["data"]
            for r in receiver.accepted()
            if r.envelope["type"] == "call.ended" and r.envelope["data"]["call_id"] == third.call_id
        ]
        assert [(e["end_reason"], e["end_detail"]) for e in ended] == [
            ("not_allowed", "velocity_exceeded")
        ]
    finally:
        network.stop()
