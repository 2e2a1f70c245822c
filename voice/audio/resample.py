"""Streaming integer-ratio resampling (48 kHz <-> 8 kHz) with a polyphase FIR low-pass.

The Opus side of the relay runs at 48 kHz, G.711 at 8 kHz. Going down, every
component above the new Nyquist (4 kHz) must be removed before decimation or it
folds back into the band (a 5 kHz tone would come out at 3 kHz); going up, the
images of the 8 kHz spectrum around multiples of 8 kHz must be removed after
zero stuffing. One Kaiser-windowed sinc low-pass serves both: flat to 3.4 kHz
(the telephone band), at least 60 dB down from 4 kHz.

Both directions are polyphase, so no multiply is spent on samples that are
thrown away (decimation) or known to be zero (interpolation): one matrix
product per frame over sliding windows of the input, and the filter state (the
input tail) is carried between frames, so a stream resampled frame by frame is
the same as resampled at once.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

__all__ = ["Decimator", "Interpolator", "lowpass"]

Samples = npt.NDArray[np.int16]

#: Filter taps per polyphase branch (the full filter has factor x this many taps).
TAPS_PER_PHASE = 50
PASSBAND_HZ = 3400.0
STOPBAND_HZ = 4000.0
#: Kaiser β for about 60 dB stopband attenuation (β = 0.1102 (A - 8.7)).
KAISER_BETA = 5.7


def lowpass(taps: int, cutoff: float, beta: float = KAISER_BETA) -> npt.NDArray[np.float64]:
    """Windowed-sinc low-pass of `taps` taps, cutoff as a fraction of the sample rate, DC gain 1."""
    n = np.arange(taps, dtype=np.float64) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    return np.asarray(h / h.sum(), dtype=np.float64)


@functools.cache
def _filter(factor: int, high_rate: int) -> npt.NDArray[np.float64]:
    """The same taps for every leg: made once per process, never written to."""
    cutoff = (PASSBAND_HZ + STOPBAND_HZ) / 2 / high_rate
    taps = lowpass(factor * TAPS_PER_PHASE, cutoff)
    taps.flags.writeable = False
    return taps


def _to_int16(values: npt.NDArray[np.float32]) -> Samples:
    # The ufuncs themselves: np.clip's Python wrapper costs more than the work here.
    np.rint(values, out=values)
    np.minimum(values, 32767, out=values)
    np.maximum(values, -32768, out=values)
    return values.astype(np.int16)


def _windows(
    samples: npt.NDArray[np.float32], rows: int, width: int, step: int, stride: int = 1
) -> npt.NDArray[np.float32]:
    """Overlapping windows of `samples` as a strided view (no copy): element j of row r
    is samples[r*step + j*stride]. numpy's own helpers do the same with more checks,
    which cost more than the arithmetic on a 20 ms frame."""
    item = samples.itemsize
    return np.ndarray(
        (rows, width),
        dtype=samples.dtype,
        buffer=samples,
        strides=(step * item, stride * item),
    )


class Decimator:
    """Low-pass then keep every `factor`-th sample: 48 kHz -> 8 kHz by default.

    `process` takes int16 frames whose length is a multiple of `factor`.
    """

    def __init__(self, factor: int = 6, high_rate: int = 48000) -> None:
        if factor < 1:
            raise ValueError(f"decimation factor must be at least 1, not {factor}")
        self.factor = factor
        taps = _filter(factor, high_rate)
        # Reversed (each output is a window, oldest first, dotted with it), then cut
        # into rows of `factor`: row i multiplies input row k + i for output k.
        self._rows = np.ascontiguousarray(
            taps[::-1].reshape(-1, factor).T, dtype=np.float32
        )  # (factor, taps / factor)
        self._size = taps.size
        # The input a window needs before the frame's first output: taps - factor samples.
        self._history = np.zeros(taps.size - factor, dtype=np.float32)

    @property
    def delay(self) -> float:
        """Group delay in input samples."""
        return (self._size - 1) / 2

    def process(self, samples: npt.ArrayLike) -> Samples:
        frame = np.asarray(samples, dtype=np.float32)
        factor = self.factor
        if frame.size % factor:
            raise ValueError(f"frame of {frame.size} samples is not a multiple of {factor}")
        if frame.size == 0:
            return np.zeros(0, dtype=np.int16)
        extended = np.concatenate((self._history, frame))
        # Output k is sum_j extended[factor*k + j] * reversed_taps[j]. With the input in
        # rows of `factor`, partial[r, i] = row r . taps row i, and output k is the sum
        # of partial[k + i, i] over i: a diagonal, read as a strided view (no copy).
        partial = extended.reshape(-1, factor) @ self._rows
        rows, branches = partial.shape
        diagonals = _windows(
            partial.reshape(-1), rows - branches + 1, branches, branches, branches + 1
        )
        out = diagonals.sum(axis=1)
        self._history = extended[extended.size - self._history.size :].copy()
        return _to_int16(out)

    def reset(self) -> None:
        self._history[:] = 0


class Interpolator:
    """Zero-stuff by `factor` then low-pass: 8 kHz -> 48 kHz by default."""

    def __init__(self, factor: int = 6, high_rate: int = 48000) -> None:
        if factor < 1:
            raise ValueError(f"interpolation factor must be at least 1, not {factor}")
        self.factor = factor
        h = _filter(factor, high_rate) * factor  # zero stuffing divides the gain by factor
        per_phase = h.size // factor
        # Output sample n*factor + p = sum_k h[k*factor + p] * x[n - k], k < per_phase.
        # With window w = x[n - per_phase + 1 .. n] (oldest first), w[i] = x[n - (per_phase-1-i)],
        # so the matrix is H[i, p] = h[(per_phase - 1 - i) * factor + p].
        polyphase = h.reshape(per_phase, factor)[::-1]
        self._matrix = np.ascontiguousarray(polyphase, dtype=np.float32)
        self._history = np.zeros(per_phase - 1, dtype=np.float32)

    @property
    def delay(self) -> float:
        """Group delay in output samples."""
        return (self._matrix.size - 1) / 2

    def process(self, samples: npt.ArrayLike) -> Samples:
        frame = np.asarray(samples, dtype=np.float32)
        if frame.size == 0:
            return np.zeros(0, dtype=np.int16)
        extended = np.concatenate((self._history, frame))
        taps = self._matrix.shape[0]
        windows = _windows(extended, extended.size - taps + 1, taps, 1)
        out = (windows @ self._matrix).reshape(-1)
        self._history = extended[extended.size - self._history.size :].copy()
        return _to_int16(out)

    def reset(self) -> None:
        self._history[:] = 0
