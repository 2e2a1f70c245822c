"""The operator store on a real SQLite file: operators and their API keys,
bundles as the call policy rates them, subscribers, events and the stored
responses of idempotent requests."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from signaling.carrier import events
from signaling.carrier.operators import (
    IDEMPOTENCY_TTL,
    BundleNotFound,
    BundleRetired,
    BundleSpec,
    EventNotFound,
    EventPending,
    IdempotencyKeyReused,
    InvalidSubscriberNumber,
    KeyLimitReached,
    KeyNotFound,
    LastKey,
    NoPreviousSecret,
    NumberUnavailable,
    StoredResponse,
    SubscriberExists,
    SubscriberNotFound,
    check_url,
    request_fingerprint,
)
from signaling.carrier.policy import CarrierPolicy
from signaling.carrier.rating import Increment
from signaling.store.database import Database
from signaling.store.operators import OperatorStore
from signaling.store.schema import events as events_table
from signaling.store.schema import operator_keys, operators
from tests.unit.conftest import Clock

ALICE = "+4917700000001"
BOB = "+4917700000002"

TALK_100 = BundleSpec(name="Talk 100", app_calls_included=True, phone_minutes=100)


@pytest.fixture
def store(db: Database, clock: Clock) -> OperatorStore:
    return OperatorStore(db, default_region="DE", clock=clock)


async def test_a_new_operator_signs_in_with_its_key_which_is_stored_only_as_a_hash(
    store: OperatorStore, db: Database
) -> None:
    new = await store.create_operator("Netz Eins", webhook_url="https://hooks.example/anruf")
    assert new.api_key.startswith("ak_") and len(new.api_key) >= 40
    assert new.signing_secret.startswith("whsec_")

    caller = await store.authenticate(new.api_key)
    assert caller is not None
    assert caller.operator == new.operator and caller.key_id == new.key_id
    assert await store.authenticate(new.api_key + "x") is None
    assert await store.authenticate("not-a-key") is None

    async with db.read() as conn:
        rows = (await conn.execute(sa.select(operator_keys))).all()
        secret = await conn.scalar(sa.select(operators.c.signing_secret))
    assert len(rows) == 1
    assert all(new.api_key not in str(value) for value in rows[0])
    assert secret == new.signing_secret
    assert [op.name for op in await store.list_operators()] == ["Netz Eins"]


async def test_at_most_two_active_keys_and_never_none(store: OperatorStore, clock: Clock) -> None:
    new = await store.create_operator("Netz Eins")
    op = new.operator.operator_id
    clock.now += 1
    second = await store.create_key(op)
    with pytest.raises(KeyLimitReached):
        await store.create_key(op)
    assert [k.key_id for k in await store.list_keys(op)] == [new.key_id, second.key.key_id]

    await store.revoke_key(op, new.key_id)
    assert await store.authenticate(new.api_key) is None
    assert await store.authenticate(second.api_key) is not None
    with pytest.raises(LastKey):
        await store.revoke_key(op, second.key.key_id)
    with pytest.raises(KeyNotFound):
        await store.revoke_key(op, new.key_id)  # revoked already

    other = await store.create_operator("Netz Zwei")
    with pytest.raises(KeyNotFound):
        await store.revoke_key(other.operator.operator_id, second.key.key_id)


async def test_settings_and_signing_secret_rotation(store: OperatorStore, db: Database) -> None:
    new = await store.create_operator("Netz Eins")
    op = new.operator.operator_id
    changed = await store.update_operator(op, {"sms_url": "http://sms.example:8080/send"})
    assert changed.sms_url == "http://sms.example:8080/send" and changed.name == "Netz Eins"

    with pytest.raises(NoPreviousSecret):
        await store.retire_previous_signing_secret(op)
    secret = await store.rotate_signing_secret(op)
    async with db.read() as conn:
        row = (await conn.execute(sa.select(operators))).one()
    assert (row.signing_secret, row.previous_signing_secret) == (secret, new.signing_secret)
    assert (await store.get_operator(op)).has_previous_signing_secret
    await store.retire_previous_signing_secret(op)
    assert not (await store.get_operator(op)).has_previous_signing_secret


async def test_the_call_policy_rates_and_admits_by_what_the_operator_provisioned(
    store: OperatorStore, db: Database, clock: Clock
) -> None:
    op = (await store.create_operator("Netz Eins")).operator.operator_id
    spec = BundleSpec(
        name="Phone 30",
        app_calls_included=False,
        phone_minutes=30,
        period_seconds=3600,
        increment=Increment(60, 1),
        fair_use_minutes=600,
    )
    bundle = await store.create_bundle(op, spec)
    subscriber = await store.add_subscriber(op, "0177 0000 0001", bundle.bundle_id)
    assert subscriber.number == ALICE and subscriber.status == "active"
    assert subscriber.activated_at == clock.now

    policy = CarrierPolicy(db, clock=clock)
    subscription = await policy.subscription(ALICE)
    assert subscription is not None
    assert subscription.operator_id == op
    assert subscription.bundle == bundle.rating()
    assert not subscription.suspended

    await store.suspend(op, ALICE)
    suspended = await policy.subscription(ALICE)
    assert suspended is not None and suspended.suspended
    await store.resume(op, ALICE)
    resumed = await policy.subscription(ALICE)
    assert resumed is not None and not resumed.suspended

    # Changed terms apply to every subscriber on the bundle.
    changed = await store.update_bundle(op, bundle.bundle_id, {"phone_minutes": 60})
    assert changed.spec.phone_minutes == 60
    after_change = await policy.subscription(ALICE)
    assert after_change is not None and after_change.bundle.phone_minutes == 60

    await store.remove_subscriber(op, ALICE)
    assert await policy.subscription(ALICE) is None


async def test_one_operator_per_number(store: OperatorStore) -> None:
    one = (await store.create_operator("Netz Eins")).operator.operator_id
    two = (await store.create_operator("Netz Zwei")).operator.operator_id
    bundle_one = await store.create_bundle(one, TALK_100)
    bundle_two = await store.create_bundle(two, TALK_100)
    await store.add_subscriber(one, ALICE, bundle_one.bundle_id)

    with pytest.raises(SubscriberExists):
        await store.add_subscriber(one, ALICE, bundle_one.bundle_id)
    with pytest.raises(NumberUnavailable) as unavailable:
        await store.add_subscriber(two, "+49 177 00000001", bundle_two.bundle_id)
    assert one not in unavailable.value.detail and "Netz" not in unavailable.value.detail
    with pytest.raises(InvalidSubscriberNumber) as invalid:
        await store.add_subscriber(two, "110", bundle_two.bundle_id)
    assert invalid.value.extra["reason"] == "not_callable"

    # Another operator's things are not there for two.
    with pytest.raises(SubscriberNotFound):
        await store.get_subscriber(two, ALICE)
    with pytest.raises(SubscriberNotFound):
        await store.suspend(two, ALICE)
    with pytest.raises(BundleNotFound):
        await store.get_bundle(two, bundle_one.bundle_id)
    with pytest.raises(BundleNotFound):
        await store.add_subscriber(two, BOB, bundle_one.bundle_id)


async def test_a_retired_bundle_keeps_its_subscribers_but_takes_no_new_ones(
    store: OperatorStore,
) -> None:
    op = (await store.create_operator("Netz Eins")).operator.operator_id
    old = await store.create_bundle(op, TALK_100)
    new = await store.create_bundle(op, BundleSpec("Talk 200", True, 200))
    await store.add_subscriber(op, ALICE, old.bundle_id)

    retired = await store.retire_bundle(op, old.bundle_id)
    assert retired.retired and retired.retired_at is not None
    assert (await store.retire_bundle(op, old.bundle_id)).retired_at == retired.retired_at
    assert (await store.get_subscriber(op, ALICE)).bundle_id == old.bundle_id

    with pytest.raises(BundleRetired):
        await store.add_subscriber(op, BOB, old.bundle_id)
    with pytest.raises(BundleRetired):
        await store.update_bundle(op, old.bundle_id, {"phone_minutes": 5})
    moved = await store.change_bundle(op, ALICE, new.bundle_id)
    assert moved.bundle_id == new.bundle_id
    with pytest.raises(BundleRetired):
        await store.change_bundle(op, ALICE, old.bundle_id)


async def test_subscribers_page_in_number_order(store: OperatorStore) -> None:
    op = (await store.create_operator("Netz Eins")).operator.operator_id
    bundle = await store.create_bundle(op, TALK_100)
    numbers = [f"+49177000000{i:02d}" for i in range(1, 6)]
    for number in reversed(numbers):
        await store.add_subscriber(op, number, bundle.bundle_id)
    await store.suspend(op, numbers[2])
    first = await store.list_subscribers(op, limit=2)
    rest = await store.list_subscribers(op, after=first[-1].number, limit=10)
    assert [s.number for s in first + rest] == numbers
    suspended = await store.list_subscribers(op, status="suspended")
    assert [s.number for s in suspended] == [numbers[2]]


async def test_bundle_terms_are_checked() -> None:
    with pytest.raises(ValueError):
        BundleSpec("", True, 10)
    with pytest.raises(ValueError):
        BundleSpec("Talk", True, -1)
    with pytest.raises(ValueError):
        BundleSpec("Talk", True, 10, increment=Increment(3601, 1))
    with pytest.raises(ValueError):
        BundleSpec("Talk", True, 10, period_seconds=0)


async def test_redeliver_puts_a_delivered_or_dead_event_back_in_the_queue(
    store: OperatorStore, db: Database, clock: Clock
) -> None:
    op = (await store.create_operator("Netz Eins")).operator.operator_id
    other = (await store.create_operator("Netz Zwei")).operator.operator_id
    async with db.transaction() as conn:
        event_id = await events.append(
            conn,
            operator_id=op,
            type="usage.threshold",
            data={"number": ALICE, "percent": 80},
            ordering_key=ALICE,
            now=clock.now,
        )
        await conn.execute(
            events_table.update()
            .where(events_table.c.event_id == event_id)
            .values(status="dead", attempts=12, locked_until=clock.now + 30, last_error="503")
        )
    with pytest.raises(EventNotFound):
        await store.redeliver(other, event_id)

    clock.now += 100
    again = await store.redeliver(op, event_id)
    assert (again.status, again.attempts) == ("pending", 0)
    async with db.read() as conn:
        row = (
            await conn.execute(sa.select(events_table).where(events_table.c.event_id == event_id))
        ).one()
    assert (row.status, row.attempts, row.next_attempt_at, row.locked_until) == (
        "pending",
        0,
        clock.now,
        None,
    )
    with pytest.raises(EventPending):
        await store.redeliver(op, event_id)


async def test_stored_responses_are_per_operator_and_expire(
    store: OperatorStore, db: Database, clock: Clock
) -> None:
    fingerprint = request_fingerprint("POST", "/operator/v1/bundles", b'{"a": 1, "b": 2}')
    response = StoredResponse(201, '{"bundle_id": "bun_1"}')
    async with db.transaction() as conn:
        assert await store.stored_response(conn, "op_1", "k1", fingerprint) is None
        await store.store_response(conn, "op_1", "k1", fingerprint, response)
    # The same JSON written differently is the same request.
    same = request_fingerprint("POST", "/operator/v1/bundles", b'{"b":2,"a":1}')
    other = request_fingerprint("POST", "/operator/v1/bundles", b'{"a": 1, "b": 3}')
    async with db.transaction() as conn:
        assert await store.stored_response(conn, "op_1", "k1", same) == response
        assert await store.stored_response(conn, "op_2", "k1", other) is None
        with pytest.raises(IdempotencyKeyReused):
            await store.stored_response(conn, "op_1", "k1", other)

    clock.now += IDEMPOTENCY_TTL + 1
    async with db.transaction() as conn:
        assert await store.stored_response(conn, "op_1", "k1", other) is None


def test_urls_are_absolute_http_or_https() -> None:
    for good in ("", "https://hooks.example/anruf", "http://10.0.0.1:8080/sms?x=1"):
        assert check_url(good) == good
    for bad in (
        "ftp://hooks.example",
        "hooks.example/anruf",
        "https://",
        "https://hooks.example:99999/",
        "https://hooks.example/a b",
        "javascript:alert(1)",
    ):
        with pytest.raises(ValueError):
            check_url(bad)
