"""Placing a call: an app device's call.invite up to the moment it rings.

The number is normalised; self-calls, a busy callee and refusals (this node
overloaded or draining, the caller's operator) are settled at once; an app
user's call rings (ringing.py), a phone number goes to the trunk side.
"""

from __future__ import annotations

import logging
import uuid

import wire
from signaling.calls.context import CallContext
from signaling.calls.host import CallHost
from signaling.calls.machine import Busy, EndReason
from signaling.calls.parties import AppDevice
from signaling.calls.quota import CallEventType, admitted, refusal
from signaling.calls.ringing import announce_ringing, answer_caller, ring_devices
from signaling.calls.trunk_side import TrunkSide
from signaling.carrier.rating import CallKind
from signaling.identity.service import InvalidNumberError
from wire.reasons import Detail

__all__ = ["CallPlacing"]

logger = logging.getLogger("anruf.calls")


class CallPlacing:
    """The setup of the calls of one CallService (``host``); a phone number's calls
    go on at the trunk side (``network``)."""

    def __init__(self, host: CallHost, network: TrunkSide) -> None:
        self._host = host
        self._network = network

    async def invite(self, device_id: str, number: str, message: wire.CallInvite) -> None:
        """An app device calls ``message.to`` (the caller's own number is ``number``)."""
        host = self._host
        ref = message.id
        caller = AppDevice(device_id)
        if host.refuses_new_call("app"):
            call_id = uuid.uuid4().hex  # refused before it began: no record, no relay
            ended = wire.CallEnded(call_id, EndReason.FAILED.value, Detail.OVERLOADED, ref=ref)
            await host.send(caller, ended)
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
            await host.policy.call_event(admission, CallEventType.STARTED)
            decision = admission.decision
            if not decision.allowed:
                logger.info("call %s refused by policy: %s", call.call_id, decision.reason)
                await host.feed(ctx, refusal(decision, host.clock()))
                return
            await host.feed(ctx, admitted(decision, host.clock()))
        if not registered:
            # A phone number: the operator's trunk carries it, if there is one.
            await self._network.place(ctx, offer_sdp)
            return
        if not await answer_caller(host, ctx, offer_sdp):
            return
        ringing = await ring_devices(host, ctx)
        if ringing is not None:
            await host.write_live(ctx)
            await announce_ringing(host, ctx, devices=ringing)
