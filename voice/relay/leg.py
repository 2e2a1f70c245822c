"""One WebRTC leg of the relay: aiortc does ICE and DTLS-SRTP, we do the RTP.

aiortc's RTCRtpReceiver would put every packet through its jitter buffer
(80-280 ms, aiortc issue 543) and decoder; its RTCRtpSender would encode a
track. A relay needs neither, so after negotiation packets are taken from,
and handed to, the leg's RTCDtlsTransport directly, through the seams into
aiortc 1.16 that voice/relay/seams.py holds (`_install_seams` below):

- the receiver's RTP/RTCP handlers: the DTLS transport's RtpRouter calls
  these for each unprotected packet; ours shadow them, so packets never
  reach the jitter buffer or decoder.
- the sender's RTCP handler: receiver reports about our SSRC (for RTT).
- the sender's RTCP loop: aiortc's would send sender reports counting zero
  packets (it never sent any); ours reports the stream we actually send.
- the DTLS transport's send: SRTP-protects and sends on the ICE pair.

The sender gets a track that never yields a frame, so aiortc's own RTP loop
stays idle while the m-line is negotiated sendrecv.

Once a bridged leg and its peer are connected, their RTP skips even this:
voice/relay/fastpath.py intercepts it at the nominated pair's socket and
forwards it with the SRTP sessions aiortc set up (`Leg.ensure_fast_path`).
The path above stays the fallback and carries RTCP, ringback and anything
the fast path does not take. What the fast path may change on a leg is
public here (voice.relay.fastpath.ForwardingLeg): `received_on_fast_path`,
`count_sent` and `rewriter`; it reads `peer`, `notice_task`, `closed`,
`payload_type`, `ssrc`, `mid` and `ensure_fast_path()`.

`RtpPeer` holds these seams, the send path and RTCP; `Leg` adds what the
relay needs on top (forwarding to the peer leg, failure detection). The load
generator's endpoints (voice/loadtest/line.py) are RtpPeers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Hashable
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import (
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)

from voice.relay import fastpath, seams
from voice.relay.fastpath import FastPath
from voice.rtp.rewriter import StreamRewriter
from voice.rtp.rtcp import compact_ntp, delay_since_last_sr, ntp_timestamp, round_trip_time
from voice.rtp.stats import ReceptionStatistics
from wire.reasons import MediaFailure

logger = logging.getLogger(__name__)

CLOCK_RATE = 48000
#: Datagrams aioice may hold for aiortc's receive loop, per leg (about 1 s of audio).
RECEIVE_QUEUE_LIMIT = 64
FRAME_SAMPLES = 960
# RFC 3550 §6.2: mean report interval; audio-only legs are cheap to report on.
RTCP_INTERVAL = 1.0
# Smoothing of RTT samples, as aiortc's sender does.
RTT_ALPHA = 0.85


class SilentTrack(MediaStreamTrack):
    """An audio track that never produces a frame: the relay sends its own RTP."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._never = asyncio.Event()

    async def recv(self) -> Any:
        await self._never.wait()
        raise AssertionError("unreachable")


