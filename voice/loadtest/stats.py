"""Aggregates over per-call results: percentiles and summaries (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Iterable[float | None]) -> dict[str, float | int | None]:
    data = [float(v) for v in values if v is not None]
    return {
        "n": len(data),
        "mean": sum(data) / len(data) if data else None,
        "min": min(data) if data else None,
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": max(data) if data else None,
    }


def worst_direction(call: dict[str, Any], key: str) -> float | None:
    """The worse of the two directions' figure (higher is worse)."""
    values = [d.get(key) for d in call.get("directions", {}).values()]
    numbers = [float(v) for v in values if v is not None]
    return max(numbers) if numbers else None
