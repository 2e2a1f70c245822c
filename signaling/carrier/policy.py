"""Carrier policy at call setup and end: who may call, for how long, and what it costs.

CarrierPolicy reads a number's subscription (operator, bundle, status), works
out the usage of the current period from the call records, decides at
invite time with `signaling.carrier.rating.authorize`, and at the end rates
the call and writes the operator's events in the same transaction as the
call record.

Calls to phone numbers also pass the toll-fraud guards (FraudRules and the
bundle's terms): the destination must be inside the bundle's allow-list and
outside the deployment's block list, and the subscriber's calls and talk
minutes to phone numbers in the last hour (call records plus calls in
progress) must be below the velocity limits. A refusal raises a fraud.alert
to the operator, at most one per subscriber and rule per hour.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from signaling.calls.records import CallRecord
from signaling.carrier import events
from signaling.carrier.rating import (
    VELOCITY_WINDOW,
    Bundle,
    CallKind,
    Decision,
    Increment,
    Recent,
    Usage,
    VelocityLimits,
    authorize,
    check_prefix,
    crossed_thresholds,
    destination_refusal,
    period_bounds,
    rated_seconds,
    talk_in_window,
    velocity_limits,
    velocity_refusal,
)
from signaling.config import Config
from signaling.store import cdrs, outbox, subscriptions
from signaling.store.database import Connection, Database, IntegrityError
from voice.audio.emodel import mos_from_r, r_factor
from wire.reasons import Detail, EndReason

__all__ = ["Admission", "CarrierPolicy", "FraudRules", "Subscription", "UsageReport"]

log = logging.getLogger("anruf.carrier")


@dataclass(frozen=True)
class Subscription:
    number: str
    operator_id: str
    bundle: Bundle
    status: str  # "active" or "suspended"
    activated_at: float

    @property
    def suspended(self) -> bool:
        return self.status != "active"


@dataclass(frozen=True)
class UsageReport:
    number: str
    bundle_id: str
    period_start: float
    period_end: float
    usage: Usage
    phone_minutes: int
    fair_use_minutes: int | None
    calls: int

    @property
    def billable_seconds_left(self) -> int:
        return max(0, self.phone_minutes * 60 - self.usage.billable_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "bundle_id": self.bundle_id,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "minutes_included": self.phone_minutes,
            "minutes_used": round(self.usage.billable_seconds / 60, 2),
            "minutes_left": round(self.billable_seconds_left / 60, 2),
            "seconds_used": self.usage.billable_seconds,
            "seconds_left": self.billable_seconds_left,
            "talk_seconds_all_calls": self.usage.total_seconds,
            "fair_use_minutes": self.fair_use_minutes,
            "calls": self.calls,
        }


def bundle_from_row(row: Any) -> Bundle:
    return Bundle(
        bundle_id=row["bundle_id"],
        app_calls_included=bool(row["app_calls_included"]),
        phone_minutes=row["phone_minutes"],
        increment=Increment(row["increment_first"], row["increment_next"]),
        period_seconds=row["period_seconds"],
        fair_use_minutes=row["fair_use_minutes"],
        allowed_destinations=tuple(p for p in (row["allowed_destinations"] or "").split(",") if p),
        max_phone_calls_per_hour=row["max_phone_calls_per_hour"],
        max_phone_minutes_per_hour=row["max_phone_minutes_per_hour"],
    )


#: End reasons of calls refused at setup: they never reached the network, so the
#: velocity limits do not count them.
_REFUSED_AT_SETUP = (EndReason.NOT_ALLOWED, EndReason.QUOTA_EXHAUSTED)

#: A call to a phone number admitted here counts against the velocity limits from
#: its admission; its live_calls row (written once the INVITE is out) takes over
#: within seconds, so the admission itself is remembered this long at most.
PENDING_SECONDS = 60.0


@dataclass(frozen=True)
class FraudRules:
    """The deployment's toll-fraud settings (the bundles add their own terms)."""

    #: E.164 prefixes no call may reach whatever the bundle (e.g. satellite networks;
    #: premium-rate numbers are refused by the numbering plan already).
    blocked_destinations: tuple[str, ...] = ()
    #: Velocity limits for bundles that set none of their own.
    default_limits: VelocityLimits = field(default_factory=VelocityLimits)

    def __post_init__(self) -> None:
        for prefix in self.blocked_destinations:
            check_prefix(prefix)

    @classmethod
    def from_config(cls, config: Config) -> FraudRules:
        """From the settings blocked_destinations, max_phone_calls_per_hour and
        max_phone_minutes_per_hour."""
        try:
            return cls(
                tuple(config.blocked_destinations),
                VelocityLimits(
                    config.max_phone_calls_per_hour or None,
                    config.max_phone_minutes_per_hour or None,
                ),
            )
        except ValueError as exc:
            raise ValueError(f"setting blocked_destinations: {exc}") from exc