class RtpPeer:
    """Raw RTP over one RTCPeerConnection: aiortc negotiates ICE and DTLS-SRTP only.

    The relay's legs and the load generator's endpoints both build on this:
    packets are received through `on_rtp` (before aiortc's jitter buffer and
    decoder) and sent with `send`; RTCP sender reports describe the stream
    actually sent and RTT comes from the peer's receiver reports.
    """

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.transceiver: RTCRtpTransceiver = pc.addTransceiver(SilentTrack(), direction="sendrecv")
        self.sender: RTCRtpSender = self.transceiver.sender
        self.ssrc: int = seams.sender_ssrc(self.sender)
        self.rewriter = StreamRewriter(
            initial_sequence_number=random.randrange(1 << 15),
            initial_timestamp=random.randrange(1 << 32),
            clock_rate=CLOCK_RATE,
            frame_samples=FRAME_SAMPLES,
        )
        self.reception = ReceptionStatistics(CLOCK_RATE)
        self.packets_sent = 0
        self.bytes_sent = 0
        self.rtt: float | None = None
        self.closed = False
        self.decoder_bypassed_packets = 0
        self._remote_ssrc: int | None = None
        self._last_sr_lsr = 0
        self._last_sr_arrival: float | None = None
        self._last_send_time = 0.0
        self._loop = asyncio.get_running_loop()
        self._install_seams()

    def use_opus_only(self) -> None:
        """Offer/answer Opus alone: packets are forwarded or replayed as Opus as they are."""
        capabilities = RTCRtpSender.getCapabilities("audio")
        self.transceiver.setCodecPreferences(
            [codec for codec in capabilities.codecs if codec.mimeType.lower() == "audio/opus"]
        )

    # -- aiortc seams ------------------------------------------------------

    def _install_seams(self) -> None:
        seams.install_peer_seams(
            self.transceiver.receiver,
            self.sender,
            rtp=self._handle_rtp_packet,
            receiver_rtcp=self._handle_rtcp_from_receiver,
            sender_rtcp=self._handle_rtcp_from_sender,
            run_rtcp=self._run_rtcp,
        )

    @property
    def payload_type(self) -> int:
        """The Opus payload type negotiated on this leg (codec preferences leave only Opus)."""
        payload_type = seams.negotiated_payload_type(self.transceiver)
        assert payload_type is not None, "payload types are set once negotiated"
        return payload_type

    @property
    def mid(self) -> str | None:
        return self.transceiver.mid

    @property
    def connected(self) -> bool:
        return bool(self.sender.transport.state == "connected")

    @property
    def remote_ssrc(self) -> int | None:
        """The SSRC of the stream the device sends, once a packet of it arrived."""
        return self._remote_ssrc

    def now(self) -> float:
        """The leg's clock (its event loop's), in seconds."""
        return self._loop.time()

    def count_received(
        self, ssrc: int, sequence_number: int, timestamp: int, arrival: float, size: int
    ) -> None:
        """One RTP packet of the device's stream, taken before aiortc's jitter buffer
        (at the receiver seam or on the fast path): reception statistics (RFC 3550
        A.3, A.8) and the SSRC our reports describe. `size`: payload octets."""
        self.decoder_bypassed_packets += 1
        self._remote_ssrc = ssrc
        self.reception.receive(sequence_number, timestamp, arrival, size)

    def count_sent(self, size: int, now: float) -> None:
        """One packet of `size` payload octets sent on this leg's stream outside `send`
        (the fast path, an RTP leg's bridge): counters and our sender reports' clock."""
        self.packets_sent += 1
        self.bytes_sent += size
        self._last_send_time = now

    # -- receive path ------------------------------------------------------

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        if self.closed:
            return
        if not self.decoder_bypassed_packets:
            # aiortc starts a decoder thread per receiver; packets taken at this seam
            # never reach it, so end it (one thread and ~20 KB less per leg).
            seams.stop_idle_decoder(self.transceiver.receiver)
        self.count_received(
            packet.ssrc,
            packet.sequence_number,
            packet.timestamp,
            self._loop.time(),
            len(packet.payload),
        )
        await self.on_rtp(packet)

    async def on_rtp(self, packet: RtpPacket) -> None:
        """Called for every RTP packet received (after the leg's own statistics)."""

    async def _handle_rtcp_from_receiver(self, packet: AnyRtcpPacket) -> None:
        # Sender reports of the device's stream: remember them for our LSR/DLSR.
        if isinstance(packet, RtcpSrPacket):
            self._last_sr_lsr = compact_ntp(packet.sender_info.ntp_timestamp)
            self._last_sr_arrival = time.time()

    async def _handle_rtcp_from_sender(self, packet: AnyRtcpPacket) -> None:
        # Report blocks about the stream we send: RFC 3550 §6.4.1 round-trip time.
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc != self.ssrc:
                    continue
                rtt = round_trip_time(time.time(), report.lsr, report.dlsr)
                if rtt is None:
                    continue
                if self.rtt is None:
                    self.rtt = rtt
                else:
                    self.rtt = RTT_ALPHA * self.rtt + (1 - RTT_ALPHA) * rtt

    # -- send path ---------------------------------------------------------

    async def send(
        self, source: Hashable, sequence_number: int, timestamp: int, marker: int, payload: bytes
    ) -> bool:
        """Send one Opus payload from `source` on this leg's stream; False if not sent."""
        if self.closed or not self.connected:
            return False
        now = self._loop.time()
        header = self.rewriter.rewrite(source, sequence_number, timestamp, now)
        if header is None:
            return False
        packet = RtpPacket(
            payload_type=self.payload_type,
            marker=marker,
            sequence_number=header.sequence_number,
            timestamp=header.timestamp,
            ssrc=self.ssrc,
            payload=payload,
        )
        packet.extensions.mid = self.mid
        transport = self.sender.transport
        try:
            await seams.send_rtp(
                transport, packet.serialize(seams.header_extensions_map(transport))
            )
        except ConnectionError:
            return False
        self.count_sent(len(payload), now)
        return True

    # -- RTCP --------------------------------------------------------------

    async def _run_rtcp(self) -> None:
        # Replaces RTCRtpSender._run_rtcp; stop() waits on these two events.
        started, exited, cname = seams.rtcp_events(self.sender)
        started.set()
        try:
            while True:
                # §6.2: randomise over [0.5, 1.5] of the interval to avoid sync.
                await asyncio.sleep(RTCP_INTERVAL * (0.5 + random.random()))
                await self._send_rtcp(self.sender_report(cname))
        except asyncio.CancelledError:
            pass
        finally:
            await self._send_rtcp([RtcpByePacket(sources=[self.ssrc])])
            exited.set()

    def sender_report(self, cname: str | None) -> list[AnyRtcpPacket]:
        """SR (with a report block on the device's stream, if any) and SDES."""
        now_unix = time.time()
        elapsed = max(0.0, self._loop.time() - self._last_send_time) if self.packets_sent else 0.0
        rtp_timestamp = (self.rewriter.last_timestamp + round(elapsed * CLOCK_RATE)) & 0xFFFFFFFF
        reports: list[RtcpReceiverInfo] = []
        if self._remote_ssrc is not None:
            reports.append(
                RtcpReceiverInfo(
                    ssrc=self._remote_ssrc,
                    fraction_lost=self.reception.fraction_lost(),
                    packets_lost=min(self.reception.packets_lost, 0x7FFFFF),
                    highest_sequence=self.reception.extended_highest_sequence & 0xFFFFFFFF,
                    jitter=int(self.reception.jitter) & 0xFFFFFFFF,
                    lsr=self._last_sr_lsr,
                    dlsr=delay_since_last_sr(now_unix, self._last_sr_arrival),
                )
            )
        packets: list[AnyRtcpPacket] = [
            RtcpSrPacket(
                ssrc=self.ssrc,
                sender_info=RtcpSenderInfo(
                    ntp_timestamp=ntp_timestamp(now_unix),
                    rtp_timestamp=rtp_timestamp,
                    packet_count=self.packets_sent & 0xFFFFFFFF,
                    octet_count=self.bytes_sent & 0xFFFFFFFF,
                ),
                reports=reports,
            )
        ]
        if cname:
            packets.append(
                RtcpSdesPacket(
                    chunks=[RtcpSourceInfo(ssrc=self.ssrc, items=[(1, cname.encode("utf8"))])]
                )
            )
        return packets

    async def _send_rtcp(self, packets: list[AnyRtcpPacket]) -> None:
        if not self.connected:
            return
        with contextlib.suppress(ConnectionError):
            await seams.send_rtp(
                self.sender.transport, b"".join(bytes(packet) for packet in packets)
            )


