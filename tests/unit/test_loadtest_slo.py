from __future__ import annotations

import pytest

from voice.loadtest.slo import Slo, evaluate, parse_slos
from voice.loadtest.stats import percentile, summary


def test_parse_slos_with_units() -> None:
    assert parse_slos("setup_p95=300ms,loss=1%,mos=4.0,delay_p99=0.01s") == [
        Slo("setup_p95", 300.0, "max"),
        Slo("loss", 1.0, "max"),
        Slo("mos", 4.0, "min"),
        Slo("delay_p99", 10.0, "max"),
    ]


@pytest.mark.parametrize("spec", ["speed=3", "loss=lots", "mos=4%", "setup_p95="])
def test_bad_slos_are_named(spec: str) -> None:
    with pytest.raises(ValueError, match=r"SLO|unknown"):
        parse_slos(spec)


def test_evaluate_marks_missed_and_missing_figures() -> None:
    slos = parse_slos("setup_p95=300ms,mos=4.0,loss=1%")
    verdicts = evaluate(slos, {"setup_p95": 310.0, "mos": 4.3})
    assert [v["met"] for v in verdicts] == [False, True, False]


def test_percentile_and_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0
    assert percentile([], 50) is None
    s = summary([3.0, None, 1.0, 2.0])
    assert (s["n"], s["p50"], s["max"], s["mean"]) == (3, 2.0, 3.0, 2.0)
