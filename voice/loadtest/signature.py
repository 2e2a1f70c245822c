"""Audio signatures: a distinct tone pair per call and per direction.

Every call of a load test sends a tone pair of its own each way, so a
receiver can tell its own peer's audio from silence, from the other
direction of the same call, and from another call's audio (crossed lines).

The grid: low tones 301, 321, ... 1001 Hz (36) and high tones 1203, 1223,
... 3403 Hz (111), 20 Hz apart, which Opus keeps and a 1 s window resolves
with margin. All frequencies are whole Hz, so a 1 s loop joins without a
click; none is a multiple of 2 or 5 Hz, so every 20 ms frame of the loop
starts at a different phase and encodes to a different Opus payload (the
receiver maps payload bytes back to the frame for one-way delay).

Audio is encoded once per process and replayed: `PacketLoop`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from voice.codecs.opus import FRAME_SAMPLES, SAMPLE_RATE, OpusEncoder
from voice.loadtest.speech import speech_like

LOW_BASE, LOW_STEPS = 301.0, 36
HIGH_BASE, HIGH_STEPS = 1203.0, 111
GRID_STEP = 20.0
#: Signatures repeat after this many (call, direction) pairs: 1998 pairs, 999 calls.
SIGNATURE_COUNT = LOW_STEPS * HIGH_STEPS - (LOW_STEPS * HIGH_STEPS) % 2
#: A detected peak this close to a grid tone is that tone.
TOLERANCE_HZ = 6.0
# Each tone at -16 dBFS: the pair peaks at -10 dBFS.
TONE_AMPLITUDE = 0.158
#: RMS (int16 units) under which audio is silence (about -50 dBFS).
SILENCE_RMS = 100.0
# Search bands around the grid.
LOW_BAND = (LOW_BASE - 50.0, LOW_BASE + GRID_STEP * (LOW_STEPS - 1) + 50.0)
HIGH_BAND = (HIGH_BASE - 50.0, HIGH_BASE + GRID_STEP * (HIGH_STEPS - 1) + 50.0)
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
TONE_LOOP_SECONDS = 1.0
SPEECH_LOOP_SECONDS = 8.0
OPUS_BITRATE = 32000

DIRECTIONS = ("a", "b")


@dataclass(frozen=True)
class Signature:
    """A tone pair (Hz)."""

    low_hz: float
    high_hz: float

    def __str__(self) -> str:
        return f"{self.low_hz:g}+{self.high_hz:g}Hz"


def _grid_position(call_index: int, direction: str) -> tuple[int, int]:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'a' or 'b', got {direction!r}")
    if call_index < 0:
        raise ValueError(f"call index must be >= 0, got {call_index}")
    m = (2 * call_index + (direction == "b")) % SIGNATURE_COUNT
    low = m % LOW_STEPS
    # Shifting the high tone by the low one makes neighbouring calls differ in both tones.
    high = (m // LOW_STEPS + 17 * low) % HIGH_STEPS
    return low, high


def signature_for(call_index: int, direction: str) -> Signature:
    """The signature of call `call_index` in `direction` ("a": caller -> callee, "b": back)."""
    low, high = _grid_position(call_index, direction)
    return Signature(LOW_BASE + GRID_STEP * low, HIGH_BASE + GRID_STEP * high)


def identify(signature: Signature) -> tuple[int, str] | None:
    """The smallest (call index, direction) whose signature this is; None if off the grid."""
    low = (signature.low_hz - LOW_BASE) / GRID_STEP
    high = (signature.high_hz - HIGH_BASE) / GRID_STEP
    if not (low.is_integer() and high.is_integer()):
        return None
    low_i, high_i = int(low), int(high)
    if not (0 <= low_i < LOW_STEPS and 0 <= high_i < HIGH_STEPS):
        return None
    quotient = (high_i - 17 * low_i) % HIGH_STEPS
    m = quotient * LOW_STEPS + low_i
    if m >= SIGNATURE_COUNT:
        return None
    return m // 2, DIRECTIONS[m % 2]


# -- pre-encoded audio ---------------------------------------------------------


@dataclass(frozen=True)
class PacketLoop:
    """Opus payloads (20 ms each) replayed in a loop; `index_of` maps a payload back."""

    payloads: tuple[bytes, ...]
    name: str
    #: The audio that was encoded (int16 mono 48 kHz), one loop long.
    pcm: np.ndarray = field(repr=False, compare=False)
    index_of: dict[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[bytes, int] = {}
        for position, payload in enumerate(self.payloads):
            index.setdefault(payload, position)
        object.__setattr__(self, "index_of", index)

    def __len__(self) -> int:
        return len(self.payloads)

    @property
    def seconds(self) -> float:
        return len(self.payloads) * FRAME_SECONDS

    @property
    def unique(self) -> bool:
        """Every payload differs, so one identifies its frame (for one-way delay)."""
        return len(self.index_of) == len(self.payloads)


def tone_pair(signature: Signature, seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """`seconds` of the signature's tone pair, int16 mono."""
    t = np.arange(round(seconds * rate)) / rate
    wave = TONE_AMPLITUDE * (
        np.sin(2 * np.pi * signature.low_hz * t) + np.sin(2 * np.pi * signature.high_hz * t)
    )
    return np.asarray(np.round(wave * 32767), dtype=np.int16)


