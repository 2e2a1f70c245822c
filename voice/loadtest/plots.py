"""PNG plots of a load report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from voice.loadtest.stats import worst_direction


def write_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    calls = report["per_call"]
    written = []

    setup = sorted(float(c["setup_ms"]) for c in calls if c.get("setup_ms") is not None)
    fig, ax = plt.subplots(figsize=(6, 4))
    if setup:
        ax.step(setup, [(i + 1) / len(setup) for i in range(len(setup))], where="post")
    ax.set(
        xlabel="setup time: invite → callee audio (ms)",
        ylabel="fraction of calls",
        title="Setup time CDF",
    )
    ax.grid(alpha=0.3)
    written.append(_save(fig, directory / "setup_cdf.png"))

    mos = [float(c["mos"]) for c in calls if c.get("mos") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(mos, bins=20, range=(1.0, 4.5), color="tab:green")
    ax.set(xlabel="MOS (E-model)", ylabel="calls", title="MOS per call")
    written.append(_save(fig, directory / "mos_hist.png"))

    starts = [c.get("started_at") for c in calls]
    t0 = min((s for s in starts if s is not None), default=0.0)
    timed = [c for c in calls if c.get("started_at") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [c["started_at"] - t0 for c in timed]
    ax.plot(xs, [worst_direction(c, "loss_pct") or 0.0 for c in timed], "o", label="loss (%)")
    ax.set(
        xlabel="call start (s into the run)", ylabel="loss (%)", title="Loss and jitter over time"
    )
    twin = ax.twinx()
    twin.plot(
        xs,
        [worst_direction(c, "jitter_ms") or 0.0 for c in timed],
        "x",
        color="tab:red",
        label="jitter (ms)",
    )
    twin.set_ylabel("jitter (ms)")
    fig.legend(loc="upper right")
    written.append(_save(fig, directory / "loss_jitter.png"))

    samples = report["server"]["samples"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ts = [s["t"] for s in samples]
    ax.plot(ts, [s["active_calls"] or 0 for s in samples], label="active calls")
    ax.set(xlabel="time (s)", ylabel="active calls", title="Concurrency and server CPU")
    if any(s["cpu_pct"] is not None for s in samples):
        twin = ax.twinx()
        twin.plot(
            ts, [s["cpu_pct"] or 0.0 for s in samples], color="tab:orange", label="server CPU (%)"
        )
        twin.set_ylabel("server CPU (% of a core)")
    fig.legend(loc="upper right")
    written.append(_save(fig, directory / "concurrency_cpu.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
