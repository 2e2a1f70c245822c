"""A transcoding relay: aiortc's normal media path, as a naive Python relay would use it.

This is the measurement baseline for load tests (`relay_mode = "transcode"`),
not a production path. It has exactly the interface of
voice.relay.relay.Relay and reuses its negotiation, failure detection and
teardown; only the media differs:

- each leg's RTCRtpReceiver keeps its jitter buffer and Opus decoder, and
  yields decoded frames on its remote track;
- bridge() subscribes each leg to the other leg's remote track through
  aiortc.contrib.media.MediaRelay, and the leg's RTCRtpSender re-encodes
  every frame (Opus at aiortc's fixed 96 kbit/s);
- ringback is an audio track (425 Hz, 1 s on / 4 s off) encoded per leg.

Per-leg state is a Leg subclass so the relay's bookkeeping stays shared.
Leg stats: received counters, loss and jitter come from the same RFC 3550
reception statistics as the forwarding relay (fed before aiortc's receiver
sees the packet); sent counters and RTT are the RTCRtpSender's own (the
figures aiortc's getStats reports).

Two choices keep the baseline measurable rather than broken: a leg's remote
track is drained while nobody is bridged to it (otherwise aiortc queues
every decoded frame, unbounded, while the callee rings and then sends the
backlog as a burst), and each leg's sender reads one switchable track, so
moving between silence, ringback and the peer's audio never ends aiortc's
RTP loop (a track raising MediaStreamError would stop it for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from av import AudioFrame
from av.frame import Frame

from voice.audio.sources import ToneSource
from voice.relay import seams
from voice.relay.leg import CLOCK_RATE, FRAME_SAMPLES, Leg
from voice.relay.relay import LegStats, Relay
from voice.relay.ringback import RINGBACK_FREQUENCY, RINGBACK_OFF, RINGBACK_ON

__all__ = ["RingbackTrack", "TranscodingRelay"]

logger = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, CLOCK_RATE)
FRAME_DURATION = FRAME_SAMPLES / CLOCK_RATE
# A pacer that fell this far behind restarts its clock instead of bursting.
MAX_PACER_LAG = 0.2


def _audio_frame(samples: np.ndarray, pts: int) -> AudioFrame:
    """Packed s16 stereo at 48 kHz: the format aiortc's Opus decoder yields.

    The sender's encoder sets its resampler up from the first frame it gets,
    so ringback and relayed audio must share one format.
    """
    stereo = np.repeat(samples, 2)
    frame = AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = CLOCK_RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


class RingbackTrack(MediaStreamTrack):
    """The 425 Hz ringback cadence (1 s on, 4 s off) as 20 ms frames in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._tone = ToneSource(RINGBACK_FREQUENCY)
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._on_frames = round(RINGBACK_ON / FRAME_DURATION)
        self._cycle_frames = self._on_frames + round(RINGBACK_OFF / FRAME_DURATION)
        self._index = 0
        self._deadline: float | None = None

    async def recv(self) -> Frame:
        # Never raises: a replaced ringback returns one more frame and is dropped.
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now
        else:
            self._deadline += FRAME_DURATION
            delay = self._deadline - now
            if delay < -MAX_PACER_LAG:
                self._deadline = now
            elif delay > 0:
                await asyncio.sleep(delay)
        position = self._index % self._cycle_frames
        on = position < self._on_frames
        samples = self._tone.read(FRAME_SAMPLES) if on else self._silence
        frame = _audio_frame(samples, self._index * FRAME_SAMPLES)
        self._index += 1
        return frame


class LegOutput(MediaStreamTrack):
    """The one track a leg's RTCRtpSender reads: silence (no frames), ringback or the peer.

    Switching sources never ends the sender's RTP loop: a source that ends
    (the peer's leg closed) just leaves the output idle. Frames are
    re-stamped so the encoder sees one continuous stream.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.source: MediaStreamTrack | None = None
        self._switched = asyncio.Event()
        self._pts = 0

    def switch(self, source: MediaStreamTrack | None) -> None:
        self.source = source
        self._switched.set()

    async def recv(self) -> Frame:
        while True:
            source = self.source
            if source is None:
                self._switched.clear()
                await self._switched.wait()
                continue
            try:
                frame = await source.recv()
            except MediaStreamError:
                if self.source is source:
                    self.source = None
                continue
            if self.source is not source:
                # A frame from a source replaced while we waited on it.
                source.stop()
                continue
            assert isinstance(frame, AudioFrame)
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, frame.sample_rate)
            self._pts += frame.samples
            return frame


class TranscodingLeg(Leg):
    """A Leg whose media goes through aiortc's receiver and sender."""

    def __init__(
        self,
        leg_id: str,
        pc: RTCPeerConnection,
        on_failure: Callable[[Leg, str], None],
    ) -> None:
        super().__init__(leg_id, pc, on_failure)
        self.output = LegOutput()
        # Replaces Leg's never-yielding track before the sender ever starts.
        self.sender.replaceTrack(self.output)
        self.drain_task: asyncio.Task[None] | None = None

    def _install_seams(self) -> None:
        # Only an observer in front of aiortc's receive path: the packet still
        # goes to its jitter buffer and decoder. No sender or RTCP seams.
        receiver = self.transceiver.receiver
        handle_rtp = seams.receiver_rtp_handler(receiver)

        async def observe_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
            if not self.closed:
                self.reception.receive(
                    packet.sequence_number,
                    packet.timestamp,
                    self._loop.time(),
                    len(packet.payload),
                )
            await handle_rtp(packet, arrival_time_ms)

        seams.observe_receiver_rtp(receiver, observe_rtp)

    @property
    def remote_track(self) -> MediaStreamTrack | None:
        """The decoded audio the device sends, once its description was applied."""
        return self.transceiver.receiver.track

    def stats(self) -> LegStats:
        reception = self.reception
        packets_sent, bytes_sent, rtt = seams.sender_counters(self.sender)
        return LegStats(
            packets_received=reception.packets_received,
            packets_sent=packets_sent,
            packets_lost=reception.packets_lost,
            bytes_received=reception.bytes_received,
            bytes_sent=bytes_sent,
            jitter_ms=round(reception.jitter_ms, 3),
            rtt_ms=None if rtt is None else round(rtt * 1000.0, 3),
            packets_dropped=self.packets_dropped,
        )


