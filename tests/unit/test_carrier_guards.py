"""Toll-fraud guards: the sans-I/O decisions (destinations, velocity), and the call
policy applying them on a real SQLite file (call records, calls in progress,
fraud.alert at most once per subscriber, rule and window)."""

from __future__ import annotations

import asyncio
import json

import pytest
import sqlalchemy as sa

from signaling.calls.live import LiveCall
from signaling.calls.records import CallRecord
from signaling.carrier.operators import MAX_PER_HOUR, BundleSpec
from signaling.carrier.policy import PENDING_SECONDS, CarrierPolicy, FraudRules
from signaling.carrier.rating import (
    MAX_PREFIXES,
    VELOCITY_WINDOW,
    Bundle,
    CallKind,
    Increment,
    Recent,
    VelocityLimits,
    check_prefix,
    destination_refusal,
    talk_in_window,
    velocity_limits,
    velocity_refusal,
)
from signaling.config import load_config
from signaling.store.cdrs import CallRecordStore
from signaling.store.database import Database
from signaling.store.live_calls import LiveCalls
from signaling.store.operators import OperatorStore
from signaling.store.schema import events
from tests.unit.conftest import Clock

ALICE = "+4917700000001"
BOB = "+4917700000002"
GERMAN_LANDLINE = "+4930555000100"
AUSTRIAN_MOBILE = "+436760000001"  # fictional
PREMIUM = "+4990000000001"  # fictional premium-rate number


# -- the sans-I/O decisions ------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["+4", "+49", "+43676", "+1", "+" + "9" * 15])
def test_e164_prefixes_are_accepted(prefix: str) -> None:
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["", "+", "49", "+049", "+4 9", "+49a", "+" + "9" * 16, "0049"])
def test_anything_else_is_not_a_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"not an E\.164 prefix"):
        check_prefix(prefix)


@pytest.mark.parametrize(
    ("number", "allowed", "blocked", "refusal"),
    [
        (AUSTRIAN_MOBILE, (), (), None),  # no list: any destination
        (GERMAN_LANDLINE, ("+49",), (), None),
        (AUSTRIAN_MOBILE, ("+49",), (), "destination_not_allowed"),
        (AUSTRIAN_MOBILE, ("+49", "+43"), (), None),
        (AUSTRIAN_MOBILE, ("+43699",), (), "destination_not_allowed"),  # prefix, not country
        (PREMIUM, (), ("+49900",), "destination_blocked"),
        (PREMIUM, ("+49",), ("+49900",), "destination_blocked"),  # blocked wins over allowed
        (GERMAN_LANDLINE, ("+49",), ("+49900",), None),
        (AUSTRIAN_MOBILE, ("+49",), ("+49900",), "destination_not_allowed"),
    ],
)
def test_destinations(
    number: str, allowed: tuple[str, ...], blocked: tuple[str, ...], refusal: str | None
) -> None:
    assert destination_refusal(number, allowed, blocked) == refusal


def bundle(**terms: object) -> Bundle:
    return Bundle("b", True, 100, Increment(60, 60), **terms)  # type: ignore[arg-type]


def test_a_bundles_velocity_limits_override_the_deployments_defaults() -> None:
    default = VelocityLimits(max_calls=20, max_minutes=120)
    assert velocity_limits(bundle(), default) == default
    assert velocity_limits(bundle(max_phone_calls_per_hour=3), default) == VelocityLimits(3, 120)
    assert velocity_limits(bundle(max_phone_minutes_per_hour=0), default) == VelocityLimits(20, 0)
    # A deployment default of 0 is no limit; a bundle's 0 is none at all.
    assert velocity_limits(bundle(), VelocityLimits(0, 0)) == VelocityLimits(None, None)


def test_talk_is_counted_inside_the_window_only() -> None:
    assert talk_in_window(None, 500.0, 0.0) == 0.0  # never answered
    assert talk_in_window(100.0, 160.0, 0.0) == 60.0
    assert talk_in_window(100.0, 160.0, 130.0) == 30.0  # began before the window
    assert talk_in_window(100.0, 160.0, 200.0) == 0.0  # ended before it


