"""Service-level objectives for load runs: `setup_p95=300ms,loss=1%,mos=4.0` (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

#: figure name -> (unit it is reported in, whether lower values are better)
FIGURES: dict[str, tuple[str, bool]] = {
    "setup_p95": ("ms", True),
    "setup_p99": ("ms", True),
    "pdd_p95": ("ms", True),
    "loss": ("%", True),
    "jitter_p95": ("ms", True),
    "delay_p99": ("ms", True),
    "failed": ("%", True),
    "mos": ("", False),
    "mos_min": ("", False),
    "pesq": ("", False),
}

DEFAULT_SLOS = "setup_p95=300ms,loss=1%,mos=4.0,failed=1%"

_VALUE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|%)?\s*$")


@dataclass(frozen=True)
class Slo:
    figure: str
    limit: float
    bound: Literal["max", "min"]

    def met(self, value: float | None) -> bool:
        if value is None:
            return False
        return value <= self.limit if self.bound == "max" else value >= self.limit


def parse_slos(spec: str) -> list[Slo]:
    slos = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, raw = part.partition("=")
        name = name.strip()
        if name not in FIGURES:
            raise ValueError(f"unknown SLO figure {name!r}; known: {', '.join(FIGURES)}")
        match = _VALUE.match(raw)
        if match is None:
            raise ValueError(f"SLO {name}: {raw!r} is not a number with an optional ms, s or %")
        value, unit = float(match.group(1)), match.group(2)
        expected, lower_is_better = FIGURES[name]
        if unit == "s" and expected == "ms":
            value *= 1000
        elif unit and unit != expected and not (unit == "ms" and expected == "ms"):
            raise ValueError(f"SLO {name}: expected a value in {expected or 'plain numbers'}")
        slos.append(Slo(name, value, "max" if lower_is_better else "min"))
    return slos


def evaluate(slos: list[Slo], figures: dict[str, float | None]) -> list[dict[str, Any]]:
    return [
        {
            "figure": slo.figure,
            "bound": slo.bound,
            "limit": slo.limit,
            "value": figures.get(slo.figure),
            "met": slo.met(figures.get(slo.figure)),
        }
        for slo in slos
    ]
