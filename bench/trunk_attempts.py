"""SIP call attempts per second the trunk handles, through the whole call path.

    .venv/bin/python -m bench.trunk_attempts [--seconds 5] [--rates 50,100,200,400,800]

A server (a subprocess: `anruf serve` on a temporary SQLite, relay in
process) has its SIP trunk on 127.0.0.1; SIPp (sip-tester) plays the
operator's network and sends INVITEs at each rate for --seconds:

* figure: INVITEs to registered app users (100 numbers in turn, so none is
  busy with an earlier attempt) with no device online. Each goes
  through the trunk (transactions, 100 Trying), number lookup, the call
  machine, an RTP leg answered and closed by the relay, the call record
  and 480 Temporarily Unavailable.
* baseline, same run: INVITEs to a number without the app, answered 404 by
  the same trunk after the lookup only (the SIP stack's own cost).

Each climb starts a fresh server and raises the rate until an attempt fails
or less than 95 % of the offered rate completes; it holds the last rate that
passed. The figures are medians over --repeat climbs per path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
import subprocess
import time
from pathlib import Path

from bench._nodes import REPO, Node, sipp_binary, sipp_command, workdir
from tests.ports import free_port
from voice.client.signaling import SignalingClient

SCENARIOS = REPO / "bench" / "sip"
#: Called numbers, in turn: a number is busy while an attempt to it is in progress.
APP_USERS = [f"+4917700000{n}" for n in range(300, 400)]
NOT_APP_USERS = [f"+4930555000{n}" for n in range(300, 400)]
CODE = "246810"


def trunk_server(tmp: Path, sip_port: int) -> Node:
    """`anruf serve` with its SIP trunk on ``sip_port`` (UDP) and no limits of its own."""
    settings = {
        "sip_listen": f"127.0.0.1:{sip_port}",
        "sip_sbc": f"udp:127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
        "sip_accepted_sources": "127.0.0.1",
        "sip_options_interval": "0",
        "sip_max_calls_per_second": "100000",
        "sip_max_concurrent_calls": "100000",
        "sip_requests_per_second": "100000",
        "test_number_prefix": "+4917700000",
        "test_code": CODE,
        "relay_workers": "0",
    }
    return Node("trunk", settings, tmp)


async def register(url: str) -> None:
    """One device for each app number (none of them online during the bench)."""
    for number in APP_USERS:
        client = SignalingClient(url)
        try:
            await client.register(number, CODE, "bench")
        finally:
            await client.close()


def run_sipp(
    sip_port: int, scenario: str, numbers: list[str], rate: int, calls: int, workdir: Path
) -> dict[str, float]:
    injection = workdir / "numbers.csv"
    injection.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
    started = time.monotonic()
    command = sipp_command(
        SCENARIOS / scenario,
        f"127.0.0.1:{sip_port}",
        *("-mp", str(free_port(socket.SOCK_DGRAM)), "-inf", str(injection)),
        *("-r", str(rate), "-m", str(calls), "-l", str(max(10, rate * 2)), "-timeout", "120s"),
    )
    result = subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    text = result.stdout
    success = _count(text, "Successful call")
    failed = _count(text, "Failed call")
    return {
        "offered": rate,
        "achieved": round(success / elapsed, 1),
        "successful": success,
        "failed": failed,
    }


def _count(text: str, label: str) -> int:
    match = re.findall(rf"{label}\s*\|\s*\d+\s*\|\s*(\d+)", text)
    return int(match[-1]) if match else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate and run")
    parser.add_argument("--rates", default="25,50,75,100,150,200,300,400,600,800")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    sipp_binary()  # before any server starts

    held: dict[str, list[float]] = {"figure": [], "baseline": []}
    for _ in range(args.repeat):
        for name, scenario, numbers in (
            ("baseline", "attempt_404.xml", NOT_APP_USERS),
            ("figure", "attempt_480.xml", APP_USERS),
        ):
            held[name].append(climb(name, scenario, numbers, rates, args.seconds))
    figure = statistics.median(held["figure"])
    baseline = statistics.median(held["baseline"])
    print(f"held per climb: {json.dumps(held)}")
    print(f"call attempts/s through the whole call path (480): {figure:.0f} (median)")
    print(f"baseline, 404 after the lookup only:              {baseline:.0f} (median)")
    if baseline:
        print(f"ratio: {figure / baseline:.2f}x")


def climb(name: str, scenario: str, numbers: list[str], rates: list[int], seconds: float) -> float:
    """Rising rates on a fresh server until one fails; the last rate held."""
    held = 0.0
    with workdir() as tmp:
        sip_port = free_port(socket.SOCK_DGRAM)
        server = trunk_server(Path(tmp), sip_port)
        try:
            server.start()
            server.wait_healthy()
            asyncio.run(register(server.url))
            for rate in rates:
                run = run_sipp(sip_port, scenario, numbers, rate, int(rate * seconds), Path(tmp))
                print(f"{name:<9} rate {rate:>5}/s: {json.dumps(run)}", flush=True)
                if run["failed"] or run["achieved"] < 0.95 * rate:
                    break
                held = run["achieved"]
        finally:
            server.stop()
    return held


if __name__ == "__main__":
    main()
