"""The app device's media endpoint: aiortc end to end, as a real app would use it.

Unlike the relay, this side keeps aiortc's receive path (jitter buffer and
decoder): it stands for a phone, so what it records is what a user hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame

from voice.audio.analysis import dominant_frequency
from voice.audio.sources import parse_source, resample
from voice.audio.wav import write_wav
from voice.ice import gathering_on, ice_configuration

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960
FRAME_DURATION = FRAME_SAMPLES / SAMPLE_RATE
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
# Tone detection looks back this far: long enough to tell 425 Hz from 440 Hz.
DETECTION_WINDOW = 4800
DETECTION_TOLERANCE_HZ = 8.0
#: A received frame is audible from this RMS (1 % of full scale) on.
AUDIBLE_RMS = 0.01 * 32768
# Received audio falling this far behind the wall clock is a gap: fill it.
GAP_SLACK = 3 * FRAME_SAMPLES


class SourceTrack(MediaStreamTrack):
    """Plays an AudioSource in real time, 20 ms frames of int16 mono at 48 kHz."""

    kind = "audio"

    def __init__(self, spec: str) -> None:
        super().__init__()
        self._source = parse_source(spec)
        self._start: float | None = None
        self._timestamp = 0
        #: Sends silence (a path that no longer carries the device's audio).
        self.muted = False

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            from aiortc.mediastreams import MediaStreamError

            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._timestamp += FRAME_SAMPLES
            wait = self._start + self._timestamp / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        samples = self._source.read(FRAME_SAMPLES)
        if self.muted:
            samples = np.zeros_like(samples)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._timestamp
        frame.time_base = TIME_BASE
        return frame


class MediaEndpoint:
    def __init__(
        self,
        *,
        source: str = "silence",
        record: Path | None = None,
        ice_servers: Sequence[str] = (),
        bind_address: str | None = None,
    ) -> None:
        self.source = source
        #: The local address this endpoint's media uses (None: the process's default).
        self.bind_address = bind_address
        self._track = SourceTrack(source)
        self._record = record
        self._pc = RTCPeerConnection(configuration=ice_configuration(tuple(ice_servers)))
        self._pc.on("track", self._on_track)
        self._origin = time.monotonic()
        self._chunks: list[np.ndarray] = []
        self._length = 0
        # (end position in samples, monotonic arrival) of each received frame.
        self._arrivals: list[tuple[int, float]] = []
        # Arrival (monotonic) of each received frame with audible sound in it.
        self._audible: list[float] = []
        self._new_audio = asyncio.Event()
        self._receive_task: asyncio.Task[None] | None = None
        self._closed = False
        self.markers: dict[str, int] = {}

    def cut(self) -> None:
        """The network under this endpoint went away: nothing it sends is heard any more
        (its DTLS session is not closed, as a lost network would not close it)."""
        self._track.muted = True

    @property
    def connection_state(self) -> str:
        return str(self._pc.connectionState)

    # -- negotiation -------------------------------------------------------

    async def create_offer(self) -> str:
        """Caller side: a sendrecv Opus audio offer playing the source."""
        self._pc.addTrack(self._track)
        with self._gathering():
            await self._pc.setLocalDescription(await self._pc.createOffer())
        return str(self._pc.localDescription.sdp)

    def _gathering(self) -> contextlib.AbstractContextManager[None]:
        if self.bind_address is None:
            return contextlib.nullcontext()
        return gathering_on([self.bind_address])

    async def accept_answer(self, sdp: str) -> None:
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def answer(self, offer_sdp: str) -> str:
        """Callee side: answer an offer, sending the source back."""
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        self._pc.addTrack(self._track)
        with self._gathering():
            await self._pc.setLocalDescription(await self._pc.createAnswer())
        return str(self._pc.localDescription.sdp)

    # -- receiving ---------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._receive_task is None:
            self._receive_task = asyncio.create_task(self._receive(track))

    async def _receive(self, track: MediaStreamTrack) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                self._append(_to_mono_48k(frame), time.monotonic())

    def _append(self, samples: np.ndarray, arrival: float) -> None:
        # Wall-clock alignment: a frame belongs where it arrived; silence
        # before the first frame and in gaps (loss the decoder did not
        # conceal, or a stalled path) is filled in.
        due = int((arrival - self._origin) * SAMPLE_RATE) - samples.size
        if due - self._length > GAP_SLACK:
            self._chunks.append(np.zeros(due - self._length, dtype=np.int16))
            self._length = due
        self._chunks.append(samples)
        self._length += samples.size
        self._arrivals.append((self._length, arrival))
        if samples.size and np.sqrt(np.mean(samples.astype(np.float64) ** 2)) >= AUDIBLE_RMS:
            self._audible.append(arrival)
        self._new_audio.set()

    def longest_pause(self, since: float, until: float) -> float:
        """Seconds of the longest wait between two audible frames arriving in the time
        from ``since`` to ``until`` (monotonic), counted from the last audible frame
        before ``since``: what a listener heard as a gap, at frame resolution."""
        longest = 0.0
        previous: float | None = None
        for arrival in self._audible:
            if arrival > until:
                break
            if previous is not None and arrival >= since:
                longest = max(longest, arrival - previous)
            previous = arrival
        if previous is not None and previous < until:
            longest = max(longest, until - max(previous, since))
        return longest

    def mark(self, label: str) -> None:
        """Remember the current received-sample position (wall clock) under `label`."""
        self.markers[label] = max(0, int((time.monotonic() - self._origin) * SAMPLE_RATE))

    def received(self) -> np.ndarray:
        """Everything received so far: int16 mono 48 kHz, aligned to the wall clock."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    async def wait_for_tone(self, freq: float, timeout: float) -> float:
        """time.monotonic() of the first received frame where `freq` was dominant.

        Checked at every 20 ms frame over the last 100 ms received. Raises
        TimeoutError, or ConnectionError once the endpoint is closed.
        """
        checked = 0
        async with asyncio.timeout(timeout):
            while True:
                arrivals = self._arrivals
                while checked < len(arrivals):
                    end, arrival = arrivals[checked]
                    checked += 1
                    if end < FRAME_SAMPLES:
                        continue
                    audio = self.received()
                    window = audio[max(0, end - DETECTION_WINDOW) : end]
                    found = dominant_frequency(window, SAMPLE_RATE)
                    if found > 0 and abs(found - freq) <= DETECTION_TOLERANCE_HZ:
                        return arrival
                if self._closed:
                    raise ConnectionError("the media endpoint closed before the tone was heard")
                self._new_audio.clear()
                await self._new_audio.wait()

    # -- teardown ----------------------------------------------------------

    async def close(self) -> None:
        """Hang up media; write the recording if one was asked for."""
        if self._closed:
            return
        self._closed = True
        self._new_audio.set()  # wake wait_for_tone()
        if self._receive_task is not None:
            self._receive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receive_task
        if self._record is not None:
            # Before closing the peer connection: a caller that stops waiting (the
            # CLI exits once the call has ended) must not lose the recording.
            write_wav(self._record, self.received(), SAMPLE_RATE)
        await self._pc.close()


def _to_mono_48k(frame: AudioFrame) -> np.ndarray:
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        mono = data.mean(axis=0) if channels > 1 else data.reshape(-1)
    else:
        mono = data.reshape(-1, channels).mean(axis=1) if channels > 1 else data.reshape(-1)
    samples = np.asarray(np.round(mono), dtype=np.int16)
    if frame.sample_rate != SAMPLE_RATE:
        samples = resample(samples, frame.sample_rate, SAMPLE_RATE)
    return samples
