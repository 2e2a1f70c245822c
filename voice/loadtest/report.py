"""What a load run found: the JSON report, the summary table, the SLO verdict."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from voice.loadtest.runner import RunOutcome, cpu_count
from voice.loadtest.slo import Slo, evaluate
from voice.loadtest.stats import summary, worst_direction


def _direction_total(results: list[dict[str, Any]], key: str) -> int:
    return sum(int(d.get(key) or 0) for r in results for d in r.get("directions", {}).values())


def figures(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """The figures SLOs are judged on."""
    sent = _direction_total(results, "sent")
    lost = _direction_total(results, "lost")
    setup = summary(r.get("setup_ms") for r in results)
    pdd = summary(r.get("pdd_ms") for r in results)
    jitter = summary(worst_direction(r, "jitter_ms") for r in results)
    delay = summary(worst_direction(r, "delay_ms_p99") for r in results)
    mos = summary(r.get("mos") for r in results)
    pesq = summary(r.get("pesq") for r in results)
    failed = sum(1 for r in results if not r.get("ok"))
    return {
        "setup_p95": setup["p95"],
        "setup_p99": setup["p99"],
        "pdd_p95": pdd["p95"],
        "loss": 100.0 * lost / sent if sent else None,
        "jitter_p95": jitter["p95"],
        "delay_p99": delay["p99"],
        "failed": 100.0 * failed / len(results) if results else None,
        "mos": mos["mean"],
        "mos_min": mos["min"],
        "pesq": pesq["mean"],
    }


def build_report(outcome: RunOutcome, slos: list[Slo]) -> dict[str, Any]:
    results = outcome.results
    figs = figures(results)
    verdicts = evaluate(slos, figs)
    samples = outcome.sampler.samples
    cpu_values = [s.cpu_pct for s in samples if s.cpu_pct is not None]
    rss_values = [s.rss_mb for s in samples if s.rss_mb is not None]
    talk_minutes = sum(float(r.get("talk_s") or 0.0) for r in results) / 60
    server_cpu = outcome.sampler.cpu_seconds if cpu_values else None
    integrity: dict[str, int] = {}
    for r in results:
        for d in r.get("directions", {}).values():
            verdict = str(d.get("integrity"))
            integrity[verdict] = integrity.get(verdict, 0) + 1
    options = outcome.options
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": {
            "server": outcome.server_url,
            "relay_mode": options.relay_mode if options.server_pid else None,
            "calls": options.calls,
            "rate": options.rate,
            "concurrency": options.concurrency,
            "duration": options.duration,
            "hold": options.hold,
            "audio": options.audio,
            "workers": options.workers,
            "impair": options.impair or None,
        },
        "wall_s": round(outcome.wall_s, 3),
        "calls": {
            "attempted": len(results),
            "ok": sum(1 for r in results if r.get("ok")),
            "failed": sum(1 for r in results if not r.get("ok")),
            "end_reasons": _count(r.get("end_reason") for r in results),
            "max_concurrent": outcome.max_active,
            "talk_minutes": round(talk_minutes, 3),
        },
        "integrity": integrity,
        "setup_ms": summary(r.get("setup_ms") for r in results),
        "pdd_ms": summary(r.get("pdd_ms") for r in results),
        "loss_pct": {
            "overall": figs["loss"],
            **summary(worst_direction(r, "loss_pct") for r in results),
        },
        "jitter_ms": summary(worst_direction(r, "jitter_ms") for r in results),
        "delay_ms": {
            "p50": summary(worst_direction(r, "delay_ms_p50") for r in results)["p50"],
            "p99": figs["delay_p99"],
            "mean": summary(worst_direction(r, "delay_ms_mean") for r in results)["mean"],
        },
        "r_factor": summary(r.get("r_factor") for r in results),
        "mos": summary(r.get("mos") for r in results),
        "pesq": summary(r.get("pesq") for r in results),
        "server": {
            "local": bool(cpu_values),
            "cpu_s": server_cpu,
            "cpu_pct": summary(cpu_values),
            "cpu_s_per_call_minute": server_cpu / talk_minutes
            if server_cpu and talk_minutes
            else None,
            "rss_mb_max": max(rss_values) if rss_values else None,
            "samples": [
                {"t": s.t, "cpu_pct": s.cpu_pct, "rss_mb": s.rss_mb, "active_calls": s.active_calls}
                for s in samples
            ],
        },
        "generator": {
            "cpu_s": round(outcome.generator_cpu_s, 3),
            "cpu_pct_of_machine": round(
                100.0 * outcome.generator_cpu_s / (outcome.wall_s * cpu_count()), 1
            ),
        },
        "impairment": outcome.impairment or None,
        "figures": figs,
        "slo": verdicts,
        "slo_met": all(v["met"] for v in verdicts),
        "per_call": results,
    }


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def print_summary(report: dict[str, Any], console: Console) -> None:
    calls = report["calls"]
    table = Table(title=f"Load run: {calls['ok']}/{calls['attempted']} calls ok", show_lines=False)
    table.add_column("figure")
    table.add_column("p50", justify="right")
    table.add_column("p95", justify="right")
    table.add_column("worst", justify="right")
    setup, pdd = report["setup_ms"], report["pdd_ms"]
    table.add_row(
        "setup time (invite → callee audio)",
        _fmt(setup["p50"], " ms"),
        _fmt(setup["p95"], " ms"),
        _fmt(setup["max"], " ms"),
    )
    table.add_row(
        "post-dial delay (invite → ringing)",
        _fmt(pdd["p50"], " ms"),
        _fmt(pdd["p95"], " ms"),
        _fmt(pdd["max"], " ms"),
    )
    loss = report["loss_pct"]
    table.add_row(
        "packet loss",
        _fmt(loss["p50"], " %", 2),
        _fmt(loss["p95"], " %", 2),
        _fmt(loss["max"], " %", 2),
    )
    jitter = report["jitter_ms"]
    table.add_row(
        "jitter (RFC 3550)",
        _fmt(jitter["p50"], " ms", 2),
        _fmt(jitter["p95"], " ms", 2),
        _fmt(jitter["max"], " ms", 2),
    )
    delay = report["delay_ms"]
    table.add_row(
        "one-way delay via relay",
        _fmt(delay["p50"], " ms", 2),
        "-",
        _fmt(delay["p99"], " ms (p99)", 2),
    )
    mos = report["mos"]
    table.add_row("MOS (E-model)", _fmt(mos["p50"], "", 2), "-", _fmt(mos["min"], "", 2))
    if report["pesq"]["n"]:
        pesq = report["pesq"]
        table.add_row(
            f"PESQ wideband ({pesq['n']} calls)",
            _fmt(pesq["p50"], "", 2),
            "-",
            _fmt(pesq["min"], "", 2),
        )
    console.print(table)
    server, generator = report["server"], report["generator"]
    if server["local"]:
        console.print(
            f"server: CPU {_fmt(server['cpu_pct']['mean'])} % of a core on average "
            f"(peak {_fmt(server['cpu_pct']['max'])} %), "
            f"{_fmt(server['cpu_s_per_call_minute'], ' s', 2)} CPU per call-minute, "
            f"RSS peak {_fmt(server['rss_mb_max'], ' MB')}"
        )
    console.print(
        f"generator: {generator['cpu_s']} s CPU, "
        f"{generator['cpu_pct_of_machine']} % of the machine; "
        f"max concurrent calls {calls['max_concurrent']}; integrity {report['integrity']}"
    )
    if report["impairment"]:
        console.print(f"impairment proxy: {report['impairment']}")
    if calls["failed"]:
        failed = [r for r in report["per_call"] if not r.get("ok")][:5]
        for r in failed:
            console.print(f"  call {r['index']}: {r.get('end_reason')} {r.get('error') or ''}")
    for verdict in report["slo"]:
        mark = "[green]met[/green]" if verdict["met"] else "[red]MISSED[/red]"
        sign = "≤" if verdict["bound"] == "max" else "≥"
        value = _fmt(verdict["value"], "", 2)
        console.print(f"SLO {verdict['figure']} {sign} {verdict['limit']}: {value} {mark}")