class Leg(RtpPeer):
    """A relay leg: forwards what its device sends to the peer leg; reports failures."""

    def __init__(
        self,
        leg_id: str,
        pc: RTCPeerConnection,
        on_failure: Callable[[Leg, str], None],
    ) -> None:
        super().__init__(pc)
        self.leg_id = leg_id
        self.peer: Leg | None = None
        self.ringback_task: asyncio.Task[None] | None = None
        #: While the relay plays a notice to this leg, forwarded audio to it is dropped.
        self.notice_task: asyncio.Task[None] | None = None
        self.watchdog_task: asyncio.Task[None] | None = None
        self.failed = False
        self.connected_at: float | None = None
        self._ice_failed = False
        self.packets_dropped = 0
        # When both descriptions were applied and ICE checks could start.
        self.negotiated_at: float | None = None
        self._on_failure = on_failure
        # The fast path on this leg's nominated pair, and the packets it took.
        self.fast_path: FastPath | None = None
        self.fast_path_packets = 0

    async def on_rtp(self, packet: RtpPacket) -> None:
        fast_path = self.fast_path
        if fast_path is None or not fast_path.current():
            # The next packets of this leg take the fast path once it can.
            self.ensure_fast_path()
        peer = self.peer
        if peer is None or packet.payload_type != self.payload_type or not packet.payload:
            return
        if peer.notice_task is not None:
            return
        await peer.send(
            (self.leg_id, packet.ssrc),
            packet.sequence_number,
            packet.timestamp,
            packet.marker,
            packet.payload,
        )

    # -- fast path -----------------------------------------------------------

    def ensure_fast_path(self) -> FastPath | None:
        """This leg's fast path on its current nominated pair, installed if need be.

        None while the leg is not connected, closed, or the fast path is
        switched off: packets then take aiortc's path.
        """
        fast_path = self.fast_path
        if fast_path is not None:
            if fast_path.current():
                return fast_path
            self.drop_fast_path()
        if not fastpath.enabled or self.closed or not self.connected:
            return None
        if not self._receives_raw_rtp():
            return None
        self.fast_path = FastPath.install(self)
        return self.fast_path

    def _receives_raw_rtp(self) -> bool:
        # Only a leg whose packets come through our receiver seam forwards
        # them as they are; a subclass that decodes (transcode.py) does not.
        return seams.shadows_rtp(self.transceiver.receiver, self._handle_rtp_packet)

    def received_on_fast_path(
        self, ssrc: int, sequence_number: int, timestamp: int, size: int
    ) -> float:
        """count_received for a packet the fast path took now (counted apart as well);
        returns its arrival time."""
        arrival = self._loop.time()
        self.fast_path_packets += 1
        self.count_received(ssrc, sequence_number, timestamp, arrival, size)
        return arrival

    def drop_fast_path(self) -> None:
        if self.fast_path is not None:
            self.fast_path.uninstall()
            self.fast_path = None

    # -- failure detection -------------------------------------------------

    def on_connection_state(self, state: str) -> None:
        if state != "connected":
            self.drop_fast_path()
        if self.closed:
            return
        if state == "connected":
            if self.connected_at is None:
                self.connected_at = self._loop.time()
                self._watch_ice()
                self._bound_receive_queue()
            self.ensure_fast_path()
        elif state == "failed":
            if self.pc.iceConnectionState != "failed":
                self._on_failure(self, MediaFailure.DTLS_FAILED)
            else:
                self._on_failure(self, self._ice_loss())
        elif state == "closed" and self.connected_at is not None:
            # Not closed by us: the device closed its DTLS session, or ICE gave up
            # (aiortc then shuts the connection down without a "failed" state).
            ice_failed = self._ice_failed or self._ice_transport().state == "failed"
            self._on_failure(
                self, self._ice_loss() if ice_failed else MediaFailure.CLOSED_BY_DEVICE
            )

    def _ice_transport(self) -> Any:
        return self.transceiver.receiver.transport.transport

    def _watch_ice(self) -> None:
        ice = self._ice_transport()

        def on_ice_state() -> None:
            if ice.state == "failed":
                self._ice_failed = True

        ice.on("statechange", on_ice_state)

    def _bound_receive_queue(self) -> None:
        """aioice queues every datagram for aiortc's receive loop without limit (DTLS,
        RTCP, and RTP that does not take the fast path). Under overload the relay drops
        and counts instead of growing memory and delaying everything behind it."""

        def dropped() -> None:
            self.packets_dropped += 1

        seams.bound_receive_queue(self._ice_transport(), RECEIVE_QUEUE_LIMIT, dropped)

    def _ice_loss(self) -> str:
        # Once connected, ICE only fails when the device stopped answering our
        # consent checks (RFC 7675): it left, or its network did.
        return (
            MediaFailure.CONSENT_EXPIRED
            if self.connected_at is not None
            else MediaFailure.ICE_FAILED
        )

    async def watch_media(self, media_timeout: float, connect_timeout: float) -> None:
        """Report a leg that does not connect in time, or goes silent once connected.

        aioice only gives up on connectivity checks after its STUN
        retransmissions run out (over 30 s), far longer than a caller waits,
        so the relay bounds connection setup itself: ICE not done means
        "ice_failed", ICE done but no DTLS means "dtls_failed". Once
        connected, no RTP for `media_timeout` seconds is "media_timeout".
        """
        while not self.closed and not self.failed:
            now = self._loop.time()
            if self.connected_at is None:
                if self.negotiated_at is None:
                    await asyncio.sleep(0.2)
                    continue
                remaining = self.negotiated_at + connect_timeout - now
                if remaining <= 0:
                    ice_done = self.pc.iceConnectionState in ("connected", "completed")
                    self._on_failure(
                        self, MediaFailure.DTLS_FAILED if ice_done else MediaFailure.ICE_FAILED
                    )
                    return
                await asyncio.sleep(min(remaining, 0.2))
                continue
            last = max(self.connected_at, self.reception.last_arrival or 0.0)
            remaining = last + media_timeout - now
            if remaining <= 0:
                self._on_failure(self, MediaFailure.MEDIA_TIMEOUT)
                return
            await asyncio.sleep(remaining)
