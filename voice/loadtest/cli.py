"""`anruf loadtest`: real calls with synthetic audio; capacity and what callers hear.

`add_parser` is imported by every `anruf` command, so this module imports nothing of
the loadtest extra (rich, matplotlib, pesq) at import time: a server install has
none of them, and `main` says how to get them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voice.loadtest.server import DEFAULT_CODE, DEFAULT_PREFIX
from voice.loadtest.slo import DEFAULT_SLOS, Slo, parse_slos

if TYPE_CHECKING:
    from rich.console import Console

    from voice.loadtest.runner import LoadOptions

#: The modules of the `loadtest` extra (pyproject.toml): progress and tables, plots,
#: PESQ scores. A server install leaves them out.
EXTRA_MODULES = ("rich", "matplotlib", "pesq")
INSTALL_HINT = "pip install 'anruf[loadtest]'"


def missing_extra() -> list[str]:
    """The modules of the loadtest extra that are not installed."""
    missing = []
    for name in EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "loadtest", help="drive real calls with synthetic audio and measure them"
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--server",
        help="URL of a running server (its test-number range must cover --number-prefix)",
    )
    target.add_argument(
        "--spawn", action="store_true", help="start a server on embedded defaults (the default)"
    )
    p.add_argument(
        "--server-pid", type=int, help="PID of a local --server, to sample its CPU and memory"
    )
    p.add_argument(
        "--relay-mode",
        choices=["forward", "transcode"],
        default="forward",
        help="relay of a spawned server",
    )
    p.add_argument(
        "--calls", type=int, help="calls to place (default 20 unless --duration is given)"
    )
    p.add_argument("--rate", type=float, default=5.0, help="calls started per second")
    p.add_argument("--concurrency", type=int, default=10, help="calls up at once, at most")
    p.add_argument("--duration", type=float, help="stop starting calls after this many seconds")
    p.add_argument("--hold", type=float, default=10.0, help="seconds each call talks")
    p.add_argument("--audio", choices=["tone", "speech"], default="tone")
    p.add_argument("--pesq-sample", type=int, default=3, help="speech calls scored with PESQ")
    p.add_argument("--workers", type=int, default=1, help="generator processes")
    p.add_argument(
        "--impair",
        default="",
        help="e.g. loss=5%%,jitter=30ms,delay=50ms on every device's access link, both ways",
    )
    p.add_argument(
        "--slo", default="", help=f"thresholds, e.g. {DEFAULT_SLOS.replace('%', '%%')}"
    )  # argparse %-formats help
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    p.add_argument(
        "--number-prefix", default=DEFAULT_PREFIX, help="test-number prefix (4 digits follow)"
    )
    p.add_argument("--code", default=DEFAULT_CODE, help="the test numbers' verification code")
    sweep = p.add_argument_group("sweep")
    sweep.add_argument(
        "--sweep", action="store_true", help="raise concurrency until the SLOs break"
    )
    sweep.add_argument("--sweep-start", type=int, default=10)
    sweep.add_argument("--sweep-step", type=int, default=10)
    sweep.add_argument("--sweep-max", type=int, default=200)
    sweep.add_argument(
        "--compare-transcode",
        action="store_true",
        help="sweep a decoding/re-encoding relay too (spawned servers)",
    )


def main(args: argparse.Namespace) -> int:
    missing = missing_extra()
    if missing:
        print(
            f"anruf loadtest needs the loadtest extra (missing: {', '.join(missing)}): "
            f"{INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    from rich.console import Console

    from voice.loadtest.runner import LoadOptions

    console = Console()
    try:
        slos = parse_slos(args.slo or (DEFAULT_SLOS if args.sweep else ""))
    except ValueError as exc:
        console.print(f"anruf loadtest: {exc}")
        return 2
    calls = args.calls if args.calls is not None else (None if args.duration else 20)
    options = LoadOptions(
        server=args.server,
        server_pid=args.server_pid,
        relay_mode=args.relay_mode,
        calls=calls,
        rate=args.rate,
        concurrency=args.concurrency,
        duration=args.duration,
        hold=args.hold,
        audio=args.audio,
        pesq_sample=args.pesq_sample,
        workers=args.workers,
        impair=args.impair,
        number_prefix=args.number_prefix,
        code=args.code,
    )
    if args.impair:
        from voice.loadtest.impair import Impairment

        try:
            Impairment.parse(args.impair)
        except ValueError as exc:
            console.print(f"anruf loadtest: --impair: {exc}")
            return 2
    try:
        if args.sweep:
            return asyncio.run(_sweeps(options, slos, args, console))
        return asyncio.run(_single(options, slos, args, console))
    except KeyboardInterrupt:
        return 130


async def _single(
    options: LoadOptions, slos: list[Slo], args: argparse.Namespace, console: Console
) -> int:
    from voice.loadtest.report import build_report, print_summary
    from voice.loadtest.runner import run, spawned

    async with spawned(options) as target:
        total = target.calls
        with _progress(console, total) as progress:
            ok = 0

            def on_event(event: dict[str, Any]) -> None:
                nonlocal ok
                finished = event["type"] == "call"
                if finished:
                    ok += bool(event["result"].get("ok"))
                progress.update(f"calls: {event['active']} up, {ok} ok", finished)

            outcome = await run(target, on_event=on_event)
    report = build_report(outcome, slos)
    print_summary(report, console)
    _write(report, args, console)
    return 0 if report["slo_met"] and report["calls"]["attempted"] else 1


async def _sweeps(
    options: LoadOptions, slos: list[Slo], args: argparse.Namespace, console: Console
) -> int:
    modes = ["forward", "transcode"] if args.compare_transcode else [options.relay_mode]
    sweeps: dict[str, dict[str, Any]] = {}
    for mode in modes:
        sweeps[mode] = await _sweep(replace(options, relay_mode=mode), slos, args, console)
    report: dict[str, Any] = {"sweeps": sweeps}
    if len(sweeps) == 2:
        a, b = sweeps["forward"], sweeps["transcode"]
        report["ratio"] = {
            key: (a[key] / b[key]) if a.get(key) and b.get(key) else None
            for key in ("held_concurrency", "calls_per_core")
        }
        console.print(f"forward / transcode: {report['ratio']}")
    _write(report, args, console, plots=False)
    return 0 if all(s["held_concurrency"] for s in sweeps.values()) else 1


async def _sweep(
    options: LoadOptions, slos: list[Slo], args: argparse.Namespace, console: Console
) -> dict[str, Any]:
    from voice.loadtest.report import build_report, figures
    from voice.loadtest.runner import Registry, run, spawned
    from voice.loadtest.sweep import Sweep

    console.rule(f"sweep: relay {options.relay_mode}")
    steps: list[dict[str, Any]] = []
    sweep = Sweep(args.sweep_start, args.sweep_step, args.sweep_max, refinements=3)
    async with spawned(options) as target:
        registry = Registry(str(target.server), options.number_prefix, options.code)
        while (concurrency := sweep.next()) is not None:
            # Calls start at --rate and hold until all of them are up together
            # for --hold seconds: the step measures held calls, not a setup burst.
            hold = concurrency / options.rate + args.hold
            step = replace(target, concurrency=concurrency, calls=concurrency, duration=None,
                           hold=hold)  # fmt: skip
            outcome = await run(step, registry=registry)
            report = build_report(outcome, slos)
            per_minute = report["server"]["cpu_s_per_call_minute"]
            row = {
                "concurrency": concurrency,
                "max_concurrent": report["calls"]["max_concurrent"],
                **figures(outcome.results),
                "server_cpu_pct_mean": report["server"]["cpu_pct"]["mean"],
                "server_cpu_pct_max": report["server"]["cpu_pct"]["max"],
                "server_rss_mb_max": report["server"]["rss_mb_max"],
                "server_cpu_s_per_call_minute": per_minute,
                "calls_per_core": 60.0 / per_minute if per_minute else None,
                "generator_cpu_pct_of_machine": report["generator"]["cpu_pct_of_machine"],
                "slo": report["slo"],
                "slo_met": report["slo_met"],
            }
            steps.append(row)
            _print_step(row, console)
            sweep.record(concurrency, report["slo_met"])
    held = next((row for row in steps if row["concurrency"] == sweep.held), None)
    console.print(f"relay {options.relay_mode}: held {sweep.held} concurrent calls")
    return {
        "relay_mode": options.relay_mode,
        "held_concurrency": sweep.held,
        "first_missed": sweep.missed,
        "calls_per_core": held["calls_per_core"] if held else None,
        "server_cpu_pct_mean": held["server_cpu_pct_mean"] if held else None,
        "generator_cpu_pct_of_machine": held["generator_cpu_pct_of_machine"] if held else None,
        "steps": steps,
    }


def _print_step(row: dict[str, Any], console: Console) -> None:
    verdict = "[green]held[/green]" if row["slo_met"] else "[red]SLO missed[/red]"
    cells = [
        f"{row['concurrency']} calls",
        f"setup p95 {_n(row['setup_p95'])} ms",
        f"loss {_n(row['loss'], 2)} %",
        f"MOS {_n(row['mos'], 2)}",
        f"failed {_n(row['failed'])} %",
        f"server CPU {_n(row['server_cpu_pct_mean'])} %",
        f"~{_n(row['calls_per_core'], 0)} calls/core",
        f"generator {_n(row['generator_cpu_pct_of_machine'])} %",
        verdict,
    ]
    console.print("  ".join(cells), soft_wrap=True)


def _n(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _write(
    report: dict[str, Any], args: argparse.Namespace, console: Console, plots: bool = True
) -> None:
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2))
        console.print(f"report: {args.report}")
    if plots and args.plots:
        from voice.loadtest.plots import write_plots

        for path in write_plots(report, args.plots):
            console.print(f"plot: {path}")


class _progress:
    """A live progress bar on a terminal; a plain line every few seconds elsewhere (CI)."""

    def __init__(self, console: Console, total: int | None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self.total = total
        self.done = 0
        self._printed = time.monotonic()

    def __enter__(self) -> _progress:
        self.progress.start()
        self.task = self.progress.add_task("calls", total=self.total)
        return self

    def update(self, description: str, finished: bool) -> None:
        self.done += finished
        self.progress.update(self.task, advance=int(finished), description=description)
        if not self.console.is_terminal and time.monotonic() - self._printed >= 5:
            self._printed = time.monotonic()
            self.console.print(f"{description}; {self.done}/{self.total or '?'} done")

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
