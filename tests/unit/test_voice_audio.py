from pathlib import Path

import numpy as np
import pytest

from voice.audio import dominant_frequency, parse_source, read_wav, tone_fraction, write_wav
from voice.codecs.opus import FRAME_SAMPLES, OpusDecoder, OpusEncoder
from voice.relay.ringback import ringback_cycle

RATE = 48000


def test_tone_source_frequency_and_format() -> None:
    samples = parse_source("tone:440").read(RATE)
    assert samples.dtype == np.int16 and samples.shape == (RATE,)
    assert dominant_frequency(samples, RATE) == pytest.approx(440, abs=0.5)


def test_tone_is_phase_continuous_across_reads() -> None:
    source = parse_source("tone:1000")
    joined = np.concatenate([source.read(333) for _ in range(30)])
    whole = parse_source("tone:1000").read(333 * 30)
    assert np.array_equal(joined, whole)


def test_silence_source() -> None:
    assert not parse_source("silence").read(960).any()


def test_tone_fraction_distinguishes_425_from_440() -> None:
    ringback = parse_source("tone:425").read(RATE)
    dial = parse_source("tone:440").read(RATE)
    assert tone_fraction(ringback, RATE, 425) == 1.0
    assert tone_fraction(ringback, RATE, 440) == 0.0
    assert tone_fraction(dial, RATE, 440) == 1.0
    assert tone_fraction(dial, RATE, 425) == 0.0


def test_silent_windows_are_misses() -> None:
    audio = np.concatenate([parse_source("tone:440").read(RATE), np.zeros(RATE, np.int16)])
    assert tone_fraction(audio, RATE, 440) == pytest.approx(0.5)
    assert dominant_frequency(np.zeros(4800, np.int16), RATE) == 0.0


def test_wav_source_is_resampled_and_looped(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    # 1 s of 300 Hz at 8 kHz.
    write_wav(path, parse_source("tone:300").read(48000)[::6], 8000)
    samples, rate = read_wav(path)
    assert rate == 8000 and samples.size == 8000
    source = parse_source(str(path))
    audio = source.read(3 * RATE)  # three loops
    assert audio.dtype == np.int16
    assert dominant_frequency(audio[RATE : RATE + 4800], RATE) == pytest.approx(300, abs=2)


@pytest.mark.parametrize("spec", ["tone:", "tone:abc", "tone:-5", "noise", "/no/such.wav"])
def test_bad_source_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="audio source"):
        parse_source(spec)


def test_opus_round_trip_keeps_the_tone() -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    source = parse_source("tone:440")
    decoded = [
        decoder.decode(payload)
        for _ in range(25)
        for payload in encoder.encode(source.read(FRAME_SAMPLES))
    ]
    audio = np.concatenate(decoded)
    assert tone_fraction(audio[4800:], RATE, 440) == 1.0


def test_ringback_cadence_is_425_hz_one_second_on_four_off() -> None:
    decoder = OpusDecoder()
    audio = np.concatenate([decoder.decode(payload) for payload in ringback_cycle()])
    assert audio.size == 5 * RATE
    assert tone_fraction(audio[int(0.1 * RATE) : RATE], RATE, 425) == 1.0
    assert tone_fraction(audio[int(1.2 * RATE) :], RATE, 425) == 0.0
