"""Rating: billing increments, periods, the policy's decision and usage thresholds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from signaling.carrier.rating import (
    Bundle,
    CallKind,
    Increment,
    Usage,
    authorize,
    crossed_thresholds,
    max_talk_seconds,
    period_bounds,
    rated_seconds,
)

PER_MINUTE = Increment(60, 60)
PER_SECOND_AFTER_A_MINUTE = Increment(60, 1)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("duration", "increment", "rated"),
    [
        (0.0, PER_MINUTE, 0),  # unanswered: free
        (0.4, PER_MINUTE, 60),
        (60.0, PER_MINUTE, 60),
        (60.2, PER_MINUTE, 120),
        (125.0, PER_MINUTE, 180),
        (10.0, PER_SECOND_AFTER_A_MINUTE, 60),
        (61.2, PER_SECOND_AFTER_A_MINUTE, 62),
        (90.0, PER_SECOND_AFTER_A_MINUTE, 90),
        (7.5, Increment(1, 1), 8),
    ],
)
def test_calls_are_rated_by_the_bundles_increment(
    duration: float, increment: Increment, rated: int
) -> None:
    assert rated_seconds(duration, increment) == rated


@pytest.mark.parametrize("allowance", [0, 1, 59, 60, 61, 119, 120, 600, 601])
@pytest.mark.parametrize("increment", [PER_MINUTE, PER_SECOND_AFTER_A_MINUTE, Increment(30, 6)])
def test_the_longest_talk_never_costs_more_than_is_left(
    allowance: int, increment: Increment
) -> None:
    talk = max_talk_seconds(allowance, increment)
    assert rated_seconds(talk, increment) <= allowance
    if talk:  # and one more increment would not fit
        assert rated_seconds(talk + 0.5, increment) > allowance


def test_increments_are_whole_positive_seconds() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Increment(0, 60)


def test_monthly_periods_run_from_activation_and_clamp_short_months() -> None:
    activated = ts(2026, 1, 31, 10, 0)
    assert period_bounds(activated, ts(2026, 2, 10), None) == (activated, ts(2026, 2, 28, 10, 0))
    # Clamped days are counted from the activation day, not chained: March 31 again.
    assert period_bounds(activated, ts(2026, 3, 5), None) == (
        ts(2026, 2, 28, 10, 0),
        ts(2026, 3, 31, 10, 0),
    )
    assert period_bounds(activated, ts(2026, 12, 31, 11, 0), None) == (
        ts(2026, 12, 31, 10, 0),
        ts(2027, 1, 31, 10, 0),
    )


def test_fixed_periods_follow_each_other() -> None:
    assert period_bounds(1000.0, 1000.0, 60) == (1000.0, 1060.0)
    assert period_bounds(1000.0, 1130.0, 60) == (1120.0, 1180.0)
    assert period_bounds(1000.0, 900.0, 60) == (1000.0, 1060.0)  # before activation


def bundle(**changes: object) -> Bundle:
    fields: dict[str, object] = {
        "bundle_id": "bd_1",
        "app_calls_included": True,
        "phone_minutes": 10,
        "increment": PER_MINUTE,
    }
    fields.update(changes)
    return Bundle(**fields)  # type: ignore[arg-type]


def test_app_calls_included_are_free_and_unlimited() -> None:
    decision = authorize(bundle(), Usage(600, 600), CallKind.APP)
    assert decision.allowed and not decision.billable and decision.max_seconds is None


def test_phone_calls_draw_on_the_minutes_left() -> None:
    decision = authorize(bundle(), Usage(480, 900), CallKind.PHONE)
    assert decision.allowed and decision.billable and decision.max_seconds == 120
    refused = authorize(bundle(), Usage(570, 900), CallKind.PHONE)  # 30 s < the first minute
    assert (refused.allowed, refused.reason) == (False, "quota_exhausted")


def test_app_calls_not_included_are_rated_like_phone_calls() -> None:
    decision = authorize(bundle(app_calls_included=False), Usage(0, 0), CallKind.APP)
    assert decision.billable and decision.max_seconds == 600


def test_the_fair_use_cap_bounds_every_call() -> None:
    capped = bundle(fair_use_minutes=20)
    assert authorize(capped, Usage(0, 1140), CallKind.APP).max_seconds == 60
    refused = authorize(capped, Usage(0, 1200), CallKind.APP)
    assert (refused.allowed, refused.reason) == (False, "fair_use_exceeded")


def test_a_suspended_subscriber_is_refused_first() -> None:
    decision = authorize(bundle(), Usage(), CallKind.APP, suspended=True)
    assert (decision.allowed, decision.reason) == (False, "subscriber_suspended")


def test_thresholds_are_crossed_once() -> None:
    ten_minutes = bundle()
    assert crossed_thresholds(ten_minutes, 0, 420) == []
    assert crossed_thresholds(ten_minutes, 420, 480) == [80]  # exactly 80 %
    assert crossed_thresholds(ten_minutes, 480, 540) == []
    assert crossed_thresholds(ten_minutes, 300, 600) == [80, 100]
    assert crossed_thresholds(bundle(phone_minutes=0), 0, 60) == []
