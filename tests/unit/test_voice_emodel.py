"""The E-model (ITU-T G.107): R and MOS of one direction of a call."""

from __future__ import annotations

from voice.audio.emodel import mos_from_r, r_factor


def test_unimpaired_call_rates_high() -> None:
    r = r_factor(1.0, 0.0, 0.5)
    assert r > 90
    assert mos_from_r(r) >= 4.2


def test_loss_lowers_the_score_clearly() -> None:
    clean = mos_from_r(r_factor(1.0, 0.0, 0.5))
    lossy = mos_from_r(r_factor(1.0, 0.05, 0.5))
    assert clean - lossy > 0.4
    assert lossy < 4.0


def test_delay_lowers_the_score() -> None:
    clean = mos_from_r(r_factor(1.0, 0.0, 0.5))
    late = mos_from_r(r_factor(300.0, 0.0, 0.5))
    assert clean - late > 0.5
    # Jitter costs delay through the jitter buffer.
    assert r_factor(1.0, 0.0, 40.0) < r_factor(1.0, 0.0, 0.5)


def test_mos_bounds_and_monotony() -> None:
    assert mos_from_r(-5) == 1.0
    assert mos_from_r(120) == 4.5
    values = [mos_from_r(r) for r in range(0, 101, 5)]
    assert values == sorted(values)
    assert r_factor(10_000.0, 1.0, 1000.0) == 0.0
