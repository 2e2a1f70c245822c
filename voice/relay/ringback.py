"""Tones the relay plays itself: ringback while the callee rings, and a short notice
(e.g. one minute of the bundle left) over a call in progress."""

from __future__ import annotations

import functools

import numpy as np

from voice.audio.sources import ToneSource
from voice.codecs.opus import FRAME_SAMPLES, OpusEncoder

# ETSI ES 201 970 / ITU-T E.180 (most of Europe): 425 Hz, 1 s on, 4 s off.
RINGBACK_FREQUENCY = 425.0
RINGBACK_ON = 1.0
RINGBACK_OFF = 4.0
FRAME_DURATION = 0.02


@functools.cache
def ringback_cycle() -> tuple[bytes, ...]:
    """Opus payloads (20 ms each) of one full cadence, encoded once per process.

    Every leg plays the same packets: encoding per leg would cost a codec
    per ringing call for a signal that never changes.
    """
    encoder = OpusEncoder()
    tone = ToneSource(RINGBACK_FREQUENCY)
    on_frames = round(RINGBACK_ON / FRAME_DURATION)
    off_frames = round(RINGBACK_OFF / FRAME_DURATION)
    payloads: list[bytes] = []
    for index in range(on_frames + off_frames):
        if index < on_frames:
            samples = tone.read(FRAME_SAMPLES)
        else:
            samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        payloads.extend(encoder.encode(samples))
    return tuple(payloads)


# The notice: two 200 ms beeps of 1400 Hz (the ITU-T E.180 "warning" family), 100 ms apart.
NOTICE_FREQUENCY = 1400.0
NOTICE_CADENCE = (0.2, 0.1, 0.2)


@functools.cache
def notice_payloads() -> tuple[bytes, ...]:
    """Opus payloads (20 ms each) of the notice tone, encoded once per process."""
    encoder = OpusEncoder()
    tone = ToneSource(NOTICE_FREQUENCY)
    payloads: list[bytes] = []
    for index, seconds in enumerate(NOTICE_CADENCE):
        for _ in range(round(seconds / FRAME_DURATION)):
            if index % 2 == 0:
                samples = tone.read(FRAME_SAMPLES)
            else:
                samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            payloads.extend(encoder.encode(samples))
    return tuple(payloads)
