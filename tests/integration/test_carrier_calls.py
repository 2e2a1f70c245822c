"""Calls under an operator's bundle: admission, warning, cut, rating and events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from signaling.keys import CDRS, POLICY
from signaling.store.database import Database
from signaling.store.schema import metadata
from tests.conftest import ALICE, BOB, CAROL, Server, ServerFactory, require_postgres
from tests.integration.provisioning import (
    add_bundle,
    add_operator,
    add_past_call,
    add_subscriber,
    outbox,
)
from tests.integration.test_calls import connect, heard
from voice.audio.analysis import tone_fraction
from voice.relay.ringback import NOTICE_FREQUENCY

RATE = 48000
#: A fictional number of the phone network, not an app user.
LANDLINE = "+4930555000100"


async def _drop_tables(url: str) -> None:
    db = await Database.open(url)
    async with db.transaction() as conn:
        await conn.run_sync(metadata.drop_all)
    await db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_store_server(
    request: pytest.FixtureRequest, make_server: ServerFactory
) -> AsyncIterator[Server]:
    """The server on its SQLite default, and on the machine's PostgreSQL (emptied)."""
    if request.param == "sqlite":
        yield await make_server()
        return
    url = require_postgres()
    await _drop_tables(url)
    yield await make_server(database_url=url)
    await _drop_tables(url)


async def test_a_completed_call_is_rated_and_every_step_reaches_the_operator(
    any_store_server: Server,
) -> None:
    server = any_store_server
    operator = await add_operator(server)
    bundle = await add_bundle(server, operator, app_calls_included=False, increment=(60, 1))
    await add_subscriber(server, ALICE, operator, bundle)
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, _incoming = await connect(alice, bob)
    await asyncio.sleep(2.0)
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"

    cdr = await server.app[CDRS].get(outgoing.call_id or "")
    assert cdr is not None
    assert (cdr.operator_id, cdr.bundle_id, cdr.kind) == (operator, bundle, "app")
    assert cdr.billable and cdr.rated_seconds == 60  # 60/1: a short call costs a minute
    sub = await server.app[POLICY].subscription(ALICE)
    assert sub is not None
    usage = await server.app[POLICY].usage(sub)
    assert usage.usage.billable_seconds == 60
    assert usage.as_dict()["minutes_left"] == 99

    sent = await outbox(server, operator)
    call_events = [e for e in sent if e.ordering_key == outgoing.call_id]
    assert [e.type for e in call_events] == [
        "call.started",
        "call.ringing",
        "call.answered",
        "call.ended",
    ]
    assert [e.sequence for e in call_events] == [1, 2, 3, 4]
    assert len({e.event_id for e in call_events}) == 4
    ended = call_events[-1].envelope()["data"]
    assert ended["end_reason"] == "completed" and ended["rated_seconds"] == 60
    assert ended["bundle_id"] == bundle and ended["billable"] is True
    assert ended["subscribers"] == [ALICE]
    assert 1.5 <= ended["duration"] <= 4.0
    for leg in ("caller", "callee"):
        quality = ended["legs"][leg]
        assert quality["packets_received"] > 50
        assert quality["loss_percent"] <= 5
        assert quality["mos"] is not None and quality["mos"] > 4.0


async def test_included_app_calls_cost_no_minutes_and_each_operator_sees_its_own(
    server: Server,
) -> None:
    first = await add_operator(server, "Netz Eins")
    second = await add_operator(server, "Netz Zwei")
    await add_subscriber(server, ALICE, first, await add_bundle(server, first))
    await add_subscriber(server, BOB, second, await add_bundle(server, second))
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, _ = await connect(alice, bob)
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"

    cdr = await server.app[CDRS].get(outgoing.call_id or "")
    assert cdr is not None and not cdr.billable and cdr.operator_id == first
    for operator, number in ((first, ALICE), (second, BOB)):
        seen = [e for e in await outbox(server, operator) if e.ordering_key == outgoing.call_id]
        assert [e.type for e in seen][-1] == "call.ended"
        assert all(e.envelope()["data"]["subscribers"] == [number] for e in seen)


