"""Ringing a call, both ways: the caller's leg, the callee's devices, "it rings".

An app user's call (placing.py) and the phone network's call to an app user
(trunk_side.py) ring the same way: the relay answers the caller's offer
(call.progress, ringback as early media), the callee's online devices are
offered the call (call.incoming), and the caller hears once that it rings.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import wire
from signaling.calls.context import CallContext
from signaling.calls.host import CallHost
from signaling.calls.machine import CallState, Fail, Ring
from signaling.calls.parties import AppDevice, Party, PhoneNetwork
from signaling.calls.quota import CallEventType
from signaling.carrier.rating import CallKind
from voice.relay.api import NoOpusError, RelayUnavailable
from wire.reasons import Detail

__all__ = ["announce_ringing", "answer_caller", "ring_devices"]

logger = logging.getLogger("anruf.calls")


async def answer_caller(host: CallHost, ctx: CallContext, offer_sdp: str) -> bool:
    """The relay answers the caller's offer (call.progress) and plays ringback."""
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
        wire.CallProgress(
            call.call_id,
            call.callee,
            answer,
            phone_network=ctx.admission is not None and ctx.admission.kind is CallKind.PHONE,
            ref=ctx.invite_ref,
        ),
    )
    host.relay.start_ringback(ctx.leg(call.caller_device))
    return True


async def ring_devices(host: CallHost, ctx: CallContext) -> int | None:
    """Offer the call to the callee's devices: how many ring, or None when the call
    does not ring (no device could take it, or the relay is out: it has ended)."""
    alerted = await _alert_devices(host, ctx)
    if alerted is None:
        return None
    await host.feed(ctx, Ring(host.clock(), tuple(alerted)))
    return len(alerted) if ctx.call.state is CallState.RINGING else None


async def _alert_devices(host: CallHost, ctx: CallContext) -> list[Party] | None:
    """Offer the call to every online device of the callee that is not busy; None
    when the relay is out (the call has ended failed/relay_unavailable)."""
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
            wire.CallIncoming(
                call.call_id,
                call.caller,
                offer,
                phone_network=isinstance(call.caller_device, PhoneNetwork),
            ),
        )
    return alerted


async def announce_ringing(host: CallHost, ctx: CallContext, **data: Any) -> None:
    """The caller hears that the callee's phone rings (once per call)."""
    if ctx.ringing_announced:
        return
    ctx.ringing_announced = True
    call = ctx.call
    await host.send(call.caller_device, wire.CallRinging(call.call_id))
    host.metrics.setup_seconds.observe(time.monotonic() - ctx.started)
    await host.event(ctx, CallEventType.RINGING, **data)
