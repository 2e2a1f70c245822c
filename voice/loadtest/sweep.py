"""Which concurrency a sweep tries next (pure): climb by a step until the SLOs
break, then bisect between the last level held and the first one missed."""

from __future__ import annotations


class Sweep:
    def __init__(self, start: int, step: int, maximum: int, refinements: int = 2) -> None:
        if start < 1 or step < 1 or maximum < start:
            raise ValueError("a sweep needs 1 <= start <= maximum and a step >= 1")
        self.step = step
        self.maximum = maximum
        self.refinements = refinements
        self.held = 0
        self.missed: int | None = None
        self._next: int | None = start

    def next(self) -> int | None:
        """The next concurrency to try, or None when the sweep is over."""
        return self._next

    def record(self, concurrency: int, met: bool) -> None:
        if met:
            self.held = max(self.held, concurrency)
        else:
            self.missed = concurrency if self.missed is None else min(self.missed, concurrency)
        if self.missed is None:
            following = concurrency + self.step
            self._next = following if following <= self.maximum else None
            return
        middle = (self.held + self.missed) // 2
        if self.refinements > 0 and self.held < middle < self.missed:
            self.refinements -= 1
            self._next = middle
        else:
            self._next = None
