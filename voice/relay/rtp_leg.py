"""A plain-RTP leg (RTP/AVP over UDP) and its bridge to a WebRTC leg.

The operator's SIP trunk carries media as plain RTP: G.711 (PCMA/PCMU) at
8 kHz, or Opus when the operator offers it, with RFC 4733 telephone-events.
aiortc cannot speak RTP/AVP, so an RtpLeg owns one UDP socket on
`media_bind_address` (an even port of the media port range when one is set)
and does the RTP itself. Negotiation is voice/relay/avp.py.

Bridged to a WebRTC leg (voice/relay/leg.py), per direction:

- RTP -> WebRTC, G.711: received packets go through a reordering buffer
  (voice/relay/jitter.py, 40 ms) that conceals holes without waiting for a
  clock; each due packet is decoded (voice/codecs/g711.py), 20 ms of 8 kHz
  audio is interpolated to 48 kHz (voice/audio/resample.py), Opus-encoded
  and sent on the WebRTC leg's stream through its StreamRewriter, so a
  switch from the relay's ringback is gap-free. All of it runs in the
  socket's datagram callback: one packet in, one frame out, no task.
- WebRTC -> RTP, G.711: while bridged, the WebRTC leg's nominated pair is
  intercepted by `WebRtcTap` (a FastPath whose packets go here instead of to
  a peer leg): SRTP-unprotected Opus is decoded, decimated to 8 kHz,
  G.711-encoded and sent with the RTP leg's own SSRC/sequence/timestamp
  (8 kHz clock). The raw Opus is never forwarded into a G.711 leg. Until the
  tap is up, aiortc's path hands the packets over through the leg's
  `on_rtp` (an instance attribute set while bridged).
- Opus on the RTP leg: packets are forwarded both ways with their headers
  rewritten, never decoded (SRTP only on the WebRTC side).

Symmetric RTP (RFC 4961 practice): we send to the SDP address until a packet
arrives, then to where packets come from; packets from any other address
are dropped (counted). When a re-INVITE moves the remote, the source is
learnt again, but its previous address cannot take the leg back. A remote on hold
(a=sendonly/inactive, or c=0.0.0.0) gets nothing from us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import pylibsrtp
from aiortc.rtp import (
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)

from voice.audio.resample import Decimator, Interpolator
from voice.codecs.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from voice.codecs.opus import OpusDecoder, OpusEncoder
from voice.ice import media_port_range
from voice.relay import fastpath
from voice.relay.avp import (
    OPUS,
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    TELEPHONE_EVENT_48K,
    AudioDescription,
    Codec,
    Direction,
    Negotiated,
    answer_direction,
    build_sdp,
    choose_codec,
    match_answer,
    parse_audio,
)
from voice.relay.dtmf import DtmfReceiver, digit_event, dtmf_schedule
from voice.relay.fastpath import FastPath
from voice.relay.jitter import JitterBuffer, Slot
from voice.relay.leg import Leg
from voice.rtp.header import FIXED_HEADER, header_length, payload_end
from voice.rtp.rewriter import StreamRewriter, sequence_delta
from voice.rtp.rtcp import compact_ntp, delay_since_last_sr, ntp_timestamp, round_trip_time
from voice.rtp.stats import ReceptionStatistics
from wire.reasons import MediaFailure

__all__ = ["OFFERED_CODECS", "RtpLeg", "WebRtcTap"]

logger = logging.getLogger(__name__)

#: What offer_rtp offers, in order of preference: Opus first (then nothing is transcoded).
OFFERED_CODECS: tuple[Codec, ...] = (OPUS, PCMA, PCMU, TELEPHONE_EVENT, TELEPHONE_EVENT_48K)
#: Reordering depth of the RTP -> WebRTC direction, in time.
JITTER_DEPTH = 0.04
G711_RATE = 8000
OPUS_RATE = 48000
RATIO = OPUS_RATE // G711_RATE
FRAME_8K = 160
FRAME_48K = 960
#: RFC 3550 §6.2: the minimum report interval.
RTCP_INTERVAL = 5.0
#: A hole longer than this (in frames of audio) is not concealed but played as a gap.
MAX_CONCEALED_FRAMES = 5
#: RTCP packet types 200-204 with the marker bit folded in (RFC 5761 §4): not RTP.
_RTCP_PAYLOAD_TYPES = range(72, 77)

_HEADER = struct.Struct("!BBHII")
_SEQUENCE_TIMESTAMP_SSRC = struct.Struct("!HII")

Address = tuple[str, int]


class WebRtcTap(FastPath):
    """A WebRTC leg's fast path while it is bridged to an RTP leg.

    The same interception of the leg's nominated pair as FastPath, but the
    leg's Opus goes to the RTP leg (`rtp_leg.from_webrtc`) instead of being
    forwarded to a peer leg. Sending on the WebRTC leg uses the same SRTP
    session and socket (`RtpLeg._send_to_webrtc`).
    """

    rtp_leg: RtpLeg | None = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        rtp_leg = self.rtp_leg
        if (
            rtp_leg is not None
            and fastpath.enabled
            and len(data) > FIXED_HEADER
            and data[0] & 0xC0 == 0x80
            and data[1] & 0x7F == self.payload_type
            and not self.leg.closed
            and self.current()
        ):
            received = self.receive(data)
            if received is None:
                return
            plain, header, end, now, sequence_number, timestamp, ssrc = received
            if end > header:
                rtp_leg.from_webrtc(ssrc, sequence_number, timestamp, plain[header:end], now)
            return
        self._original(data, addr)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, leg: RtpLeg) -> None:
        self.leg = leg

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.leg.datagram_received(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer not listening (yet): nothing to do.
        self.leg.send_errors += 1


class _RtcpProtocol(asyncio.DatagramProtocol):
    def __init__(self, leg: RtpLeg) -> None:
        self.leg = leg

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.leg.rtcp_received(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.leg.send_errors += 1


Transports = tuple[asyncio.DatagramTransport, asyncio.DatagramTransport]


async def _bind_pair(address: str, port: int, leg: RtpLeg) -> Transports | None:
    """RTP on `port` (0: any) and RTCP on the next port (RFC 3550 §11), or None."""
    loop = asyncio.get_running_loop()
    try:
        rtp, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(leg), local_addr=(address, port)
        )
    except OSError:
        return None
    rtp_port = int(rtp.get_extra_info("sockname")[1])
    try:
        rtcp, _ = await loop.create_datagram_endpoint(
            lambda: _RtcpProtocol(leg), local_addr=(address, rtp_port + 1)
        )
    except OSError:
        rtp.close()
        return None
    return rtp, rtcp


async def _bind(address: str, leg: RtpLeg) -> Transports:
    """RTP and RTCP sockets on `address`: an even port and the next one of the media port
    range if one is set (RFC 3550 §11), else a free port and the next one."""
    # The range voice.ice.set_media_ports chose for this process (ICE legs use it too).
    port_range = media_port_range()
    if port_range is None:
        for _ in range(50):
            pair = await _bind_pair(address, 0, leg)
            if pair is not None:
                return pair
        raise ValueError(f"no free pair of UDP ports on {address} for an RTP leg")
    low, high = port_range
    even = list(range(low + (low & 1), high, 2))
    start = random.randrange(len(even)) if even else 0
    for offset in range(len(even)):
        pair = await _bind_pair(address, even[(start + offset) % len(even)], leg)
        if pair is not None:
            return pair
    raise ValueError(f"no free pair of UDP ports on {address} in {low}-{high} for an RTP leg")


class RtpLeg:
    """One plain-RTP leg: a UDP socket, its negotiation, and the media to a WebRTC leg."""

    def __init__(
        self,
        leg_id: str,
        *,
        bind_address: str,
        announce_address: str = "",
        on_dtmf: Callable[[str, str], None] | None = None,
    ) -> None:
        self.leg_id = leg_id
        self.bind_address = bind_address
        self.announce_address = announce_address or bind_address
        self.on_dtmf = on_dtmf
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        #: Seconds between our RTCP reports (RFC 3550 §6.2 minimum), randomised ±50 %.
        self.rtcp_interval = RTCP_INTERVAL
        self.rtt: float | None = None
        self.rtcp_received_packets = 0
        self.rtcp_sent_packets = 0
        self._rtcp_source: Address | None = None
        self._remote_ssrc: int | None = None
        self._last_sr_lsr = 0
        self._last_sr_arrival: float | None = None
        self._last_send_time = 0.0
        self.port = 0
        self.peer: Leg | None = None
        self.closed = False
        self.ssrc = random.randrange(1, 1 << 32)
        self._loop = asyncio.get_running_loop()
        # Negotiation.
        self.offered: tuple[Codec, ...] | None = None
        self.negotiated: Negotiated | None = None
        self.remote: AudioDescription | None = None
        self._session_id = random.randrange(1 << 31)
        self._version = 0
        self._remote_address: Address | None = None
        self._latched: Address | None = None
        self._stale_source: Address | None = None
        self.sending = False
        self._transcoding = False
        self._audio_payload_types: frozenset[int] = frozenset()
        self._event_payload_types: frozenset[int] = frozenset()
        # Outgoing stream and reception statistics (clock of the negotiated codec).
        self.rewriter = self._new_rewriter(G711_RATE)
        self.reception = ReceptionStatistics(G711_RATE)
        self.packets_sent = 0
        self.bytes_sent = 0
        self.packets_foreign = 0
        self.send_errors = 0
        self.negotiated_at: float | None = None
        self._applied_at = 0.0  # when the latest SDP of the remote was applied
        # Media counters: frames transcoded each way, packets forwarded as they are.
        self.frames_to_webrtc = 0
        self.frames_from_webrtc = 0
        self.forwarded_packets = 0
        # RTP -> WebRTC (G.711).
        self._jitter = JitterBuffer()
        self._decode: Callable[[bytes], np.ndarray] = alaw_decode
        self._encode: Callable[[np.ndarray], bytes] = alaw_encode
        self._interpolator = Interpolator()
        self._encoder: OpusEncoder | None = None
        self._pending = np.zeros(0, dtype=np.int16)
        self._pending_timestamp = 0  # 8 kHz timestamp of _pending[0]
        self._last_frame: np.ndarray | None = None
        self._concealed_run = 0
        self._timestamp_base: int | None = None
        self._to_webrtc_sequence = 0
        self._to_webrtc_marker = True
        # WebRTC -> RTP (G.711).
        self._decimator = Decimator()
        self._decoder: OpusDecoder | None = None
        self._from_webrtc_last: int | None = None
        self._from_webrtc_ssrc: int | None = None
        self._from_webrtc_base = 0
        # DTMF.
        self._dtmf_receiver = DtmfReceiver()
        self._dtmf_digits = ""
        self._dtmf_task: asyncio.Task[None] | None = None
        self._dtmf_batches = 0
        self.dtmf_sent = ""

    # -- socket -------------------------------------------------------------------

    async def open(self) -> None:
        self.transport, self.rtcp_transport = await _bind(self.bind_address, self)
        self.port = int(self.transport.get_extra_info("sockname")[1])

    @property
    def destination(self) -> Address | None:
        """Where our RTP goes: the latched source, else the SDP address."""
        return self._latched or self._remote_address

    # -- negotiation ----------------------------------------------------------------

    def offer_sdp(self) -> str:
        """Our offer (for an INVITE we send): every codec we take, Opus first."""
        self.offered = OFFERED_CODECS
        return self._sdp(OFFERED_CODECS, Direction.SENDRECV)

    def answer_offer(self, offer_sdp: str) -> str:
        """Answer the operator's offer (an INVITE it sent, or a re-INVITE)."""
        offer = parse_audio(offer_sdp)
        negotiated = choose_codec(offer)
        self._apply(offer, negotiated)
        codecs: tuple[Codec, ...] = (negotiated.codec,)
        if negotiated.telephone_event is not None:
            codecs += (negotiated.telephone_event,)
        hold = offer.on_hold and offer.direction.receives
        return self._sdp(codecs, answer_direction(offer.direction, hold=hold), negotiated.ptime)

    def apply_answer(self, answer_sdp: str) -> None:
        """The operator's answer to our offer (183 with SDP, then 200: both may come)."""
        if self.offered is None:
            raise ValueError(f"leg {self.leg_id}: no offer was made on this RTP leg")
        answer = parse_audio(answer_sdp)
        self._apply(answer, match_answer(self.offered, answer))

    def _sdp(self, codecs: tuple[Codec, ...], direction: Direction, ptime: int = 20) -> str:
        self._version += 1
        return build_sdp(
            address=self.announce_address,
            port=self.port,
            codecs=codecs,
            direction=direction,
            session_id=self._session_id,
            version=self._version,
            ptime=ptime,
        )

    def _apply(self, remote: AudioDescription, negotiated: Negotiated) -> None:
        previous = self.negotiated
        self.remote = remote
        self.negotiated = negotiated
        address: Address = (remote.address, remote.port)
        if address != self._remote_address and not remote.on_hold:
            if self._remote_address is not None:
                # The remote moved: learn its source again, but not from where it was.
                self._stale_source = self._latched or self._remote_address
            self._remote_address = address
            self._latched = None
        self.sending = not remote.on_hold
        self._transcoding = negotiated.transcoded
        codec = negotiated.codec
        ours = {c.key: c.payload_type for c in self.offered or ()}
        # Receive with the remote's number and with ours (RFC 3264 §6.1 allows both).
        audio = {codec.payload_type, ours.get(codec.key, codec.payload_type)}
        self._audio_payload_types = frozenset(audio)
        event = negotiated.telephone_event
        events: set[int] = set()
        if event is not None:
            events = {event.payload_type, ours.get(event.key, event.payload_type)}
        self._event_payload_types = frozenset(events)
        if previous is None or previous.codec.key != codec.key:
            self._set_codec(codec, negotiated.ptime)
        self._applied_at = self._loop.time()
        if self.negotiated_at is None:
            self.negotiated_at = self._applied_at

    def _set_codec(self, codec: Codec, ptime: int) -> None:
        if self.rewriter.last_sequence_number is not None:
            # Another codec (a re-INVITE): a new stream, as a receiver keys its clock
            # rate and sequence state on the SSRC (RFC 3550 §8).
            self.ssrc = random.randrange(1, 1 << 32)
        self.rewriter = self._new_rewriter(codec.clock_rate)
        self.reception = ReceptionStatistics(codec.clock_rate)
        if codec.key == PCMU.key:
            self._decode, self._encode = ulaw_decode, ulaw_encode
        else:
            self._decode, self._encode = alaw_decode, alaw_encode
        depth = max(1, round(JITTER_DEPTH * 1000 / max(ptime, 10)))
        self._jitter = JitterBuffer(depth=depth, default_step=G711_RATE * max(ptime, 10) // 1000)

    @staticmethod
    def _new_rewriter(clock_rate: int) -> StreamRewriter:
        return StreamRewriter(
            initial_sequence_number=random.randrange(1 << 15),
            initial_timestamp=random.randrange(1 << 32),
            clock_rate=clock_rate,
            frame_samples=clock_rate // 50,
        )

    @property
    def transcoding(self) -> bool:
        """G.711 negotiated: audio is transcoded (set with the negotiation)."""
        return self._transcoding

    # -- the WebRTC leg -----------------------------------------------------------------

    def attach(self, peer: Leg) -> None:
        """Bridge to a WebRTC leg: its Opus comes here, our audio goes to it."""
        if self.peer is not None and self.peer is not peer:
            self.detach()
        self.peer = peer
        # aiortc's path (until the tap is up): the leg hands its packets to us.
        setattr(peer, "on_rtp", self._on_webrtc_packet)  # noqa: B010
        self._ensure_tap()

    def detach(self) -> None:
        """Unbridge: the WebRTC leg goes back to its own forwarding."""
        peer = self.peer
        self.peer = None
        if peer is None:
            return
        vars(peer).pop("on_rtp", None)
        if isinstance(peer.fast_path, WebRtcTap):
            peer.drop_fast_path()

    def _ensure_tap(self) -> WebRtcTap | None:
        peer = self.peer
        if peer is None:
            return None
        tap = peer.fast_path
        if isinstance(tap, WebRtcTap) and tap.current():
            return tap
        if not fastpath.enabled or peer.closed or not peer.connected:
            return None
        peer.drop_fast_path()
        installed = WebRtcTap.install(peer)
        if not isinstance(installed, WebRtcTap):
            return None
        installed.rtp_leg = self
        peer.fast_path = installed
        return installed

    async def _on_webrtc_packet(self, packet: RtpPacket) -> None:
        # aiortc's path: the tap was not up yet (or fell back); try it for the next ones.
        peer = self.peer
        if peer is None or packet.payload_type != peer.payload_type or not packet.payload:
            return
        self._ensure_tap()
        self.from_webrtc(
            packet.ssrc,
            packet.sequence_number,
            packet.timestamp,
            packet.payload,
            self._loop.time(),
        )

    def from_webrtc(
        self, ssrc: int, sequence_number: int, timestamp: int, payload: bytes, now: float
    ) -> None:
        """One Opus packet of the WebRTC leg, to send on this leg."""
        negotiated = self.negotiated
        if negotiated is None or not self.sending or self._dtmf_task is not None:
            return
        if ssrc != self._from_webrtc_ssrc:
            self._from_webrtc_ssrc = ssrc
            self._from_webrtc_last = None
            self._from_webrtc_base = timestamp
        elif (
            self._from_webrtc_last is not None
            and sequence_delta(sequence_number, self._from_webrtc_last) <= 0
        ):
            return  # late or duplicate: the far end's jitter buffer sees it as loss
        self._from_webrtc_last = sequence_number
        source = ("webrtc", ssrc)
        if not self._transcoding:
            self.forwarded_packets += 1
            self._send(source, sequence_number, timestamp, 0, negotiated.codec, payload, now)
            return
        if self._decoder is None:
            self._decoder = OpusDecoder()
        pcm = self._decoder.decode(payload)
        usable = pcm.size - pcm.size % RATIO
        if usable == 0:
            return
        narrow = self._decimator.process(pcm[:usable])
        self.frames_from_webrtc += 1
        # RFC 7587: Opus timestamps are 48 kHz whatever the audio; G.711's are 8 kHz.
        offset = ((timestamp - self._from_webrtc_base) & 0xFFFFFFFF) // RATIO
        self._send(
            source,
            sequence_number,
            offset,
            0,
            negotiated.codec,
            self._encode(narrow),
            now,
        )

    def _send(
        self,
        source: Hashable,
        sequence_number: int,
        timestamp: int,
        marker: int,
        codec: Codec,
        payload: bytes,
        now: float,
    ) -> None:
        destination = self.destination
        transport = self.transport
        if destination is None or transport is None or self.closed:
            return
        rewriter = self.rewriter
        if not rewriter.map(source, sequence_number, timestamp, now):
            return
        header = _HEADER.pack(
            0x80,
            (0x80 if marker else 0) | codec.payload_type,
            rewriter.out_sequence_number,
            rewriter.out_timestamp,
            self.ssrc,
        )
        transport.sendto(header + payload, destination)
        self.packets_sent += 1
        self.bytes_sent += len(payload)
        self._last_send_time = now

    # -- receiving --------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.closed or self.negotiated is None or len(data) <= FIXED_HEADER:
            return
        if data[0] & 0xC0 != 0x80:
            return
        payload_type = data[1] & 0x7F
        if payload_type in _RTCP_PAYLOAD_TYPES:
            self.rtcp_received(data, addr)  # RTCP on the RTP port (RFC 5761 mux)
            return
        if self._latched is None and addr != self._stale_source:
            self._latched = addr
        elif addr != self._latched:
            self.packets_foreign += 1
            return
        header = header_length(data)
        if header < 0:
            return
        end = payload_end(data, header)
        if end <= header:
            return
        sequence_number, timestamp, ssrc = _SEQUENCE_TIMESTAMP_SSRC.unpack_from(data, 2)
        now = self._loop.time()
        self.reception.receive(sequence_number, timestamp, now, end - header)
        self._remote_ssrc = ssrc
        payload = data[header:end]
        if payload_type in self._event_payload_types:
            for digit in self._dtmf_receiver.receive(timestamp, payload):
                self._dtmf_received(digit)
            if self._transcoding:
                # The event's packets hold sequence numbers: no audio, no concealment.
                self._play(self._jitter.push(sequence_number, timestamp, b"", payload_type), now)
            return
        if payload_type not in self._audio_payload_types:
            return
        if not self._transcoding:
            self.forwarded_packets += 1
            self._send_to_webrtc(
                ("rtp", self.leg_id, ssrc),
                sequence_number,
                timestamp,
                data[1] >> 7,
                payload,
                now,
            )
            return
        self._play(self._jitter.push(sequence_number, timestamp, payload, payload_type), now)

    def _dtmf_received(self, digit: str) -> None:
        logger.info("leg %s: DTMF %s received", self.leg_id, digit)
        if self.on_dtmf is not None:
            try:
                self.on_dtmf(self.leg_id, digit)
            except Exception:
                logger.exception("on_dtmf(%s, %s) raised", self.leg_id, digit)

    def _play(self, slots: list[Slot], now: float) -> None:
        """Released slots (in order) to 20 ms Opus frames on the WebRTC leg."""
        if self.peer is None:
            return  # not bridged: nobody to play to
        for slot in slots:
            if slot.payload is None:
                samples = self._conceal(slot)
                if samples is None:
                    continue
            elif not slot.payload or slot.payload_type not in self._audio_payload_types:
                continue  # a telephone-event packet
            else:
                samples = self._decode(slot.payload)
                self._concealed_run = 0
            self._append(slot.timestamp, samples, now)
        self._play_pending(now)

    def _conceal(self, slot: Slot) -> np.ndarray | None:
        """Audio for a lost packet: the last frame at half level once, then silence."""
        self._concealed_run += 1
        if self._concealed_run > MAX_CONCEALED_FRAMES or self._timestamp_base is None:
            return None
        step = self._jitter.step
        if self._concealed_run == 1 and self._last_frame is not None:
            repeated = np.resize(self._last_frame, step) // 2
            return np.asarray(repeated, dtype=np.int16)
        return np.zeros(step, dtype=np.int16)

    def _append(self, timestamp: int, samples: np.ndarray, now: float) -> None:
        if self._timestamp_base is None:
            self._timestamp_base = timestamp
            self._pending_timestamp = timestamp
        expected = (self._pending_timestamp + self._pending.size) & 0xFFFFFFFF
        if timestamp != expected:
            # A discontinuity (silence suppression, an event, a long hole): finish
            # the partial frame with silence and start a new talkspurt here.
            if self._pending.size:
                pad = np.zeros(FRAME_8K - self._pending.size % FRAME_8K, dtype=np.int16)
                self._pending = np.concatenate((self._pending, pad))
                self._play_pending(now)
            self._pending_timestamp = timestamp
            self._to_webrtc_marker = True
        self._pending = np.concatenate((self._pending, samples)) if self._pending.size else samples

    def _play_pending(self, now: float) -> None:
        while self._pending.size >= FRAME_8K:
            frame = self._pending[:FRAME_8K]
            self._pending = self._pending[FRAME_8K:]
            self._frame_to_webrtc(frame, self._pending_timestamp, now)
            self._pending_timestamp = (self._pending_timestamp + FRAME_8K) & 0xFFFFFFFF

    def _frame_to_webrtc(self, frame: np.ndarray, timestamp: int, now: float) -> None:
        self._last_frame = frame
        if self._encoder is None:
            self._encoder = OpusEncoder()
        wide = self._interpolator.process(frame)
        base = self._timestamp_base or 0
        wide_timestamp = (((timestamp - base) & 0xFFFFFFFF) * RATIO) & 0xFFFFFFFF
        for payload in self._encoder.encode(wide):
            self.frames_to_webrtc += 1
            marker = int(self._to_webrtc_marker)
            self._to_webrtc_marker = False
            self._send_to_webrtc(
                ("rtp", self.leg_id),
                self._to_webrtc_sequence & 0xFFFF,
                wide_timestamp,
                marker,
                payload,
                now,
            )
            self._to_webrtc_sequence += 1

    def _send_to_webrtc(
        self,
        source: Hashable,
        sequence_number: int,
        timestamp: int,
        marker: int,
        payload: bytes,
        now: float,
    ) -> None:
        """One Opus payload on the WebRTC leg's stream (its StreamRewriter, its SRTP)."""
        peer = self.peer
        if peer is None or peer.closed or peer.notice_task is not None:
            return
        out = self._ensure_tap()
        if out is None:
            # No fast path (DTLS not up yet, or switched off): aiortc's send path.
            if peer.connected:
                task = self._loop.create_task(
                    peer.send(source, sequence_number, timestamp, marker, payload)
                )
                task.add_done_callback(_ignore_result)
            return
        rewriter = peer.rewriter
        if not rewriter.map(source, sequence_number, timestamp, now):
            return
        extension = out.extension
        header = _HEADER.pack(
            0x90 if extension else 0x80,
            (0x80 if marker else 0) | out.payload_type,
            rewriter.out_sequence_number,
            rewriter.out_timestamp,
            out.ssrc,
        )
        try:
            protected = out.tx.protect(header + extension + payload)
        except pylibsrtp.Error:
            out.srtp_errors += 1
            return
        out.transport.sendto(protected, out.remote_addr)
        peer.count_sent(len(payload), now)

    # -- DTMF -----------------------------------------------------------------------------

    def send_dtmf(self, digits: str) -> None:
        """Queue RFC 4733 events for `digits`; audio to this leg pauses while they play."""
        for digit in digits:
            digit_event(digit)  # ValueError for anything but 0-9 * # A-D
        negotiated = self.negotiated
        if negotiated is None or negotiated.telephone_event is None:
            logger.info(
                "leg %s: no telephone-event negotiated, DTMF %r not sent", self.leg_id, digits
            )
            return
        self._dtmf_digits += digits.upper()
        if self._dtmf_task is None:
            self._dtmf_task = self._loop.create_task(self._play_dtmf())

    async def _play_dtmf(self) -> None:
        try:
            while self._dtmf_digits and not self.closed and self.negotiated is not None:
                digits, self._dtmf_digits = self._dtmf_digits, ""
                event = self.negotiated.telephone_event
                if event is None:
                    return
                codec = self.negotiated.codec
                scale = codec.clock_rate / event.clock_rate
                self._dtmf_batches += 1
                source = ("dtmf", self._dtmf_batches)
                start = self._loop.time()
                for index, packet in enumerate(dtmf_schedule(digits, clock_rate=event.clock_rate)):
                    delay = start + packet.send_at - self._loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if self.sending:
                        self._send(
                            source,
                            index,
                            round(packet.timestamp * scale),
                            int(packet.marker),
                            event,
                            packet.payload,
                            self._loop.time(),
                        )
                self.dtmf_sent += digits
        finally:
            self._dtmf_task = None

    # -- stats and teardown -----------------------------------------------------------------

    async def close(self) -> None:
        if not self.closed and self.packets_sent:
            self._send_rtcp([RtcpByePacket(sources=[self.ssrc])])
        self.closed = True
        self.detach()
        task = self._dtmf_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for transport in (self.transport, self.rtcp_transport):
            if transport is not None:
                transport.close()

    # -- RTCP (RFC 3550 §6) ------------------------------------------------------------------

    def rtcp_received(self, data: bytes, addr: Address) -> None:
        """Reports of the remote: its SR (for our LSR/DLSR) and report blocks on our stream."""
        if self.closed:
            return
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            return
        self.rtcp_received_packets += 1
        self._rtcp_source = addr  # symmetric RTCP: answer where reports come from
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                self._last_sr_lsr = compact_ntp(packet.sender_info.ntp_timestamp)
                self._last_sr_arrival = time.time()
            if isinstance(packet, RtcpSrPacket | RtcpRrPacket):
                for report in packet.reports:
                    if report.ssrc != self.ssrc:
                        continue
                    rtt = round_trip_time(time.time(), report.lsr, report.dlsr)
                    if rtt is not None:
                        self.rtt = rtt if self.rtt is None else 0.85 * self.rtt + 0.15 * rtt

    def report(self) -> list[AnyRtcpPacket]:
        """Our compound report: SR once we sent media (else RR), one report block on the
        remote's stream when we have one, and SDES CNAME (RFC 3550 §6.1)."""
        now_unix = time.time()
        reports: list[RtcpReceiverInfo] = []
        if self._remote_ssrc is not None:
            reception = self.reception
            reports.append(
                RtcpReceiverInfo(
                    ssrc=self._remote_ssrc,
                    fraction_lost=reception.fraction_lost(),
                    packets_lost=min(reception.packets_lost, 0x7FFFFF),
                    highest_sequence=reception.extended_highest_sequence & 0xFFFFFFFF,
                    jitter=int(reception.jitter) & 0xFFFFFFFF,
                    lsr=self._last_sr_lsr,
                    dlsr=delay_since_last_sr(now_unix, self._last_sr_arrival),
                )
            )
        packets: list[AnyRtcpPacket] = []
        if self.packets_sent:
            clock = self.negotiated.codec.clock_rate if self.negotiated else G711_RATE
            elapsed = max(0.0, self._loop.time() - self._last_send_time)
            packets.append(
                RtcpSrPacket(
                    ssrc=self.ssrc,
                    sender_info=RtcpSenderInfo(
                        ntp_timestamp=ntp_timestamp(now_unix),
                        rtp_timestamp=(self.rewriter.last_timestamp + round(elapsed * clock))
                        & 0xFFFFFFFF,
                        packet_count=self.packets_sent & 0xFFFFFFFF,
                        octet_count=self.bytes_sent & 0xFFFFFFFF,
                    ),
                    reports=reports,
                )
            )
        else:
            packets.append(RtcpRrPacket(ssrc=self.ssrc, reports=reports))
        cname = f"anruf-{self.ssrc:08x}".encode()
        packets.append(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self.ssrc, items=[(1, cname)])]))
        return packets

    def _send_rtcp(self, packets: list[AnyRtcpPacket]) -> None:
        remote = self._remote_address
        if self.rtcp_transport is None or remote is None or not self.sending:
            return
        destination = self._rtcp_source or (remote[0], remote[1] + 1)
        self.rtcp_transport.sendto(b"".join(bytes(packet) for packet in packets), destination)
        self.rtcp_sent_packets += 1

    async def watch_media(self, media_timeout: float, on_failure: Callable[[str], None]) -> None:
        """Send RTCP reports, and report "media_timeout" when RTP that was flowing stops.

        The timeout counts only once packets have arrived: a 183 whose network
        sends no early media must not fail a call that is still ringing. Not
        while the remote is on hold as a sender (a=recvonly/inactive from it).
        """
        next_report = self._loop.time() + self.rtcp_interval * (0.5 + random.random())
        while not self.closed:
            await asyncio.sleep(min(1.0, media_timeout / 4, self.rtcp_interval / 4))
            now = self._loop.time()
            if now >= next_report and self.negotiated is not None:
                self._send_rtcp(self.report())
                # RFC 3550 §6.2: randomise over [0.5, 1.5] of the interval.
                next_report = now + self.rtcp_interval * (0.5 + random.random())
            remote = self.remote
            last = self.reception.last_arrival
            if last is None or remote is None or not remote.direction.sends:
                continue
            # A re-INVITE (resume after an inactive hold) starts the wait afresh.
            last = max(last, self._applied_at)
            if now - last > media_timeout:
                on_failure(MediaFailure.MEDIA_TIMEOUT)
                return


def _ignore_result(task: asyncio.Task[bool]) -> None:
    if not task.cancelled():
        task.exception()
