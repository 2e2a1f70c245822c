"""Call signatures, pre-encoded packet loops, detection and the speech-like signal."""

from __future__ import annotations

import numpy as np
import pytest

from voice.codecs.opus import FRAME_SAMPLES, SAMPLE_RATE
from voice.loadtest.line import decode_payloads, integrity_of
from voice.loadtest.signature import (
    Signature,
    detect,
    identify,
    signature_for,
    speech_loop,
    tone_loop,
    tone_pair,
)
from voice.loadtest.speech import speech_like


def test_signatures_are_distinct_for_1000_calls_both_ways() -> None:
    seen: dict[Signature, tuple[int, str]] = {}
    for index in range(1000):
        for direction in ("a", "b"):
            signature = signature_for(index, direction)
            assert signature not in seen, (index, direction, seen.get(signature))
            seen[signature] = (index, direction)
            assert identify(signature) == (index, direction)
            assert 300 <= signature.low_hz <= 1001 and 1200 <= signature.high_hz <= 3403


def test_neighbouring_calls_differ_in_both_tones() -> None:
    for index in range(200):
        a, b, next_a = (
            signature_for(index, "a"),
            signature_for(index, "b"),
            signature_for(index + 1, "a"),
        )
        assert a.low_hz != b.low_hz and a.high_hz != b.high_hz
        assert a.low_hz != next_a.low_hz and a.high_hz != next_a.high_hz


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        signature_for(1, "c")
    with pytest.raises(ValueError):
        signature_for(-1, "a")
    assert identify(Signature(440.0, 1000.0)) is None


@pytest.mark.parametrize(("index", "direction"), [(0, "a"), (7, "b"), (499, "a"), (998, "b")])
def test_detect_finds_the_signature_in_decoded_opus_of_its_loop(index: int, direction: str) -> None:
    signature = signature_for(index, direction)
    loop = tone_loop(signature)
    assert len(loop) == 50 and loop.unique
    pcm = decode_payloads(list(loop.payloads[10:]))
    assert detect(pcm[2 * FRAME_SAMPLES :], SAMPLE_RATE) == signature


def test_detect_returns_none_for_silence_and_tells_strangers() -> None:
    assert detect(np.zeros(SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE) is None
    quiet = np.random.default_rng(1).normal(0, 10, SAMPLE_RATE).astype(np.int16)
    assert detect(quiet, SAMPLE_RATE) is None
    # A tone pair off the grid is heard, but is nobody's signature.
    odd = detect(tone_pair(Signature(451.0, 2013.0), 1.0), SAMPLE_RATE)
    assert odd is not None and identify(odd) is None


def test_integrity_classification() -> None:
    mine, other_way, other_call = (
        signature_for(5, "a"),
        signature_for(5, "b"),
        signature_for(6, "a"),
    )
    assert integrity_of(mine, mine, 5, "a") == "ok"
    assert integrity_of(mine, None, 5, "a") == "silent"
    assert integrity_of(mine, other_call, 5, "a") == "crossed"
    assert integrity_of(mine, other_way, 5, "a") == "wrong"
    assert integrity_of(mine, Signature(440.0, 2000.0), 5, "a") == "wrong"


def test_loops_are_encoded_once_per_process() -> None:
    signature = signature_for(3, "a")
    assert tone_loop(signature) is tone_loop(signature)
    assert speech_loop() is speech_loop()


def test_speech_loop_payloads_identify_their_frame() -> None:
    loop = speech_loop()
    assert loop.unique
    assert loop.pcm.size == len(loop) * FRAME_SAMPLES
    assert all(loop.index_of[payload] == i for i, payload in enumerate(loop.payloads))


def test_speech_is_deterministic_and_speech_like() -> None:
    first = speech_like(4.0)
    assert np.array_equal(first, speech_like(4.0))
    assert not np.array_equal(first, speech_like(4.0, seed=7))
    frames = first.reshape(-1, FRAME_SAMPLES).astype(np.float64)
    level = np.sqrt((frames**2).mean(axis=1))
    talking = level > 300
    # Syllables and pauses: loud frames, and energy gaps between them.
    assert 0.4 < talking.mean() < 0.9
    assert (level < 60).mean() > 0.1
    assert np.abs(first).max() < 32767
    # Voiced speech has its energy in the low kHz, not as one pure tone.
    spectrum = np.abs(np.fft.rfft(first.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(first.size, 1 / SAMPLE_RATE)
    share_below_4k = spectrum[freqs < 4000].sum() / spectrum.sum()
    assert share_below_4k > 0.9
    assert spectrum.max() / spectrum.sum() < 0.01


def test_tone_probe_hears_its_signature_and_not_ringback_or_silence() -> None:
    from voice.loadtest.signature import ToneProbe

    mine = signature_for(3, "b")
    probe = ToneProbe(mine)
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    ringback = np.asarray(np.sin(2 * np.pi * 425 * t) * 10000, dtype=np.int16)
    assert not probe.feed(np.zeros(SAMPLE_RATE // 10, dtype=np.int16))
    assert not probe.feed(ringback)
    assert not probe.feed(tone_pair(signature_for(4, "b"), 0.2))
    assert probe.feed(decode_payloads(list(tone_loop(mine).payloads[:10])))


def test_speech_is_located_in_its_loop_after_re_encoding() -> None:
    from voice.codecs.opus import OpusEncoder
    from voice.loadtest.line import locate_in_loop

    loop = speech_loop()
    start = 123 * FRAME_SAMPLES
    encoder = OpusEncoder(bitrate=64000)
    chunk = loop.pcm[start : start + SAMPLE_RATE]
    payloads = [p for i in range(50) for p in encoder.encode(chunk[i * 960 : (i + 1) * 960])]
    offset = locate_in_loop(decode_payloads(payloads), loop)
    assert offset is not None and abs(offset - start) < 2 * FRAME_SAMPLES
    assert locate_in_loop(tone_pair(signature_for(1, "a"), 1.0), loop) is None
