"""Rating and call policy for operator bundles (sans-I/O: times are arguments).

A bundle (what the operator sells) says whether calls between app users are
included, how many minutes to phone numbers a period carries, how long a
period is (monthly from the subscriber's activation, or a fixed number of
seconds), the billing increment ("60/60": the first 60 s, then every 60 s
started; "60/1": per second after the first minute) and a fair-use cap on the
minutes of all calls in a period.

    rated_seconds(61, Increment(60, 60)) == 120
    max_talk_seconds(300, Increment(60, 60)) == 300
    period_bounds(activated_at, now, None) -> the monthly period holding now

Toll-fraud guards on calls to phone numbers: a bundle may list the
destinations (E.164 prefixes) its calls may reach, a deployment may block
prefixes for everyone (premium rate), and a subscriber's calls and talk
minutes to phone numbers per rolling hour may be capped (velocity):

    destination_refusal("+436760000001", allowed=("+49",), blocked=()) == "destination_not_allowed"
    velocity_refusal(VelocityLimits(max_calls=3), Recent(calls=3)) == "velocity_exceeded"
"""

from __future__ import annotations

import calendar
import enum
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from wire.reasons import Detail

__all__ = [
    "MAX_PREFIXES",
    "THRESHOLDS",
    "VELOCITY_WINDOW",
    "Bundle",
    "CallKind",
    "Decision",
    "Increment",
    "Recent",
    "Usage",
    "VelocityLimits",
    "authorize",
    "check_prefix",
    "crossed_thresholds",
    "destination_refusal",
    "max_talk_seconds",
    "period_bounds",
    "rated_seconds",
    "talk_in_window",
    "velocity_limits",
    "velocity_refusal",
]

#: Usage shares (percent of the bundle's phone minutes) that raise usage.threshold.
THRESHOLDS: tuple[int, ...] = (80, 100)

#: The caller is warned this long before the bundle's minutes run out.
WARNING_SECONDS = 60


class CallKind(enum.StrEnum):
    APP = "app"  # the callee uses Anruf
    PHONE = "phone"  # an ordinary phone number (carried by the operator's network)


@dataclass(frozen=True)
class Increment:
    """Billing increment: ``first`` seconds for any started call, then per ``next`` seconds."""

    first: int
    next: int

    def __post_init__(self) -> None:
        if self.first < 1 or self.next < 1:
            raise ValueError("billing increments are whole seconds of at least 1")

    def __str__(self) -> str:
        return f"{self.first}/{self.next}"


@dataclass(frozen=True)
class Bundle:
    bundle_id: str
    app_calls_included: bool
    phone_minutes: int
    increment: Increment
    #: None: monthly from activation; otherwise the period's length in seconds.
    period_seconds: int | None = None
    #: Minutes of all calls (app and phone) per period; None: no cap.
    fair_use_minutes: int | None = None
    #: E.164 prefixes calls to phone numbers may reach; empty: any destination.
    allowed_destinations: tuple[str, ...] = ()
    #: Calls to phone numbers per rolling hour; None: the deployment's default.
    max_phone_calls_per_hour: int | None = None
    #: Talk minutes to phone numbers per rolling hour; None: the deployment's default.
    max_phone_minutes_per_hour: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a subscriber used in the current period, in rated seconds."""

    billable_seconds: int = 0  # counted against phone_minutes
    total_seconds: int = 0  # every call's talk time, for the fair-use cap


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: Why not ("subscriber_suspended", "quota_exhausted", "fair_use_exceeded").
    reason: str = ""
    #: Whether the call counts against the bundle's minutes.
    billable: bool = False
    #: The longest the call may talk (None: no limit).
    max_seconds: int | None = None


def rated_seconds(duration: float, increment: Increment) -> int:
    """Seconds billed for ``duration`` seconds of talk; 0 for an unanswered call."""
    if duration <= 0:
        return 0
    beyond = max(0.0, duration - increment.first)
    return increment.first + math.ceil(beyond / increment.next - 1e-9) * increment.next


def max_talk_seconds(allowance: int, increment: Increment) -> int:
    """The longest talk whose rated seconds fit in ``allowance`` (0 if not even the first)."""
    if allowance < increment.first:
        return 0
    return increment.first + (allowance - increment.first) // increment.next * increment.next


def _add_months(start: datetime, months: int) -> datetime:
    month_index = start.month - 1 + months
    year = start.year + month_index // 12
    month = month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def period_bounds(
    activated_at: float, now: float, period_seconds: int | None
) -> tuple[float, float]:
    """The [start, end) of the period holding ``now`` (periods run from activation)."""
    if now < activated_at:
        now = activated_at
    if period_seconds is not None:
        if period_seconds < 1:
            raise ValueError("period_seconds must be at least 1")
        index = int((now - activated_at) // period_seconds)
        begin = activated_at + index * period_seconds
        return begin, begin + period_seconds
    anchor = datetime.fromtimestamp(activated_at, UTC)
    current = datetime.fromtimestamp(now, UTC)
    months = (current.year - anchor.year) * 12 + current.month - anchor.month
    # Clamped days (31 Jan -> 28 Feb) are counted from the anchor, not chained.
    start = _add_months(anchor, months)
    if start.timestamp() > now:
        months -= 1
        start = _add_months(anchor, months)
    end = _add_months(anchor, months + 1)
    return start.timestamp(), end.timestamp()


def authorize(bundle: Bundle, usage: Usage, kind: CallKind, *, suspended: bool = False) -> Decision:
    """May a subscriber on ``bundle`` place a call of ``kind`` now, and for how long?"""
    if suspended:
        return Decision(False, Detail.SUBSCRIBER_SUSPENDED)
    billable = kind is CallKind.PHONE or not bundle.app_calls_included
    limits: list[int] = []
    if billable:
        left = bundle.phone_minutes * 60 - usage.billable_seconds
        talk = max_talk_seconds(left, bundle.increment)
        if talk <= 0:
            return Decision(False, Detail.QUOTA_EXHAUSTED, billable)
        limits.append(talk)
    if bundle.fair_use_minutes is not None:
        left = bundle.fair_use_minutes * 60 - usage.total_seconds
        talk = max_talk_seconds(left, bundle.increment) if billable else max(0, left)
        if talk <= 0:
            return Decision(False, Detail.FAIR_USE_EXCEEDED, billable)
        limits.append(talk)
    return Decision(True, "", billable, min(limits) if limits else None)


def crossed_thresholds(bundle: Bundle, before: int, after: int) -> list[int]:
    """Thresholds (percent of phone minutes) that billable usage crossed going
    from ``before`` to ``after`` rated seconds."""
    total = bundle.phone_minutes * 60
    if total <= 0:
        return []
    return [p for p in THRESHOLDS if before * 100 < p * total <= after * 100]


# -- Toll-fraud guards -------------------------------------------------------------

#: Velocity limits count calls to phone numbers in this rolling window (seconds);
#: at most one fraud alert per subscriber and rule is raised per window.
VELOCITY_WINDOW = 3600

#: At most this many prefixes in an allow-list or the deployment's block list.
MAX_PREFIXES = 50

_DIGITS = frozenset("0123456789")


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is an E.164 prefix ("+", a country code digit 1-9, at most
    15 digits in all), else ValueError."""
    digits = prefix[1:]
    if (
        not prefix.startswith("+")
        or not 1 <= len(digits) <= 15
        or not set(digits) <= _DIGITS
        or digits[0] == "0"
    ):
        raise ValueError(
            f"{prefix!r} is not an E.164 prefix: a plus, then 1 to 15 digits not starting with 0"
        )
    return prefix


