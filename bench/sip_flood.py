"""SIP flood benchmark: how much of one source's flood reaches our call handling.

    .venv/bin/python -m bench.sip_flood [--rate 2000] [--seconds 6] [--rounds 3]

Three `anruf serve` processes on 127.0.0.1, each with a SIP trunk (accepted source
127.0.0.1, the SBC) and one setting apart:

* ``blocked``: the defaults, ``sip_requests_per_second`` 50 (bursts of 100),
  ``sip_block_after`` 2 s, ``sip_block_seconds`` 60 s;
* ``limited`` (baseline): the same rate limit, never blocked (``sip_block_after`` 0);
* ``open`` (baseline): no protection to speak of (10^6 requests/s per source).

Each round, SIPp floods each server from a new source address (127.0.0.10+round: a
scanner, not an accepted source) with OPTIONS at ``--rate`` per second for
``--seconds``, never waiting for an answer. The bench reads the server's /metrics every
50 ms: ``anruf_sip_events_total`` ``messages_received`` less ``requests_rate_limited``
counts the requests that got past the per-source limit into our handling (parsed,
checked, answered: a scanner is not an accepted source, so it gets 403 there; an
accepted one would reach the transaction layer and the call handlers); messages from
a blocked source are not in ``messages_received`` (``requests_blocked``: dropped
unparsed). ``sources_blocked`` says when the block began. Figures per server (medians over rounds):

* handled: requests that reached call handling during the whole flood, and per second;
* for ``blocked``: time from the flood's first datagram to the block, requests handled
  before the block and their rate, and the rate after it (what the flood reaches while
  blocked: 0).

The last line is a JSON object with every figure. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._nodes import REPO, Node, sipp_binary, sipp_command, workdir
from tests.ports import free_port

SCENARIO = REPO / "tests" / "sip" / "flood_options.xml"

#: Each server's settings (ANRUF_* variables, by setting name) on top of the SIP trunk's.
CONFIGS: dict[str, dict[str, str]] = {
    "blocked": {"sip_block_after": "2", "sip_block_seconds": "60"},
    "limited": {"sip_block_after": "0"},
    "open": {"sip_block_after": "0", "sip_requests_per_second": "1000000"},
}


class Server:
    """`anruf serve` (a bench/_nodes.py Node) with a SIP trunk on 127.0.0.1 and
    ``settings`` on top; its SIP UDP port is chosen before it starts."""

    def __init__(self, name: str, settings: dict[str, str], workdir: Path) -> None:
        self.sip_port = free_port(socket.SOCK_DGRAM)
        trunk = {
            "host": "127.0.0.1",
            "relay_workers": "0",
            "sip_listen": f"127.0.0.1:{self.sip_port}",
            "sip_sbc": f"udp:127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
            "sip_accepted_sources": "127.0.0.1",
            "sip_options_interval": "0",
            "sip_transports": "udp",
        }
        self.node = Node(name, {**trunk, **settings}, workdir)

    async def counters(self, session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(self.node.url + "/metrics") as response:
            text = await response.text()
        found = re.findall(r'^anruf_sip_events_total\{event="(\w+)"\} (\S+)$', text, re.M)
        counters = {name: float(value) for name, value in found}
        # Requests that got past the per-source limit into parsing and handling.
        counters["handled"] = counters.get("messages_received", 0.0) - counters.get(
            "requests_rate_limited", 0.0
        )
        return counters


@dataclass
class Round:
    config: str
    handled: float
    seconds: float
    blocked_after: float | None = None
    handled_before_block: float | None = None
    handled_after_block: float | None = None


async def flood_round(
    session: aiohttp.ClientSession,
    server: Server,
    config: str,
    source: str,
    rate: int,
    seconds: float,
    workdir: Path,
) -> Round:
    before = await server.counters(session)
    base = before.get("handled", 0.0)
    blocks = before.get("sources_blocked", 0.0)
    command = sipp_command(
        SCENARIO,
        f"127.0.0.1:{server.sip_port}",
        *("-r", str(rate), "-m", str(int(rate * seconds))),
        source=source,
    )
    sipp = await asyncio.create_subprocess_exec(
        *command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started = time.monotonic()
    samples: list[tuple[float, float, float]] = []  # (t, handled, blocks)
    try:
        while sipp.returncode is None and time.monotonic() - started < seconds + 5:
            now = await server.counters(session)
            samples.append(
                (
                    time.monotonic() - started,
                    now.get("handled", 0.0) - base,
                    now.get("sources_blocked", 0.0) - blocks,
                )
            )
            await asyncio.sleep(0.05)
    finally:
        if sipp.returncode is None:
            sipp.kill()
        await sipp.wait()
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.2)
    final = await server.counters(session)
    handled = final.get("handled", 0.0) - base
    result = Round(config, handled, elapsed)
    block = next((s for s in samples if s[2] > 0), None)
    if block is not None:
        result.blocked_after = block[0]
        result.handled_before_block = block[1]
        result.handled_after_block = handled - block[1]
    return result


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sipp_binary()  # before any server starts
    tmp = workdir()
    servers = {name: Server(name, env, Path(tmp.name)) for name, env in CONFIGS.items()}
    rounds: list[Round] = []
    try:
        for server in servers.values():
            server.node.start()
        for server in servers.values():
            await asyncio.to_thread(server.node.wait_healthy, 30.0)
        sipp_dir = Path(tmp.name) / "sipp"
        sipp_dir.mkdir()
        async with aiohttp.ClientSession() as session:
            for n in range(args.rounds):
                source = f"127.0.0.{10 + n}"
                for name, server in servers.items():
                    result = await flood_round(
                        session, server, name, source, args.rate, args.seconds, sipp_dir
                    )
                    rounds.append(result)
                    print(
                        f"round {n + 1} {name:8s} from {source}: handled {result.handled:.0f}"
                        f" in {result.seconds:.1f} s"
                        + (
                            f"; blocked after {result.blocked_after:.2f} s,"
                            f" {result.handled_before_block:.0f} handled before,"
                            f" {result.handled_after_block:.0f} after"
                            if result.blocked_after is not None
                            else ""
                        ),
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.node.stop()
        tmp.cleanup()

    figures: dict[str, Any] = {"flood_rate": args.rate, "flood_seconds": args.seconds}
    for name in CONFIGS:
        mine = [r for r in rounds if r.config == name]
        figures[f"{name}_handled"] = median([r.handled for r in mine])
        figures[f"{name}_handled_per_s"] = median([r.handled / r.seconds for r in mine])
    blocked = [r for r in rounds if r.config == "blocked"]
    figures["blocked_after_s"] = median([r.blocked_after for r in blocked])
    figures["handled_before_block"] = median([r.handled_before_block for r in blocked])
    figures["handled_per_s_before_block"] = median(
        [
            r.handled_before_block / r.blocked_after
            if r.blocked_after and r.handled_before_block is not None
            else None
            for r in blocked
        ]
    )
    figures["handled_after_block"] = median([r.handled_after_block for r in blocked])
    figures["blocks"] = sum(1 for r in blocked if r.blocked_after is not None)
    for base in ("limited", "open"):
        mine, theirs = figures["blocked_handled"], figures[f"{base}_handled"]
        figures[f"ratio_to_{base}"] = mine / theirs if mine is not None and theirs else None
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=2000, help="flood requests per second")
    parser.add_argument("--seconds", type=float, default=6.0, help="flood length")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    f = asyncio.run(run(args))
    print()
    print(f"SIP flood from one source, {args.rate}/s for {args.seconds:g} s (medians):")
    print(
        f"  blocked (50/s, block after 2 s): blocked after {f['blocked_after_s']:.2f} s;"
        f" {f['handled_before_block']:.0f} requests reached call handling before the block"
        f" ({f['handled_per_s_before_block']:.0f}/s), {f['handled_after_block']:.0f} after;"
        f" {f['blocked_handled']:.0f} in all ({f['blocked_handled_per_s']:.1f}/s)"
    )
    print(
        f"  baseline limited (50/s, never blocked): {f['limited_handled']:.0f}"
        f" ({f['limited_handled_per_s']:.1f}/s); ratio {f['ratio_to_limited']:.2f}"
    )
    print(
        f"  baseline open (no limit): {f['open_handled']:.0f}"
        f" ({f['open_handled_per_s']:.1f}/s); ratio {f['ratio_to_open']:.3f}"
    )
    print(json.dumps(f))
    return 0 if f["blocks"] == args.rounds else 1  # every flood was blocked


if __name__ == "__main__":
    sys.exit(main())
