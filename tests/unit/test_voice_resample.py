"""48 kHz <-> 8 kHz polyphase resampling."""

from __future__ import annotations

import numpy as np
import pytest

from voice.audio.resample import Decimator, Interpolator


def tone(frequency: float, count: int, rate: int = 48000, amplitude: float = 10000) -> np.ndarray:
    t = np.arange(count) / rate
    return np.round(amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def frames(samples: np.ndarray, size: int) -> list[np.ndarray]:
    return [samples[i : i + size] for i in range(0, samples.size, size)]


def test_1khz_tone_survives_48k_to_8k_and_back() -> None:
    source = tone(1000, 48000)
    down, up = Decimator(), Interpolator()
    low = np.concatenate([down.process(frame) for frame in frames(source, 960)])
    assert low.size == 8000
    high = np.concatenate([up.process(frame) for frame in frames(low, 160)])
    assert high.size == 48000
    assert rms(low[800:]) == pytest.approx(rms(source), rel=0.01)
    # Aligned on the filters' delay, the round trip is the tone (40+ dB SNR).
    reference = source[6000:40000].astype(np.float64)
    lags = [float(np.dot(high[6000 + k : 40000 + k], reference)) for k in range(700)]
    lag = int(np.argmax(lags))
    error = high[6000 + lag : 40000 + lag] - reference
    assert 20 * np.log10(rms(source) / rms(error)) > 40


def test_tone_above_4khz_is_removed_before_decimation() -> None:
    for frequency in (4500, 5000, 7000):
        low = Decimator().process(tone(frequency, 48000))
        # 5 kHz would alias to 3 kHz without the low-pass; it must be ~60 dB down.
        assert rms(low[500:]) < rms(tone(frequency, 48000)) * 10 ** (-55 / 20)


def test_passband_is_flat() -> None:
    for frequency in (300, 1000, 3000, 3400):
        low = Decimator().process(tone(frequency, 48000))
        assert rms(low[500:]) == pytest.approx(rms(tone(frequency, 48000)), rel=0.02)


def test_interpolation_images_are_removed() -> None:
    high = Interpolator().process(tone(1000, 8000, rate=8000))[3000:]
    spectrum = np.abs(np.fft.rfft(high * np.hanning(high.size)))
    frequencies = np.fft.rfftfreq(high.size, 1 / 48000)
    image = spectrum[np.abs(frequencies - 7000) < 100].max()  # 8 kHz - 1 kHz
    assert 20 * np.log10(image / spectrum.max()) < -55


def test_frame_by_frame_equals_all_at_once() -> None:
    source = tone(700, 9600)
    whole = Decimator().process(source)
    down = Decimator()
    assert np.array_equal(whole, np.concatenate([down.process(f) for f in frames(source, 960)]))
    low = tone(700, 1600, rate=8000)
    up = Interpolator()
    assert np.array_equal(
        Interpolator().process(low), np.concatenate([up.process(f) for f in frames(low, 160)])
    )


def test_decimator_wants_whole_output_samples() -> None:
    with pytest.raises(ValueError):
        Decimator().process(np.zeros(100, dtype=np.int16))


def test_speech_through_the_transcoding_chain_keeps_its_quality() -> None:
    """Both directions of the relay's G.711 <-> Opus bridge, frame by frame as the relay
    runs them, scored with narrowband PESQ (P.862) against the 8 kHz original."""
    from pesq import pesq

    from voice.codecs.g711 import alaw_decode, alaw_encode
    from voice.codecs.opus import OpusDecoder, OpusEncoder
    from voice.loadtest.speech import speech_like

    # RTP leg -> app: G.711, interpolated to 48 kHz, Opus (decoded and brought back to 8 kHz).
    narrow = speech_like(6.0, rate=8000)
    g711 = alaw_decode(alaw_encode(narrow))
    up, encoder, decoder, down = Interpolator(), OpusEncoder(), OpusDecoder(), Decimator()
    heard = [
        down.process(decoder.decode(payload))
        for start in range(0, g711.size - 159, 160)
        for payload in encoder.encode(up.process(g711[start : start + 160]))
    ]
    to_app = float(pesq(8000, narrow, np.concatenate(heard)[: narrow.size], "nb"))
    # App -> RTP leg: Opus, decimated to 8 kHz, G.711; against the ideal 8 kHz signal.
    wide = speech_like(6.0, rate=48000)
    encoder, decoder, down, ideal = OpusEncoder(), OpusDecoder(), Decimator(), Decimator()
    sent, reference = [], []
    for start in range(0, wide.size - 959, 960):
        frame = wide[start : start + 960]
        for payload in encoder.encode(frame):
            sent.append(alaw_decode(alaw_encode(down.process(decoder.decode(payload)))))
        reference.append(ideal.process(frame))
    to_phone = float(pesq(8000, np.concatenate(reference), np.concatenate(sent), "nb"))
    g711_alone = float(pesq(8000, narrow, g711, "nb"))
    assert to_app > 4.0 and to_phone > 4.0
    assert g711_alone - min(to_app, to_phone) < 0.3  # the bridge adds little to G.711
