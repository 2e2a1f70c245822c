"""CallService without sockets: fakes of its Protocols (relay, presence, directory,
records, live calls, operator policy, trunk) and a hand-driven clock and timer.

Every end reason is reached, with its details, as a device would see it
(``call.ended``), as the record keeps it and, for calls with the phone network,
as the network hears it (CANCEL, BYE or a final response).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

import wire
from signaling.calls.live import LiveCall
from signaling.calls.records import CallRecord
from signaling.calls.service import CallService
from signaling.carrier.policy import Admission
from signaling.carrier.rating import CallKind, Decision
from signaling.identity.numbers import InvalidNumber
from signaling.identity.service import InvalidNumberError
from signaling.metrics import Metrics
from signaling.sip.trunk import Answered, CallEvent, Progress, TrunkUnavailable
from signaling.sip.trunk import Ended as NetworkEnded
from voice.relay.api import LegStats, NoOpusError, RelayUnavailable

ALICE = "+4917700000001"
BOB = "+4917700000002"
CAROL = "+4930555000100"  # a phone number without the app
START = 1_700_000_000.0
RING_TIMEOUT = 45.0
GRACE = 10.0


# Fakes ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeTimer:
    due: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.pending: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self._clock.now + max(0.0, delay), callback)
        self.pending.append(timer)
        return timer

    def armed(self) -> list[float]:
        return sorted(t.due for t in self.pending if not t.cancelled)


class FakePresence:
    node_id = "node-1"

    def __init__(self) -> None:
        self.connected: dict[str, str] = {}  # device id -> number
        self.inbox: dict[str, list[dict[str, Any]]] = {}
        self.busy_numbers: set[str] = set()
        self.calls: dict[str, tuple[str, ...]] = {}
        self.ended_calls: list[str] = []

    async def send(self, device_id: str, text: str) -> bool:
        if device_id not in self.connected:
            return False
        self.inbox.setdefault(device_id, []).append(json.loads(text))
        return True

    async def online(self, device_id: str) -> bool:
        return device_id in self.connected

    async def devices(self, number: str) -> list[str]:
        return sorted(d for d, n in self.connected.items() if n == number)

    async def busy(self, number: str) -> bool:
        return number in self.busy_numbers

    async def call_started(self, call_id: str, numbers: tuple[str, ...]) -> None:
        self.calls[call_id] = numbers

    async def call_ended(self, call_id: str, numbers: tuple[str, ...]) -> None:
        assert self.calls.pop(call_id, numbers) == numbers
        self.ended_calls.append(call_id)


class FakeRelay:
    def __init__(self) -> None:
        self.failures: dict[str, Exception] = {}
        self.open_legs: set[str] = set()
        self.closed: list[str] = []
        self.bridges: list[tuple[str, str]] = []
        self.ringback: list[str] = []
        self.notices: list[str] = []
        self.dtmf: list[tuple[str, str]] = []

    def _check(self, op: str) -> None:
        failure = self.failures.get(op)
        if failure is not None:
            raise failure

    async def answer(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        self._check("answer")
        self.open_legs.add(leg_id)
        return f"answer for {leg_id}"

    async def offer(self, leg_id: str, *, call_id: str = "") -> str:
        self._check("offer")
        self.open_legs.add(leg_id)
        return f"offer for {leg_id}"

    async def accept_answer(self, leg_id: str, answer_sdp: str) -> None:
        self._check("accept_answer")

    def start_ringback(self, leg_id: str) -> None:
        self.ringback.append(leg_id)

    def play_notice(self, leg_id: str) -> None:
        self.notices.append(leg_id)

    def send_dtmf(self, leg_id: str, digits: str) -> None:
        self.dtmf.append((leg_id, digits))

    async def offer_rtp(self, leg_id: str, *, call_id: str = "") -> str:
        self._check("offer_rtp")
        self.open_legs.add(leg_id)
        return "rtp offer"

    async def answer_rtp(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        self._check("answer_rtp")
        self.open_legs.add(leg_id)
        return "rtp answer"

    async def accept_rtp_answer(self, leg_id: str, answer_sdp: str) -> None:
        self._check("accept_rtp_answer")

    async def update_rtp(self, leg_id: str, offer_sdp: str) -> str:
        self._check("update_rtp")
        return "rtp answer again"

    def bridge(self, a: str, b: str) -> None:
        self.bridges.append((a, b))

    async def close_leg(self, leg_id: str) -> LegStats:
        self.open_legs.discard(leg_id)
        self.closed.append(leg_id)
        return LegStats(packets_received=100, packets_sent=100)


class FakeDirectory:
    def __init__(self) -> None:
        self.registered = {ALICE, BOB}

    def normalise(self, raw: str, region: str | None = None) -> str:
        if not raw.startswith("+"):
            raise InvalidNumberError(InvalidNumber("not_a_number", "not a phone number"))
        return raw

    async def is_registered(self, number: str) -> bool:
        return number in self.registered


class FakeRecords:
    def __init__(self) -> None:
        self.saved: list[CallRecord] = []

    async def save(
        self, record: CallRecord, also: Callable[[Any], Awaitable[None]] | None = None
    ) -> None:
        self.saved.append(record)
        if also is not None:
            await also("connection")


class FakeLiveStore:
    def __init__(self) -> None:
        self.rows: dict[str, LiveCall] = {}

    async def ringing(self, call: LiveCall) -> None:
        self.rows[call.call_id] = call

    async def answered(self, call_id: str, device_id: str, answered_at: float) -> None:
        row = self.rows[call_id]
        self.rows[call_id] = replace(
            row, callee_device=device_id, answered_at=answered_at, devices=(device_id,)
        )

    async def remove(self, conn: Any, call_id: str) -> None:
        assert conn == "connection"  # in the record's transaction
        self.rows.pop(call_id, None)

    async def of_node(self, node_id: str) -> list[LiveCall]:
        return [row for row in self.rows.values() if row.node_id == node_id]


class FakePolicy:
    def __init__(self, decision: Decision | None = None) -> None:
        self.decision = decision or Decision(True, billable=True)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.commits = 0

    async def admit(self, call_id: str, caller: str, callee: str, kind: CallKind) -> Admission:
        return Admission(call_id, caller, callee, kind, self.decision)

    async def admit_inbound(self, call_id: str, caller: str, callee: str) -> Admission:
        return Admission(call_id, caller, callee, CallKind.PHONE, Decision(True))

    async def restore(
        self, call_id: str, caller: str, callee: str, rating: dict[str, Any]
    ) -> Admission:
        kind = CallKind(rating["kind"])
        return Admission(call_id, caller, callee, kind, Decision(**rating["decision"]))

    async def call_event(self, admission: Admission, type: str, **data: Any) -> None:
        self.events.append((type, data))

    def rate(self, admission: Admission | None, record: CallRecord) -> CallRecord:
        if admission is None:
            return record
        return record.rated(kind=admission.kind.value, billable=admission.decision.billable)

    def recorder(
        self, admission: Admission | None, record: CallRecord
    ) -> Callable[[Any], Awaitable[None]] | None:
        async def write(conn: Any) -> None:
            self.events.append(("call.ended", {"reason": record.end_reason}))

        return write

    def committed(self) -> None:
        self.commits += 1


@dataclass
class FakeOutbound:
    to_number: str
    from_number: str
    sdp: str
    on_event: Callable[[CallEvent], None]
    on_reoffer: Callable[[str], Awaitable[str]] | None = None
    cancelled: list[str] = field(default_factory=list)
    byes: list[str] = field(default_factory=list)

    async def cancel(self, reason: str = "") -> None:
        self.cancelled.append(reason)

    async def bye(self, reason: str = "") -> None:
        self.byes.append(reason)


class FakeTrunk:
    def __init__(self) -> None:
        self.up = True
        self.refuse = False
        self.calls: list[FakeOutbound] = []

    async def invite(
        self, *, to_number: str, from_number: str, sdp: str, on_event: Callable[[Any], None]
    ) -> FakeOutbound:
        if self.refuse:
            raise TrunkUnavailable("over the trunk's call limit")
        call = FakeOutbound(to_number, from_number, sdp, on_event)
        self.calls.append(call)
        return call


@dataclass
class FakeInbound:
    from_number: str = CAROL
    to_number: str = BOB
    offer_sdp: str = "network offer"
    on_reoffer: Callable[[str], Awaitable[str]] | None = None
    on_event: Callable[[CallEvent], None] | None = None
    progressed: list[int] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str, int | None]] = field(default_factory=list)
    byes: list[str] = field(default_factory=list)

    async def progress(self, status: int = 180, sdp: str | None = None) -> None:
        self.progressed.append(status)

    async def answer(self, sdp: str) -> None:
        self.answered.append(sdp)

    async def reject(
        self, status: int, reason: str = "", *, retry_after: int | None = None
    ) -> None:
        self.rejected.append((status, reason, retry_after))

    async def bye(self, reason: str = "") -> None:
        self.byes.append(reason)


# The world around one CallService ---------------------------------------------------


class World:
    def __init__(self, *, policy: FakePolicy | None = None, trunk: bool = False) -> None:
        self.clock = Clock()
        self.timers = FakeTimers(self.clock)
        self.presence = FakePresence()
        self.relay = FakeRelay()
        self.directory = FakeDirectory()
        self.records = FakeRecords()
        self.live = FakeLiveStore()
        self.policy = policy
        self.trunk = FakeTrunk() if trunk else None
        self.metrics = Metrics()
        self.service = CallService(
            presence=self.presence,
            relay=self.relay,
            directory=self.directory,
            records=self.records,
            metrics=self.metrics,
            ring_timeout=RING_TIMEOUT,
            reconnect_grace=GRACE,
            policy=policy,
            trunk=self.trunk,
            live=self.live,
            clock=self.clock,
            timers=self.timers,
        )
        self._ids = 0

    def _ref(self) -> str:
        self._ids += 1
        return f"m{self._ids}"

    # devices

    def connect(self, device_id: str, number: str) -> None:
        self.presence.connected[device_id] = number
        self.service.device_connected(device_id)

    def disconnect(self, device_id: str) -> None:
        self.presence.connected.pop(device_id, None)
        self.service.device_disconnected(device_id)

    def inbox(self, device_id: str, type: str | None = None) -> list[dict[str, Any]]:
        messages = self.presence.inbox.get(device_id, [])
        return [m for m in messages if type is None or m["type"] == type]

    def last(self, device_id: str, type: str) -> dict[str, Any]:
        found = self.inbox(device_id, type)
        assert found, f"{device_id} got no {type}: {self.inbox(device_id)}"
        return found[-1]

    def ended(self, device_id: str) -> tuple[str, str]:
        message = self.last(device_id, "call.ended")
        return message["reason"], message["detail"]

    def record(self) -> CallRecord:
        (record,) = self.records.saved
        return record

    # requests

    async def invite(self, device_id: str = "alice-phone", to: str = BOB) -> str:
        await self.service.invite(
            device_id, ALICE, wire.CallInvite(self._ref(), to, "caller offer", None)
        )
        await self.service.settle()
        message = self.inbox(device_id)[-1]
        return str(message.get("call_id", ""))

    async def accept(self, device_id: str, call_id: str) -> None:
        await self.service.accept(device_id, wire.CallAccept(self._ref(), call_id, "answer"))

    async def reject(self, device_id: str, call_id: str) -> None:
        await self.service.reject(device_id, wire.CallReject(self._ref(), call_id))

    async def hangup(self, device_id: str, call_id: str) -> None:
        await self.service.hangup(device_id, wire.CallHangup(self._ref(), call_id))

    async def renegotiate(self, device_id: str, call_id: str) -> None:
        await self.service.renegotiate(
            device_id, wire.CallRenegotiate(self._ref(), call_id, "new offer")
        )

    # time

    async def advance(self, seconds: float) -> None:
        """Move the clock on, firing each timer that falls due on the way, in order."""
        target = self.clock.now + seconds
        while True:
            due = [t for t in self.timers.pending if not t.cancelled and t.due <= target]
            if not due:
                break
            timer = min(due, key=lambda t: t.due)
            self.timers.pending.remove(timer)
            self.clock.now = max(self.clock.now, timer.due)
            timer.callback()
            await self.service.settle()
        self.clock.now = target

    async def network(self, event: CallEvent, call: FakeOutbound | FakeInbound) -> None:
        assert call.on_event is not None
        call.on_event(event)
        await self.service.settle()


@pytest.fixture
def world() -> World:
    w = World()
    w.connect("alice-phone", ALICE)
    w.connect("bob-phone", BOB)
    w.connect("bob-tablet", BOB)
    return w


async def ringing_call(world: World) -> str:
    call_id = await world.invite()
    assert world.last("alice-phone", "call.ringing")["call_id"] == call_id
    return call_id


async def connected_call(world: World, answering: str = "bob-phone") -> str:
    call_id = await ringing_call(world)
    await world.accept(answering, call_id)
    return call_id


def assert_idle(world: World) -> None:
    assert world.service.active_calls == 0 and world.service.idle.is_set()
    assert world.relay.open_legs == set()
    assert world.timers.armed() == []
    assert world.live.rows == {}
    assert world.presence.calls == {}


# App calls: refused before they ring -----------------------------------------------


async def test_an_overloaded_node_refuses_at_once_without_a_record(world: World) -> None:
    world.service.admission = lambda calls, kind: "too many calls"
    await world.invite()
    assert world.ended("alice-phone") == ("failed", "overloaded")
    assert world.records.saved == [] and world.relay.open_legs == set()


@pytest.mark.parametrize(
    ("to", "code"),
    [("0170 nonsense", "invalid_number"), (ALICE, "self_call")],
)
async def test_numbers_that_cannot_be_called_are_errors(world: World, to: str, code: str) -> None:
    await world.invite(to=to)
    assert world.last("alice-phone", "error")["code"] == code
    assert world.records.saved == []


async def test_a_device_in_a_call_cannot_place_another(world: World) -> None:
    await ringing_call(world)
    await world.invite(to=CAROL)
    assert world.last("alice-phone", "error")["code"] == "invalid_state"


async def test_a_draining_node_takes_no_new_call(world: World) -> None:
    world.service.draining = True
    await world.invite()
    assert world.last("alice-phone", "error")["code"] == "draining"


async def test_a_callee_in_another_call_is_busy(world: World) -> None:
    world.presence.busy_numbers.add(BOB)
    await world.invite()
    assert world.ended("alice-phone") == ("busy", "")
    assert world.record().end_reason == "busy"
    assert world.inbox("bob-phone") == []
    assert_idle(world)


async def test_a_callee_with_no_device_online_is_unavailable(world: World) -> None:
    world.disconnect("bob-phone")
    world.disconnect("bob-tablet")
    await world.invite()
    assert world.ended("alice-phone") == ("unavailable", "no_device_online")
    assert_idle(world)


async def test_a_phone_number_without_a_trunk_is_not_an_app_user(world: World) -> None:
    await world.invite(to=CAROL)
    assert world.ended("alice-phone") == ("unavailable", "not_an_app_user")
    assert world.record().end_detail == "not_an_app_user"


@pytest.mark.parametrize(
    ("refusal", "ended"),
    [
        ("quota_exhausted", ("quota_exhausted", "quota_exhausted")),
        ("fair_use_exceeded", ("quota_exhausted", "fair_use_exceeded")),
        ("not_an_app_user", ("unavailable", "not_an_app_user")),
        ("subscriber_suspended", ("not_allowed", "subscriber_suspended")),
        ("destination_blocked", ("not_allowed", "destination_blocked")),
    ],
)
async def test_the_operator_policy_refuses(refusal: str, ended: tuple[str, str]) -> None:
    policy = FakePolicy(Decision(False, refusal))
    world = World(policy=policy)
    world.connect("alice-phone", ALICE)
    world.connect("bob-phone", BOB)
    await world.invite()
    assert world.ended("alice-phone") == ended
    assert world.inbox("bob-phone") == []
    record = world.record()
    assert (record.end_reason, record.end_detail) == ended
    assert [t for t, _ in policy.events] == ["call.started", "call.ended"]
    assert_idle(world)


@pytest.mark.parametrize(
    ("failure", "detail"),
    [
        (NoOpusError("no Opus"), "no_opus_in_offer"),
        (ValueError("not SDP"), "bad_sdp"),
        (RelayUnavailable("no relay worker"), "relay_unavailable"),
    ],
)
async def test_the_relay_cannot_answer_the_callers_offer(
    world: World, failure: Exception, detail: str
) -> None:
    world.relay.failures["answer"] = failure
    await world.invite()
    assert world.ended("alice-phone") == ("failed", detail)
    assert world.inbox("alice-phone", "call.progress") == []
    assert world.inbox("bob-phone") == []
    assert_idle(world)


async def test_a_relay_outage_while_offering_the_callee_is_relay_unavailable(
    world: World,
) -> None:
    world.relay.failures["offer"] = RelayUnavailable("the relay host is gone")
    await world.invite()
    assert world.ended("alice-phone") == ("failed", "relay_unavailable")
    assert world.inbox("bob-phone") == []
    assert_idle(world)


async def test_devices_offered_the_call_before_the_relay_went_out_hear_it_end(
    world: World,
) -> None:
    offer = world.relay.offer

    async def first_only(leg_id: str, *, call_id: str = "") -> str:
        if leg_id.endswith("bob-tablet"):
            raise RelayUnavailable("the relay host is gone")
        return await offer(leg_id)

    world.relay.offer = first_only  # type: ignore[method-assign]
    await world.invite()
    assert world.last("bob-phone", "call.incoming")
    assert world.ended("bob-phone") == ("failed", "relay_unavailable")
    assert world.ended("alice-phone") == ("failed", "relay_unavailable")
    assert world.inbox("bob-tablet") == []
    assert_idle(world)


async def test_a_device_the_relay_cannot_offer_is_left_out(world: World) -> None:
    world.relay.failures["offer"] = RuntimeError("one leg failed")
    await world.invite()
    assert world.ended("alice-phone") == ("unavailable", "no_device_online")


# App calls: ringing and after --------------------------------------------------------


async def test_a_call_rings_every_device_and_the_first_accept_wins(world: World) -> None:
    call_id = await ringing_call(world)
    progress = world.last("alice-phone", "call.progress")
    assert progress["sdp"] == f"answer for {call_id}:alice-phone"
    assert world.relay.ringback == [f"{call_id}:alice-phone"]
    for device in ("bob-phone", "bob-tablet"):
        incoming = world.last(device, "call.incoming")
        assert incoming["from"] == ALICE and incoming["phone_network"] is False
    assert world.live.rows[call_id].devices == ("alice-phone", "bob-phone", "bob-tablet")
    assert world.timers.armed() == [START + RING_TIMEOUT]  # one timer: the ring timeout

    await world.accept("bob-tablet", call_id)
    assert world.ended("bob-phone") == ("answered_elsewhere", "")
    accepted = world.last("alice-phone", "call.accepted")
    assert accepted["device_id"] == "bob-tablet"
    assert world.relay.bridges == [(f"{call_id}:alice-phone", f"{call_id}:bob-tablet")]
    assert world.live.rows[call_id].callee_device == "bob-tablet"
    assert world.timers.armed() == []  # no limit: nothing is timed

    world.clock.now += 30
    await world.hangup("alice-phone", call_id)
    assert world.ended("alice-phone") == ("completed", "")
    assert world.ended("bob-tablet") == ("completed", "")
    record = world.record()
    assert record.callee_device == "bob-tablet" and record.duration == 30
    assert set(record.media) == {"caller", "callee"}
    assert_idle(world)


async def test_one_decline_declines_the_call_for_everyone(world: World) -> None:
    call_id = await ringing_call(world)
    await world.reject("bob-phone", call_id)
    assert world.ended("alice-phone") == ("declined", "")
    assert world.ended("bob-phone") == ("declined", "")
    assert world.ended("bob-tablet") == ("declined_elsewhere", "")
    assert_idle(world)


async def test_the_caller_hanging_up_while_it_rings_cancels(world: World) -> None:
    call_id = await ringing_call(world)
    await world.hangup("alice-phone", call_id)
    assert world.ended("bob-phone") == ("cancelled", "")
    assert world.ended("bob-tablet") == ("cancelled", "")
    assert world.record().end_reason == "cancelled"
    assert_idle(world)


async def test_nobody_answering_is_no_answer_at_the_ring_timeout(world: World) -> None:
    call_id = await ringing_call(world)
    await world.advance(RING_TIMEOUT - 1)
    assert world.service.holds(call_id)
    await world.advance(1)
    assert world.ended("alice-phone") == ("no_answer", "")
    assert world.ended("bob-phone") == ("no_answer", "")
    assert world.record().ended_at == START + RING_TIMEOUT
    assert_idle(world)


async def test_requests_in_the_wrong_state_are_errors(world: World) -> None:
    call_id = await connected_call(world)
    await world.accept("bob-phone", call_id)
    assert world.last("bob-phone", "error")["code"] == "invalid_state"
    await world.hangup("bob-tablet", call_id)  # answered elsewhere: no longer in the call
    assert world.last("bob-tablet", "error")["code"] == "call_not_found"
    await world.hangup("alice-phone", "no-such-call")
    assert world.last("alice-phone", "error")["code"] == "call_not_found"
    dtmf = wire.CallDtmf("m9", call_id, "1")
    await world.service.dtmf("alice-phone", dtmf)
    assert world.last("alice-phone", "error")["code"] == "invalid_state"


async def test_an_unusable_answer_fails_the_call(world: World) -> None:
    call_id = await ringing_call(world)
    world.relay.failures["accept_answer"] = ValueError("no fingerprint")
    await world.accept("bob-phone", call_id)
    assert world.last("bob-phone", "error")["code"] == "bad_sdp"
    assert world.ended("alice-phone") == ("failed", "bad_sdp_in_answer")
    assert_idle(world)


async def test_a_relay_outage_on_accept_is_relay_unavailable_not_bad_sdp(world: World) -> None:
    call_id = await ringing_call(world)
    world.relay.failures["accept_answer"] = RelayUnavailable("the worker did not answer")
    await world.accept("bob-phone", call_id)
    assert world.inbox("bob-phone", "error") == []
    assert world.ended("alice-phone") == ("failed", "relay_unavailable")
    assert world.ended("bob-phone") == ("failed", "relay_unavailable")
    assert_idle(world)


async def test_a_failed_leg_fails_the_call_with_the_media_detail(world: World) -> None:
    call_id = await connected_call(world)
    world.service.leg_failed(f"{call_id}:bob-phone", "consent_expired")
    await world.service.settle()
    assert world.ended("alice-phone") == ("failed", "media:consent_expired")
    assert world.record().end_detail == "media:consent_expired"
    assert_idle(world)


async def test_a_ringing_device_whose_leg_fails_stops_ringing(world: World) -> None:
    call_id = await ringing_call(world)
    world.disconnect("bob-tablet")
    await world.service.settle()
    world.service.leg_failed(f"{call_id}:bob-phone", "ice_failed")
    world.presence.connected.pop("bob-phone")
    await world.service.settle()
    assert world.ended("alice-phone") == ("unavailable", "callee_connection_lost")


async def test_the_server_stopping_ends_every_call_on_record(world: World) -> None:
    await connected_call(world)
    await world.service.shutdown()
    assert world.ended("alice-phone") == ("failed", "server_shutdown")
    assert world.ended("bob-phone") == ("failed", "server_shutdown")
    assert world.record().end_detail == "server_shutdown"
    assert_idle(world)


# Devices that go away -----------------------------------------------------------


async def test_the_only_ringing_device_leaving_is_unavailable(world: World) -> None:
    world.disconnect("bob-tablet")
    call_id = await ringing_call(world)
    assert world.service.holds(call_id)
    world.disconnect("bob-phone")
    await world.service.settle()
    assert world.ended("alice-phone") == ("unavailable", "callee_connection_lost")
    assert_idle(world)


async def test_a_caller_gone_beyond_the_grace_period_cancels(world: World) -> None:
    await ringing_call(world)
    world.disconnect("alice-phone")
    await world.advance(GRACE - 1)
    assert world.inbox("bob-phone", "call.ended") == []
    await world.advance(1)
    assert world.ended("bob-phone") == ("cancelled", "caller_connection_lost")
    assert_idle(world)


async def test_a_talker_gone_beyond_the_grace_period_fails_the_call(world: World) -> None:
    await connected_call(world)
    world.disconnect("bob-phone")
    await world.advance(GRACE)
    assert world.ended("alice-phone") == ("failed", "connection_lost")
    assert_idle(world)


async def test_a_device_back_within_the_grace_period_gets_what_it_missed_in_order(
    world: World,
) -> None:
    call_id = await ringing_call(world)
    world.disconnect("alice-phone")
    await world.accept("bob-phone", call_id)  # while the caller is away
    await world.advance(GRACE / 2)
    world.connect("alice-phone", ALICE)
    await world.service.settle()
    types = [m["type"] for m in world.inbox("alice-phone")]
    assert types[-2:] == ["call.accepted", "call.state"]
    assert world.last("alice-phone", "call.state")["state"] == "connected"
    await world.advance(GRACE)  # the grace timer was cancelled: the call goes on
    assert world.service.holds(call_id)


async def test_a_device_back_on_another_node_is_not_lost(world: World) -> None:
    call_id = await connected_call(world)
    world.disconnect("bob-phone")
    world.presence.connected["bob-phone"] = BOB  # its "connected" news has not come yet
    await world.advance(GRACE)
    assert world.service.holds(call_id)


# Renegotiation -------------------------------------------------------------------


async def test_a_talker_moves_to_a_new_leg_bridged_to_the_other(world: World) -> None:
    call_id = await connected_call(world)
    await world.renegotiate("bob-phone", call_id)
    renegotiated = world.last("bob-phone", "call.renegotiated")
    new_leg = f"{call_id}:bob-phone~"
    assert renegotiated["sdp"].startswith(f"answer for {new_leg}")
    assert world.relay.bridges[-1][0].startswith(new_leg)
    assert world.relay.bridges[-1][1] == f"{call_id}:alice-phone"
    assert f"{call_id}:bob-phone" in world.relay.closed
    await world.hangup("bob-phone", call_id)
    assert world.record().media["callee"]["packets_received"] == 200  # both legs count
    assert_idle(world)


async def test_a_caller_moves_to_a_new_leg_while_it_rings_and_hears_ringback(
    world: World,
) -> None:
    call_id = await ringing_call(world)
    await world.renegotiate("alice-phone", call_id)
    assert world.relay.ringback[-1].startswith(f"{call_id}:alice-phone~")
    await world.renegotiate("bob-phone", call_id)  # a ringing callee may not
    assert world.last("bob-phone", "error")["code"] == "invalid_state"


async def test_an_unusable_new_offer_keeps_the_old_leg(world: World) -> None:
    call_id = await connected_call(world)
    world.relay.failures["answer"] = ValueError("no ICE")
    await world.renegotiate("alice-phone", call_id)
    assert world.last("alice-phone", "error")["code"] == "bad_sdp"
    assert world.service.holds(call_id) and f"{call_id}:alice-phone" in world.relay.open_legs


async def test_a_relay_outage_on_renegotiation_is_relay_unavailable(world: World) -> None:
    call_id = await connected_call(world)
    world.relay.failures["answer"] = RelayUnavailable("no relay host")
    await world.renegotiate("alice-phone", call_id)
    assert world.inbox("alice-phone", "error") == []
    assert world.ended("alice-phone") == ("failed", "relay_unavailable")
    assert world.ended("bob-phone") == ("failed", "relay_unavailable")
    assert_idle(world)


# The caller's bundle -----------------------------------------------------------------


async def test_the_caller_is_warned_a_minute_before_the_bundle_runs_out_then_cut() -> None:
    policy = FakePolicy(Decision(True, billable=True, max_seconds=300))
    world = World(policy=policy)
    world.connect("alice-phone", ALICE)
    world.connect("bob-phone", BOB)
    call_id = await ringing_call(world)
    await world.advance(5)
    await world.accept("bob-phone", call_id)
    assert world.timers.armed() == [START + 5 + 240]
    await world.advance(240)
    warning = world.last("alice-phone", "call.quota_warning")
    assert warning["seconds_left"] == 60
    assert world.relay.notices == [f"{call_id}:alice-phone"]
    assert world.inbox("bob-phone", "call.quota_warning") == []
    await world.advance(59)
    assert world.service.holds(call_id)
    await world.advance(1)
    assert world.ended("alice-phone") == ("quota_exhausted", "bundle_minutes_used")
    assert world.ended("bob-phone") == ("quota_exhausted", "bundle_minutes_used")
    assert world.record().duration == 300
    types = [t for t, _ in policy.events]
    assert types == [
        "call.started",
        "call.ringing",
        "call.answered",
        "call.quota_warning",
        "call.ended",
    ]
    assert policy.commits == 1
    assert_idle(world)


# Several nodes -------------------------------------------------------------------


async def test_the_calls_of_a_dead_node_end_on_record_as_node_lost(world: World) -> None:
    world.live.rows["c-dead"] = LiveCall(
        call_id="c-dead",
        node_id="node-2",
        caller=ALICE,
        callee=CAROL,
        caller_device="alice-phone",
        callee_device="sip:c-dead",
        invited_at=START - 100,
        ringing_at=START - 99,
        answered_at=START - 90,
        devices=("sip:c-dead",),
        rating={},
    )
    world.disconnect("alice-phone")  # still reconnecting
    await world.service.end_orphans("node-2", START - 10)
    record = world.record()
    assert (record.end_reason, record.end_detail) == ("failed", "node_lost")
    assert record.ended_at == START - 10 and world.live.rows == {}
    assert world.presence.ended_calls == ["c-dead"]
    world.connect("alice-phone", ALICE)
    await world.service.settle()
    assert world.ended("alice-phone") == ("failed", "node_lost")


# The phone network: an app user calls a phone number ----------------------------------


@pytest.fixture
def phone_world() -> World:
    w = World(trunk=True)
    w.connect("alice-phone", ALICE)
    w.connect("bob-phone", BOB)
    return w


async def placed(world: World) -> tuple[str, FakeOutbound]:
    call_id = await world.invite(to=CAROL)
    assert world.trunk is not None
    (sip,) = world.trunk.calls
    assert (sip.to_number, sip.from_number, sip.sdp) == (CAROL, ALICE, "rtp offer")
    return call_id, sip


async def test_a_trunk_that_is_down_is_trunk_unavailable(phone_world: World) -> None:
    assert phone_world.trunk is not None
    phone_world.trunk.up = False
    await phone_world.invite(to=CAROL)
    assert phone_world.ended("alice-phone") == ("failed", "trunk_unavailable")
    assert_idle(phone_world)


async def test_a_trunk_that_refuses_the_invite_is_trunk_unavailable(phone_world: World) -> None:
    assert phone_world.trunk is not None
    phone_world.trunk.refuse = True
    await phone_world.invite(to=CAROL)
    assert phone_world.ended("alice-phone") == ("failed", "trunk_unavailable")
    assert_idle(phone_world)


async def test_a_relay_outage_for_the_rtp_leg_is_relay_unavailable(phone_world: World) -> None:
    phone_world.relay.failures["offer_rtp"] = RelayUnavailable("no relay worker")
    await phone_world.invite(to=CAROL)
    assert phone_world.ended("alice-phone") == ("failed", "relay_unavailable")
    assert phone_world.trunk is not None and phone_world.trunk.calls == []
    assert_idle(phone_world)


@pytest.mark.parametrize(
    ("status", "ended"),
    [
        (None, ("failed", "trunk_timeout")),
        (486, ("busy", "")),
        (603, ("declined", "")),
        (404, ("unavailable", "no_such_number")),
        (480, ("unavailable", "callee_unavailable")),
        (408, ("no_answer", "")),
        (500, ("failed", "trunk_500")),
    ],
)
async def test_the_networks_final_answer_ends_the_call(
    phone_world: World, status: int | None, ended: tuple[str, str]
) -> None:
    call_id, sip = await placed(phone_world)
    await phone_world.network(Progress(180), sip)
    assert phone_world.last("alice-phone", "call.ringing")["call_id"] == call_id
    await phone_world.network(NetworkEnded(status, "rejected", True), sip)
    assert phone_world.ended("alice-phone") == ended
    assert sip.cancelled == [] and sip.byes == []  # the network ended it: nothing to send
    assert_idle(phone_world)


async def test_the_network_answers_and_hangs_up(phone_world: World) -> None:
    call_id, sip = await placed(phone_world)
    await phone_world.network(Answered("network answer"), sip)
    accepted = phone_world.last("alice-phone", "call.accepted")
    assert accepted["device_id"] == f"sip:{call_id}"
    assert phone_world.relay.bridges == [(f"{call_id}:alice-phone", f"{call_id}:sip:{call_id}")]
    await phone_world.service.dtmf("alice-phone", wire.CallDtmf("m8", call_id, "12#"))
    assert phone_world.relay.dtmf == [(f"{call_id}:sip:{call_id}", "12#")]
    phone_world.service.dtmf_received(f"{call_id}:sip:{call_id}", "5")
    await phone_world.service.settle()
    assert phone_world.last("alice-phone", "call.dtmf")["digit"] == "5"
    phone_world.clock.now += 12
    await phone_world.network(NetworkEnded(None, "bye", True), sip)
    assert phone_world.ended("alice-phone") == ("completed", "")
    record = phone_world.record()
    assert (record.callee_device, record.duration) == (f"sip:{call_id}", 12)
    assert sip.byes == []
    assert_idle(phone_world)


async def test_our_hangup_after_the_answer_is_a_bye(phone_world: World) -> None:
    call_id, sip = await placed(phone_world)
    await phone_world.network(Answered("network answer"), sip)
    await phone_world.hangup("alice-phone", call_id)
    await phone_world.service.settle()
    assert sip.byes == ["completed"]
    assert_idle(phone_world)


async def test_the_caller_giving_up_while_it_rings_is_a_cancel(phone_world: World) -> None:
    call_id, sip = await placed(phone_world)
    await phone_world.hangup("alice-phone", call_id)
    await phone_world.service.settle()
    assert phone_world.ended("alice-phone") == ("cancelled", "")
    assert sip.cancelled == ["cancelled"]
    await phone_world.network(NetworkEnded(487, "cancel", False), sip)  # the 487: nothing new
    assert len(phone_world.records.saved) == 1


async def test_the_network_not_answering_in_time_is_no_answer_and_a_cancel(
    phone_world: World,
) -> None:
    _, sip = await placed(phone_world)
    await phone_world.advance(RING_TIMEOUT)
    assert phone_world.ended("alice-phone") == ("no_answer", "")
    assert sip.cancelled == ["no_answer"]


async def test_early_media_bridges_the_caller_to_the_network(phone_world: World) -> None:
    call_id, sip = await placed(phone_world)
    await phone_world.network(Progress(183, "early media"), sip)
    assert phone_world.relay.bridges == [(f"{call_id}:alice-phone", f"{call_id}:sip:{call_id}")]
    await phone_world.renegotiate("alice-phone", call_id)  # the new leg hears the network too
    new_leg, network_leg = phone_world.relay.bridges[-1]
    assert new_leg.startswith(f"{call_id}:alice-phone~") and network_leg.endswith(call_id)


@pytest.mark.parametrize(
    ("event", "failure", "detail"),
    [
        (Answered("bad"), ValueError("no codec"), "bad_sdp_in_answer"),
        (Answered("ok"), RelayUnavailable("worker lost"), "relay_unavailable"),
        (Progress(183, "early"), RelayUnavailable("worker lost"), "relay_unavailable"),
    ],
)
async def test_the_networks_sdp_cannot_be_used(
    phone_world: World, event: CallEvent, failure: Exception, detail: str
) -> None:
    _, sip = await placed(phone_world)
    phone_world.relay.failures["accept_rtp_answer"] = failure
    await phone_world.network(event, sip)
    assert phone_world.ended("alice-phone") == ("failed", detail)
    assert_idle(phone_world)


async def test_unusable_early_media_is_ignored(phone_world: World) -> None:
    call_id, sip = await placed(phone_world)
    phone_world.relay.failures["accept_rtp_answer"] = ValueError("no codec")
    await phone_world.network(Progress(183, "odd"), sip)
    assert phone_world.relay.bridges == [] and phone_world.service.holds(call_id)


# The phone network: a phone number calls an app user ----------------------------------


async def incoming(world: World, sip: FakeInbound | None = None) -> FakeInbound:
    sip = sip or FakeInbound()
    await world.service.incoming_from_trunk(sip)
    await world.service.settle()
    return sip


async def test_a_call_from_the_network_rings_the_app_and_is_answered_with_200(
    phone_world: World,
) -> None:
    sip = await incoming(phone_world)
    assert sip.progressed == [180]
    call = phone_world.last("bob-phone", "call.incoming")
    assert call["from"] == CAROL and call["phone_network"] is True
    await phone_world.accept("bob-phone", call["call_id"])
    assert sip.answered == ["rtp answer"]
    phone_world.service.dtmf_received(f"{call['call_id']}:sip:{call['call_id']}", "7")
    await phone_world.service.settle()
    assert phone_world.last("bob-phone", "call.dtmf")["digit"] == "7"
    assert sip.on_reoffer is not None
    assert await sip.on_reoffer("hold") == "rtp answer again"
    await phone_world.hangup("bob-phone", call["call_id"])
    await phone_world.service.settle()
    assert sip.byes == ["completed"]
    assert phone_world.record().caller_device == f"sip:{call['call_id']}"
    assert_idle(phone_world)


@pytest.mark.parametrize(
    ("reason", "response"),
    [("decline", (603, "Decline", None)), ("timeout", (480, "Temporarily Unavailable", None))],
)
async def test_the_app_user_not_taking_the_call_is_the_networks_final_response(
    phone_world: World, reason: str, response: tuple[int, str, None]
) -> None:
    sip = await incoming(phone_world)
    call_id = phone_world.last("bob-phone", "call.incoming")["call_id"]
    if reason == "decline":
        await phone_world.reject("bob-phone", call_id)
    else:
        await phone_world.advance(RING_TIMEOUT)
    await phone_world.service.settle()
    assert sip.rejected == [response]
    assert_idle(phone_world)


async def test_the_network_cancelling_before_the_answer_is_cancelled(phone_world: World) -> None:
    sip = await incoming(phone_world)
    await phone_world.network(NetworkEnded(None, "cancel", True), sip)
    assert phone_world.ended("bob-phone") == ("cancelled", "")
    assert sip.rejected == []
    assert_idle(phone_world)


async def test_a_busy_app_user_is_486_to_the_network(phone_world: World) -> None:
    phone_world.presence.busy_numbers.add(BOB)
    sip = await incoming(phone_world)
    assert sip.rejected == [(486, "Busy Here", None)]
    assert phone_world.record().end_reason == "busy"


@pytest.mark.parametrize(
    ("failure", "detail", "status"),
    [
        (ValueError("no common codec"), "no_common_codec", 488),
        (RelayUnavailable("no relay worker"), "relay_unavailable", 503),
    ],
)
async def test_an_offer_from_the_network_the_relay_cannot_answer(
    phone_world: World, failure: Exception, detail: str, status: int
) -> None:
    phone_world.relay.failures["answer_rtp"] = failure
    sip = await incoming(phone_world)
    assert [r[0] for r in sip.rejected] == [status]
    record = phone_world.record()
    assert (record.end_reason, record.end_detail) == ("failed", detail)
    assert phone_world.inbox("bob-phone") == []


async def test_no_app_device_online_is_480_to_the_network(phone_world: World) -> None:
    phone_world.disconnect("bob-phone")
    sip = await incoming(phone_world)
    assert sip.rejected == [(480, "Temporarily Unavailable", None)]
    assert phone_world.record().end_detail == "no_device_online"


@pytest.mark.parametrize(
    ("setup", "response"),
    [
        ("unknown", (404, "Not Found", None)),
        ("invalid", (404, "Not Found", None)),
        ("overloaded", (503, "Overloaded", 2)),
        ("draining", (503, "Service Unavailable", None)),
    ],
)
async def test_calls_from_the_network_refused_before_they_begin(
    phone_world: World, setup: str, response: tuple[int, str, int | None]
) -> None:
    sip = FakeInbound()
    if setup == "unknown":
        sip.to_number = "+4917700000099"
    elif setup == "invalid":
        sip.to_number = "nonsense"
    elif setup == "overloaded":
        phone_world.service.admission = lambda calls, kind: "trunk calls over the limit"
    else:
        phone_world.service.draining = True
    await incoming(phone_world, sip)
    assert sip.rejected == [response]
    assert phone_world.records.saved == []


async def test_a_relay_outage_on_a_reinvite_ends_the_call(phone_world: World) -> None:
    sip = await incoming(phone_world)
    call_id = phone_world.last("bob-phone", "call.incoming")["call_id"]
    await phone_world.accept("bob-phone", call_id)
    phone_world.relay.failures["update_rtp"] = RelayUnavailable("worker lost")
    assert sip.on_reoffer is not None
    with pytest.raises(RelayUnavailable):  # the re-INVITE fails (488) …
        await sip.on_reoffer("new address")
    await phone_world.service.settle()
    assert phone_world.ended("bob-phone") == ("failed", "relay_unavailable")  # … and the call
    assert sip.byes == ["failed"]
    assert_idle(phone_world)


async def test_the_rtp_leg_failing_while_the_network_rings_is_unavailable(
    phone_world: World,
) -> None:
    call_id, sip = await placed(phone_world)
    phone_world.service.leg_failed(f"{call_id}:sip:{call_id}", "media_timeout")
    await phone_world.service.settle()
    assert phone_world.ended("alice-phone") == ("unavailable", "callee_connection_lost")
    assert sip.cancelled == ["unavailable"]
    assert_idle(phone_world)
