"""What the fuzzers against a real server share: how long to run, log watching,
waiting for the server's state to settle, and memory measurement."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Seconds each fuzzer fires at the server: short in the suite, longer on demand
#: (ANRUF_FUZZ_SECONDS=600 for a ten-minute run). ANRUF_FUZZ_SEED picks the run.
FUZZ_SECONDS = float(os.environ.get("ANRUF_FUZZ_SECONDS", "15"))
FUZZ_SEED = int(os.environ.get("ANRUF_FUZZ_SEED", "4733"))
#: How long a request may go unanswered (a ping, /healthz, an OPTIONS) while fuzzing.
ANSWER_WITHIN = 5.0
#: Memory the server may keep after the fuzzing, beyond what it held after warming up.
MEMORY_BOUND = 16 * 1024 * 1024


class LogWatch(logging.Handler):
    """Every ERROR (and worse) record of any logger, with its traceback text."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def unexpected(self, expected: Callable[[logging.LogRecord], bool] = lambda r: False) -> str:
        """The records not ``expected``, formatted for an assertion message ('' if none)."""
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        return "\n".join(
            formatter.format(record) for record in self.records if not expected(record)
        )


@contextmanager
def watching_logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        yield watch
    finally:
        root.removeHandler(watch)


async def settle(
    counts: Callable[[], dict[str, int]], baseline: dict[str, int], timeout: float = 15.0
) -> dict[str, int]:
    """Wait until every tracked count is back at its baseline; the counts at the end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    current = counts()
    while current != baseline and loop.time() < deadline:
        await asyncio.sleep(0.1)
        current = counts()
    return current


def traced_memory() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@contextmanager
def tracing_memory() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()
