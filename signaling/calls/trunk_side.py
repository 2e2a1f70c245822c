"""The phone-network side of calls: our INVITEs to the operator's SBC and theirs to us.

The network is one more party of the call (``PhoneNetwork``): the machine, the
records, the policy and the events are the same as for app calls. This module
turns what the trunk (signaling/sip/trunk.py) reports into machine inputs
(sipmap.py maps SIP statuses), and our end of a call into the CANCEL, BYE or
final response the network hears, once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from signaling.calls.context import CallContext, NetworkSide
from signaling.calls.host import CallHost
from signaling.calls.machine import Accept, Busy, CallState, Fail, Hangup, Ring, Unavailable
from signaling.calls.parties import PhoneNetwork
from signaling.calls.ports import InboundSip, Reoffer, Trunk
from signaling.calls.quota import CallEventType, admitted
from signaling.calls.ringing import announce_ringing, answer_caller, ring_devices
from signaling.calls.sipmap import failure_input, final_response
from signaling.identity.service import InvalidNumberError
from signaling.sip.trunk import (
    Answered,
    CallEvent,
    Progress,
    TrunkUnavailable,
)
from signaling.sip.trunk import (
    Ended as TrunkEnded,
)
from voice.relay.api import RelayUnavailable
from wire.reasons import Detail, EndReason

__all__ = ["TrunkSide"]

logger = logging.getLogger("anruf.calls")


class TrunkSide:
    """The network's side of the calls of one CallService (``host``)."""

    def __init__(self, host: CallHost, trunk: Trunk | None) -> None:
        self._host = host
        self._trunk = trunk

    # App user -> phone number ----------------------------------------------------

    async def place(self, ctx: CallContext, offer_sdp: str) -> None:
        """An app caller's call to a phone number: the trunk carries it, if there is one."""
        host = self._host
        if self._trunk is None:
            await host.feed(ctx, Unavailable(host.clock(), Detail.NOT_AN_APP_USER))
        elif not self._trunk.up:
            await host.feed(ctx, Fail(host.clock(), Detail.TRUNK_UNAVAILABLE))
        elif await answer_caller(host, ctx, offer_sdp):
            await self._invite(ctx)

    async def _invite(self, ctx: CallContext) -> None:
        """Our INVITE to the network, with the SDP of a fresh RTP leg."""
        assert self._trunk is not None
        host = self._host
        call = ctx.call
        network = ctx.network = NetworkSide(PhoneNetwork(call.call_id))
        host.register(ctx, network.party)
        leg = ctx.leg(network.party)
        try:
            offer = await host.relay.offer_rtp(leg, call_id=call.call_id)
        except RelayUnavailable as exc:
            network.ended = True
            await host.relay_unavailable(ctx, exc)
            return
        try:
            network.outbound = await self._trunk.invite(
                to_number=call.callee,
                from_number=call.caller,
                sdp=offer,
                on_event=self._listener(call.call_id),
            )
        except TrunkUnavailable as exc:
            logger.info("call %s: not placed on the trunk: %s", call.call_id, exc)
            network.ended = True
            await host.feed(ctx, Fail(host.clock(), Detail.TRUNK_UNAVAILABLE))
            return
        network.outbound.on_reoffer = self._reoffer_handler(call.call_id, leg)
        if call.state is CallState.ENDED:  # the caller gave up meanwhile
            self.end(ctx)
            return
        await host.feed(ctx, Ring(host.clock(), (network.party,)))
        await host.write_live(ctx)

    # Phone number -> app user ----------------------------------------------------

    async def incoming(self, sip_call: InboundSip) -> None:
        """An INVITE from the network: ring the called app user's devices."""
        host = self._host
        if host.refuses_new_call("trunk"):
            await sip_call.reject(503, "Overloaded", retry_after=2)
            return
        if host.draining:
            await sip_call.reject(503, "Service Unavailable")
            return
        try:
            callee = host.directory.normalise(sip_call.to_number)
        except InvalidNumberError:
            await sip_call.reject(404, "Not Found")
            return
        if not await host.directory.is_registered(callee):
            await sip_call.reject(404, "Not Found")
            return
        try:
            caller = host.directory.normalise(sip_call.from_number)
        except InvalidNumberError:
            caller = sip_call.from_number[:20] or "anonymous"
        call_id = uuid.uuid4().hex
        party = PhoneNetwork(call_id)
        ctx = host.new_call(call_id, caller, callee, party, None)
        network = ctx.network = NetworkSide(party, inbound=sip_call)
        sip_call.on_event = self._listener(call_id)
        sip_call.on_reoffer = self._reoffer_handler(call_id, ctx.leg(party))
        busy = await host.busy(callee)
        await host.begin(ctx)
        async with ctx.lock:
            if host.policy is not None:
                ctx.admission = await host.policy.admit_inbound(call_id, caller, callee)
                await host.policy.call_event(ctx.admission, CallEventType.STARTED)
                await host.feed(ctx, admitted(ctx.admission.decision, host.clock()))
            if busy:
                await host.feed(ctx, Busy(host.clock()))
                return
            try:
                network.answer = await host.relay.answer_rtp(
                    ctx.leg(party), sip_call.offer_sdp, call_id=ctx.call.call_id
                )
            except RelayUnavailable as exc:
                await host.relay_unavailable(ctx, exc)
                return
            except ValueError as exc:
                logger.info("call %s: unusable offer from the network: %s", call_id, exc)
                await host.feed(ctx, Fail(host.clock(), Detail.NO_COMMON_CODEC))
                return
            ringing = await ring_devices(host, ctx)
            if ringing is not None:
                await sip_call.progress(180)
                await host.write_live(ctx)
                await announce_ringing(host, ctx, devices=ringing)

    async def answered(self, ctx: CallContext) -> None:
        """An app device answered the network's call: 200 OK with our SDP."""
        network = ctx.network
        if network is not None and network.inbound is not None and network.answer is not None:
            await network.inbound.answer(network.answer)

    # Both ways -------------------------------------------------------------------

    def _reoffer_handler(self, call_id: str, leg_id: str) -> Reoffer:
        """A re-INVITE from the network (hold, resume, a new address) updates its leg."""
        host = self._host

        async def reoffer(offer_sdp: str) -> str:
            try:
                return await host.relay.update_rtp(leg_id, offer_sdp)
            except RelayUnavailable as exc:
                host.spawn(self._relay_lost(call_id, exc))
                raise  # the re-INVITE fails too

        return reoffer

    async def _relay_lost(self, call_id: str, exc: RelayUnavailable) -> None:
        ctx = self._host.context(call_id)
        if ctx is not None:
            async with ctx.lock:
                await self._host.relay_unavailable(ctx, exc)

    def _listener(self, call_id: str) -> Callable[[CallEvent], None]:
        def on_event(event: CallEvent) -> None:
            self._host.spawn(self._event(call_id, event))

        return on_event

    async def _event(self, call_id: str, event: CallEvent) -> None:
        """What the network did on its side of a call."""
        host = self._host
        ctx = host.context(call_id)
        if ctx is None:
            return
        async with ctx.lock:
            call = ctx.call
            network = ctx.network
            if network is None or network.party not in ctx.legs or call.state is CallState.ENDED:
                return
            party = network.party
            leg = ctx.leg(party)
            now = host.clock()
            if isinstance(event, TrunkEnded):
                network.ended = True
                if call.state is CallState.CONNECTED or party == call.caller_device:
                    await host.feed(ctx, Hangup(now, party))
                    return
                effect = failure_input(event.status, now, party)
                if effect is not None:
                    await host.feed(ctx, effect)
                return
            if call.state is not CallState.RINGING or party == call.caller_device:
                return
            if isinstance(event, Progress):
                if event.sdp:  # early media: the caller hears the network from now on
                    taken = await self._take_sdp(ctx, leg, event.sdp, "early media SDP")
                    if taken is None:
                        return
                    if taken:
                        host.relay.bridge(ctx.leg(call.caller_device), leg)
                await announce_ringing(host, ctx, status=event.status)
            elif isinstance(event, Answered):
                taken = await self._take_sdp(ctx, leg, event.sdp, "answer from the network")
                if taken is None:
                    return
                if not taken:  # the network answered with no usable SDP: the call cannot go on
                    await host.feed(ctx, Fail(now, Detail.BAD_SDP_IN_ANSWER))
                    return
                await announce_ringing(host, ctx, status=200)
                await host.feed(ctx, Accept(now, party))

    async def _take_sdp(self, ctx: CallContext, leg: str, sdp: str, what: str) -> bool | None:
        """The network's SDP (early media or its answer) for its leg: True when the relay
        took it, False when it is unusable, None when the relay is out (the call ended)."""
        try:
            await self._host.relay.accept_rtp_answer(leg, sdp)
        except RelayUnavailable as exc:
            await self._host.relay_unavailable(ctx, exc)
            return None
        except ValueError as exc:
            logger.info("call %s: unusable %s: %s", ctx.call.call_id, what, exc)
            return False
        return True

    def end(self, ctx: CallContext) -> None:
        """Our side ended: CANCEL, BYE or a final response to the network, once."""
        network = ctx.network
        if network is None or network.ended:
            return
        sip = network.inbound or network.outbound
        if sip is None:
            return
        network.ended = True
        call = ctx.call
        reason = call.end_reason.value if call.end_reason is not None else EndReason.FAILED
        if call.answered_at is not None:
            self._host.spawn(sip.bye(reason))
        elif network.inbound is not None:
            status, phrase = final_response(call.end_reason, call.end_detail)
            self._host.spawn(network.inbound.reject(status, phrase))
        elif network.outbound is not None:
            self._host.spawn(network.outbound.cancel(reason))