class TranscodingRelay(Relay):
    """voice.relay.relay.Relay's interface; media decoded, relayed as frames and re-encoded."""

    def __init__(
        self,
        *,
        bind_address: str,
        announce_address: str = "",
        ice_servers: Sequence[str] = (),
        media_timeout: float = 20.0,
        on_leg_failed: Callable[[str, str], None] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            bind_address=bind_address,
            announce_address=announce_address,
            ice_servers=ice_servers,
            media_timeout=media_timeout,
            on_leg_failed=on_leg_failed,
            connect_timeout=connect_timeout,
        )
        self._media_relay = MediaRelay()

    # -- legs --------------------------------------------------------------

    def _new_leg(self, leg_id: str, pc: RTCPeerConnection) -> Leg:
        leg = TranscodingLeg(leg_id, pc, self._leg_failed)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._track_arrived(leg)

        return leg

    def _transcoding_leg(self, leg_id: str) -> TranscodingLeg:
        leg = self._leg(leg_id)
        assert isinstance(leg, TranscodingLeg)
        return leg

    def _track_arrived(self, leg: TranscodingLeg) -> None:
        if leg.closed:
            return
        peer = leg.peer
        if isinstance(peer, TranscodingLeg) and not peer.closed:
            self._listen(peer, leg)
        else:
            self._start_drain(leg)

    def _listen(self, listener: TranscodingLeg, speaker: TranscodingLeg) -> None:
        """Send the speaker's decoded audio on the listener's leg (re-encoded)."""
        track = speaker.remote_track
        if track is None:
            return  # wired when the speaker's description arrives (_track_arrived)
        self._stop_drain(speaker)
        listener.output.switch(self._media_relay.subscribe(track))

    def _start_drain(self, leg: TranscodingLeg) -> None:
        track = leg.remote_track
        if track is None or leg.drain_task is not None:
            return
        leg.drain_task = asyncio.create_task(_drain(self._media_relay.subscribe(track)))

    def _stop_drain(self, leg: TranscodingLeg) -> None:
        if leg.drain_task is not None:
            leg.drain_task.cancel()
            leg.drain_task = None

    # -- media -------------------------------------------------------------

    def start_ringback(self, leg_id: str) -> None:
        """Play the ringback tone to this leg as early media (from when it connects)."""
        leg = self._transcoding_leg(leg_id)
        if isinstance(leg.output.source, RingbackTrack):
            return
        leg.output.switch(RingbackTrack())

    def stop_ringback(self, leg_id: str) -> None:
        leg = self._legs.get(leg_id)
        if isinstance(leg, TranscodingLeg) and isinstance(leg.output.source, RingbackTrack):
            leg.output.switch(None)

    def play_notice(self, leg_id: str) -> None:
        """Not played: this relay is a load-test baseline, where notices do not occur."""

    def bridge(self, a: str, b: str) -> None:
        """Relay decoded audio between legs a and b both ways; ends ringback on both."""
        if a == b:
            raise ValueError("cannot bridge a leg to itself")
        leg_a, leg_b = self._transcoding_leg(a), self._transcoding_leg(b)
        previous = [leg.peer for leg in (leg_a, leg_b)]
        super().bridge(a, b)
        for old in previous:
            if isinstance(old, TranscodingLeg) and old not in (leg_a, leg_b):
                # Unbridged: nobody hears it any more and it hears nobody.
                old.output.switch(None)
                self._start_drain(old)
        self._listen(leg_a, leg_b)
        self._listen(leg_b, leg_a)

    # -- stats and teardown -------------------------------------------------

    def stats(self, leg_id: str) -> LegStats:
        """Current counters of a leg; zero stats for an unknown leg."""
        leg = self._legs.get(leg_id)
        return leg.stats() if isinstance(leg, TranscodingLeg) else LegStats()

    async def close_leg(self, leg_id: str) -> LegStats:
        """Close a leg (idempotent) and return its final stats."""
        leg = self._legs.get(leg_id)
        if not isinstance(leg, TranscodingLeg):
            return await super().close_leg(leg_id)
        final = leg.stats()
        peer = leg.peer
        drain = leg.drain_task
        self._stop_drain(leg)
        await super().close_leg(leg_id)
        if drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        if isinstance(peer, TranscodingLeg) and not peer.closed:
            # The peer's audio has no listener now: keep its receiver drained.
            self._start_drain(peer)
        return final


async def _drain(track: MediaStreamTrack) -> None:
    """Consume a track, discarding its frames, until it ends or is cancelled."""
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass
    finally:
        track.stop()
