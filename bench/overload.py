"""Overload benchmark: how fast a node at capacity refuses new calls.

    .venv/bin/python -m bench.overload [--capacity 20] [--rounds 5]

`anruf serve` runs on 127.0.0.1 with ``max_calls`` = ``--capacity`` (N) and the
fictional test range (+49 177 0000 00xx). N callees and 2N callers connect their
WebSockets. Each round offers twice the capacity, N call attempts at a time:

1. baseline: N callers send ``call.invite`` at once to N callees (all online, none
   answers): every call is taken. Latency: ``call.invite`` sent -> ``call.progress``
   (the relay's answer) received: a normal call setup's first reply at the same
   concurrency.
2. at 2x capacity: the other N callers send ``call.invite`` at once while the N calls
   ring: every one must be refused. Latency: ``call.invite`` sent -> ``call.ended``
   ``failed``/``overloaded`` received.

Then the N calls are hung up, and the next round starts once the node has no call.
Every caller's offer is one real aiortc offer made once (the relay answers each leg on
its own; no media flows: the calls never connect). The figures are p50 and p95 over
all rounds of both latencies, and their ratio; any attempt that is not taken (phase 1)
or not refused (phase 2) is counted and makes the exit status 1. The last line is a
JSON object with every figure. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench._nodes import Node, workdir
from voice.client.media import MediaEndpoint
from voice.client.signaling import SignalingClient
from voice.ice import restrict_host_addresses
from wire import CallEnded, CallHangup, CallInvite, CallProgress, Detail, EndReason

TEST_PREFIX = "+4917700000"
TEST_CODE = "246810"


def number(n: int) -> str:
    """+49 177 0000 00xx: the fictional test range."""
    if not 0 <= n <= 99:
        raise ValueError("at most 100 fictional numbers")
    return f"{TEST_PREFIX}{n:03d}"


def settings(capacity: int) -> dict[str, str]:
    """The node's settings (ANRUF_* variables, by setting name)."""
    return {
        "host": "127.0.0.1",
        "media_bind_address": "127.0.0.1",
        "relay_workers": "0",
        "test_number_prefix": TEST_PREFIX,
        "test_code": TEST_CODE,
        "max_calls": str(capacity),
        "ring_timeout": "300",
        "call_attempts_per_minute": "100000",
        "call_attempt_burst": "1000",
    }


async def active_calls(session: aiohttp.ClientSession, node: Node) -> float:
    async with session.get(node.url + "/metrics") as response:
        text = await response.text()
    found = re.search(r"^anruf_active_calls (\S+)$", text, re.M)
    return float(found.group(1)) if found else -1.0


async def device(url: str, n: int) -> SignalingClient:
    client = SignalingClient(url)
    await client.register(number(n), TEST_CODE, f"bench-{n}")
    await client.connect()
    return client


async def reply_to(client: SignalingClient, ref: str, timeout: float = 30.0) -> dict[str, Any]:
    while True:
        message = await client.receive(timeout=timeout)
        if message.get("ref") == ref:
            return message


async def invite(client: SignalingClient, to: str, sdp: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    ref = await client.send(CallInvite.type, to=to, sdp=sdp)
    reply = await reply_to(client, ref)
    return time.perf_counter() - started, reply


async def ended(client: SignalingClient, call_id: str, timeout: float = 30.0) -> None:
    while True:
        message = await client.receive(timeout=timeout)
        if message.get("type") == CallEnded.type and message.get("call_id") == call_id:
            return


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.capacity
    if 3 * n > 100:
        raise SystemExit("--capacity: at most 33 (three fictional numbers per slot)")
    restrict_host_addresses(["127.0.0.1"])
    endpoint = MediaEndpoint(source="silence")
    offer = await endpoint.create_offer()
    await endpoint.close()
    tmp = workdir()
    node = Node("overload", settings(n), Path(tmp.name))
    admitted: list[float] = []
    refused: list[float] = []
    wrong: list[str] = []
    clients: list[SignalingClient] = []
    try:
        node.start()
        await asyncio.to_thread(node.wait_healthy, 30.0)
        async with aiohttp.ClientSession() as session:
            callees = [await device(node.url, i) for i in range(n)]
            callers = [await device(node.url, n + i) for i in range(2 * n)]
            clients = callees + callers
            for r in range(args.rounds):
                first, second = callers[:n], callers[n:]
                taken = await asyncio.gather(
                    *(invite(c, number(i), offer) for i, c in enumerate(first))
                )
                calls: list[tuple[SignalingClient, str]] = []
                for (latency, reply), caller in zip(taken, first, strict=True):
                    if reply.get("type") == CallProgress.type:
                        admitted.append(latency)
                        calls.append((caller, str(reply["call_id"])))
                    else:
                        wrong.append(f"round {r + 1} not taken: {reply}")
                over = await asyncio.gather(
                    *(invite(c, number(i), offer) for i, c in enumerate(second))
                )
                for latency, reply in over:
                    if (reply.get("type"), reply.get("reason"), reply.get("detail")) == (
                        CallEnded.type,
                        EndReason.FAILED,
                        Detail.OVERLOADED,
                    ):
                        refused.append(latency)
                    else:
                        wrong.append(f"round {r + 1} not refused: {reply}")
                for caller, call_id in calls:
                    await caller.send(CallHangup.type, call_id=call_id)
                await asyncio.gather(*(ended(c, call_id) for c, call_id in calls))
                for _ in range(200):  # up to 10 s for the node to settle its calls
                    if await active_calls(session, node) <= 0:
                        break
                    await asyncio.sleep(0.05)
                print(
                    f"round {r + 1}: {len(calls)} taken, refusals "
                    f"{len(refused)} so far, p50 so far "
                    f"{statistics.median(refused) * 1000 if refused else float('nan'):.2f} ms",
                    flush=True,
                )
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        node.stop()
        tmp.cleanup()
    ms = 1000.0
    figures: dict[str, Any] = {
        "capacity": n,
        "rounds": args.rounds,
        "attempts": 2 * n * args.rounds,
        "refused": len(refused),
        "admitted": len(admitted),
        "wrong": len(wrong),
        "refusal_p50_ms": (pct(refused, 0.5) or 0) * ms,
        "refusal_p95_ms": (pct(refused, 0.95) or 0) * ms,
        "baseline_progress_p50_ms": (pct(admitted, 0.5) or 0) * ms,
        "baseline_progress_p95_ms": (pct(admitted, 0.95) or 0) * ms,
    }
    for q in ("p50", "p95"):
        base = figures[f"baseline_progress_{q}_ms"]
        figures[f"ratio_{q}"] = figures[f"refusal_{q}_ms"] / base if base else None
    for line in wrong[:10]:
        print(line)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=int, default=20, help="max_calls of the node")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    f = asyncio.run(run(args))
    print()
    print(
        f"New calls at 2x capacity (max_calls {f['capacity']}, {f['attempts']} attempts, "
        f"{f['rounds']} rounds):"
    )
    print(
        f"  refusal (call.invite -> call.ended failed/overloaded): "
        f"p50 {f['refusal_p50_ms']:.2f} ms, p95 {f['refusal_p95_ms']:.2f} ms "
        f"({f['refused']} refused)"
    )
    print(
        f"  baseline (call.invite -> call.progress, same concurrency): "
        f"p50 {f['baseline_progress_p50_ms']:.2f} ms, p95 {f['baseline_progress_p95_ms']:.2f} ms"
    )
    print(f"  ratio p50 {f['ratio_p50']:.3f}, p95 {f['ratio_p95']:.3f}")
    print(json.dumps(f))
    return 0 if f["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
