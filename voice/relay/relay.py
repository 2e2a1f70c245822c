"""The media relay: anchors each device's WebRTC leg and forwards Opus between legs.

Packets are forwarded encoded, never decoded (ARCHITECTURE: a relay must not
route audio through aiortc's jitter buffer); see voice/relay/leg.py for how
aiortc is used for ICE and DTLS-SRTP only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from aiortc import RTCPeerConnection, RTCSessionDescription

from voice.ice import ice_configuration, rewrite_candidate_addresses
from voice.relay.api import (
    LegStats,
    MediaRelay,
    NoCommonCodecError,
    NoOpusError,
    UnknownLegError,
)
from voice.relay.avp import choose_codec, parse_audio
from voice.relay.leg import FRAME_SAMPLES, Leg
from voice.relay.ringback import FRAME_DURATION, notice_payloads, ringback_cycle
from voice.relay.rtp_leg import RtpLeg
from voice.relay.sdp import check_dtls_fingerprint, opus_payload_types

__all__ = ["LegStats", "NoCommonCodecError", "NoOpusError", "Relay", "UnknownLegError"]

logger = logging.getLogger(__name__)

# A pacer that fell this far behind (a stalled loop) restarts its clock
# instead of sending a burst the receiver would have to absorb.
MAX_PACER_LAG = 0.2


class Relay:
    """The in-process backend of the relay contract (voice.relay.api.MediaRelay).

    Legs live in this process; `call_id` is accepted for the contract and
    unused (every leg here can be bridged to every other).
    """

    def __init__(
        self,
        *,
        bind_address: str,
        announce_address: str = "",
        ice_servers: Sequence[str] = (),
        media_timeout: float = 20.0,
        on_leg_failed: Callable[[str, str], None] | None = None,
        connect_timeout: float = 10.0,
        on_dtmf: Callable[[str, str], None] | None = None,
    ) -> None:
        # bind_address is applied process-wide by voice.ice.restrict_host_addresses
        # (aioice has no per-connection setting); here it names what to rewrite.
        self.bind_address = bind_address
        self.announce_address = announce_address
        self.ice_servers = tuple(ice_servers)
        self.media_timeout = media_timeout
        self.connect_timeout = connect_timeout
        self.on_leg_failed = on_leg_failed
        self._legs: dict[str, Leg] = {}
        self._ringback_sources = 0
        #: (leg_id, digit) once per RFC 4733 event received on an RTP leg.
        self.on_dtmf = on_dtmf
        self._rtp_legs: dict[str, RtpLeg] = {}
        self._rtp_watchdogs: dict[str, asyncio.Task[None]] = {}

    @property
    def active_legs(self) -> int:
        return len(self._legs) + len(self._rtp_legs)

    # -- negotiation -------------------------------------------------------

    async def answer(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        """Answer a device's offer (the caller's leg); returns the relay's answer SDP."""
        opus_payload_types(offer_sdp)
        check_dtls_fingerprint(offer_sdp)
        leg = self._create_leg(leg_id)
        try:
            await leg.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await leg.pc.setLocalDescription(await leg.pc.createAnswer())
        except Exception as exc:
            await self.close_leg(leg_id)
            raise ValueError(f"leg {leg_id}: cannot use offer SDP: {exc}") from exc
        leg.negotiated_at = asyncio.get_running_loop().time()
        return self._local_sdp(leg)

    async def offer(self, leg_id: str, *, call_id: str = "") -> str:
        """Create the relay's offer for a device (a callee's leg)."""
        leg = self._create_leg(leg_id)
        await leg.pc.setLocalDescription(await leg.pc.createOffer())
        return self._local_sdp(leg)

    async def accept_answer(self, leg_id: str, answer_sdp: str) -> None:
        """Apply the device's answer to the relay's offer; media starts flowing."""
        leg = self._leg(leg_id)
        opus_payload_types(answer_sdp)
        check_dtls_fingerprint(answer_sdp)
        try:
            await leg.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except Exception as exc:
            raise ValueError(f"leg {leg_id}: cannot use answer SDP: {exc}") from exc
        leg.negotiated_at = asyncio.get_running_loop().time()

    def _new_leg(self, leg_id: str, pc: RTCPeerConnection) -> Leg:
        """The leg object for a new peer connection (a subclass may decode instead)."""
        return Leg(leg_id, pc, self._leg_failed)

    def _create_leg(self, leg_id: str) -> Leg:
        if leg_id in self._legs:
            raise ValueError(f"leg {leg_id} already exists")
        pc = RTCPeerConnection(configuration=ice_configuration(self.ice_servers))
        leg = self._new_leg(leg_id, pc)
        # Opus only: both legs must speak it for packets to be forwarded as they are.
        leg.use_opus_only()

        @pc.on("connectionstatechange")
        def on_connection_state() -> None:
            leg.on_connection_state(pc.connectionState)

        watch = leg.watch_media(self.media_timeout, self.connect_timeout)
        leg.watchdog_task = asyncio.create_task(watch)
        self._legs[leg_id] = leg
        return leg

    def _local_sdp(self, leg: Leg) -> str:
        description = leg.pc.localDescription
        return rewrite_candidate_addresses(
            description.sdp, self.bind_address, self.announce_address
        )

    def _leg(self, leg_id: str) -> Leg:
        try:
            return self._legs[leg_id]
        except KeyError:
            raise UnknownLegError(f"unknown leg {leg_id}") from None

    def _leg_failed(self, leg: Leg, detail: str) -> None:
        if leg.closed or leg.failed:
            return
        leg.failed = True
        logger.info("leg %s failed: %s", leg.leg_id, detail)
        if self.on_leg_failed is not None:
            try:
                self.on_leg_failed(leg.leg_id, detail)
            except Exception:
                logger.exception("on_leg_failed(%s, %s) raised", leg.leg_id, detail)

    # -- media -------------------------------------------------------------

    def start_ringback(self, leg_id: str) -> None:
        """Play the ringback tone to this leg as early media (from when it connects)."""
        leg = self._leg(leg_id)
        if leg.ringback_task is not None and not leg.ringback_task.done():
            return
        self._ringback_sources += 1
        source = ("ringback", self._ringback_sources)
        leg.ringback_task = asyncio.create_task(self._play_ringback(leg, source))

    def stop_ringback(self, leg_id: str) -> None:
        leg = self._legs.get(leg_id)
        if leg is not None and leg.ringback_task is not None:
            leg.ringback_task.cancel()
            leg.ringback_task = None

    async def _play_ringback(self, leg: Leg, source: tuple[str, int]) -> None:
        payloads = ringback_cycle()
        loop = asyncio.get_running_loop()
        # The cadence starts when the caller can hear it, i.e. with the tone.
        while not leg.connected:
            if leg.closed:
                return
            await asyncio.sleep(FRAME_DURATION)
        deadline = loop.time()
        index = 0
        while not leg.closed:
            payload = payloads[index % len(payloads)]
            await leg.send(
                source,
                index & 0xFFFF,
                (index * FRAME_SAMPLES) & 0xFFFFFFFF,
                int(index % len(payloads) == 0),
                payload,
            )
            index += 1
            deadline += FRAME_DURATION
            delay = deadline - loop.time()
            if delay < -MAX_PACER_LAG:
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    def play_notice(self, leg_id: str) -> None:
        """Play the short notice tone to this leg over the call (its peer's audio pauses)."""
        leg = self._legs.get(leg_id)
        if leg is None or leg.closed or leg.notice_task is not None:
            return
        self._ringback_sources += 1
        source = ("notice", self._ringback_sources)
        leg.notice_task = asyncio.create_task(self._play_notice(leg, source))

    async def _play_notice(self, leg: Leg, source: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        try:
            for index, payload in enumerate(notice_payloads()):
                if leg.closed:
                    return
                await leg.send(
                    source,
                    index,
                    index * FRAME_SAMPLES,
                    int(index == 0),
                    payload,
                )
                deadline += FRAME_DURATION
                await asyncio.sleep(max(0.0, deadline - loop.time()))
        finally:
            leg.notice_task = None

    def bridge(self, a: str, b: str) -> None:
        """Forward Opus packets between legs a and b both ways; ends ringback on both."""
        if a == b:
            raise ValueError("cannot bridge a leg to itself")
        if a in self._rtp_legs or b in self._rtp_legs:
            self._bridge_rtp(a, b)
            return
        leg_a, leg_b = self._leg(a), self._leg(b)
        for leg in (leg_a, leg_b):
            self._unbridge_rtp(leg.leg_id)
            self.stop_ringback(leg.leg_id)
            if leg.peer is not None and leg.peer not in (leg_a, leg_b):
                leg.peer.peer = None
        leg_a.peer = leg_b
        leg_b.peer = leg_a

    # -- stats and teardown -------------------------------------------------

    def stats(self, leg_id: str) -> LegStats:
        """Current counters of a leg; zero stats for an unknown leg."""
        rtp_leg = self._rtp_legs.get(leg_id)
        if rtp_leg is not None:
            return _rtp_stats(rtp_leg)
        leg = self._legs.get(leg_id)
        return _stats(leg) if leg is not None else LegStats()

    async def close_leg(self, leg_id: str) -> LegStats:
        """Close a leg (idempotent) and return its final stats."""
        if leg_id in self._rtp_legs:
            return await self._close_rtp_leg(leg_id)
        leg = self._legs.pop(leg_id, None)
        if leg is None:
            return LegStats()
        self._unbridge_rtp(leg_id)
        # Closed first: no failure callback and no more forwarding from here on.
        leg.closed = True
        if leg.peer is not None:
            leg.peer.peer = None
            leg.peer = None
        tasks = (leg.ringback_task, leg.watchdog_task, leg.notice_task)
        for task in tasks:
            if task is not None:
                task.cancel()
        final = _stats(leg)
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await leg.pc.close()
        return final

    async def close(self) -> None:
        for leg_id in list(self._legs) + list(self._rtp_legs):
            await self.close_leg(leg_id)

    # -- plain-RTP legs (SIP trunk: RTP/AVP, G.711 or Opus, RFC 4733) -------------

    async def offer_rtp(self, leg_id: str, *, call_id: str = "") -> str:
        """Our SDP offer for an RTP leg (for an INVITE to the operator)."""
        leg = await self._create_rtp_leg(leg_id)
        return leg.offer_sdp()

    async def answer_rtp(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        """Answer the operator's offer: Opus if offered, else PCMA, else PCMU.

        ValueError for an unusable SDP, NoCommonCodecError (a ValueError) when
        no codec fits; no leg is left behind then.
        """
        choose_codec(parse_audio(offer_sdp))
        leg = await self._create_rtp_leg(leg_id)
        try:
            return leg.answer_offer(offer_sdp)
        except Exception:
            await self.close_leg(leg_id)
            raise

    async def accept_rtp_answer(self, leg_id: str, answer_sdp: str) -> None:
        """Apply the operator's answer to offer_rtp (183 early media, then 200: both fine)."""
        self._rtp_leg(leg_id).apply_answer(answer_sdp)

    async def update_rtp(self, leg_id: str, offer_sdp: str) -> str:
        """A re-INVITE's offer (hold, resume, a new address); returns our answer."""
        return self._rtp_leg(leg_id).answer_offer(offer_sdp)

    def send_dtmf(self, leg_id: str, digits: str) -> None:
        """Send RFC 4733 events on an RTP leg; ignored (logged) without telephone-event."""
        if leg_id in self._legs:
            logger.info("leg %s is a WebRTC leg: DTMF %r not sent", leg_id, digits)
            return
        self._rtp_leg(leg_id).send_dtmf(digits)

    def rtp_leg(self, leg_id: str) -> RtpLeg:
        """The RTP leg itself (tests and benchmarks look at its counters)."""
        return self._rtp_leg(leg_id)

    def _rtp_leg(self, leg_id: str) -> RtpLeg:
        try:
            return self._rtp_legs[leg_id]
        except KeyError:
            raise UnknownLegError(f"unknown RTP leg {leg_id}") from None

    async def _create_rtp_leg(self, leg_id: str) -> RtpLeg:
        if leg_id in self._legs or leg_id in self._rtp_legs:
            raise ValueError(f"leg {leg_id} already exists")
        leg = RtpLeg(
            leg_id,
            bind_address=self.bind_address,
            announce_address=self.announce_address,
            on_dtmf=self._dtmf_received,
        )
        await leg.open()
        if leg_id in self._legs or leg_id in self._rtp_legs:
            await leg.close()
            raise ValueError(f"leg {leg_id} already exists")
        self._rtp_legs[leg_id] = leg

        def failed(detail: str) -> None:
            self._rtp_leg_failed(leg, detail)

        self._rtp_watchdogs[leg_id] = asyncio.create_task(
            leg.watch_media(self.media_timeout, failed)
        )
        return leg

    def _dtmf_received(self, leg_id: str, digit: str) -> None:
        if self.on_dtmf is not None:
            self.on_dtmf(leg_id, digit)

    def _rtp_leg_failed(self, leg: RtpLeg, detail: str) -> None:
        if leg.closed or self._rtp_legs.get(leg.leg_id) is not leg:
            return
        logger.info("RTP leg %s failed: %s", leg.leg_id, detail)
        if self.on_leg_failed is not None:
            try:
                self.on_leg_failed(leg.leg_id, detail)
            except Exception:
                logger.exception("on_leg_failed(%s, %s) raised", leg.leg_id, detail)

    def _bridge_rtp(self, a: str, b: str) -> None:
        """Bridge a WebRTC leg and an RTP leg (either order): transcoded or forwarded."""
        if a in self._rtp_legs and b in self._rtp_legs:
            raise ValueError(f"legs {a} and {b} are both RTP legs: nothing to bridge them")
        rtp_leg = self._rtp_legs[a] if a in self._rtp_legs else self._rtp_legs[b]
        leg = self._leg(b if a in self._rtp_legs else a)
        self.stop_ringback(leg.leg_id)
        if leg.peer is not None:
            leg.peer.peer = None
            leg.peer = None
        self._unbridge_rtp(leg.leg_id)
        rtp_leg.attach(leg)

    def _unbridge_rtp(self, leg_id: str) -> None:
        """Detach the WebRTC leg `leg_id` from the RTP leg it is bridged to, if any."""
        for rtp_leg in self._rtp_legs.values():
            if rtp_leg.peer is not None and rtp_leg.peer.leg_id == leg_id:
                rtp_leg.detach()

    async def _close_rtp_leg(self, leg_id: str) -> LegStats:
        leg = self._rtp_legs.pop(leg_id)
        watchdog = self._rtp_watchdogs.pop(leg_id, None)
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        final = _rtp_stats(leg)
        await leg.close()
        return final


def _rtp_stats(leg: RtpLeg) -> LegStats:
    # An RTP leg drops what comes from a source other than its peer's.
    return _leg_stats(leg, dropped=leg.packets_foreign)


def _stats(leg: Leg) -> LegStats:
    return _leg_stats(leg, dropped=leg.packets_dropped)


def _leg_stats(leg: Leg | RtpLeg, dropped: int) -> LegStats:
    reception = leg.reception
    return LegStats(
        packets_received=reception.packets_received,
        packets_sent=leg.packets_sent,
        packets_lost=reception.packets_lost,
        bytes_received=reception.bytes_received,
        bytes_sent=leg.bytes_sent,
        jitter_ms=round(reception.jitter_ms, 3),
        rtt_ms=None if leg.rtt is None else round(leg.rtt * 1000.0, 3),
        packets_dropped=dropped,
    )


def _keeps_the_contract(relay: Relay) -> MediaRelay:
    return relay  # checked by mypy: the in-process Relay is a MediaRelay
