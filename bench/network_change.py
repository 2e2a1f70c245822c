"""Audio gap when a device changes network mid-call.

    .venv/bin/python -m bench.network_change [--calls 20] [--talk 2.0]

Two app devices in this process call each other through a real `anruf serve` on
127.0.0.1 (caller tone 440 Hz, callee 880 Hz). After --talk seconds of
conversation one of them (caller and callee in turn) loses its network: its old
path falls silent at once, and it starts again from the other loopback address
(127.0.0.2, then back to 127.0.0.1) with ``Call.move`` (call.renegotiate: a fresh
leg swapped into the bridge). The figure is the longest silence the *other*
party hears in the --talk seconds after the move: the longest wait between two
audible frames (RMS >= 1 % of full scale) arriving, median and p95 over the calls.

Baseline, measured on the same calls: the longest silence the other party hears
in the --talk seconds before the move (the ordinary packet-level gaps of this
machine). Also printed: move started -> call.renegotiated received.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from bench._nodes import Node, machine_load, workdir
from voice.client.client import Phone
from voice.client.signaling import SignalingClient
from voice.ice import restrict_host_addresses
from wire import EndReason

TEST_PREFIX = "+4917700000"
TEST_CODE = "246810"
CALLER = "+4917700000201"
CALLEE = "+4917700000202"
ADDRESSES = ("127.0.0.2", "127.0.0.1")


async def phone(url: str, number: str) -> Phone:
    client = SignalingClient(url)
    try:
        token = (await client.register(number, TEST_CODE, "bench"))["token"]
    finally:
        await client.close()
    return await Phone.open(url, token)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def run(url: str, calls: int, talk: float) -> None:
    alice = await phone(url, CALLER)
    bob = await phone(url, CALLEE)
    gaps: list[float] = []
    baseline: list[float] = []
    renegotiation: list[float] = []
    try:
        for n in range(calls):
            outgoing = await alice.call(CALLEE, source="tone:440")
            incoming = await bob.incoming(timeout=10, source="tone:880")
            await incoming.accept()
            if not await outgoing.connected(timeout=10):
                raise RuntimeError(f"call {n} did not connect: {outgoing.end_reason}")
            mover, listener = (outgoing, incoming) if n % 2 == 0 else (incoming, outgoing)
            assert listener.media is not None
            await asyncio.sleep(0.5)  # past the first packets
            before_at = time.monotonic()
            await asyncio.sleep(talk)
            started = time.monotonic()
            await mover.move(ADDRESSES[(n // 2) % 2])
            renegotiation.append(time.monotonic() - started)
            await asyncio.sleep(talk + 0.2)
            gap = listener.media.longest_pause(started, started + talk)
            before = listener.media.longest_pause(before_at, before_at + talk)
            gaps.append(gap)
            baseline.append(before)
            await outgoing.hangup()
            reason = await outgoing.ended(timeout=10)
            await incoming.ended(timeout=10)
            if reason != EndReason.COMPLETED:
                raise RuntimeError(f"call {n} ended {reason} {outgoing.end_detail}")
            side = "caller" if n % 2 == 0 else "callee"
            print(
                f"call {n + 1:3d}: {side} moved, gap {gap * 1000:6.0f} ms "
                f"(before the move {before * 1000:4.0f} ms), "
                f"renegotiated in {renegotiation[-1] * 1000:5.0f} ms",
                flush=True,
            )
    finally:
        await alice.close()
        await bob.close()
    gap_median, base_median = statistics.median(gaps), statistics.median(baseline)
    print()
    print(f"calls: {calls}, each moved once after {talk:.1f} s; {machine_load()}")
    print(
        f"audio gap at a network change: median {gap_median * 1000:.0f} ms, "
        f"p95 {p95(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms (target < 1000 ms)"
    )
    print(
        f"baseline, longest silence in as long a stretch before the move: median "
        f"{base_median * 1000:.0f} ms, p95 {p95(baseline) * 1000:.0f} ms"
    )
    ratio = gap_median / base_median if base_median > 0 else float("inf")
    print(f"ratio (median gap / median baseline): {ratio:.1f}x")
    print(
        "move started -> call.renegotiated: median "
        f"{statistics.median(renegotiation) * 1000:.0f} ms, p95 {p95(renegotiation) * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--talk", type=float, default=2.0)
    args = parser.parse_args()
    restrict_host_addresses(["127.0.0.1"])
    with workdir() as tmp:
        node = Node(
            "node-a",
            {
                "test_number_prefix": TEST_PREFIX,
                "test_code": TEST_CODE,
                "media_bind_address": "127.0.0.1",
            },
            Path(tmp),
        )
        node.start()
        try:
            node.wait_healthy()
            asyncio.run(run(node.url, args.calls, args.talk))
        finally:
            node.stop()


if __name__ == "__main__":
    main()