@pytest.mark.parametrize(
    ("limits", "recent", "refusal"),
    [
        (VelocityLimits(), Recent(1000, 1e6), None),
        (VelocityLimits(max_calls=3), Recent(2, 0.0), None),
        (VelocityLimits(max_calls=3), Recent(3, 0.0), "velocity_exceeded"),
        (VelocityLimits(max_minutes=10), Recent(1, 599.0), None),
        (VelocityLimits(max_minutes=10), Recent(1, 600.0), "velocity_exceeded"),
        (VelocityLimits(max_calls=0), Recent(), "velocity_exceeded"),
        (VelocityLimits(max_calls=5, max_minutes=10), Recent(1, 700.0), "velocity_exceeded"),
    ],
)
def test_velocity(limits: VelocityLimits, recent: Recent, refusal: str | None) -> None:
    assert velocity_refusal(limits, recent) == refusal


def test_the_deployments_rules_come_from_its_settings_and_are_checked() -> None:
    environ = {
        "ANRUF_BLOCKED_DESTINATIONS": "+881, +882",
        "ANRUF_MAX_PHONE_MINUTES_PER_HOUR": "90",
    }
    rules = FraudRules.from_config(load_config(environ=environ))
    assert rules.blocked_destinations == ("+881", "+882")
    assert rules.default_limits == VelocityLimits(None, 90)  # calls: 0 is no limit
    assert FraudRules.from_config(load_config(environ={})) == FraudRules()
    bad = load_config(environ={"ANRUF_BLOCKED_DESTINATIONS": "+881,0900"})
    with pytest.raises(ValueError, match=r"blocked_destinations: '0900' is not an E\.164 prefix"):
        FraudRules.from_config(bad)


def test_bundle_terms_are_checked() -> None:
    BundleSpec("Talk", True, 10, allowed_destinations=("+49", "+43"), max_phone_calls_per_hour=0)
    with pytest.raises(ValueError, match=r"not an E\.164 prefix"):
        BundleSpec("Talk", True, 10, allowed_destinations=("49",))
    with pytest.raises(ValueError, match="at most"):
        BundleSpec("Talk", True, 10, allowed_destinations=("+49",) * (MAX_PREFIXES + 1))
    with pytest.raises(ValueError, match="max_phone_minutes_per_hour"):
        BundleSpec("Talk", True, 10, max_phone_minutes_per_hour=MAX_PER_HOUR + 1)
    with pytest.raises(ValueError, match="max_phone_calls_per_hour"):
        BundleSpec("Talk", True, 10, max_phone_calls_per_hour=-1)


# -- the policy on a database ------------------------------------------------------------


@pytest.fixture
def store(db: Database, clock: Clock) -> OperatorStore:
    return OperatorStore(db, default_region="DE", clock=clock)


async def provision(store: OperatorStore, clock: Clock, spec: BundleSpec) -> str:
    op = (await store.create_operator("Netz Eins")).operator.operator_id
    bundle_id = (await store.create_bundle(op, spec)).bundle_id
    await store.add_subscriber(op, ALICE, bundle_id)
    clock.now += 10 * VELOCITY_WINDOW  # activated long ago
    return op


def record(
    call_id: str,
    invited_at: float,
    *,
    answered_after: float | None = 2.0,
    talk: float = 60.0,
    kind: str = "phone",
    reason: str = "completed",
) -> CallRecord:
    answered_at = None if answered_after is None else invited_at + answered_after
    return CallRecord(
        call_id=call_id,
        caller=ALICE,
        callee=GERMAN_LANDLINE if kind == "phone" else BOB,
        caller_device="phone",
        callee_device=None,
        invited_at=invited_at,
        ringing_at=None if answered_at is None else invited_at + 1,
        answered_at=answered_at,
        ended_at=(answered_at or invited_at) + (talk if answered_at is not None else 1.0),
        end_reason=reason,
        end_detail="",
        kind=kind,
    )


async def alerts(db: Database) -> list[dict[str, object]]:
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(events.c.body).where(events.c.type == "fraud.alert").order_by(events.c.seq)
        )
        return [json.loads(body) for (body,) in rows]


