"""Opus encoding of int16 mono 48 kHz audio with PyAV's libopus (RFC 7587 payloads)."""

from __future__ import annotations

import fractions

import av
import numpy as np

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms, the WebRTC default packetisation
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class OpusEncoder:
    """Encodes 20 ms frames one at a time; each call returns one RTP payload."""

    def __init__(self, bitrate: int = 32000) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.bit_rate = bitrate
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = SAMPLE_RATE
        codec.time_base = TIME_BASE
        codec.options = {"application": "voip", "frame_duration": "20"}
        self._codec = codec
        self._pts = 0

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """Payloads produced for one frame of FRAME_SAMPLES samples (usually one)."""
        if samples.size != FRAME_SAMPLES:
            raise ValueError(f"Opus frames are {FRAME_SAMPLES} samples, got {samples.size}")
        frame = av.AudioFrame.from_ndarray(
            np.asarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        self._pts += FRAME_SAMPLES
        return [bytes(packet) for packet in self._codec.encode(frame)]


class OpusDecoder:
    """Decodes RTP payloads to int16 mono 48 kHz (used by tests and tools)."""

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "r")
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = SAMPLE_RATE
        self._codec = codec

    def decode(self, payload: bytes) -> np.ndarray:
        chunks = [
            frame.to_ndarray().reshape(-1) for frame in self._codec.decode(av.Packet(payload))
        ]
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.asarray(np.concatenate(chunks), dtype=np.int16)
