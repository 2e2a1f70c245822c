from __future__ import annotations

import pytest

from voice.loadtest.sweep import Sweep


def run(sweep: Sweep, capacity: int) -> list[int]:
    tried = []
    while (level := sweep.next()) is not None:
        tried.append(level)
        sweep.record(level, level <= capacity)
    return tried


def test_climbs_then_bisects_towards_the_capacity() -> None:
    sweep = Sweep(start=20, step=20, maximum=300)
    assert run(sweep, capacity=75) == [20, 40, 60, 80, 70, 75]
    assert (sweep.held, sweep.missed) == (75, 80)


def test_stops_at_the_maximum_when_nothing_breaks() -> None:
    sweep = Sweep(start=10, step=10, maximum=35)
    assert run(sweep, capacity=1000) == [10, 20, 30]
    assert sweep.held == 30 and sweep.missed is None


def test_breaking_at_the_first_level_searches_below_it() -> None:
    sweep = Sweep(start=20, step=20, maximum=100, refinements=3)
    assert run(sweep, capacity=6) == [20, 10, 5, 7]
    assert sweep.held == 5


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        Sweep(start=0, step=5, maximum=10)
