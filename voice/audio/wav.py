"""WAV files as int16 mono sample arrays."""

from __future__ import annotations

import wave
from os import PathLike

import numpy as np


def read_wav(path: str | PathLike[str]) -> tuple[np.ndarray, int]:
    """Samples (int16, mono: channels averaged) and sample rate of a PCM WAV file."""
    try:
        with wave.open(str(path), "rb") as reader:
            channels = reader.getnchannels()
            width = reader.getsampwidth()
            rate = reader.getframerate()
            data = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from exc
    if width == 2:
        samples = np.frombuffer(data, dtype="<i2").astype(np.int32)
    elif width == 1:
        # 8-bit WAV is unsigned.
        samples = (np.frombuffer(data, dtype=np.uint8).astype(np.int32) - 128) << 8
    elif width == 4:
        samples = np.frombuffer(data, dtype="<i4").astype(np.int64) >> 16
    else:
        raise ValueError(f"{path}: unsupported sample width {width * 8} bit")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return np.asarray(samples, dtype=np.int16), rate


def write_wav(path: str | PathLike[str], samples: np.ndarray, rate: int) -> None:
    """Write int16 mono samples as a 16-bit PCM WAV file."""
    data = np.asarray(samples)
    if data.dtype != np.int16:
        data = np.clip(data, -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(data.astype("<i2").tobytes())
