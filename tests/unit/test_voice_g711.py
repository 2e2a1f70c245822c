"""G.711 A-law and μ-law against values of ITU-T G.711 Tables 1 and 2."""

from __future__ import annotations

import numpy as np

from voice.codecs.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)


def test_alaw_known_codes() -> None:
    # Character signals as transmitted (even bits inverted): 0xD5/0x55 are the
    # smallest positive/negative steps, 0xAA/0x2A the largest (4032 in 13 bits).
    assert alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]
    assert alaw_encode([0, 15, 16, -1, 32767, -32768]) == bytes(
        [0xD5, 0xD5, 0xD4, 0x55, 0xAA, 0x2A]
    )
    # Segment 1 starts at 13-bit 32 (16-bit 256): code 0x90 ^ 0x55 = 0xC5 decodes to 264.
    assert alaw_decode(bytes([0xC5])).tolist() == [264]
    assert alaw_encode([256]) == bytes([0xC5])


def test_ulaw_known_codes() -> None:
    # 0xFF and 0x7F are +0 and -0; 0x80/0x00 the largest (8031 in 14 bits).
    assert ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]
    assert ulaw_encode([0, 32767, -32768]) == bytes([0xFF, 0x80, 0x00])
    # First step of segment 1 (14-bit 33): code 0xEF.
    assert ulaw_decode(bytes([0xEF])).tolist() == [132]
    assert ulaw_encode([132]) == bytes([0xEF])


def test_alaw_round_trip_error_is_half_a_step() -> None:
    error = np.abs(alaw_decode(alaw_encode(ALL_INT16)).astype(np.int32) - ALL_INT16)
    # Half a quantisation step: 8 in segments 0-1, then |x|/32 (steps double per segment).
    bound = np.maximum(8, np.abs(ALL_INT16.astype(np.int32)) // 32)
    assert np.all(error <= bound)
    assert error.max() == 512


def test_ulaw_round_trip_error_is_bounded() -> None:
    error = np.abs(ulaw_decode(ulaw_encode(ALL_INT16)).astype(np.int32) - ALL_INT16)
    bound = np.maximum(12, np.abs(ALL_INT16.astype(np.int32)) // 16)
    assert np.all(error <= bound)


def test_codes_survive_decode_and_encode() -> None:
    codes = bytes(range(256))
    assert alaw_encode(alaw_decode(codes)) == codes
    # μ-law has two zeros: -0 (0x7F) comes back as +0 (0xFF).
    expected = bytearray(codes)
    expected[0x7F] = 0xFF
    assert ulaw_encode(ulaw_decode(codes)) == bytes(expected)


def test_tone_signal_to_noise() -> None:
    t = np.arange(8000) / 8000
    tone = np.round(10000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    for encode, decode in ((alaw_encode, alaw_decode), (ulaw_encode, ulaw_decode)):
        noise = decode(encode(tone)).astype(np.float64) - tone
        snr = 10 * np.log10(np.mean(tone.astype(np.float64) ** 2) / np.mean(noise**2))
        assert snr > 35  # G.711 gives about 38 dB for a loud tone