async def test_recent_phone_calls_come_from_the_records_and_the_calls_in_progress(
    store: OperatorStore, db: Database, clock: Clock
) -> None:
    await provision(store, clock, BundleSpec("Talk", True, 100))
    now = clock.now
    cdrs = CallRecordStore(db)
    await cdrs.save(record("old", now - VELOCITY_WINDOW - 600))  # before the window
    # Began before the window, talked 120 s of which the last 30 s are inside it.
    await cdrs.save(record("straddling", now - VELOCITY_WINDOW - 92, talk=120.0))
    await cdrs.save(record("answered", now - 1000, talk=90.0))
    await cdrs.save(record("busy", now - 900, answered_after=None, reason="busy"))
    await cdrs.save(record("refused", now - 800, answered_after=None, reason="not_allowed"))
    await cdrs.save(record("app", now - 700, kind="app"))
    live = LiveCalls(db)
    for call_id, kind, answered_at in (
        ("talking", "phone", now - 45.0),
        ("ringing", "phone", None),
        ("app-live", "app", now - 100.0),
    ):
        await live.ringing(
            LiveCall(
                call_id=call_id,
                node_id="n1",
                caller=ALICE,
                callee=GERMAN_LANDLINE,
                caller_device="phone",
                callee_device=None,
                invited_at=now - 50.0,
                ringing_at=now - 49.0,
                answered_at=answered_at,
                devices=("phone",),
                rating={"kind": kind},
            )
        )

    policy = CarrierPolicy(db, clock=clock)
    recent = await policy.recent_phone_calls(ALICE)
    # Placed in the window: answered, busy, talking, ringing (not the refused one,
    # the app calls, or those placed before the window).
    assert recent.calls == 4
    assert recent.talk_seconds == pytest.approx(30.0 + 90.0 + 45.0)
    assert await policy.recent_phone_calls(BOB) == Recent()


async def test_a_destination_outside_the_bundles_list_is_refused_and_alerted_once(
    store: OperatorStore, db: Database, clock: Clock
) -> None:
    op = await provision(
        store, clock, BundleSpec("Talk DE", True, 100, allowed_destinations=("+49",))
    )
    policy = CarrierPolicy(db, clock=clock, rules=FraudRules(blocked_destinations=("+49900",)))
    committed: list[int] = []
    policy.on_events(lambda: committed.append(1))

    inside = await policy.admit("c1", ALICE, GERMAN_LANDLINE, CallKind.PHONE)
    assert inside.decision.allowed and inside.decision.billable
    # App calls are not phone-network calls: no list applies.
    app = await policy.admit("c2", ALICE, BOB, CallKind.APP)
    assert app.decision.allowed

    outside = await policy.admit("c3", ALICE, AUSTRIAN_MOBILE, CallKind.PHONE)
    assert not outside.decision.allowed
    assert outside.decision.reason == "destination_not_allowed"
    blocked = await policy.admit("c4", ALICE, PREMIUM, CallKind.PHONE)
    assert blocked.decision.reason == "destination_blocked"
    clock.now += 60
    again = await policy.admit("c5", ALICE, "+436760000002", CallKind.PHONE)
    assert again.decision.reason == "destination_not_allowed"

    found = await alerts(db)
    assert [(a["data"]["rule"], a["data"]["destination"]) for a in found] == [  # type: ignore[index]
        ("destination_not_allowed", AUSTRIAN_MOBILE),
        ("destination_blocked", PREMIUM),
    ]
    first = found[0]
    assert first["operator_id"] == op and first["ordering_key"] == ALICE
    assert first["data"] == {
        "number": ALICE,
        "rule": "destination_not_allowed",
        "destination": AUSTRIAN_MOBILE,
        "call_id": "c3",
        "bundle_id": outside.caller_subscription.bundle.bundle_id,  # type: ignore[union-attr]
        "at": round(clock.now - 60, 3),
        "window_seconds": VELOCITY_WINDOW,
        "limits": {"max_phone_calls_per_hour": None, "max_phone_minutes_per_hour": None},
        "counts": {"phone_calls": 1, "phone_minutes": 0.0},  # c1, admitted a moment ago
        "allowed_destinations": ["+49"],
    }
    assert len(committed) == 2  # the delivery was woken for each alert

    # A window later the rule alerts again.
    clock.now += VELOCITY_WINDOW
    later = await policy.admit("c6", ALICE, AUSTRIAN_MOBILE, CallKind.PHONE)
    assert later.decision.reason == "destination_not_allowed"
    assert len(await alerts(db)) == 3


