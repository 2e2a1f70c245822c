"""Calls kept and data lost across SIGKILL/restart cycles under load.

    .venv/bin/python -m bench.crash_cycles [--cycles 10] [--load-seconds 5] [--pairs 2]

An `anruf serve` on its embedded SQLite store is loaded (a client registering new
devices one after the other; pairs of operator subscribers calling each other
with real media, short calls, reconnecting by themselves) and killed with SIGKILL
after every --load-seconds of load, at the next moment a call is connected, then
started again on the same port and data, --cycles
times (tests/integration/crash_audit.py). Afterwards the audit compares what
clients were told with what the server kept: registrations acknowledged with
201 vs devices stored; calls that got a call id vs call records; calls in
progress at a kill (their record must say failed/node_lost and their devices
must have been told); call.ended events received by the operator's webhook vs
records; calls left in live_calls.

Baseline, in the same run: the same load for as long without kills
(registrations and calls per second), so the figures show what the kills cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from tests.integration.crash_audit import Audit, run_audit
from voice.ice import restrict_host_addresses


async def measure(cycles: int, load_seconds: float, pairs: int) -> tuple[Audit, float]:
    with tempfile.TemporaryDirectory(prefix="anruf-bench-") as tmp:
        started = time.monotonic()
        audit = await run_audit(Path(tmp), cycles, load_seconds, pairs)
        return audit, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--load-seconds", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    restrict_host_addresses(["127.0.0.1"])
    load_time = (args.cycles + 1) * args.load_seconds
    # The baseline runs as long a load in one stretch (one cycle of that length, no kill
    # inside it: run_audit kills only between its stretches).
    baseline, _ = asyncio.run(measure(0, load_time, args.pairs))
    audit, _ = asyncio.run(measure(args.cycles, args.load_seconds, args.pairs))

    print(f"{args.cycles} SIGKILL/restart cycles, {args.load_seconds:.0f} s of load between kills")
    print(
        f"registrations acknowledged {audit.registrations_acknowledged}, lost "
        f"{audit.registrations_lost}"
    )
    print(
        f"calls placed {audit.calls_placed}, without a record {audit.calls_without_record}; "
        f"in progress at a kill {audit.calls_in_progress_at_kill}: kept "
        f"{audit.calls_kept}, ended failed/node_lost on record "
        f"{audit.calls_in_progress_at_kill - audit.calls_kept - audit.killed_calls_misrecorded}, "
        f"misrecorded {audit.killed_calls_misrecorded}, devices never told "
        f"{audit.killed_calls_untold}"
    )
    print(
        f"operator call.ended events expected {audit.events_expected}, lost "
        f"{audit.events_lost}; calls left in live_calls {audit.live_calls_left}"
    )
    print(f"lost in total: {audit.lost} (goal 0)")
    print(
        f"restart to healthy: median {statistics.median(audit.restart_seconds):.1f} s, "
        f"max {max(audit.restart_seconds):.1f} s"
    )
    with_kills = audit.registrations_acknowledged / load_time
    without = baseline.registrations_acknowledged / load_time
    print(
        f"registrations/s {with_kills:.0f} with kills vs {without:.0f} without "
        f"({with_kills / without:.2f}x); calls {audit.calls_placed} vs "
        f"{baseline.calls_placed} ({audit.calls_placed / max(1, baseline.calls_placed):.2f}x)"
    )


if __name__ == "__main__":
    main()