async def test_the_caller_is_warned_then_cut_when_the_bundle_runs_out(server: Server) -> None:
    operator = await add_operator(server)
    bundle = await add_bundle(
        server, operator, app_calls_included=False, phone_minutes=1, increment=(1, 1)
    )
    await add_subscriber(server, ALICE, operator, bundle)
    await add_past_call(server, ALICE, CAROL, 56)  # 4 of the bundle's 60 seconds left
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob, callee_tone=880)

    assert await outgoing.ended(timeout=10) == "quota_exhausted"
    assert await incoming.ended(timeout=5) == "quota_exhausted"
    talk = await server.app[CDRS].get(outgoing.call_id or "")
    assert talk is not None and talk.end_reason == "quota_exhausted"
    assert 3.5 <= talk.duration <= 5.0, talk.duration
    assert outgoing.quota_warnings and outgoing.quota_warnings[0] <= 4
    assert incoming.quota_warnings == []  # the callee does not pay
    # The caller hears the notice tone over the call, and the callee otherwise.
    during = heard(outgoing, start="quota_warning")
    notice = during[: RATE // 2]
    assert tone_fraction(notice, RATE, int(NOTICE_FREQUENCY)) >= 0.5
    assert tone_fraction(during[RATE:], RATE, 880) >= 0.8
    assert tone_fraction(heard(incoming), RATE, 440) >= 0.8  # bob heard alice throughout

    sub = await server.app[POLICY].subscription(ALICE)
    assert sub is not None
    usage = await server.app[POLICY].usage(sub)
    assert usage.usage.billable_seconds == 56 + talk.rated_seconds
    assert usage.billable_seconds_left == 0

    # With nothing left the next call does not even ring.
    again = await alice.call(BOB, source="tone:440")
    assert await again.ended(timeout=5) == "quota_exhausted"
    assert again.end_detail == "quota_exhausted"
    types = [e.type for e in await outbox(server, operator)]
    assert "call.quota_warning" in types
    thresholds = [
        e.envelope()["data"]["percent"]
        for e in await outbox(server, operator)
        if e.type == "usage.threshold"
    ]
    assert thresholds == [100]  # this call crossed 100 % only (56 s was 93 % already)


async def test_usage_thresholds_are_raised_once_per_period(server: Server) -> None:
    operator = await add_operator(server)
    bundle = await add_bundle(
        server, operator, app_calls_included=False, phone_minutes=1, increment=(1, 1)
    )
    await add_subscriber(server, ALICE, operator, bundle)
    await add_past_call(server, ALICE, CAROL, 47)  # 78 %
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    for _ in range(2):
        outgoing, _incoming = await connect(alice, bob)
        await asyncio.sleep(1.0)
        await outgoing.hangup()
        assert await outgoing.ended(timeout=5) == "completed"
    raised = [e for e in await outbox(server, operator) if e.type == "usage.threshold"]
    assert [e.envelope()["data"]["percent"] for e in raised] == [80]
    assert raised[0].ordering_key == ALICE


async def test_a_suspended_subscriber_cannot_place_calls(server: Server) -> None:
    operator = await add_operator(server)
    bundle = await add_bundle(server, operator)
    await add_subscriber(server, ALICE, operator, bundle, status="suspended")
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)
    outgoing = await alice.call(BOB, source="tone:440")
    assert await outgoing.ended(timeout=5) == "not_allowed"
    assert outgoing.end_detail == "subscriber_suspended"
    with pytest.raises(TimeoutError):
        await bob.incoming(timeout=0.5)  # bob's phone never rang
    # ... while calls to the subscriber still ring.
    incoming_call = await bob.call(ALICE, source="tone:880")
    incoming = await alice.incoming(timeout=10)
    assert incoming.peer == BOB
    await incoming_call.hangup()


async def test_a_phone_number_needs_minutes_left(server: Server) -> None:
    operator = await add_operator(server)
    empty = await add_bundle(server, operator, phone_minutes=0)
    await add_subscriber(server, ALICE, operator, empty)
    alice = await server.phone(ALICE)
    refused = await alice.call(LANDLINE, source="tone:440")
    assert await refused.ended(timeout=5) == "quota_exhausted"
    cdr = await server.app[CDRS].get(refused.call_id or "")
    assert cdr is not None and cdr.kind == "phone" and cdr.billable

    # A number no operator provisioned reaches app users only.
    carol = await server.phone(CAROL)
    unreachable = await carol.call(LANDLINE, source="tone:440")
    assert await unreachable.ended(timeout=5) == "unavailable"
    assert unreachable.end_detail == "not_an_app_user"


async def test_a_new_device_is_reported_to_the_operator(server: Server) -> None:
    operator = await add_operator(server)
    await add_subscriber(server, ALICE, operator, await add_bundle(server, operator))
    await server.register(ALICE, "phone")
    await server.register(ALICE, "new phone")
    await server.register(BOB, "phone")  # not this operator's subscriber
    verified = [e for e in await outbox(server, operator) if e.type == "subscriber.verified"]
    assert [e.envelope()["data"]["device_name"] for e in verified] == ["phone", "new phone"]
    assert [e.envelope()["data"]["other_active_devices"] for e in verified] == [0, 1]
    assert all(e.envelope()["data"]["number"] == ALICE for e in verified)
