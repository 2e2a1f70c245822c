"""ITU-T G.711 A-law and μ-law (PCMA, PCMU; RFC 3551 §4.5.14), vectorised with numpy.

Linear samples are int16 (the top 13 bits for A-law, 14 bits for μ-law are
significant). Each law is two tables built once at import from the
segment/quantisation rules of G.711 §2-3: 256 decoded values, and the code of
every one of the 65536 int16 values, so encoding and decoding a frame are one
`np.take` each.

Codes are as sent on the wire: A-law with its even bits inverted (XOR 0x55),
μ-law with all bits inverted.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]

Samples = npt.NDArray[np.int16]

# μ-law bias (G.711 Table 2, in the 14-bit domain: 33) and clip level.
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159


def _alaw_decode_table() -> Samples:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    mantissa = (codes & 0x0F) << 4
    segment = (codes & 0x70) >> 4
    magnitude = np.where(segment == 0, mantissa + 8, mantissa + 0x108)
    magnitude = np.where(segment > 1, magnitude << np.maximum(segment - 1, 0), magnitude)
    values = np.where(codes & 0x80, magnitude, -magnitude)
    return np.asarray(values, dtype=np.int16)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    linear = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit
    positive = linear >= 0
    mask = np.where(positive, 0xD5, 0x55)
    magnitude = np.where(positive, linear, -linear - 1)
    # Segment ends of the 13-bit magnitude (G.711 Table 1).
    ends = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    segment = np.searchsorted(ends, magnitude, side="left")
    shift = np.where(segment < 2, 1, segment)
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    table = np.asarray((code ^ mask) & 0xFF, dtype=np.uint8)
    # Index by the int16 value's bit pattern (np.uint16 view): 0..32767, then -32768..-1.
    return np.concatenate((table[32768:], table[:32768]))


def _ulaw_decode_table() -> Samples:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((codes & 0x0F) << 3) + _ULAW_BIAS) << ((codes & 0x70) >> 4)
    values = np.where(codes & 0x80, _ULAW_BIAS - magnitude, magnitude - _ULAW_BIAS)
    return np.asarray(values, dtype=np.int16)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    linear = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit
    positive = linear >= 0
    mask = np.where(positive, 0xFF, 0x7F)
    magnitude = np.minimum(np.where(positive, linear, -linear), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    ends = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    segment = np.searchsorted(ends, magnitude, side="left")
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    table = np.asarray((code ^ mask) & 0xFF, dtype=np.uint8)
    return np.concatenate((table[32768:], table[:32768]))


_ALAW_DECODE = _alaw_decode_table()
_ALAW_ENCODE = _alaw_encode_table()
_ULAW_DECODE = _ulaw_decode_table()
_ULAW_ENCODE = _ulaw_encode_table()


def _codes(samples: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    return np.ascontiguousarray(samples, dtype=np.int16).view(np.uint16)


def alaw_encode(samples: npt.ArrayLike) -> bytes:
    """A-law codes (one byte per sample) of int16 linear samples."""
    return _ALAW_ENCODE.take(_codes(samples)).tobytes()


def alaw_decode(payload: bytes) -> Samples:
    """int16 linear samples of A-law codes."""
    return _ALAW_DECODE.take(np.frombuffer(payload, dtype=np.uint8))


def ulaw_encode(samples: npt.ArrayLike) -> bytes:
    """μ-law codes (one byte per sample) of int16 linear samples."""
    return _ULAW_ENCODE.take(_codes(samples)).tobytes()


def ulaw_decode(payload: bytes) -> Samples:
    """int16 linear samples of μ-law codes."""
    return _ULAW_DECODE.take(np.frombuffer(payload, dtype=np.uint8))
