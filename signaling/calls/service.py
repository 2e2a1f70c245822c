"""CallService: the B2BUA. Feeds each call's state machine and carries out its effects
(messages to devices, relay legs, the call's timer, records, metrics).

One timer per call, re-armed from the machine's ``next_deadline()`` after every
input; one lock per call that serialises its inputs. Its parts, each in a module
of its own: the machine (machine.py) decides what is legal and when; parties.py
types who takes part; placing.py sets a call up until it rings, ringing.py rings
it (both ways); trunk_side.py is the phone-network side of calls; held.py keeps
messages for devices that are briefly away; quota.py the caller's operator
(admission, limit, events); live.py the calls in progress on record and the
orphaned calls of dead nodes; table.py the calls held here; ports.py the
Protocols of what the service drives, host.py the one (``CallHost``) through
which placing, ringing and the trunk side see the service without importing it.
Messages to devices are wire's classes (``wire.CallEnded`` …), encoded in ``send``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import wire
from signaling.calls.context import CallContext
from signaling.calls.held import HeldDelivery
from signaling.calls.live import NODE_LOST, LiveCall, LiveCallBook, LiveStore, RecordSink
from signaling.calls.machine import (
    Accept,
    Call,
    CallState,
    CallStateError,
    Connected,
    DeviceLost,
    Effect,
    Ended,
    EndReason,
    Fail,
    Hangup,
    Input,
    Notify,
    QuotaWarning,
    Reject,
    Renegotiate,
    Renegotiation,
    Timer,
)
from signaling.calls.parties import AppDevice, Party, PhoneNetwork, party_from_id
from signaling.calls.placing import CallPlacing
from signaling.calls.ports import Directory, InboundSip, MediaRelay, Presence, Trunk
from signaling.calls.quota import CallEventType, OperatorEvents, Policy, live_rating
from signaling.calls.records import record_of
from signaling.calls.table import CallTable
from signaling.calls.timers import LoopTimers, Timers
from signaling.calls.trunk_side import TrunkSide
from voice.relay.api import LegStats, NoOpusError, RelayUnavailable
from wire.reasons import Detail, media_detail

if TYPE_CHECKING:
    from signaling.metrics import Metrics

logger = logging.getLogger("anruf.calls")

#: How long the end of a dead node's call waits for its devices to reconnect.
ORPHAN_NOTICE_SECONDS = 60.0
#: The relay cannot serve the call (no worker, no relay host): an outage, not bad SDP.
RELAY_UNAVAILABLE = Detail.RELAY_UNAVAILABLE


class CallService:
    def __init__(
        self,
        *,
        presence: Presence,
        relay: MediaRelay,
        directory: Directory,
        records: RecordSink,
        metrics: Metrics,
        ring_timeout: float,
        reconnect_grace: float,
        policy: Policy | None = None,
        trunk: Trunk | None = None,
        live: LiveStore | None = None,
        clock: Callable[[], float] = time.time,
        timers: Timers | None = None,
    ) -> None:
        #: Set while no call is in progress (a draining node waits for it).
        self.idle = asyncio.Event()
        self.idle.set()
        #: Draining (SIGTERM): no new calls; those in progress go on.
        self.draining = False
        #: Set by signaling/api/limits.py: (calls in progress, "app" or "trunk") -> why
        #: this node takes no new call now (the end detail is "overloaded"), or None.
        self.admission: Callable[[int, str], str | None] | None = None
        self.relay = relay
        self.directory = directory
        self.policy = policy
        self.clock = clock
        self.ring_timeout = ring_timeout
        self.presence = presence
        self.metrics = metrics
        self._grace = reconnect_grace
        self._timers = timers if timers is not None else LoopTimers()
        self._held = HeldDelivery(presence, self._timers)
        self._book = LiveCallBook(records, live, policy)
        self._events = OperatorEvents(policy)
        self.trunk_side = TrunkSide(self, trunk)
        self.placing = CallPlacing(self, self.trunk_side)
        self._calls = CallTable()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def holds(self, call_id: str) -> bool:
        """The call is on this node (its state machine and media legs)."""
        return call_id in self._calls

    # Requests from devices -------------------------------------------------

    async def invite(self, device_id: str, number: str, message: wire.CallInvite) -> None:
        await self.placing.invite(device_id, number, message)

    async def accept(self, device_id: str, message: wire.CallAccept) -> None:
        device = AppDevice(device_id)
        ctx = await self._find(device, message.call_id, message.id)
        if ctx is None:
            return
        async with ctx.lock:
            call = ctx.call
            if not call.allows(Accept(self.clock(), device)):
                await self._state_error(device_id, call, message.id)
                return
            try:
                await self.relay.accept_answer(ctx.leg(device), message.sdp)
            except RelayUnavailable as exc:
                await self.relay_unavailable(ctx, exc)
                return
            except ValueError as exc:
                logger.info("call %s: unusable answer from %s: %s", call.call_id, device, exc)
                await self.error(device_id, wire.ErrorCode.BAD_SDP, str(exc), message.id)
                await self.feed(ctx, Fail(self.clock(), Detail.BAD_SDP_IN_ANSWER))
                return
            await self.feed(ctx, Accept(self.clock(), device))

    async def reject(self, device_id: str, message: wire.CallReject) -> None:
        device = AppDevice(device_id)
        await self._request(device, message.call_id, message.id, Reject(self.clock(), device))

    async def hangup(self, device_id: str, message: wire.CallHangup) -> None:
        device = AppDevice(device_id)
        await self._request(device, message.call_id, message.id, Hangup(self.clock(), device))

    async def dtmf(self, device_id: str, message: wire.CallDtmf) -> None:
        """Digits from an app device to the phone-network party of its call."""
        ctx = await self._find(AppDevice(device_id), message.call_id, message.id)
        if ctx is None:
            return
        async with ctx.lock:
            network = ctx.network
            if network is None or ctx.call.state is CallState.ENDED:
                await self.error(
                    device_id,
                    wire.ErrorCode.INVALID_STATE,
                    "digits can be sent only on a call with a phone number",
                    message.id,
                )
                return
            self.relay.send_dtmf(ctx.leg(network.party), message.digits)

    async def renegotiate(self, device_id: str, message: wire.CallRenegotiate) -> None:
        """The device's network changed (new Wi-Fi, mobile data): a fresh leg from its
        new address takes the old one's place in the bridge; the call goes on."""
        device = AppDevice(device_id)
        ctx = await self._find(device, message.call_id, message.id)
        if ctx is None:
            return
        async with ctx.lock:
            call = ctx.call
            try:
                (move,) = call.handle(Renegotiate(self.clock(), device))
            except CallStateError:
                await self._state_error(device_id, call, message.id)
                return
            assert isinstance(move, Renegotiation)
            new_leg = f"{ctx.leg(device).split('~')[0]}~{uuid.uuid4().hex[:8]}"
            try:
                answer = await self.relay.answer(new_leg, message.sdp, call_id=call.call_id)
            except NoOpusError:
                await self.error(device_id, wire.ErrorCode.BAD_SDP, "no Opus", message.id)
                return
            except RelayUnavailable as exc:
                await self.relay_unavailable(ctx, exc)
                return
            except ValueError as exc:  # the old leg stays
                await self.error(device_id, wire.ErrorCode.BAD_SDP, str(exc), message.id)
                return
            old_leg = self._calls.move_leg(ctx, device, new_leg)
            if move.peer is not None:
                self.relay.bridge(new_leg, ctx.leg(move.peer))
            elif ctx.network is not None and ctx.ringing_announced:
                self.relay.bridge(new_leg, ctx.leg(ctx.network.party))  # early media
            else:
                self.relay.start_ringback(new_leg)
            stats = await self.relay.close_leg(old_leg)
            earlier = ctx.earlier_stats.get(device)
            ctx.earlier_stats[device] = stats if earlier is None else earlier.then(stats)
            self.metrics.renegotiations.inc()
            logger.info("call %s: device %s moved to a new leg", call.call_id, device)
            await self.send(device, wire.CallRenegotiated(call.call_id, answer, ref=message.id))

    async def _request(self, device: Party, call_id: str, ref: str | None, event: Input) -> None:
        ctx = await self._find(device, call_id, ref)
        if ctx is None:
            return
        async with ctx.lock:
            try:
                await self.feed(ctx, event, strict=True)
            except CallStateError:
                await self._state_error(str(device), ctx.call, ref)

    # The phone network (trunk_side.py) ---------------------------------------

    async def incoming_from_trunk(self, sip_call: InboundSip) -> None:
        """An INVITE from the network: ring the called app user's devices."""
        await self.trunk_side.incoming(sip_call)

    def dtmf_received(self, leg_id: str, digit: str) -> None:
        """Relay callback: a digit (RFC 4733) from the network reaches the app party."""
        owner = self._calls.owner(leg_id)
        if owner is None:
            return
        call = owner[0].call
        party: Party | None = call.caller_device
        if isinstance(party, PhoneNetwork):
            party = call.callee_device
        if party is not None:
            self.spawn(self.send(party, wire.CallDigit(call.call_id, digit)))

    # Connections -----------------------------------------------------------

    def device_connected(self, device_id: str) -> None:
        """The device connected (to this node or another): what it missed while away
        is delivered in order, then the state of each of its calls held here."""
        self._held.back(device_id)
        if self._held.holds(device_id) or self._calls.in_a_call(AppDevice(device_id)):
            self.spawn(self._resume(device_id))

    async def _resume(self, device_id: str) -> None:
        if not await self._held.deliver(device_id):
            return
        device = AppDevice(device_id)
        for call_id in self._calls.calls_of(device):
            ctx = self._calls.get(call_id)
            if ctx is not None and ctx.call.state is not CallState.ENDED:
                await self.send(device, self._state_message(ctx, device))

    def _state_message(self, ctx: CallContext, device: Party) -> wire.CallStateReport:
        call = ctx.call
        outgoing = device == call.caller_device
        return wire.CallStateReport(
            call.call_id,
            call.state.value,
            "outgoing" if outgoing else "incoming",
            call.callee if outgoing else call.caller,
        )

    def device_disconnected(self, device_id: str) -> None:
        """The device's last link closed. A device that was only ringing is dropped at
        once (it can no longer answer); a caller or talker gets a grace period."""
        device = AppDevice(device_id)
        for call_id in self._calls.calls_of(device):
            ctx = self._calls.get(call_id)
            if ctx is None:
                continue
            if device in ctx.call.ringing_devices:
                self.spawn(self._lost(call_id, device))
            else:
                self._held.away(device_id, self._grace, self._grace_expired)

    def _grace_expired(self, device_id: str) -> None:
        device = AppDevice(device_id)
        for call_id in self._calls.calls_of(device):
            self.spawn(self._lost(call_id, device))

    async def _lost(self, call_id: str, device: Party) -> None:
        ctx = self._calls.get(call_id)
        if ctx is None:
            return
        # A device that came back on another node meanwhile is not lost (the
        # nodes' "connected" and "disconnected" news may cross).
        if isinstance(device, PhoneNetwork) or not await self.presence.online(device.device_id):
            async with ctx.lock:
                await self.feed(ctx, DeviceLost(self.clock(), device))

    def leg_failed(self, leg_id: str, detail: str) -> None:
        """Relay callback: a leg's ICE/DTLS failed or its media stopped."""
        owner = self._calls.owner(leg_id)
        if owner is None:
            return
        ctx, party = owner
        call_id = ctx.call.call_id
        if party in ctx.call.ringing_devices:
            self.spawn(self._lost(call_id, party))
        else:
            self.spawn(self.fail(call_id, media_detail(detail)))

    async def fail(self, call_id: str, detail: str) -> None:
        ctx = self._calls.get(call_id)
        if ctx is not None:
            async with ctx.lock:
                await self.feed(ctx, Fail(self.clock(), detail))

    async def relay_unavailable(self, ctx: CallContext, exc: RelayUnavailable) -> None:
        """The relay is out (no worker, no relay host): the call cannot go on."""
        logger.warning("call %s: no media relay: %s", ctx.call.call_id, exc)
        await self.feed(ctx, Fail(self.clock(), RELAY_UNAVAILABLE))

    async def shutdown(self) -> None:
        """End every call (server stopping): devices are told, records are written."""
        for call_id in self._calls.call_ids():
            await self.fail(call_id, Detail.SERVER_SHUTDOWN)
        self._held.close()
        for task in list(self._tasks):
            task.cancel()

    async def settle(self) -> None:
        """Wait until the work started by callbacks (timers, relay, network) is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # The call's timer ----------------------------------------------------------

    def _arm(self, ctx: CallContext) -> None:
        """One timer per call, for whatever the machine times next."""
        ctx.cancel_timer()
        deadline = ctx.call.next_deadline()
        if deadline is None:
            return
        call_id = ctx.call.call_id
        ctx.timer = self._timers.call_later(
            deadline - self.clock(), lambda: self.spawn(self._timer_due(call_id))
        )

    async def _timer_due(self, call_id: str) -> None:
        ctx = self._calls.get(call_id)
        if ctx is not None:
            async with ctx.lock:
                await self.feed(ctx, Timer(self.clock()))

    # Effects ---------------------------------------------------------------

    async def feed(self, ctx: CallContext, event: Input, *, strict: bool = False) -> None:
        """One input to the call's machine, and its effects carried out."""
        if ctx.call.state is CallState.ENDED and not strict:
            return
        effects = ctx.call.handle(event)
        # The record is written before anyone hears the call ended, so a device that
        # asks for its history right after sees the call.
        effects.sort(key=lambda effect: not isinstance(effect, Ended))
        for effect in effects:
            await self._apply(ctx, effect)
        if ctx.call.state is not CallState.ENDED:
            for device in set(ctx.legs) - ctx.call.devices:  # e.g. a ringing device that left
                await self._release(ctx, device)
            self._arm(ctx)
        elif not self._calls:
            self.idle.set()  # after the devices were told, not before

    async def _apply(self, ctx: CallContext, effect: Effect) -> None:
        call = ctx.call
        if isinstance(effect, Notify):
            ref = ctx.invite_ref if effect.device == call.caller_device else None
            await self.send(
                effect.device,
                wire.CallEnded(call.call_id, effect.reason.value, effect.detail, ref=ref),
            )
            if call.state is not CallState.ENDED:  # released before the end (answered elsewhere)
                await self._release(ctx, effect.device)
        elif isinstance(effect, Connected):
            self.relay.bridge(ctx.leg(call.caller_device), ctx.leg(effect.device))
            message = wire.CallAccepted(call.call_id, effect.device.device_id)
            await self.send(call.caller_device, message)
            await self.send(effect.device, message)
            await self.trunk_side.answered(ctx)
            await self.event(ctx, CallEventType.ANSWERED)
            if ctx.live and call.answered_at is not None:
                await self._book.answered(call.call_id, effect.device.device_id, call.answered_at)
        elif isinstance(effect, QuotaWarning):
            self.relay.play_notice(ctx.leg(call.caller_device))
            await self.send(
                call.caller_device, wire.CallQuotaWarning(call.call_id, effect.seconds_left)
            )
            await self.event(ctx, CallEventType.QUOTA_WARNING, seconds_left=effect.seconds_left)
        elif isinstance(effect, Ended):
            await self._finish(ctx, effect)

    async def _release(self, ctx: CallContext, party: Party) -> LegStats | None:
        leg = self._calls.leave(ctx, party)
        if isinstance(party, PhoneNetwork):
            self.trunk_side.end(ctx)
        if leg is None:
            return None
        stats = await self.relay.close_leg(leg)
        earlier = ctx.earlier_stats.pop(party, None)
        return stats if earlier is None else earlier.then(stats)

    async def _finish(self, ctx: CallContext, ended: Ended) -> None:
        call = ctx.call
        ctx.cancel_timer()
        media: dict[str, dict[str, Any]] = {}
        caller_stats = await self._release(ctx, call.caller_device)
        if caller_stats is not None:
            media["caller"] = caller_stats.as_dict()
        if call.callee_device is not None:
            callee_stats = await self._release(ctx, call.callee_device)
            if callee_stats is not None:
                media["callee"] = callee_stats.as_dict()
        for party in list(ctx.legs):
            await self._release(ctx, party)
        self._calls.remove(ctx)
        await self.presence.call_ended(call.call_id, (call.caller, call.callee))
        self.metrics.active_calls.set(len(self._calls))
        self.metrics.call_attempts.labels(outcome=ended.reason.value).inc()
        record = record_of(call, media, self.clock())
        await self._book.save(record, ctx.admission, live=ctx.live)
        logger.info(
            "call %s ended: %s %s (%.1f s)",
            call.call_id,
            ended.reason.value,
            ended.detail,
            record.duration,
        )

    async def event(self, ctx: CallContext, type: str, **data: Any) -> None:
        """An event of the call for the operators of its parties."""
        await self._events.send(ctx.admission, ctx.call.call_id, type, **data)

    # Several nodes -----------------------------------------------------------

    async def busy(self, number: str) -> bool:
        return self._calls.number_busy(number) or await self.presence.busy(number)

    async def write_live(self, ctx: CallContext) -> None:
        """The call rings: from now on a crash of this node still ends it on record."""
        if ctx.live:
            return
        ctx.live = await self._book.ringing(
            LiveCall.of(
                ctx.call, self.presence.node_id, tuple(ctx.legs), live_rating(ctx.admission)
            )
        )

    async def end_orphans(self, node_id: str, last_seen: float) -> None:
        """A node died (or this node restarted after a crash): end its calls on
        record as failed/node_lost, and tell their devices wherever they are now."""
        for live in await self._book.end_orphans(node_id, last_seen):
            await self.presence.call_ended(live.call_id, (live.caller, live.callee))
            self.metrics.call_attempts.labels(outcome=EndReason.FAILED.value).inc()
            logger.warning("call %s ended: its node %s is gone", live.call_id, node_id)
            ended = wire.encode_message(
                wire.CallEnded(live.call_id, EndReason.FAILED.value, NODE_LOST)
            )
            for device_id in {live.caller_device, *live.devices} - {""}:
                if isinstance(party_from_id(device_id), AppDevice):  # may still be reconnecting
                    await self._held.send_or_hold(device_id, ended, ORPHAN_NOTICE_SECONDS)

    # For the call's parts (trunk_side.py) --------------------------------------

    def refuses_new_call(self, kind: str) -> bool:
        """This node takes no new call now (overloaded)."""
        return self.admission is not None and bool(self.admission(len(self._calls), kind))

    def new_call(
        self, call_id: str, caller: str, callee: str, caller_device: Party, ref: str | None
    ) -> CallContext:
        call = Call(
            call_id=call_id,
            caller=caller,
            callee=callee,
            caller_device=caller_device,
            invited_at=self.clock(),
            ring_timeout=self.ring_timeout,
        )
        return CallContext(call, ref, time.monotonic())

    async def begin(self, ctx: CallContext) -> None:
        """The call is on this node from now on (busy for both numbers everywhere)."""
        call = ctx.call
        self.register(ctx, call.caller_device)
        await self.presence.call_started(call.call_id, (call.caller, call.callee))
        self.metrics.active_calls.set(len(self._calls))

    def register(self, ctx: CallContext, party: Party) -> None:
        self._calls.add(ctx, party)
        self.idle.clear()

    def in_a_call(self, party: Party) -> bool:
        return self._calls.in_a_call(party)

    def context(self, call_id: str) -> CallContext | None:
        return self._calls.get(call_id)

    async def send(self, party: Party, message: wire.ServerMessage) -> None:
        """To an app device (held while it is briefly away); the network hears SIP instead."""
        if isinstance(party, AppDevice):
            await self._held.send(party.device_id, wire.encode_message(message))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Helpers ---------------------------------------------------------------

    async def _find(self, device: Party, call_id: str, ref: str | None) -> CallContext | None:
        ctx = self._calls.get(call_id)
        if ctx is None or device not in ctx.legs:
            await self.error(str(device), wire.ErrorCode.CALL_NOT_FOUND, "no such call", ref)
            return None
        return ctx

    async def _state_error(self, device_id: str, call: Call, ref: str | None) -> None:
        await self.error(
            device_id,
            wire.ErrorCode.INVALID_STATE,
            f"the call is {call.state.value}"
            if call.state is not CallState.ENDED
            else "the call has ended",
            ref,
        )

    async def error(self, device_id: str, code: str, message: str, ref: str | None) -> None:
        self.metrics.ws_errors.labels(code=code).inc()
        await self._held.send(device_id, wire.error(code, message, ref))


__all__ = [
    "CallService",
    "Directory",
    "EndReason",
    "MediaRelay",
    "Presence",
    "RecordSink",
    "Trunk",
]