async def test_the_velocity_limit_counts_records_and_calls_in_progress(
    store: OperatorStore, db: Database, clock: Clock
) -> None:
    await provision(store, clock, BundleSpec("Talk", True, 100, max_phone_minutes_per_hour=2))
    policy = CarrierPolicy(db, clock=clock, rules=FraudRules(default_limits=VelocityLimits(2)))
    cdrs = CallRecordStore(db)
    await cdrs.save(record("one", clock.now - 300, talk=60.0))
    assert (await policy.admit("c1", ALICE, GERMAN_LANDLINE, CallKind.PHONE)).decision.allowed

    # A call in progress with 61 s of talk: two minutes are used up, and the
    # deployment's default of two calls an hour as well.
    await LiveCalls(db).ringing(
        LiveCall(
            call_id="talking",
            node_id="n1",
            caller=ALICE,
            callee=GERMAN_LANDLINE,
            caller_device="phone",
            callee_device="sip",
            invited_at=clock.now - 63,
            ringing_at=clock.now - 62,
            answered_at=clock.now - 61,
            devices=("phone",),
            rating={"kind": "phone"},
        )
    )
    refused = await policy.admit("c2", ALICE, GERMAN_LANDLINE, CallKind.PHONE)
    assert not refused.decision.allowed and refused.decision.reason == "velocity_exceeded"
    assert (await policy.admit("c3", ALICE, BOB, CallKind.APP)).decision.allowed
    clock.now += 5
    assert (
        await policy.admit("c4", ALICE, GERMAN_LANDLINE, CallKind.PHONE)
    ).decision.reason == "velocity_exceeded"

    found = await alerts(db)
    assert len(found) == 1  # one per rule and window, however many refusals
    data = found[0]["data"]
    assert data["rule"] == "velocity_exceeded" and data["call_id"] == "c2"  # type: ignore[index]
    assert data["limits"] == {  # type: ignore[index]
        "max_phone_calls_per_hour": 2,
        "max_phone_minutes_per_hour": 2,
    }
    # The one on record, the one in progress, and c1, admitted a moment ago.
    assert data["counts"] == {"phone_calls": 3, "phone_minutes": 2.02}  # type: ignore[index]


async def test_quota_and_suspension_come_before_the_guards(
    store: OperatorStore, db: Database, clock: Clock
) -> None:
    op = await provision(store, clock, BundleSpec("Talk", True, 0, allowed_destinations=("+49",)))
    policy = CarrierPolicy(db, clock=clock)
    refused = await policy.admit("c1", ALICE, AUSTRIAN_MOBILE, CallKind.PHONE)
    assert refused.decision.reason == "quota_exhausted"
    await store.suspend(op, ALICE)
    suspended = await policy.admit("c2", ALICE, AUSTRIAN_MOBILE, CallKind.PHONE)
    assert suspended.decision.reason == "subscriber_suspended"
    assert await alerts(db) == []


async def test_the_store_round_trips_the_guards(store: OperatorStore, clock: Clock) -> None:
    op = (await store.create_operator("Netz Eins")).operator.operator_id
    spec = BundleSpec(
        "Talk",
        True,
        100,
        allowed_destinations=("+49", "+43676"),
        max_phone_calls_per_hour=12,
        max_phone_minutes_per_hour=None,
    )
    created = await store.create_bundle(op, spec)
    assert (await store.get_bundle(op, created.bundle_id)).spec == spec
    changed = await store.update_bundle(
        op, created.bundle_id, {"allowed_destinations": (), "max_phone_minutes_per_hour": 30}
    )
    read = await store.get_bundle(op, created.bundle_id)
    assert read.spec == changed.spec
    assert read.spec.allowed_destinations == () and read.spec.max_phone_minutes_per_hour == 30
    assert read.rating().max_phone_calls_per_hour == 12


async def test_simultaneous_calls_count_each_other_until_they_are_on_record(
    store: OperatorStore, db: Database, clock: Clock
) -> None:
    await provision(store, clock, BundleSpec("Talk", True, 100, max_phone_calls_per_hour=2))
    policy = CarrierPolicy(db, clock=clock)
    # Three devices dial at once: two are admitted, one is refused.
    admissions = await asyncio.gather(
        *(policy.admit(f"c{n}", ALICE, GERMAN_LANDLINE, CallKind.PHONE) for n in range(3))
    )
    assert sorted(a.decision.reason for a in admissions) == ["", "", "velocity_exceeded"]
    admitted = [a for a in admissions if a.decision.allowed]

    # One ends before it reached the network: its record, unanswered and refused
    # by nobody, still counts; the other is still pending here.
    ended = record(admitted[0].call_id, clock.now, answered_after=None, reason="failed")
    await CallRecordStore(db).save(policy.rate(admitted[0], ended))
    assert (await policy.recent_phone_calls(ALICE)).calls == 2

    # A pending admission is forgotten once live_calls has had time to take over.
    clock.now += PENDING_SECONDS + 1
    assert (await policy.recent_phone_calls(ALICE)).calls == 1
    assert (await policy.admit("c3", ALICE, GERMAN_LANDLINE, CallKind.PHONE)).decision.allowed