def destination_refusal(
    number: str, allowed: tuple[str, ...], blocked: tuple[str, ...]
) -> str | None:
    """Why a call to the phone number ``number`` is refused, or None.

    ``blocked`` (the deployment's list) wins over ``allowed`` (the bundle's):
    "destination_blocked"; a number outside a non-empty ``allowed`` is
    "destination_not_allowed".
    """
    if any(number.startswith(prefix) for prefix in blocked):
        return Detail.DESTINATION_BLOCKED
    if allowed and not any(number.startswith(prefix) for prefix in allowed):
        return Detail.DESTINATION_NOT_ALLOWED
    return None


@dataclass(frozen=True)
class VelocityLimits:
    """Calls and talk minutes to phone numbers per rolling hour (None: no limit)."""

    max_calls: int | None = None
    max_minutes: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "max_phone_calls_per_hour": self.max_calls,
            "max_phone_minutes_per_hour": self.max_minutes,
        }


@dataclass(frozen=True)
class Recent:
    """A subscriber's calls to phone numbers in the window: those placed (ended or
    in progress) and their talk time inside the window."""

    calls: int = 0
    talk_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"phone_calls": self.calls, "phone_minutes": round(self.talk_seconds / 60, 2)}


def velocity_limits(bundle: Bundle, default: VelocityLimits) -> VelocityLimits:
    """The bundle's limits, each falling back to the deployment's ``default``
    (a default of 0 or less is no limit)."""

    def pick(own: int | None, fallback: int | None) -> int | None:
        if own is not None:
            return own
        return fallback if fallback is not None and fallback > 0 else None

    return VelocityLimits(
        pick(bundle.max_phone_calls_per_hour, default.max_calls),
        pick(bundle.max_phone_minutes_per_hour, default.max_minutes),
    )


def talk_in_window(answered_at: float | None, ended_at: float, since: float) -> float:
    """Seconds of a call's talk (answered_at..ended_at) at or after ``since``."""
    if answered_at is None:
        return 0.0
    return max(0.0, ended_at - max(answered_at, since))


def velocity_refusal(limits: VelocityLimits, recent: Recent) -> str | None:
    """The refusal "velocity_exceeded" if one more call to a phone number would go
    beyond ``limits`` (the calls are used up, or the minutes are), else None."""
    if limits.max_calls is not None and recent.calls >= limits.max_calls:
        return Detail.VELOCITY_EXCEEDED
    if limits.max_minutes is not None and recent.talk_seconds >= limits.max_minutes * 60:
        return Detail.VELOCITY_EXCEEDED
    return None
