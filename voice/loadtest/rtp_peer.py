"""A plain-RTP endpoint over a real UDP socket: the phone network's side of a SIP trunk.

It plays a tone as G.711 (PCMA/PCMU) or Opus 20 ms packets, records what it
receives (decoded, in arrival order), decodes RFC 4733 telephone-events and
can send them. Sending is paced by `tick()`: `start()` runs one task that
ticks every 20 ms; the benchmark ticks many peers from one task instead.
Outgoing loss (`loss`, a fraction) drops packets before they are sent, as a
lossy access network would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from typing import Any

import numpy as np
from aiortc.rtp import RtcpPacket, RtcpReceiverInfo, RtcpRrPacket, RtcpSrPacket

from voice.codecs.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from voice.codecs.opus import OpusDecoder, OpusEncoder
from voice.relay.avp import (
    OPUS,
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    Codec,
    Direction,
    build_sdp,
    parse_audio,
)
from voice.relay.dtmf import DtmfReceiver, dtmf_schedule
from voice.rtp.rtcp import compact_ntp


class _Rtcp(asyncio.DatagramProtocol):
    def __init__(self, peer: PlainRtpPeer) -> None:
        self.peer = peer

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.peer.rtcp_received(data, addr)


__all__ = ["PlainRtpPeer", "g711_tone_payloads", "opus_tone_payloads"]

FRAME_SECONDS = 0.02
_HEADER = struct.Struct("!BBHII")
CODECS = {"PCMA": PCMA, "PCMU": PCMU, "opus": OPUS}


def g711_tone_payloads(frequency: float, codec: str, frames: int = 50) -> list[bytes]:
    """`frames` 20 ms G.711 payloads of a tone at -10 dBFS (a whole number of cycles per loop)."""
    t = np.arange(frames * 160) / 8000.0
    pcm = np.round(10354 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    encode = alaw_encode if codec == "PCMA" else ulaw_encode
    return [encode(pcm[i * 160 : (i + 1) * 160]) for i in range(frames)]


def opus_tone_payloads(frequency: float, frames: int = 50) -> list[bytes]:
    encoder = OpusEncoder()
    t = np.arange(frames * 960) / 48000.0
    pcm = np.round(10354 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    payloads: list[bytes] = []
    for index in range(frames):
        payloads.extend(encoder.encode(pcm[index * 960 : (index + 1) * 960]))
    return payloads


class PlainRtpPeer(asyncio.DatagramProtocol):
    """One RTP/AVP endpoint: one codec, telephone-event 101, symmetric RTP."""

    def __init__(
        self,
        *,
        codec: str = "PCMA",
        tone: float = 880.0,
        loss: float = 0.0,
        record: bool = True,
        payloads: list[bytes] | None = None,
        seed: int = 1,
    ) -> None:
        self.codec: Codec = CODECS[codec]
        self.event = TELEPHONE_EVENT
        if payloads is None:
            payloads = (
                opus_tone_payloads(tone) if codec == "opus" else g711_tone_payloads(tone, codec)
            )
        self.payloads = payloads
        self.samples_per_frame = 960 if codec == "opus" else 160
        self.loss = loss
        self.record = record
        self._random = random.Random(seed)
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        #: Names of the RTCP packets received (RtcpSrPacket, RtcpRrPacket, ...).
        self.rtcp_packets: list[str] = []
        self.port = 0
        self.remote: tuple[str, int] | None = None
        self.ssrc = self._random.randrange(1, 1 << 32)
        self.sequence = self._random.randrange(1 << 16)
        self.timestamp = self._random.randrange(1 << 32)
        self.number = 0
        self.sent = 0
        self.dropped = 0
        self.received = 0
        self.received_bytes = 0
        self.arrivals: list[float] = []
        self.received_payload_types: dict[int, int] = {}
        self.digits: list[str] = []
        self.sending = True
        self._chunks: list[np.ndarray] = []
        self._dtmf = DtmfReceiver()
        self._dtmf_ticks: list[list[tuple[int, bool, bytes]]] = []
        self._dtmf_start = 0
        self._decoder = OpusDecoder() if codec == "opus" else None
        self._task: asyncio.Task[None] | None = None
        self._remote_payload_type = self.codec.payload_type
        self._remote_event_type = self.event.payload_type

    # -- socket and SDP -------------------------------------------------------------

    async def open(self, host: str = "127.0.0.1") -> None:
        """Bind RTP, and RTCP on the next port (RFC 3550 §11) when it is free."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))
        with contextlib.suppress(OSError):
            self.rtcp_transport, _ = await loop.create_datagram_endpoint(
                lambda: _Rtcp(self), local_addr=(host, self.port + 1)
            )

    def rtcp_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Count reports; answer a sender report with a receiver report on it (LSR/DLSR)."""
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            return
        for packet in packets:
            self.rtcp_packets.append(type(packet).__name__)
            if isinstance(packet, RtcpSrPacket) and self.rtcp_transport is not None:
                report = RtcpReceiverInfo(
                    ssrc=packet.ssrc,
                    fraction_lost=0,
                    packets_lost=0,
                    highest_sequence=0,
                    jitter=0,
                    lsr=compact_ntp(packet.sender_info.ntp_timestamp),
                    dlsr=0,
                )
                answer = RtcpRrPacket(ssrc=self.ssrc, reports=[report])
                self.rtcp_transport.sendto(bytes(answer), addr)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])

    def sdp(self, direction: Direction = Direction.SENDRECV, version: int = 1) -> str:
        """Our SDP (offer or answer): our codec and telephone-event/8000 101."""
        return build_sdp(
            address="127.0.0.1",
            port=self.port,
            codecs=(self.codec, self.event),
            direction=direction,
            session_id=4242,
            version=version,
        )

    def answer(self, offer_sdp: str) -> str:
        """Answer the relay's offer with our codec (which it must have offered)."""
        self.use_remote(offer_sdp)
        return self.sdp()

    def use_remote(self, sdp: str) -> None:
        """Send to the SDP's address, with its numbers for our codec and events."""
        description = parse_audio(sdp)
        self.remote = (description.address, description.port)
        for codec in description.codecs:
            if codec.key == self.codec.key:
                self._remote_payload_type = codec.payload_type
            if codec.key == self.event.key:
                self._remote_event_type = codec.payload_type

    # -- sending ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            self.tick()
            deadline += FRAME_SECONDS
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    def tick(self) -> None:
        """Send the next 20 ms: a queued DTMF packet, else audio."""
        if self.transport is None or self.remote is None:
            return
        if self._dtmf_ticks:
            # RFC 4733: every packet of an event carries the event's start timestamp.
            for offset, marker, payload in self._dtmf_ticks.pop(0):
                self._send(self._remote_event_type, marker, self._dtmf_start + offset, payload)
            self.timestamp += self.samples_per_frame
            return
        if not self.sending:
            self.timestamp += self.samples_per_frame
            return
        payload = self.payloads[self.number % len(self.payloads)]
        self._send(self._remote_payload_type, self.number == 0, self.timestamp, payload)
        self.number += 1
        self.timestamp += self.samples_per_frame

    def _send(self, payload_type: int, marker: bool, timestamp: int, payload: bytes) -> None:
        assert self.transport is not None and self.remote is not None
        header = _HEADER.pack(
            0x80,
            (0x80 if marker else 0) | payload_type,
            self.sequence & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            self.ssrc,
        )
        self.sequence += 1
        if self.loss and self._random.random() < self.loss:
            self.dropped += 1
            return
        self.transport.sendto(header + payload, self.remote)
        self.sent += 1

    def send_dtmf(self, digits: str) -> None:
        """Send RFC 4733 events for `digits` from the next tick on; audio pauses meanwhile."""
        rate = self.event.clock_rate
        scale = self.samples_per_frame * 50 // rate  # event clock -> stream clock
        schedule = dtmf_schedule(digits, clock_rate=rate)
        ticks = round(schedule[-1].send_at / FRAME_SECONDS) + 1
        self._dtmf_ticks = [[] for _ in range(ticks)]
        for packet in schedule:
            self._dtmf_ticks[round(packet.send_at / FRAME_SECONDS)].append(
                (packet.timestamp * scale, packet.marker, packet.payload)
            )
        self._dtmf_start = self.timestamp

    # -- receiving ------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) < 12:
            return
        loop = asyncio.get_running_loop()
        self.received += 1
        self.received_bytes += len(data) - 12
        self.arrivals.append(loop.time())
        payload_type = data[1] & 0x7F
        self.received_payload_types[payload_type] = (
            self.received_payload_types.get(payload_type, 0) + 1
        )
        payload = data[12:]
        if payload_type == self._remote_event_type or payload_type == self.event.payload_type:
            timestamp = struct.unpack_from("!I", data, 4)[0]
            self.digits += self._dtmf.receive(timestamp, payload)
            return
        if not self.record:
            return
        if self.codec.key == OPUS.key:
            assert self._decoder is not None
            self._chunks.append(self._decoder.decode(payload))
        elif self.codec.key == PCMU.key:
            self._chunks.append(ulaw_decode(payload))
        else:
            self._chunks.append(alaw_decode(payload))

    @property
    def sample_rate(self) -> int:
        return 48000 if self.codec.key == OPUS.key else 8000

    def recorded(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)

    def mark(self) -> int:
        """The current length of the recording (to judge only what follows)."""
        return sum(chunk.size for chunk in self._chunks)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for transport in (self.transport, self.rtcp_transport):
            if transport is not None:
                transport.close()
