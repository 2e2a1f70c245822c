"""Tone analysis of received audio."""

from __future__ import annotations

import numpy as np

# Windows quieter than this RMS (int16 units, about -60 dBFS) are silence.
SILENCE_RMS = 32.0


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak; 0.0 for silence.

    Hann window, heavy zero padding and parabolic interpolation of the peak
    so that 100 ms windows tell 425 Hz (ringback) from 440 Hz apart.
    """
    data = np.asarray(samples, dtype=np.float64)
    if data.size < 2 or np.sqrt(np.mean(data**2)) < SILENCE_RMS:
        return 0.0
    data = data - data.mean()
    windowed = data * np.hanning(data.size)
    size = 1 << max(16, int(np.ceil(np.log2(data.size))) + 2)
    spectrum = np.abs(np.fft.rfft(windowed, n=size))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    offset = 0.0
    if 0 < peak < spectrum.size - 1:
        left, centre, right = spectrum[peak - 1], spectrum[peak], spectrum[peak + 1]
        denominator = left - 2 * centre + right
        if denominator != 0:
            offset = 0.5 * (left - right) / denominator
    return float((peak + offset) * rate / size)


def tone_fraction(
    samples: np.ndarray,
    rate: int,
    freq: float,
    window: float = 0.1,
    tolerance_hz: float = 8.0,
) -> float:
    """Fraction of `window`-second windows whose dominant frequency is `freq`.

    Silent windows count as misses, so a dead line scores 0.
    """
    size = max(1, round(window * rate))
    count = len(samples) // size
    if count == 0:
        return 0.0
    hits = 0
    for index in range(count):
        chunk = samples[index * size : (index + 1) * size]
        found = dominant_frequency(chunk, rate)
        if found > 0 and abs(found - freq) <= tolerance_hz:
            hits += 1
    return hits / count
