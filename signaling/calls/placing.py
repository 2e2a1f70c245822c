"""Placing a call: an app device's call.invite up to the moment it rings.

The number is normalised; self-calls, a busy callee and refusals (this node
overloaded or draining, the caller's operator) are settled at once; the relay
answers the caller's offer (call.progress, ringback as early media); an app
user's online devices are offered the call (call.incoming), a phone number goes
to the trunk side. The phone network's calls to app users ring the same way.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import wire
from signaling.calls.context import CallContext
from signaling.calls.machine import Busy, CallState, EndReason, Fail, Ring
from signaling.calls.parties import AppDevice, Party, PhoneNetwork
from signaling.calls.quota import admitted, refusal
from signaling.carrier.rating import CallKind
from signaling.identity.service import InvalidNumberError
from voice.relay.api import NoOpusError, RelayUnavailable
from wire.reasons import Detail

if TYPE_CHECKING:
    from signaling.calls.service import CallService

__all__ = ["CallPlacing"]

logger = logging.getLogger("anruf.calls")


class CallPlacing:
    """The setup of the calls of one CallService (``host``)."""

    def __init__(self, host: CallService) -> None:
        self._host = host

    async def invite(self, device_id: str, number: str, message: wire.CallInvite) -> None:
        """An app device calls ``message.to`` (the caller's own number is ``number``)."""
        host = self._host
        ref = message.id
        caller = AppDevice(device_id)
        if host.refuses_new_call("app"):
            ended = {"reason": EndReason.FAILED.value, "detail": Detail.OVERLOADED}
            call_id = uuid.uuid4().hex  # refused before it began: no record, no relay
            await host.send(caller, wire.encode("call.ended", ref=ref, call_id=call_id, **ended))
            return
        try:
            callee = host.directory.normalise(message.to, message.region)
        except InvalidNumberError as exc:
            await host.error(device_id, wire.ErrorCode.INVALID_NUMBER, exc.detail, ref)
            return
        if callee == number:
            await host.error(device_id, wire.ErrorCode.SELF_CALL, "cannot call yourself", ref)
            return
        if host.in_a_call(caller):
            await host.error(
                device_id, wire.ErrorCode.INVALID_STATE, "this device is already in a call", ref
            )
            return
        if host.draining:
            await host.error(device_id, wire.ErrorCode.DRAINING, "this server is restarting", ref)
            return
        call_id = uuid.uuid4().hex
        ctx = host.new_call(call_id, number, callee, caller, ref)
        busy = await host.busy(callee)
        await host.begin(ctx)
        async with ctx.lock:
            if busy:
                await host.feed(ctx, Busy(host.clock()))
            else:
                await self._place(ctx, message.sdp)

    async def _place(self, ctx: CallContext, offer_sdp: str) -> None:
        host = self._host
        call = ctx.call
        registered = await host.directory.is_registered(call.callee)
        if host.policy is not None:
            kind = CallKind.APP if registered else CallKind.PHONE
            admission = await host.policy.admit(call.call_id, call.caller, call.callee, kind)
            ctx.admission = admission
            await host.policy.call_event(admission, "call.started")
            decision = admission.decision
            if not decision.allowed:
                logger.info("call %s refused by policy: %s", call.call_id, decision.reason)
                await host.feed(ctx, refusal(decision, host.clock()))
                return
            await host.feed(ctx, admitted(decision, host.clock()))
        if not registered:
            # A phone number: the operator's trunk carries it, if there is one.
            await host.trunk_side.place(ctx, offer_sdp)
            return
        if not await self.answer_caller(ctx, offer_sdp):
            return
        alerted = await self.alert_devices(ctx)
        if alerted is None:
            return
        await host.feed(ctx, Ring(host.clock(), tuple(alerted)))
        if call.state is CallState.RINGING:
            await host.write_live(ctx)
            await self.announce_ringing(ctx, devices=len(alerted))

    async def answer_caller(self, ctx: CallContext, offer_sdp: str) -> bool:
        """The relay answers the caller's offer (call.progress) and plays ringback."""
        host = self._host
        call = ctx.call
        try:
            answer = await host.relay.answer(
                ctx.leg(call.caller_device), offer_sdp, call_id=call.call_id
            )
        except NoOpusError:
            await host.feed(ctx, Fail(host.clock(), Detail.NO_OPUS_IN_OFFER))
            return False
        except RelayUnavailable as exc:
            await host.relay_unavailable(ctx, exc)
            return False
        except ValueError as exc:
            logger.info("call %s: unusable offer: %s", call.call_id, exc)
            await host.feed(ctx, Fail(host.clock(), Detail.BAD_SDP))
            return False
        if call.state is CallState.ENDED:  # hung up while the relay answered
            return False
        await host.send(
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
        host.relay.start_ringback(ctx.leg(call.caller_device))
        return True

    async def alert_devices(self, ctx: CallContext) -> list[Party] | None:
        """Offer the call to every online device of the callee that is not busy; None
        when the relay is out (the call has ended failed/relay_unavailable)."""
        host = self._host
        call = ctx.call
        alerted: list[Party] = []
        for device_id in await host.presence.devices(call.callee):
            device = AppDevice(device_id)
            if host.in_a_call(device):  # on this call or another: do not ring it
                continue
            try:
                offer = await host.relay.offer(ctx.leg(device), call_id=call.call_id)
            except RelayUnavailable as exc:
                ctx.legs.pop(device, None)
                if alerted:  # they were offered the call: they hear it end too
                    await host.feed(ctx, Ring(host.clock(), tuple(alerted)))
                await host.relay_unavailable(ctx, exc)
                return None
            except Exception:
                logger.exception("call %s: no relay leg for device %s", call.call_id, device)
                continue
            host.register(ctx, device)
            alerted.append(device)
            await host.send(
                device,
                wire.encode(
                    "call.incoming",
                    call_id=call.call_id,
                    **{"from": call.caller},
                    sdp=offer,
                    phone_network=isinstance(call.caller_device, PhoneNetwork),
                ),
            )
        return alerted

    async def announce_ringing(self, ctx: CallContext, **data: Any) -> None:
        """The caller hears that the callee's phone rings (once per call)."""
        host = self._host
        if ctx.ringing_announced:
            return
        ctx.ringing_announced = True
        call = ctx.call
        await host.send(call.caller_device, wire.encode("call.ringing", call_id=call.call_id))
        host.metrics.setup_seconds.observe(time.monotonic() - ctx.started)
        await host.event(ctx, "call.ringing", **data)
