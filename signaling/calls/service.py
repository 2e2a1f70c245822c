"""CallService: the B2BUA. Feeds each call's state machine and carries out its effects
(messages to devices, relay legs, timers, call records, metrics)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import wire
from signaling.calls.live import LiveCall, LiveCalls
from signaling.calls.machine import (
    Accept,
    Busy,
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
    NotAllowed,
    Notify,
    QuotaExhausted,
    Reject,
    Ring,
    RingTimeout,
    Unavailable,
)
from signaling.calls.records import CallRecord
from signaling.calls.sipmap import (
    TRUNK_DEVICE_PREFIX,
    failure_input,
    final_response,
    is_trunk_device,
)
from signaling.carrier.policy import Admission, CarrierPolicy
from signaling.carrier.rating import WARNING_SECONDS, CallKind
from signaling.identity.service import InvalidNumberError
from signaling.metrics import Metrics
from signaling.presence import Presence
from signaling.sip.trunk import (
    Answered,
    CallEvent,
    IncomingCall,
    OutboundCall,
    Progress,
    TrunkUnavailable,
)
from signaling.sip.trunk import (
    Ended as TrunkEnded,
)
from voice.relay.api import LegStats, NoOpusError, RelayUnavailable

logger = logging.getLogger("anruf.calls")

#: End detail of calls whose node died.
NODE_LOST = wire.Detail.NODE_LOST
#: Messages kept for one device while its connection is down (a call's worth).
MAX_HELD_MESSAGES = 64
#: How long the end of a dead node's call waits for its devices to reconnect.
ORPHAN_NOTICE_SECONDS = 60.0


class MediaRelay(Protocol):
    """What CallService needs of the media relay (voice.relay.Relay)."""

    async def answer(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str: ...
    async def offer(self, leg_id: str, *, call_id: str = "") -> str: ...
    async def accept_answer(self, leg_id: str, answer_sdp: str) -> None: ...
    def start_ringback(self, leg_id: str) -> None: ...
    def play_notice(self, leg_id: str) -> None: ...
    def send_dtmf(self, leg_id: str, digits: str) -> None: ...
    async def offer_rtp(self, leg_id: str, *, call_id: str = "") -> str: ...
    async def answer_rtp(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str: ...
    async def accept_rtp_answer(self, leg_id: str, answer_sdp: str) -> None: ...
    async def update_rtp(self, leg_id: str, offer_sdp: str) -> str: ...
    def bridge(self, a: str, b: str) -> None: ...
    async def close_leg(self, leg_id: str) -> LegStats: ...


class Trunk(Protocol):
    """What CallService needs of the operator's SIP trunk (signaling.sip.trunk.SipTrunk)."""

    @property
    def up(self) -> bool: ...

    async def invite(
        self, *, to_number: str, from_number: str, sdp: str, on_event: Callable[[Any], None]
    ) -> OutboundCall: ...


class RecordSink(Protocol):
    async def save(
        self, record: CallRecord, also: Callable[[Any], Awaitable[None]] | None = None
    ) -> None: ...


class Directory(Protocol):
    """Numbers known to the service (IdentityService)."""

    def normalise(self, raw: str, region: str | None = None) -> str:
        """E.164; raises InvalidNumberError."""

    async def is_registered(self, number: str) -> bool: ...