def encode_loop(pcm: np.ndarray, name: str) -> PacketLoop:
    """Encode one loop of audio so that replaying it end to start sounds continuous.

    The encoder first runs over the whole loop once, so the kept pass starts
    with the state the end of the loop leaves behind.
    """
    frames = pcm.size // FRAME_SAMPLES
    pcm = pcm[: frames * FRAME_SAMPLES]
    encoder = OpusEncoder(bitrate=OPUS_BITRATE)
    payloads: list[bytes] = []
    for rounds in range(2):
        for index in range(frames):
            out = encoder.encode(pcm[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES])
            if rounds == 1:
                payloads.extend(out)
    return PacketLoop(tuple(payloads), name, pcm)


@functools.lru_cache(maxsize=4096)
def tone_loop(signature: Signature) -> PacketLoop:
    """A 1 s loop of the signature, encoded once per process."""
    return encode_loop(tone_pair(signature, TONE_LOOP_SECONDS), f"tone {signature}")


@functools.cache
def speech_loop() -> PacketLoop:
    """An 8 s loop of the speech-like test signal, encoded once per process.

    Its `pcm` is the reference for PESQ.
    """
    return encode_loop(speech_like(SPEECH_LOOP_SECONDS), "speech")


# -- detection -------------------------------------------------------------------


def detect(pcm: np.ndarray, rate: int) -> Signature | None:
    """The dominant tone of each band, or None for silence.

    Peaks within TOLERANCE_HZ of a grid tone are snapped to it, so a clean
    signature compares equal to `signature_for(...)`; anything else (noise,
    speech, a stranger's tone) keeps its measured frequencies (0.1 Hz).
    """
    data = np.asarray(pcm, dtype=np.float64)
    if data.size < rate // 20 or np.sqrt(np.mean(data**2)) < SILENCE_RMS:
        return None
    data = data - data.mean()
    size = 1 << max(16, int(np.ceil(np.log2(data.size))) + 1)
    spectrum = np.abs(np.fft.rfft(data * np.hanning(data.size), n=size))
    low = _peak(spectrum, rate, size, LOW_BAND)
    high = _peak(spectrum, rate, size, HIGH_BAND)
    return Signature(
        _snap(low, LOW_BASE, LOW_STEPS),
        _snap(high, HIGH_BASE, HIGH_STEPS),
    )


def _peak(spectrum: np.ndarray, rate: int, size: int, band: tuple[float, float]) -> float:
    start = max(1, int(band[0] * size / rate))
    stop = min(spectrum.size - 1, int(band[1] * size / rate) + 1)
    peak = start + int(np.argmax(spectrum[start:stop]))
    left, centre, right = spectrum[peak - 1], spectrum[peak], spectrum[peak + 1]
    denominator = left - 2 * centre + right
    offset = 0.5 * (left - right) / denominator if denominator != 0 else 0.0
    return float((peak + offset) * rate / size)


def _snap(frequency: float, base: float, steps: int) -> float:
    step = round((frequency - base) / GRID_STEP)
    grid = base + GRID_STEP * step
    if 0 <= step < steps and abs(frequency - grid) <= TOLERANCE_HZ:
        return grid
    return round(frequency, 1)


class ToneProbe:
    """Tells when decoded audio turns into a given signature (100 ms windows).

    For receivers that cannot recognise the sender's packets by their bytes
    (a relay that re-encodes): the first window where the signature's two
    tones carry most of the energy marks the arrival of the peer's audio.
    """

    WINDOW = SAMPLE_RATE // 10
    SHARE = 0.6

    def __init__(self, signature: Signature) -> None:
        n = np.arange(self.WINDOW)
        self._basis = np.exp(
            -2j * np.pi * np.outer((signature.low_hz, signature.high_hz), n) / SAMPLE_RATE
        )
        self._buffer = np.zeros(0, dtype=np.float64)

    def feed(self, pcm: np.ndarray) -> bool:
        """Add decoded samples; True once the last window is the signature."""
        buffer = np.concatenate((self._buffer, np.asarray(pcm, dtype=np.float64)))
        self._buffer = buffer = buffer[-self.WINDOW :]
        if buffer.size < self.WINDOW:
            return False
        total = float(np.mean(buffer**2))
        if total < SILENCE_RMS**2:
            return False
        tones = 2 * np.abs(self._basis @ buffer) ** 2 / self.WINDOW**2
        return float(tones.sum()) >= self.SHARE * total
