"""Per-direction meters and PESQ helpers of the load test."""

from __future__ import annotations

import numpy as np
import pytest

from voice.loadtest.measure import (
    DirectionMeter,
    decimate_48k_to_16k,
    wideband_pesq,
)
from voice.loadtest.speech import speech_like


def meter(loop: int = 50, **options: object) -> DirectionMeter:
    index_of = {bytes([i]) * 3: i for i in range(loop)}
    return DirectionMeter(index_of, loop, **options)  # type: ignore[arg-type]


def test_meter_counts_loss_from_the_first_packet_through_and_measures_delay() -> None:
    m = meter()
    now = 100.0
    for number in range(120):
        m.on_send(number, now)
        # The first 5 packets are dropped before the bridge, 10 and 11 are lost.
        if number >= 5 and number not in (10, 11):
            payload = bytes([number % 50]) * 3
            m.on_receive(payload, (1000 + number) & 0xFFFF, number * 960, now + 0.002)
        now += 0.02
    result = m.result()
    assert result.sent == 120
    assert result.received == 113
    assert result.lost == 2
    assert result.loss_pct == pytest.approx(100 * 2 / 115, abs=0.01)
    assert result.delay_ms_p50 == pytest.approx(2.0, abs=0.01)
    assert result.delay_ms_p99 == pytest.approx(2.0, abs=0.01)
    assert result.jitter_ms == pytest.approx(0.0, abs=0.01)
    assert result.mos is not None and result.mos > 4.2


def test_meter_ignores_ringback_and_counts_strangers_without_delay() -> None:
    ringback = b"ring"
    m = meter(ignore=frozenset({ringback}), window=(0.0, 10.0))
    m.on_receive(ringback, 1, 0, 0.5)
    assert m.received == 0
    for number in range(10):
        m.on_send(number, 1.0 + number * 0.02)
        m.on_receive(b"stranger", 2 + number, number * 960, 1.01 + number * 0.02)
    result = m.result()
    assert result.received == 10 and result.lost == 0
    assert result.delay_ms_mean is None
    assert len(m.window_payloads) == 10


def test_silent_direction() -> None:
    result = meter().result()
    assert (result.sent, result.received, result.lost, result.loss_pct) == (0, 0, 0, 0.0)
    assert result.mos is None


def test_decimation_keeps_speech_band_and_removes_aliases() -> None:
    t = np.arange(48000) / 48000
    low = decimate_48k_to_16k(np.sin(2 * np.pi * 1000 * t) * 10000)
    high = decimate_48k_to_16k(np.sin(2 * np.pi * 12000 * t) * 10000)
    assert low.size == 16000
    assert np.sqrt(np.mean(low[100:-100] ** 2)) == pytest.approx(10000 / np.sqrt(2), rel=0.02)
    assert np.sqrt(np.mean(high[100:-100] ** 2)) < 10


def test_pesq_of_identical_speech_is_near_the_top() -> None:
    speech = speech_like(4.0)
    score = wideband_pesq(speech, speech)
    assert score is not None and score > 4.4
    noisy = speech + np.random.default_rng(2).normal(0, 1500, speech.size).astype(np.int16)
    worse = wideband_pesq(speech, noisy)
    assert worse is not None and worse < score - 1.0
    assert wideband_pesq(speech[:1000], speech[:1000]) is None