@dataclass
class _CallContext:
    call: Call
    invite_ref: str | None
    started: float  # monotonic, for the setup-time histogram
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    legs: dict[str, str] = field(default_factory=dict)  # device id -> leg id
    ring_timer: asyncio.TimerHandle | None = None
    ringing_announced: bool = False
    #: The phone-network side of the call (signaling.sip.trunk), if any.
    sip: Any = None
    #: The network ended its side (no CANCEL/BYE/final response from us then).
    sip_ended: bool = False
    #: Our SDP answer to the network's INVITE, sent with the 200 when an app answers.
    sip_answer: str | None = None
    #: The operator policy's decision (None without a policy).
    admission: Admission | None = None
    #: The minute-left warning and the cut when the bundle runs out.
    quota_timers: list[asyncio.TimerHandle] = field(default_factory=list)
    #: The call has a row in live_calls (removed with its record).
    live: bool = False
    #: Stats of legs a device had before it moved to a new one (call.renegotiate).
    earlier_stats: dict[str, LegStats] = field(default_factory=dict)

    def cancel_timers(self) -> None:
        for timer in (self.ring_timer, *self.quota_timers):
            if timer is not None:
                timer.cancel()

    def leg(self, device_id: str) -> str:
        return self.legs.setdefault(device_id, f"{self.call.call_id}:{device_id}")


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
        policy: CarrierPolicy | None = None,
        trunk: Trunk | None = None,
        live: LiveCalls | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._live = live
        #: Set while no call is in progress (a draining node waits for it).
        self.idle = asyncio.Event()
        self.idle.set()
        #: Draining (SIGTERM): no new calls; those in progress go on.
        self.draining = False
        #: Set by signaling/api/limits.py: (calls in progress, "app" or "trunk") -> why
        #: this node takes no new call now (the end detail is "overloaded"), or None.
        self.admission: Callable[[int, str], str | None] | None = None
        self._policy = policy
        self._trunk = trunk
        self._presence = presence
        self._relay = relay
        self._directory = directory
        self._records = records
        self._metrics = metrics
        self._ring_timeout = ring_timeout
        self._grace = reconnect_grace
        self._clock = clock
        self._calls: dict[str, _CallContext] = {}
        self._device_calls: dict[str, set[str]] = {}
        self._number_calls: dict[str, set[str]] = {}
        self._leg_calls: dict[str, tuple[str, str]] = {}  # leg id -> (call id, device id)
        self._grace_timers: dict[str, asyncio.TimerHandle] = {}
        #: Messages for devices whose connection dropped, delivered in order when they are back.
        self._held: dict[str, list[str]] = {}
        self._resuming: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def holds(self, call_id: str) -> bool:
        """The call is on this node (its state machine and media legs)."""
        return call_id in self._calls

    # Requests from devices -------------------------------------------------

    async def invite(self, device_id: str, number: str, message: wire.CallInvite) -> None:
        ref = message.id
        if self.admission is not None and self.admission(len(self._calls), "app"):
            ended = {"reason": EndReason.FAILED.value, "detail": wire.Detail.OVERLOADED}
            call_id = uuid.uuid4().hex  # refused before it began: no record, no relay
            await self._send(
                device_id, wire.encode("call.ended", ref=ref, call_id=call_id, **ended)
            )
            return
        try:
            callee = self._directory.normalise(message.to, message.region)
        except InvalidNumberError as exc:
            await self._error(device_id, wire.ErrorCode.INVALID_NUMBER, exc.detail, ref)
            return
        if callee == number:
            await self._error(device_id, wire.ErrorCode.SELF_CALL, "cannot call yourself", ref)
            return
        if self._device_calls.get(device_id):
            await self._error(
                device_id, wire.ErrorCode.INVALID_STATE, "this device is already in a call", ref
            )
            return
        if self.draining:
            await self._error(device_id, wire.ErrorCode.DRAINING, "this server is restarting", ref)
            return

        call = Call(
            call_id=uuid.uuid4().hex,
            caller=number,
            callee=callee,
            caller_device=device_id,
            invited_at=self._clock(),
            ring_timeout=self._ring_timeout,
        )
        ctx = _CallContext(call, ref, time.monotonic())
        busy = await self._busy(callee)
        self._register(ctx, device_id)
        await self._presence.call_started(call.call_id, (number, callee))
        self._metrics.active_calls.set(len(self._calls))
        async with ctx.lock:
            if busy:
                await self._feed(ctx, Busy(self._clock()))
            else:
                await self._place(ctx, message.sdp)

    async def _place(self, ctx: _CallContext, offer_sdp: str) -> None:
        call = ctx.call
        registered = await self._directory.is_registered(call.callee)
        if self._policy is not None:
            kind = CallKind.APP if registered else CallKind.PHONE
            admission = await self._policy.admit(call.call_id, call.caller, call.callee, kind)
            ctx.admission = admission
            await self._policy.call_event(admission, "call.started")
            decision = admission.decision
            if not decision.allowed:
                logger.info("call %s refused by policy: %s", call.call_id, decision.reason)
                if decision.reason in (wire.Detail.QUOTA_EXHAUSTED, wire.Detail.FAIR_USE_EXCEEDED):
                    await self._feed(ctx, QuotaExhausted(self._clock(), decision.reason))
                elif decision.reason == wire.Detail.NOT_AN_APP_USER:
                    await self._feed(ctx, Unavailable(self._clock(), decision.reason))
                else:
                    await self._feed(ctx, NotAllowed(self._clock(), decision.reason))
                return
        if not registered:
            # A phone number: the operator's trunk carries it, if there is one.
            if self._trunk is None:
                await self._feed(ctx, Unavailable(self._clock(), wire.Detail.NOT_AN_APP_USER))
            elif not self._trunk.up:
                await self._feed(ctx, Fail(self._clock(), wire.Detail.TRUNK_UNAVAILABLE))
            elif await self._answer_caller(ctx, offer_sdp):
                await self._invite_trunk(ctx)
            return
        if not await self._answer_caller(ctx, offer_sdp):
            return
        alerted = await self._alert_devices(ctx)
        await self._feed(ctx, Ring(self._clock(), tuple(alerted)))
        if call.state is CallState.RINGING:
            self._start_ring_timer(ctx)
            await self._write_live(ctx)
            await self._announce_ringing(ctx, devices=len(alerted))

    async def _answer_caller(self, ctx: _CallContext, offer_sdp: str) -> bool:
        """The relay answers the caller's offer (call.progress) and plays ringback."""
        call = ctx.call
        try:
            answer = await self._relay.answer(
                ctx.leg(call.caller_device), offer_sdp, call_id=call.call_id
            )
        except NoOpusError:
            await self._feed(ctx, Fail(self._clock(), wire.Detail.NO_OPUS_IN_OFFER))
            return False
        except RelayUnavailable as exc:
            logger.warning("call %s: no media relay: %s", call.call_id, exc)
            await self._feed(ctx, Fail(self._clock(), wire.Detail.RELAY_UNAVAILABLE))
            return False
        except ValueError as exc:
            logger.info("call %s: unusable offer: %s", call.call_id, exc)
            await self._feed(ctx, Fail(self._clock(), wire.Detail.BAD_SDP))
            return False
        if call.state is CallState.ENDED:  # hung up while the relay answered
            return False
        await self._send(
            call.caller_device,
            wire.encode(
                "call.progress",
                ref=ctx.invite_ref,
                call_id=call.call_id,
                to=call.callee,
                sdp=answer,
                phone_network=ctx.admission is not None and ctx.admission.kind is CallKind.PHONE,
            ),
        )
        self._relay.start_ringback(ctx.leg(call.caller_device))
        return True

    async def _alert_devices(self, ctx: _CallContext) -> list[str]:
        """Offer the call to every online device of the callee that is not busy."""
        call = ctx.call
        alerted: list[str] = []
        for device in await self._presence.devices(call.callee):
            if device in self._device_calls:  # on this call or another: do not ring it
                continue
            try:
                offer = await self._relay.offer(ctx.leg(device), call_id=call.call_id)
            except Exception:
                logger.exception("call %s: no relay leg for device %s", call.call_id, device)
                continue
            self._register(ctx, device)
            alerted.append(device)
            await self._send(
                device,
                wire.encode(
                    "call.incoming",
                    call_id=call.call_id,
                    **{"from": call.caller},
                    sdp=offer,
                    phone_network=is_trunk_device(call.caller_device),
                ),
            )
        return alerted

    def _start_ring_timer(self, ctx: _CallContext) -> None:
        call_id = ctx.call.call_id
        ctx.ring_timer = asyncio.get_running_loop().call_later(
            self._ring_timeout, lambda: self._spawn(self._timeout(call_id))
        )

    async def _announce_ringing(self, ctx: _CallContext, **data: Any) -> None:
        """The caller hears that the callee's phone rings (once per call)."""
        if ctx.ringing_announced:
            return
        ctx.ringing_announced = True
        call = ctx.call
        if not is_trunk_device(call.caller_device):
            await self._send(call.caller_device, wire.encode("call.ringing", call_id=call.call_id))
        self._metrics.setup_seconds.observe(time.monotonic() - ctx.started)
        await self._event(ctx, "call.ringing", **data)

    async def accept(self, device_id: str, message: wire.CallAccept) -> None:
        ctx = await self._find(device_id, message.call_id, message.id)
        if ctx is None:
            return
        async with ctx.lock:
            call = ctx.call
            if call.state is not CallState.RINGING or device_id not in call.ringing_devices:
                await self._state_error(device_id, call, message.id)
                return
            try:
                await self._relay.accept_answer(ctx.leg(device_id), message.sdp)
            except RelayUnavailable as exc:
                logger.warning("call %s: no media relay: %s", call.call_id, exc)
                await self._feed(ctx, Fail(self._clock(), wire.Detail.RELAY_UNAVAILABLE))
                return
            except ValueError as exc:
                logger.info("call %s: unusable answer from %s: %s", call.call_id, device_id, exc)
                await self._error(device_id, wire.ErrorCode.BAD_SDP, str(exc), message.id)
                await self._feed(ctx, Fail(self._clock(), wire.Detail.BAD_SDP_IN_ANSWER))
                return
            await self._feed(ctx, Accept(self._clock(), device_id))

    async def reject(self, device_id: str, message: wire.CallReject) -> None:
        await self._request(
            device_id, message.call_id, message.id, Reject(self._clock(), device_id)
        )

    async def hangup(self, device_id: str, message: wire.CallHangup) -> None:
        await self._request(
            device_id, message.call_id, message.id, Hangup(self._clock(), device_id)
        )

    async def dtmf(self, device_id: str, message: wire.CallDtmf) -> None:
        """Digits from an app device to the phone-network party of its call."""
        ctx = await self._find(device_id, message.call_id, message.id)
        if ctx is None:
            return
        async with ctx.lock:
            trunk_leg = self._trunk_leg(ctx)
            if trunk_leg is None or ctx.call.state is CallState.ENDED:
                await self._error(
                    device_id,
                    wire.ErrorCode.INVALID_STATE,
                    "digits can be sent only on a call with a phone number",
                    message.id,
                )
                return
            self._relay.send_dtmf(trunk_leg, message.digits)

    async def renegotiate(self, device_id: str, message: wire.CallRenegotiate) -> None:
        """The device's network changed (new Wi-Fi, mobile data): a fresh leg from its
        new address takes the old one's place in the bridge; the call goes on."""
        ctx = await self._find(device_id, message.call_id, message.id)
        if ctx is None:
            return
        async with ctx.lock:
            call = ctx.call
            talking = call.state is CallState.CONNECTED and device_id in (
                call.caller_device,
                call.callee_device,
            )
            waiting = call.state is not CallState.ENDED and device_id == call.caller_device
            if not (talking or waiting):
                await self._state_error(device_id, call, message.id)
                return
            old_leg = ctx.leg(device_id)
            new_leg = f"{old_leg.split('~')[0]}~{uuid.uuid4().hex[:8]}"
            try:
                answer = await self._relay.answer(new_leg, message.sdp, call_id=call.call_id)
            except NoOpusError:
                await self._error(device_id, wire.ErrorCode.BAD_SDP, "no Opus", message.id)
                return
            except (ValueError, RelayUnavailable) as exc:  # the old leg stays
                await self._error(device_id, wire.ErrorCode.BAD_SDP, str(exc), message.id)
                return
            ctx.legs[device_id] = new_leg
            self._leg_calls[new_leg] = (call.call_id, device_id)
            self._leg_calls.pop(old_leg, None)
            if talking:
                other = call.caller_device
                if device_id == call.caller_device:
                    other = call.callee_device or ""
                self._relay.bridge(new_leg, ctx.leg(other))
            else:
                trunk_leg = self._trunk_leg(ctx)
                if trunk_leg is not None and ctx.ringing_announced:
                    self._relay.bridge(new_leg, trunk_leg)  # early media from the network
                else:
                    self._relay.start_ringback(new_leg)
            stats = await self._relay.close_leg(old_leg)
            earlier = ctx.earlier_stats.get(device_id)
            ctx.earlier_stats[device_id] = stats if earlier is None else earlier.then(stats)
            self._metrics.renegotiations.inc()
            logger.info("call %s: device %s moved to a new leg", call.call_id, device_id)
            await self._send(
                device_id,
                wire.encode("call.renegotiated", ref=message.id, call_id=call.call_id, sdp=answer),
            )

    def _trunk_leg(self, ctx: _CallContext) -> str | None:
        for device, leg in ctx.legs.items():
            if is_trunk_device(device):
                return leg
        return None

    async def _request(self, device_id: str, call_id: str, ref: str | None, event: Input) -> None:
        ctx = await self._find(device_id, call_id, ref)
        if ctx is None:
            return
        async with ctx.lock:
            try:
                await self._feed(ctx, event, strict=True)
            except CallStateError:
                await self._state_error(device_id, ctx.call, ref)

    # Connections -----------------------------------------------------------

    def device_connected(self, device_id: str) -> None:
        """The device connected (to this node or another): what it missed while away
        is delivered in order, then the state of each of its calls held here."""
        timer = self._grace_timers.pop(device_id, None)
        if timer is not None:
            timer.cancel()
            logger.info("device %s is back within the grace period", device_id)
        if device_id in self._held or device_id in self._device_calls:
            self._spawn(self._resume(device_id))

    async def _resume(self, device_id: str) -> None:
        if device_id in self._resuming:
            return
        self._resuming.add(device_id)
        try:
            held = self._held.setdefault(device_id, [])
            while held:  # messages queued meanwhile go behind these
                if not await self._presence.send(device_id, held[0]):
                    return  # gone again: keep them for the next connection
                held.pop(0)
            del self._held[device_id]
        finally:
            self._resuming.discard(device_id)
        for call_id in sorted(self._device_calls.get(device_id, ())):
            ctx = self._calls.get(call_id)
            if ctx is not None and ctx.call.state is not CallState.ENDED:
                await self._send(device_id, self._state_message(ctx, device_id))

    def _state_message(self, ctx: _CallContext, device_id: str) -> str:
        call = ctx.call
        outgoing = device_id == call.caller_device
        return wire.encode(
            "call.state",
            call_id=call.call_id,
            state=call.state.value,
            direction="outgoing" if outgoing else "incoming",
            peer=call.callee if outgoing else call.caller,
        )

    def device_disconnected(self, device_id: str) -> None:
        """The device's last link closed. A device that was only ringing is dropped at
        once (it can no longer answer); a caller or talker gets a grace period."""
        for call_id in list(self._device_calls.get(device_id, ())):
            ctx = self._calls.get(call_id)
            if ctx is None:
                continue
            if device_id in ctx.call.ringing_devices:
                self._spawn(self._lost(call_id, device_id))
            elif device_id not in self._grace_timers:
                self._grace_timers[device_id] = asyncio.get_running_loop().call_later(
                    self._grace, self._grace_expired, device_id
                )

    def _grace_expired(self, device_id: str) -> None:
        self._grace_timers.pop(device_id, None)
        self._held.pop(device_id, None)
        for call_id in list(self._device_calls.get(device_id, ())):
            self._spawn(self._lost(call_id, device_id))

    async def _lost(self, call_id: str, device_id: str) -> None:
        ctx = self._calls.get(call_id)
        # A device that came back on another node meanwhile is not lost (the
        # nodes' "connected" and "disconnected" news may cross).
        if ctx is not None and not await self._presence.online(device_id):
            async with ctx.lock:
                await self._feed(ctx, DeviceLost(self._clock(), device_id))

    def leg_failed(self, leg_id: str, detail: str) -> None:
        """Relay callback: a leg's ICE/DTLS failed or its media stopped."""
        owner = self._leg_calls.get(leg_id)
        if owner is None:
            return
        call_id, device_id = owner
        ctx = self._calls.get(call_id)
        if ctx is None:
            return
        if device_id in ctx.call.ringing_devices:
            self._spawn(self._lost(call_id, device_id))
        else:
            self._spawn(self._fail(call_id, wire.media_detail(detail)))

    async def _fail(self, call_id: str, detail: str) -> None:
        ctx = self._calls.get(call_id)
        if ctx is not None:
            async with ctx.lock:
                await self._feed(ctx, Fail(self._clock(), detail))

    async def _timeout(self, call_id: str) -> None:
        ctx = self._calls.get(call_id)
        if ctx is not None:
            async with ctx.lock:
                if ctx.call.state is CallState.RINGING:
                    await self._feed(ctx, RingTimeout(self._clock()))

    async def shutdown(self) -> None:
        """End every call (server stopping): devices are told, records are written."""
        for call_id in list(self._calls):
            await self._fail(call_id, wire.Detail.SERVER_SHUTDOWN)
        for timer in self._grace_timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()

    # Effects ---------------------------------------------------------------

    async def _feed(self, ctx: _CallContext, event: Input, *, strict: bool = False) -> None:
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
        elif not self._calls:
            self.idle.set()  # after the devices were told, not before

    async def _apply(self, ctx: _CallContext, effect: Effect) -> None:
        call = ctx.call
        if isinstance(effect, Notify):
            ref = ctx.invite_ref if effect.device == call.caller_device else None
            await self._send(
                effect.device,
                wire.encode(
                    "call.ended",
                    ref=ref,
                    call_id=call.call_id,
                    reason=effect.reason.value,
                    detail=effect.detail,
                ),
            )
            if call.state is not CallState.ENDED:  # released before the end (answered elsewhere)
                await self._release(ctx, effect.device)
        elif isinstance(effect, Connected):
            if ctx.ring_timer is not None:
                ctx.ring_timer.cancel()
            self._relay.bridge(ctx.leg(call.caller_device), ctx.leg(effect.device))
            message = wire.encode("call.accepted", call_id=call.call_id, device_id=effect.device)
            await self._send(call.caller_device, message)
            await self._send(effect.device, message)
            if isinstance(ctx.sip, IncomingCall) and ctx.sip_answer is not None:
                await ctx.sip.answer(ctx.sip_answer)  # 200 OK to the network
            await self._event(ctx, "call.answered")
            self._start_quota_timers(ctx)
            if ctx.live and self._live is not None and call.answered_at is not None:
                await self._live.answered(call.call_id, effect.device, call.answered_at)
        elif isinstance(effect, Ended):
            await self._finish(ctx, effect)

    async def _release(self, ctx: _CallContext, device_id: str) -> LegStats | None:
        leg = ctx.legs.pop(device_id, None)
        calls = self._device_calls.get(device_id)
        if calls is not None:
            calls.discard(ctx.call.call_id)
            if not calls:
                del self._device_calls[device_id]
        if is_trunk_device(device_id):
            self._end_trunk_side(ctx)
        if leg is None:
            return None
        self._leg_calls.pop(leg, None)
        stats = await self._relay.close_leg(leg)
        earlier = ctx.earlier_stats.pop(device_id, None)
        return stats if earlier is None else earlier.then(stats)

    async def _finish(self, ctx: _CallContext, ended: Ended) -> None:
        call = ctx.call
        ctx.cancel_timers()
        media: dict[str, dict[str, Any]] = {}
        caller_stats = await self._release(ctx, call.caller_device)
        if caller_stats is not None:
            media["caller"] = caller_stats.as_dict()
        if call.callee_device is not None:
            callee_stats = await self._release(ctx, call.callee_device)
            if callee_stats is not None:
                media["callee"] = callee_stats.as_dict()
        for device in list(ctx.legs):
            await self._release(ctx, device)
        self._calls.pop(call.call_id, None)
        for number in (call.caller, call.callee):
            calls = self._number_calls.get(number)
            if calls is not None:
                calls.discard(call.call_id)
                if not calls:
                    del self._number_calls[number]
        await self._presence.call_ended(call.call_id, (call.caller, call.callee))
        self._metrics.active_calls.set(len(self._calls))
        self._metrics.call_attempts.labels(outcome=ended.reason.value).inc()
        record = CallRecord(
            call_id=call.call_id,
            caller=call.caller,
            callee=call.callee,
            caller_device=call.caller_device,
            callee_device=call.callee_device,
            invited_at=call.invited_at,
            ringing_at=call.ringing_at,
            answered_at=call.answered_at,
            ended_at=call.ended_at or self._clock(),
            end_reason=ended.reason.value,
            end_detail=ended.detail,
            media=media,
        )
        await self._save(record, ctx.admission, live=ctx.live)
        logger.info(
            "call %s ended: %s %s (%.1f s)",
            call.call_id,
            ended.reason.value,
            ended.detail,
            record.duration,
        )

    # The operator's SIP trunk ----------------------------------------------

    async def _invite_trunk(self, ctx: _CallContext) -> None:
        """Our INVITE to the network for an app caller's call to a phone number."""
        assert self._trunk is not None
        call = ctx.call
        device = TRUNK_DEVICE_PREFIX + call.call_id
        self._register(ctx, device)
        try:
            offer = await self._relay.offer_rtp(ctx.leg(device), call_id=call.call_id)
            ctx.sip = await self._trunk.invite(
                to_number=call.callee,
                from_number=call.caller,
                sdp=offer,
                on_event=self._trunk_listener(call.call_id),
            )
        except (TrunkUnavailable, RelayUnavailable) as exc:
            logger.info("call %s: not placed on the trunk: %s", call.call_id, exc)
            ctx.sip_ended = True
            await self._feed(ctx, Fail(self._clock(), wire.Detail.TRUNK_UNAVAILABLE))
            return
        ctx.sip.on_reoffer = self._reoffer_handler(ctx.leg(device))
        if call.state is CallState.ENDED:  # the caller gave up meanwhile
            self._end_trunk_side(ctx)
            return
        await self._feed(ctx, Ring(self._clock(), (device,)))
        self._start_ring_timer(ctx)
        await self._write_live(ctx)

    async def incoming_from_trunk(self, sip_call: IncomingCall) -> None:
        """An INVITE from the network: ring the called app user's devices."""
        if self.admission is not None and self.admission(len(self._calls), "trunk"):
            await sip_call.reject(503, "Overloaded", retry_after=2)
            return
        if self.draining:
            await sip_call.reject(503, "Service Unavailable")
            return
        try:
            callee = self._directory.normalise(sip_call.to_number)
        except InvalidNumberError:
            await sip_call.reject(404, "Not Found")
            return
        if not await self._directory.is_registered(callee):
            await sip_call.reject(404, "Not Found")
            return
        try:
            caller = self._directory.normalise(sip_call.from_number)
        except InvalidNumberError:
            caller = sip_call.from_number[:20] or "anonymous"
        call_id = uuid.uuid4().hex
        call = Call(
            call_id=call_id,
            caller=caller,
            callee=callee,
            caller_device=TRUNK_DEVICE_PREFIX + call_id,
            invited_at=self._clock(),
            ring_timeout=self._ring_timeout,
        )
        ctx = _CallContext(call, None, time.monotonic(), sip=sip_call)
        sip_call.on_event = self._trunk_listener(call.call_id)
        sip_call.on_reoffer = self._reoffer_handler(ctx.leg(call.caller_device))
        busy = await self._busy(callee)
        self._register(ctx, call.caller_device)
        await self._presence.call_started(call.call_id, (caller, callee))
        self._metrics.active_calls.set(len(self._calls))
        async with ctx.lock:
            if self._policy is not None:
                ctx.admission = await self._policy.admit_inbound(call.call_id, caller, callee)
                await self._policy.call_event(ctx.admission, "call.started")
            if busy:
                await self._feed(ctx, Busy(self._clock()))
                return
            try:
                ctx.sip_answer = await self._relay.answer_rtp(
                    ctx.leg(call.caller_device), sip_call.offer_sdp, call_id=call.call_id
                )
            except RelayUnavailable:
                await self._feed(ctx, Fail(self._clock(), wire.Detail.RELAY_UNAVAILABLE))
                return
            except ValueError as exc:
                logger.info("call %s: unusable offer from the network: %s", call.call_id, exc)
                await self._feed(ctx, Fail(self._clock(), wire.Detail.NO_COMMON_CODEC))
                return
            alerted = await self._alert_devices(ctx)
            await self._feed(ctx, Ring(self._clock(), tuple(alerted)))
            if call.state is CallState.RINGING:
                await sip_call.progress(180)
                self._start_ring_timer(ctx)
                await self._write_live(ctx)
                await self._announce_ringing(ctx, devices=len(alerted))

    def _reoffer_handler(self, leg_id: str) -> Callable[[str], Awaitable[str]]:
        """A re-INVITE from the network (hold, resume, a new address) updates its leg."""

        async def reoffer(offer_sdp: str) -> str:
            return await self._relay.update_rtp(leg_id, offer_sdp)

        return reoffer

    def _trunk_listener(self, call_id: str) -> Callable[[CallEvent], None]:
        def on_event(event: CallEvent) -> None:
            self._spawn(self._trunk_event(call_id, event))

        return on_event

    async def _trunk_event(self, call_id: str, event: CallEvent) -> None:
        """What the network did on its side of a call."""
        ctx = self._calls.get(call_id)
        if ctx is None:
            return
        async with ctx.lock:
            call = ctx.call
            device = next((d for d in ctx.legs if is_trunk_device(d)), None)
            if device is None or call.state is CallState.ENDED:
                return
            leg = ctx.leg(device)
            now = self._clock()
            if isinstance(event, TrunkEnded):
                ctx.sip_ended = True
                if call.state is CallState.CONNECTED or device == call.caller_device:
                    await self._feed(ctx, Hangup(now, device))
                    return
                effect = failure_input(event.status, now, device)
                if effect is not None:
                    await self._feed(ctx, effect)
                return
            if call.state is not CallState.RINGING or device == call.caller_device:
                return
            if isinstance(event, Progress):
                if event.sdp:  # early media: the caller hears the network from now on
                    try:
                        await self._relay.accept_rtp_answer(leg, event.sdp)
                    except (ValueError, RelayUnavailable) as exc:
                        logger.info("call %s: unusable early media SDP: %s", call_id, exc)
                    else:
                        self._relay.bridge(ctx.leg(call.caller_device), leg)
                await self._announce_ringing(ctx, status=event.status)
            elif isinstance(event, Answered):
                try:
                    await self._relay.accept_rtp_answer(leg, event.sdp)
                except RelayUnavailable as exc:
                    logger.warning("call %s: no media relay: %s", call_id, exc)
                    await self._feed(ctx, Fail(now, wire.Detail.RELAY_UNAVAILABLE))
                    return
                except ValueError as exc:
                    # The network answered with no usable SDP: the call cannot go on.
                    logger.info("call %s: unusable answer from the network: %s", call_id, exc)
                    await self._feed(ctx, Fail(now, wire.Detail.BAD_SDP_IN_ANSWER))
                    return
                await self._announce_ringing(ctx, status=200)
                await self._feed(ctx, Accept(now, device))

    def _end_trunk_side(self, ctx: _CallContext) -> None:
        """Our side ended: CANCEL, BYE or a final response to the network, once."""
        sip = ctx.sip
        if sip is None or ctx.sip_ended:
            return
        ctx.sip_ended = True
        call = ctx.call
        reason = call.end_reason.value if call.end_reason is not None else EndReason.FAILED.value
        if call.answered_at is not None:
            self._spawn(sip.bye(reason))
        elif isinstance(sip, IncomingCall):
            status, phrase = final_response(call.end_reason, call.end_detail)
            self._spawn(sip.reject(status, phrase))
        else:
            self._spawn(sip.cancel(reason))

    def dtmf_received(self, leg_id: str, digit: str) -> None:
        """Relay callback: a digit (RFC 4733) from the network reaches the app party."""
        owner = self._leg_calls.get(leg_id)
        ctx = self._calls.get(owner[0]) if owner is not None else None
        if ctx is None:
            return
        call = ctx.call
        party = call.callee_device if is_trunk_device(call.caller_device) else call.caller_device
        if party is not None:
            self._spawn(
                self._send(party, wire.encode("call.dtmf", call_id=call.call_id, digit=digit))
            )

    # Operator policy -------------------------------------------------------

    async def _event(self, ctx: _CallContext, type: str, **data: Any) -> None:
        if self._policy is None or ctx.admission is None:
            return
        try:
            await self._policy.call_event(ctx.admission, type, **data)
        except Exception:
            logger.exception("call %s: event %s could not be written", ctx.call.call_id, type)

    def _start_quota_timers(self, ctx: _CallContext) -> None:
        """Warn the caller a minute before the bundle runs out, and end the call then."""
        limit = None if ctx.admission is None else ctx.admission.decision.max_seconds
        if limit is None:
            return
        call_id = ctx.call.call_id
        loop = asyncio.get_running_loop()
        warn_in = max(0.0, limit - WARNING_SECONDS)
        ctx.quota_timers = [
            loop.call_later(warn_in, lambda: self._spawn(self._quota_warning(call_id))),
            loop.call_later(limit, lambda: self._spawn(self._quota_exhausted(call_id))),
        ]

    async def _quota_warning(self, call_id: str) -> None:
        ctx = self._calls.get(call_id)
        if ctx is None:
            return
        async with ctx.lock:
            call = ctx.call
            if call.state is not CallState.CONNECTED or call.answered_at is None:
                return
            limit = ctx.admission.decision.max_seconds if ctx.admission else None
            if limit is None:
                return
            left = max(0, round(call.answered_at + limit - self._clock()))
            self._relay.play_notice(ctx.leg(call.caller_device))
            await self._send(
                call.caller_device,
                wire.encode("call.quota_warning", call_id=call_id, seconds_left=left),
            )
            await self._event(ctx, "call.quota_warning", seconds_left=left)

    async def _quota_exhausted(self, call_id: str) -> None:
        ctx = self._calls.get(call_id)
        if ctx is not None:
            async with ctx.lock:
                await self._feed(
                    ctx, QuotaExhausted(self._clock(), wire.Detail.BUNDLE_MINUTES_USED)
                )

    async def _save(self, record: CallRecord, admission: Admission | None, *, live: bool) -> None:
        """Store the call record, with the operators' events and without the live row."""
        events = None
        if self._policy is not None:
            record = self._policy.rate(admission, record)
            events = self._policy.recorder(admission, record)
        live_calls = self._live if live else None

        async def also(conn: Any) -> None:
            if events is not None:
                await events(conn)
            if live_calls is not None:
                await live_calls.remove(conn, record.call_id)

        try:
            await self._records.save(record, also)
        except Exception:
            logger.exception("call %s: the call record could not be written", record.call_id)
        else:
            if self._policy is not None and events is not None:
                self._policy.committed()

    # Several nodes -----------------------------------------------------------

    async def _busy(self, number: str) -> bool:
        return bool(self._number_calls.get(number)) or await self._presence.busy(number)

    async def _write_live(self, ctx: _CallContext) -> None:
        """The call rings: from now on a crash of this node still ends it on record."""
        if self._live is None or ctx.live:
            return
        call = ctx.call
        admission = ctx.admission
        rating: dict[str, Any] = {}
        if admission is not None:
            rating = {
                "kind": admission.kind.value,
                "decision": dataclasses.asdict(admission.decision),
                "caller_subscribed": admission.caller_subscription is not None,
                "callee_subscribed": admission.callee_subscription is not None,
            }
        try:
            await self._live.ringing(
                LiveCall(
                    call_id=call.call_id,
                    node_id=self._presence.node_id,
                    caller=call.caller,
                    callee=call.callee,
                    caller_device=call.caller_device,
                    callee_device=call.callee_device,
                    invited_at=call.invited_at,
                    ringing_at=call.ringing_at,
                    answered_at=call.answered_at,
                    devices=tuple(sorted(ctx.legs)),
                    rating=rating,
                )
            )
        except Exception:
            logger.exception("call %s: the live call could not be recorded", call.call_id)
        else:
            ctx.live = True

    async def end_orphans(self, node_id: str, last_seen: float) -> None:
        """A node died (or this node restarted after a crash): end its calls on
        record as failed/node_lost, and tell their devices wherever they are now."""
        if self._live is None:
            return
        for live in await self._live.of_node(node_id):
            record = live.record(last_seen, EndReason.FAILED.value, NODE_LOST)
            admission = None
            if self._policy is not None and live.rating:
                admission = await self._policy.restore(
                    live.call_id, live.caller, live.callee, live.rating
                )
            await self._save(record, admission, live=True)
            await self._presence.call_ended(live.call_id, (live.caller, live.callee))
            self._metrics.call_attempts.labels(outcome=EndReason.FAILED.value).inc()
            logger.warning("call %s ended: its node %s is gone", live.call_id, node_id)
            ended = wire.encode(
                "call.ended",
                call_id=live.call_id,
                reason=EndReason.FAILED.value,
                detail=NODE_LOST,
            )
            for device in {live.caller_device, *live.devices} - {""}:
                if not is_trunk_device(device):  # its devices may still be reconnecting
                    await self._send_or_hold(device, ended, ORPHAN_NOTICE_SECONDS)

    # Helpers ---------------------------------------------------------------

    def _register(self, ctx: _CallContext, device_id: str) -> None:
        call = ctx.call
        self._calls[call.call_id] = ctx
        self.idle.clear()
        self._device_calls.setdefault(device_id, set()).add(call.call_id)
        self._leg_calls[ctx.leg(device_id)] = (call.call_id, device_id)
        for number in (call.caller, call.callee):
            self._number_calls.setdefault(number, set()).add(call.call_id)

    async def _find(self, device_id: str, call_id: str, ref: str | None) -> _CallContext | None:
        ctx = self._calls.get(call_id)
        if ctx is None or device_id not in ctx.legs:
            await self._error(device_id, wire.ErrorCode.CALL_NOT_FOUND, "no such call", ref)
            return None
        return ctx

    async def _state_error(self, device_id: str, call: Call, ref: str | None) -> None:
        await self._error(
            device_id,
            wire.ErrorCode.INVALID_STATE,
            f"the call is {call.state.value}"
            if call.state is not CallState.ENDED
            else "the call has ended",
            ref,
        )

    async def _error(self, device_id: str, code: str, message: str, ref: str | None) -> None:
        self._metrics.ws_errors.labels(code=code).inc()
        await self._send(device_id, wire.error(code, message, ref))

    async def _send(self, device_id: str, text: str) -> None:
        if is_trunk_device(device_id):
            return
        held = self._held.get(device_id)
        if held is not None:  # earlier messages are still on their way: keep the order
            if len(held) < MAX_HELD_MESSAGES:
                held.append(text)
            return
        if await self._presence.send(device_id, text):
            return
        if device_id in self._grace_timers:  # away, maybe back soon: keep it for then
            self._held[device_id] = [text]

    async def _send_or_hold(self, device_id: str, text: str, hold_for: float) -> None:
        """Send, or keep ``text`` for when the device is back (for ``hold_for`` seconds)."""
        if device_id in self._held or not await self._presence.send(device_id, text):
            self._held.setdefault(device_id, []).append(text)

            def expire() -> None:
                if device_id not in self._resuming and device_id not in self._grace_timers:
                    self._held.pop(device_id, None)

            asyncio.get_running_loop().call_later(hold_for, expire)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = ["CallService", "EndReason"]
