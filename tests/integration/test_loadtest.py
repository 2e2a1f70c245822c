"""`anruf loadtest` end to end: real calls, real relay, synthetic audio, on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerFactory
from voice.loadtest.report import build_report
from voice.loadtest.runner import LoadOptions, run
from voice.loadtest.slo import parse_slos

REPORT_KEYS = {
    "generated_at", "options", "wall_s", "calls", "integrity", "setup_ms", "pdd_ms", "loss_pct",
    "jitter_ms", "delay_ms", "r_factor", "mos", "pesq", "server", "generator", "impairment",
    "figures", "slo", "slo_met", "per_call",
}  # fmt: skip
LOAD_PREFIX = "+491770000"


def test_a_small_spawned_run_hears_every_signature_and_writes_report_and_plots(
    tmp_path: Path,
) -> None:
    report_path, plots = tmp_path / "report.json", tmp_path / "plots"
    done = subprocess.run(
        [sys.executable, "-m", "signaling.cli", "loadtest", "--spawn", "--calls", "6",
         "--concurrency", "6", "--rate", "3", "--hold", "6", "--workers", "2",
         "--slo", "setup_p95=1000ms,loss=0.5%,mos=4.0,failed=0%",
         "--report", str(report_path), "--plots", str(plots)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert set(report) >= REPORT_KEYS
    assert report["calls"]["attempted"] == 6 and report["calls"]["ok"] == 6
    assert report["integrity"] == {"ok": 12}
    for call in report["per_call"]:
        assert call["end_reason"] == "completed"
        for direction in call["directions"].values():
            assert direction["integrity"] == "ok"
            assert direction["signature_heard"] == direction["signature_expected"]
            assert direction["lost"] == 0 and direction["received"] > 200
        assert call["mos"] >= 4.0
        assert 0 < call["setup_ms"] < 1000 and 0 < call["pdd_ms"] < call["setup_ms"] + 1000
    assert report["server"]["local"] and report["server"]["cpu_s"] > 0
    assert report["generator"]["cpu_s"] > 0
    assert report["slo_met"] is True
    for name in ("setup_cdf.png", "mos_hist.png", "loss_jitter.png", "concurrency_cpu.png"):
        assert (plots / name).stat().st_size > 5000
    assert "Load run: 6/6 calls ok" in done.stdout


async def test_crossed_and_silent_calls_fail_the_integrity_check(
    make_server: ServerFactory,
) -> None:
    server = await make_server(test_number_prefix=LOAD_PREFIX)
    options = LoadOptions(
        server=server.url, calls=3, concurrency=3, rate=10, hold=3,
        number_prefix=LOAD_PREFIX, faults={0: "silent", 1: "crossed"},
    )  # fmt: skip
    outcome = await run(options)
    by_index = {r["index"]: r for r in outcome.results}
    assert by_index[0]["directions"]["a"]["integrity"] == "silent"
    assert by_index[1]["directions"]["a"]["integrity"] == "crossed"
    assert by_index[2]["directions"]["a"]["integrity"] == "ok"
    assert [by_index[i]["ok"] for i in range(3)] == [False, False, True]
    report = build_report(outcome, parse_slos("failed=0%"))
    assert report["slo_met"] is False


async def test_an_impaired_run_shows_the_loss(make_server: ServerFactory) -> None:
    server = await make_server(test_number_prefix=LOAD_PREFIX)
    options = LoadOptions(
        server=server.url, calls=2, concurrency=2, rate=10, hold=6,
        number_prefix=LOAD_PREFIX, impair="loss=5%",
    )  # fmt: skip
    outcome = await run(options)
    report = build_report(outcome, parse_slos("loss=1%"))
    # Each device's access link loses 5 % each way, and a direction of a call crosses
    # two of them (caller up, callee down): 1 - 0.95**2 = 9.75 % end to end.
    assert 6.0 <= report["figures"]["loss"] <= 14.0, report["figures"]
    assert report["slo_met"] is False
    proxy = report["impairment"]
    assert proxy["upstream_dropped"] > 0 and proxy["downstream_dropped"] > 0
    clean = [r for r in outcome.results if r["ok"]]
    assert clean, "calls stay up and their signatures are heard through 5 % loss"
    assert max(r["mos"] for r in outcome.results) < 4.3
