"""Synthetic and file audio sources: int16 mono at 48 kHz, read in chunks."""

from __future__ import annotations

import abc
import math
from pathlib import Path

import numpy as np

from voice.audio.wav import read_wav

SAMPLE_RATE = 48000
# -10 dBFS: loud enough to dominate codec noise, far from clipping.
TONE_AMPLITUDE = 0.316


class AudioSource(abc.ABC):
    """Endless int16 mono 48 kHz audio; `read(n)` returns the next n samples."""

    sample_rate = SAMPLE_RATE

    @abc.abstractmethod
    def read(self, samples: int) -> np.ndarray: ...


class SilenceSource(AudioSource):
    def read(self, samples: int) -> np.ndarray:
        return np.zeros(samples, dtype=np.int16)


class ToneSource(AudioSource):
    """A sine tone; phase carries across reads so chunk joins are click-free."""

    def __init__(self, frequency: float, amplitude: float = TONE_AMPLITUDE) -> None:
        self.frequency = frequency
        self.amplitude = amplitude
        self._position = 0

    def read(self, samples: int) -> np.ndarray:
        n = np.arange(self._position, self._position + samples, dtype=np.float64)
        self._position += samples
        wave = np.sin(2 * math.pi * self.frequency * n / SAMPLE_RATE) * self.amplitude
        return np.asarray(np.round(wave * 32767), dtype=np.int16)


class WavSource(AudioSource):
    """A WAV file resampled to 48 kHz, looped forever."""

    def __init__(self, path: Path) -> None:
        samples, rate = read_wav(path)
        if samples.size == 0:
            raise ValueError(f"{path}: WAV file has no samples")
        self.samples = resample(samples, rate, SAMPLE_RATE)
        self._position = 0

    def read(self, samples: int) -> np.ndarray:
        size = self.samples.size
        indices = (np.arange(samples) + self._position) % size
        self._position = (self._position + samples) % size
        return self.samples[indices]


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Linear-interpolation resampling: enough for test signals, not for PESQ work."""
    if rate == target_rate or samples.size == 0:
        return np.asarray(samples, dtype=np.int16)
    duration = samples.size / rate
    count = max(1, round(duration * target_rate))
    positions = np.arange(count) * (rate / target_rate)
    out = np.interp(positions, np.arange(samples.size), samples.astype(np.float64))
    return np.asarray(np.round(out), dtype=np.int16)


def parse_source(spec: str) -> AudioSource:
    """'tone:<Hz>', 'silence', or the path of a WAV file."""
    if spec == "silence":
        return SilenceSource()
    if spec.startswith("tone:"):
        try:
            frequency = float(spec.removeprefix("tone:"))
        except ValueError:
            raise ValueError(f"audio source {spec!r}: tone frequency is not a number") from None
        if not 0 < frequency < SAMPLE_RATE / 2:
            raise ValueError(f"audio source {spec!r}: tone frequency must be in (0, 24000) Hz")
        return ToneSource(frequency)
    path = Path(spec)
    if path.suffix.lower() == ".wav" and path.is_file():
        return WavSource(path)
    raise ValueError(
        f"audio source {spec!r}: expected 'tone:<Hz>', 'silence' or the path of a WAV file"
    )