@dataclass
class Admission:
    """The policy's decision for one call, and what the call tells the operators."""

    call_id: str
    caller: str
    callee: str
    kind: CallKind
    decision: Decision
    caller_subscription: Subscription | None = None
    callee_subscription: Subscription | None = None
    #: Per operator, the sequence of the call's last event.
    sequences: dict[str, int] = field(default_factory=dict)

    @property
    def operators(self) -> dict[str, list[str]]:
        """Operator id -> its subscribers among the call's parties."""
        found: dict[str, list[str]] = {}
        for sub in (self.caller_subscription, self.callee_subscription):
            if sub is not None:
                found.setdefault(sub.operator_id, []).append(sub.number)
        return found

    @property
    def billed_bundle(self) -> Bundle | None:
        sub = self.caller_subscription
        return sub.bundle if sub is not None else None


class CarrierPolicy:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        rules: FraudRules | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self.rules = rules if rules is not None else FraudRules()
        #: Number -> call id -> (order, time) of its calls to phone numbers admitted
        #: here and not yet in live_calls or the records: simultaneous calls of one
        #: subscriber count each other, in the order they were admitted.
        self._pending: dict[str, dict[str, tuple[int, float]]] = {}
        self._order = itertools.count()
        self._listeners: list[Callable[[], None]] = []

    def on_events(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after events were committed (the delivery worker wakes up)."""
        self._listeners.append(listener)

    def _committed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- registrations (signaling.identity.service.RegistrationHook) -------------

    async def device_added(self, conn: Connection, device: Any, other_devices: int) -> bool:
        """subscriber.verified: a number verified on a new device. A new device
        while others were active, or right after the last was signed out, is what
        a SIM swap looks like, so the operator sees the device count."""
        sub = await self.subscription(device.number, conn)
        if sub is None:
            return False  # nobody to tell: no wake-up of the delivery worker
        await events.append(
            conn,
            operator_id=sub.operator_id,
            type="subscriber.verified",
            ordering_key=device.number,
            now=self._clock(),
            data={
                "number": device.number,
                "device_id": device.device_id,
                "device_name": device.name,
                "verified_at": device.created_at,
                "other_active_devices": other_devices,
                "status": sub.status,
            },
        )
        return True

    def committed(self) -> None:
        """Events were committed (a call record, a registration): wake the delivery."""
        self._committed()

    # -- at call setup ---------------------------------------------------------

    async def admit(self, call_id: str, caller: str, callee: str, kind: CallKind) -> Admission:
        """May ``caller`` place this call now, and for how long?

        A number no operator provisioned calls app users as before, but no
        phone numbers: nobody would carry or bill them, so for it such a
        number is simply not reachable ("not_an_app_user").
        """
        caller_sub = await self.subscription(caller)
        callee_sub = await self.subscription(callee) if kind is CallKind.APP else None
        if caller_sub is None:
            decision = (
                Decision(True) if kind is CallKind.APP else Decision(False, Detail.NOT_AN_APP_USER)
            )
        else:
            report = await self.usage(caller_sub)
            decision = authorize(
                caller_sub.bundle, report.usage, kind, suspended=caller_sub.suspended
            )
            if decision.allowed and kind is CallKind.PHONE:
                refusal = await self._screen(call_id, caller_sub, callee)
                if refusal is not None:
                    decision = Decision(False, refusal, decision.billable)
        return Admission(call_id, caller, callee, kind, decision, caller_sub, callee_sub)

    # -- toll-fraud guards -------------------------------------------------------

    async def _screen(self, call_id: str, sub: Subscription, callee: str) -> str | None:
        """Why a call of ``sub`` to the phone number ``callee`` is refused, or None;
        a refusal raises a fraud.alert (at most one per rule and window)."""
        bundle = sub.bundle
        limits = velocity_limits(bundle, self.rules.default_limits)
        # Before any await: a call admitted at the same time sees this one.
        self._pending.setdefault(sub.number, {})[call_id] = (next(self._order), self._clock())
        rule = destination_refusal(
            callee, bundle.allowed_destinations, self.rules.blocked_destinations
        )
        recent: Recent | None = None
        if rule is None and (limits.max_calls is not None or limits.max_minutes is not None):
            recent = await self.recent_phone_calls(sub.number, before=call_id)
            rule = velocity_refusal(limits, recent)
        if rule is None:
            return None
        self._settled(sub.number, call_id)
        if recent is None:
            recent = await self.recent_phone_calls(sub.number)
        log.warning("call %s of %s to %s refused: %s", call_id, sub.number, callee, rule)
        await self._alert(sub, rule, callee, call_id, limits, recent)
        return rule

    def _settled(self, number: str, call_id: str) -> None:
        """The call was refused, or has its record: no longer pending."""
        pending = self._pending.get(number)
        if pending is not None:
            pending.pop(call_id, None)
            if not pending:
                del self._pending[number]

    def _pending_before(self, number: str, call_id: str | None, known: set[str], now: float) -> int:
        """Calls of ``number`` admitted here before ``call_id`` (all, for None)
        that are neither in live_calls nor in the records yet."""
        pending = self._pending.get(number)
        if not pending:
            return 0
        for stale in [c for c, (_, at) in pending.items() if now - at > PENDING_SECONDS]:
            del pending[stale]
        own = pending.get(call_id, (None, 0.0))[0] if call_id is not None else None
        count = sum(
            1
            for other, (order, _) in pending.items()
            if other != call_id and other not in known and (own is None or order < own)
        )
        if not pending:
            del self._pending[number]
        return count

    async def recent_phone_calls(
        self,
        number: str,
        now: float | None = None,
        conn: Connection | None = None,
        *,
        before: str | None = None,
    ) -> Recent:
        """``number``'s calls to phone numbers in the last VELOCITY_WINDOW seconds:
        those placed (not refused at setup) from the call records plus the calls in
        progress on any node (and those this node admitted before the call
        ``before`` that are not on record yet), and their talk time inside the window."""
        now = self._clock() if now is None else now
        since = now - VELOCITY_WINDOW
        async with contextlib.AsyncExitStack() as stack:
            reader = conn if conn is not None else await stack.enter_async_context(self._db.read())
            records = await cdrs.calls_of_kind_since(reader, number, CallKind.PHONE.value, since)
            in_progress = await cdrs.calls_in_progress_of(reader, number)
        placed = 0
        talk = 0.0
        known: set[str] = set()
        for call_id, invited_at, answered_at, ended_at, end_reason in records:
            known.add(call_id)
            if end_reason in _REFUSED_AT_SETUP and answered_at is None:
                continue
            placed += invited_at >= since
            talk += talk_in_window(answered_at, ended_at, since)
        for call_id, invited_at, answered_at, rating in in_progress:
            known.add(call_id)
            if (rating or {}).get("kind") != CallKind.PHONE.value:
                continue
            placed += invited_at >= since
            talk += talk_in_window(answered_at, max(now, answered_at or now), since)
        placed += self._pending_before(number, before, known, now)
        return Recent(placed, talk)

    async def _alert(
        self,
        sub: Subscription,
        rule: str,
        destination: str,
        call_id: str,
        limits: VelocityLimits,
        recent: Recent,
    ) -> bool:
        """fraud.alert to the subscriber's operator, unless one for this rule went
        out in the last window; True if one was written."""
        now = self._clock()
        try:
            async with self._db.transaction() as conn:
                if await self._alerted(conn, sub, rule, now):
                    return False
                await events.append(
                    conn,
                    operator_id=sub.operator_id,
                    type="fraud.alert",
                    ordering_key=sub.number,
                    now=now,
                    data={
                        "number": sub.number,
                        "rule": rule,
                        "destination": destination,
                        "call_id": call_id,
                        "bundle_id": sub.bundle.bundle_id,
                        "at": round(now, 3),
                        "window_seconds": VELOCITY_WINDOW,
                        "limits": limits.as_dict(),
                        "counts": recent.as_dict(),
                        "allowed_destinations": list(sub.bundle.allowed_destinations),
                    },
                )
        except IntegrityError:
            # Another node wrote an event of this number at the same moment (the
            # sequence is taken): that node's alert, or the next refusal's, tells.
            log.info("fraud alert for %s (%s) not written: concurrent event", sub.number, rule)
            return False
        self._committed()
        return True

    async def _alerted(self, conn: Connection, sub: Subscription, rule: str, now: float) -> bool:
        """Was a fraud.alert for ``rule`` raised for this number in the last window?"""
        return await outbox.alert_raised(
            conn, sub.operator_id, sub.number, rule, now - VELOCITY_WINDOW
        )

    async def admit_inbound(self, call_id: str, caller: str, callee: str) -> Admission:
        """A call from the phone network to an app user: free for the callee, and
        reported to the callee's operator."""
        callee_sub = await self.subscription(callee)
        return Admission(call_id, caller, callee, CallKind.PHONE, Decision(True), None, callee_sub)

    async def restore(
        self, call_id: str, caller: str, callee: str, rating: dict[str, Any]
    ) -> Admission:
        """The admission of a call whose node died (from its live_calls row), so the
        call can still be rated and reported; its events go after the ones sent."""
        decision = Decision(**rating.get("decision", {"allowed": True}))
        caller_sub = await self.subscription(caller) if rating.get("caller_subscribed") else None
        callee_sub = await self.subscription(callee) if rating.get("callee_subscribed") else None
        admission = Admission(
            call_id,
            caller,
            callee,
            CallKind(rating.get("kind", CallKind.APP.value)),
            decision,
            caller_sub,
            callee_sub,
        )
        async with self._db.read() as conn:
            for operator_id in admission.operators:
                last = await outbox.last_sequence(conn, operator_id, call_id)
                admission.sequences[operator_id] = last
        return admission

    # -- events ----------------------------------------------------------------

    async def call_event(self, admission: Admission, type: str, **data: Any) -> None:
        """Tell every operator with a subscriber on this call (committed, then sent)."""
        operators = admission.operators
        if not operators:
            return
        now = self._clock()
        async with self._db.transaction() as conn:
            await self._append_call_events(conn, admission, type, now, data)
        self._committed()

    async def _append_call_events(
        self,
        conn: Connection,
        admission: Admission,
        type: str,
        now: float,
        data: dict[str, Any],
    ) -> None:
        for operator_id, numbers in admission.operators.items():
            sequence = admission.sequences.get(operator_id, 0) + 1
            admission.sequences[operator_id] = sequence
            await events.append(
                conn,
                operator_id=operator_id,
                type=type,
                ordering_key=admission.call_id,
                sequence=sequence,
                now=now,
                data={
                    "call_id": admission.call_id,
                    "caller": admission.caller,
                    "callee": admission.callee,
                    "kind": admission.kind.value,
                    "subscribers": numbers,
                    "at": round(now, 3),
                    **data,
                },
            )

    # -- at the end --------------------------------------------------------------

    def rate(self, admission: Admission | None, record: CallRecord) -> CallRecord:
        """The record with its rating: operator, bundle, kind, billable, rated seconds."""
        if admission is None:
            return record
        sub = admission.caller_subscription
        if sub is not None and admission.kind is CallKind.PHONE:
            self._settled(sub.number, admission.call_id)
        billable = admission.decision.billable
        if sub is None:
            seconds = math.ceil(record.duration)
        elif billable:
            seconds = rated_seconds(record.duration, sub.bundle.increment)
            limit = admission.decision.max_seconds
            if limit is not None:
                # A call cut at its limit ends a few milliseconds late (timer and
                # teardown): that is ours, not the subscriber's.
                seconds = min(seconds, limit)
        else:
            seconds = math.ceil(record.duration)
        return record.rated(
            operator_id=None if sub is None else sub.operator_id,
            bundle_id=None if sub is None else sub.bundle.bundle_id,
            kind=admission.kind.value,
            billable=billable and sub is not None,
            rated_seconds=seconds,
        )

    def recorder(
        self, admission: Admission | None, record: CallRecord
    ) -> Callable[[Connection], Any] | None:
        """What to write with the call record, in its transaction: call.ended to
        the operators, and usage.threshold when the call crossed one."""
        if admission is None or not admission.operators:
            return None

        async def write(conn: Connection) -> None:
            now = self._clock()
            await self._append_call_events(conn, admission, "call.ended", now, cdr_data(record))
            sub = admission.caller_subscription
            if sub is not None and record.billable and record.rated_seconds > 0:
                await self._thresholds(conn, sub, record, now)

        return write

    async def _thresholds(
        self, conn: Connection, sub: Subscription, record: CallRecord, now: float
    ) -> None:
        report = await self.usage(sub, now=record.ended_at, conn=conn)
        after = report.usage.billable_seconds
        before = after - record.rated_seconds
        for percent in crossed_thresholds(sub.bundle, before, after):
            if await subscriptions.threshold_raised(conn, sub.number, report.period_start, percent):
                continue
            await subscriptions.add_threshold(conn, sub.number, report.period_start, percent, now)
            await events.append(
                conn,
                operator_id=sub.operator_id,
                type="usage.threshold",
                ordering_key=sub.number,
                now=now,
                data={"number": sub.number, "percent": percent, "usage": report.as_dict()},
            )
            log.info("usage of %s crossed %d %%", sub.number, percent)

    async def subscription(
        self, number: str, conn: Connection | None = None
    ) -> Subscription | None:
        """The number's subscription, or None if no operator provisioned it."""
        if conn is None:
            async with self._db.read() as reader:
                found = await subscriptions.subscription(reader, number)
        else:
            found = await subscriptions.subscription(conn, number)
        if found is None:
            return None
        subscriber, bundle = found
        return Subscription(
            number=number,
            operator_id=subscriber["operator_id"],
            bundle=bundle_from_row(bundle),
            status=subscriber["status"],
            activated_at=subscriber["activated_at"],
        )

    async def usage(
        self,
        subscription: Subscription,
        now: float | None = None,
        conn: Connection | None = None,
    ) -> UsageReport:
        """Usage of the subscription's current period, from the call records."""
        now = self._clock() if now is None else now
        bundle = subscription.bundle
        start, end = period_bounds(subscription.activated_at, now, bundle.period_seconds)
        if conn is None:
            async with self._db.read() as reader:
                totals = await cdrs.usage_totals(reader, subscription.number, start, end)
        else:
            totals = await cdrs.usage_totals(conn, subscription.number, start, end)
        billable, total, count = totals
        return UsageReport(
            number=subscription.number,
            bundle_id=bundle.bundle_id,
            period_start=start,
            period_end=end,
            usage=Usage(int(billable), int(total)),
            phone_minutes=bundle.phone_minutes,
            fair_use_minutes=bundle.fair_use_minutes,
            calls=int(count),
        )


def leg_quality(stats: dict[str, Any]) -> dict[str, Any]:
    """A leg's figures for the operator: loss, jitter, RTT and an E-model MOS."""
    received = int(stats.get("packets_received", 0))
    lost = max(0, int(stats.get("packets_lost", 0)))
    expected = received + lost
    loss = lost / expected if expected else 0.0
    jitter = float(stats.get("jitter_ms", 0.0) or 0.0)
    rtt = stats.get("rtt_ms")
    one_way = float(rtt) / 2 if rtt is not None else 0.0
    mos = mos_from_r(r_factor(one_way, loss, jitter)) if received else None
    return {
        "packets_received": received,
        "packets_sent": int(stats.get("packets_sent", 0)),
        "packets_lost": lost,
        "loss_percent": round(100 * loss, 2),
        "jitter_ms": round(jitter, 2),
        "rtt_ms": rtt,
        "mos": None if mos is None else round(mos, 2),
    }


def cdr_data(record: CallRecord) -> dict[str, Any]:
    """The call detail record as the operator receives it in call.ended."""
    return {
        "invited_at": record.invited_at,
        "ringing_at": record.ringing_at,
        "answered_at": record.answered_at,
        "ended_at": record.ended_at,
        "duration": round(record.duration, 3),
        "end_reason": record.end_reason,
        "end_detail": record.end_detail,
        "bundle_id": record.bundle_id,
        "billable": record.billable,
        "rated_seconds": record.rated_seconds,
        "rated_minutes": round(record.rated_seconds / 60, 2),
        "legs": {name: leg_quality(stats) for name, stats in record.media.items()},
    }
