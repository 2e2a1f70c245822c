"""The one thing CallService needs of the event loop's clock: a cancellable timer.

Injected, so tests drive time by hand (a fake whose ``advance`` fires what is
due) instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

__all__ = ["LoopTimers", "TimerHandle", "Timers"]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once, ``delay`` seconds from now, unless cancelled."""
        ...


class LoopTimers:
    """Timers on the running asyncio loop."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)
