"""Relay forwarding benchmark: CPU per forwarded packet, fast path vs aiortc's path.

    .venv/bin/python -m bench.relay_forwarding [--calls 40] [--window 5] [--reps 5]
        [--loops asyncio,uvloop]

For each event loop (the stock asyncio loop, and uvloop if installed) a relay
process is started (`voice.relay.relay.Relay`, the production class, on
127.0.0.1) and this process sets up --calls two-way calls through it: per
call a caller and a callee endpoint (`RtpPeer`, the load generator's lean
endpoint: aiortc for ICE and DTLS-SRTP, raw Opus RTP) that each send one
20 ms Opus packet every 20 ms, paced by one ticker. The relay bridges every
pair, so it forwards 100 packets/s per call.

Then, on the same calls, measurement windows alternate between the two
forwarding paths of the relay, switched at run time in the relay process
(`voice.relay.fastpath.set_enabled`):

* aiortc path (baseline): aioice -> queue -> DTLS transport task -> SRTP
  unprotect -> RtpPacket.parse -> router -> Leg.on_rtp -> serialize ->
  _send_rtp (SRTP protect) -> aioice send;
* fast path: the nominated pair's datagram_received -> unprotect -> header
  rewrite on bytes -> protect -> sendto.

Per window: relay process CPU (time.process_time in the relay, so the
generator's CPU is not counted) over the window, the packets it forwarded
(sum of its legs' packets_sent), CPU per forwarded packet and per
call-minute (CPU seconds / (calls x window minutes)), and the share of sent
packets the endpoints received. Figures are medians over --reps windows of
each path; ratios are against the aiortc path measured in the same run on
the same loop. Everything, RTCP and ICE consent included, is in the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtpPacket

from bench._nodes import REPO
from voice.codecs.opus import FRAME_SAMPLES, OpusEncoder
from voice.ice import ice_configuration, restrict_host_addresses
from voice.relay.leg import RtpPeer

FRAME_SECONDS = 0.02


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# -- relay process ----------------------------------------------------------------


async def relay_child() -> None:
    """Serve JSON-line commands on stdin/stdout with a Relay in this process."""
    from voice.relay import fastpath
    from voice.relay.relay import Relay

    restrict_host_addresses(["127.0.0.1"])
    relay = Relay(bind_address="127.0.0.1", media_timeout=60.0)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def reply(value: Any) -> None:
        out.write(json.dumps(value) + "\n")
        out.flush()

    while line := await reader.readline():
        command = json.loads(line)
        op = command["op"]
        if op == "answer":
            reply(await relay.answer(command["leg"], command["sdp"]))
        elif op == "offer":
            reply(await relay.offer(command["leg"]))
        elif op == "accept":
            await relay.accept_answer(command["leg"], command["sdp"])
            reply(None)
        elif op == "bridge":
            relay.bridge(command["a"], command["b"])
            reply(None)
        elif op == "fast":
            fastpath.set_enabled(bool(command["on"]))
            reply(None)
        elif op == "sample":
            legs = list(relay._legs.values())
            reply(
                {
                    "cpu": time.process_time(),
                    "system": os.times().system,
                    "sent": sum(leg.packets_sent for leg in legs),
                    "fast": sum(leg.fast_path_packets for leg in legs),
                    "connected": sum(1 for leg in legs if leg.connected),
                    "loop": type(loop).__module__,
                }
            )
        elif op == "quit":
            await relay.close()
            reply(None)
            return


class RelayProcess:
    """A benchmark's relay child process (``python -m MODULE --relay-child``), driven by
    JSON lines; ``module`` is the benchmark whose relay_child() it runs."""

    def __init__(
        self, loop_kind: str, module: str = "bench.relay_forwarding", extra_args: Sequence[str] = ()
    ) -> None:
        command = [sys.executable, "-m", module, "--relay-child", "--loop", loop_kind]
        self.process = subprocess.Popen(
            [*command, *extra_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self._lock = asyncio.Lock()

    async def call(self, op: str, **fields: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.process.stdin.flush()
            line = await asyncio.to_thread(self.process.stdout.readline)
        if not line:
            raise RuntimeError("the relay process exited")
        return json.loads(line)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("quit"), 20)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.process.wait, 10)
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


# -- endpoints -------------------------------------------------------------------


class Endpoint(RtpPeer):
    """A device: replays Opus payloads on tick(), counts what it receives."""

    def __init__(self, payloads: list[bytes]) -> None:
        super().__init__(RTCPeerConnection(configuration=ice_configuration([])))
        self.use_opus_only()
        self.payloads = payloads
        self.number = 0
        self.received = 0

    async def on_rtp(self, packet: RtpPacket) -> None:
        self.received += 1

    async def tick(self) -> None:
        number = self.number
        sent = await self.send(
            "bench",
            number & 0xFFFF,
            (number * FRAME_SAMPLES) & 0xFFFFFFFF,
            int(number == 0),
            self.payloads[number % len(self.payloads)],
        )
        if sent:
            self.number = number + 1


def tone_payloads(frequency: float, frames: int = 50) -> list[bytes]:
    encoder = OpusEncoder()
    t = np.arange(frames * FRAME_SAMPLES) / 48000.0
    pcm = (8000 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    payloads: list[bytes] = []
    for index in range(frames):
        payloads.extend(encoder.encode(pcm[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES]))
    return payloads


async def ticker(endpoints: list[Endpoint], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    while not stop.is_set():
        for endpoint in endpoints:
            await endpoint.tick()
        deadline += FRAME_SECONDS
        delay = deadline - loop.time()
        if delay < -0.2:
            deadline = loop.time()
            delay = 0.0
        await asyncio.sleep(max(0.0, delay))


async def set_up_call(relay: RelayProcess, index: int, payloads: list[bytes]) -> list[Endpoint]:
    caller, callee = Endpoint(payloads), Endpoint(payloads)
    a, b = f"a{index}", f"b{index}"
    await caller.pc.setLocalDescription(await caller.pc.createOffer())
    answer = await relay.call("answer", leg=a, sdp=caller.pc.localDescription.sdp)
    await caller.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    offer = await relay.call("offer", leg=b)
    await callee.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await callee.pc.setLocalDescription(await callee.pc.createAnswer())
    await relay.call("accept", leg=b, sdp=callee.pc.localDescription.sdp)
    await relay.call("bridge", a=a, b=b)
    return [caller, callee]


async def wait_connected(relay: RelayProcess, endpoints: list[Endpoint], legs: int) -> None:
    while True:
        relay_legs = (await relay.call("sample"))["connected"]
        if relay_legs >= legs and all(endpoint.connected for endpoint in endpoints):
            return
        await asyncio.sleep(0.2)


# -- measurement -----------------------------------------------------------------


Windows = dict[str, list[dict[str, float]]]


async def measure_loop(loop_kind: str, args: argparse.Namespace) -> Windows:
    relay = RelayProcess(loop_kind)
    endpoints: list[Endpoint] = []
    stop = asyncio.Event()
    tick_task: asyncio.Task[None] | None = None
    results: Windows = {"aiortc": [], "fast": []}
    try:
        payloads = tone_payloads(440.0)
        for index in range(args.calls):
            endpoints.extend(await set_up_call(relay, index, payloads))
        async with asyncio.timeout(30):
            await wait_connected(relay, endpoints, 2 * args.calls)
        tick_task = asyncio.create_task(ticker(endpoints, stop))
        await asyncio.sleep(args.warmup)
        for rep in range(args.reps):
            for mode in ("aiortc", "fast") if rep % 2 == 0 else ("fast", "aiortc"):
                await relay.call("fast", on=mode == "fast")
                await asyncio.sleep(args.settle)
                sent_before = sum(endpoint.packets_sent for endpoint in endpoints)
                received_before = sum(endpoint.received for endpoint in endpoints)
                start = await relay.call("sample")
                started = time.monotonic()
                await asyncio.sleep(args.window)
                end = await relay.call("sample")
                elapsed = time.monotonic() - started
                sent = sum(endpoint.packets_sent for endpoint in endpoints) - sent_before
                received = sum(endpoint.received for endpoint in endpoints) - received_before
                cpu = end["cpu"] - start["cpu"]
                forwarded = end["sent"] - start["sent"]
                window = {
                    "cpu_share": cpu / elapsed,
                    "us_per_packet": 1e6 * cpu / max(1, forwarded),
                    # kernel time: recvfrom/sendto and, on loopback, delivery to the peer
                    "system_us_per_packet": 1e6
                    * (end["system"] - start["system"])
                    / max(1, forwarded),
                    "cpu_s_per_call_minute": cpu / (args.calls * elapsed / 60.0),
                    "forwarded_per_s": forwarded / elapsed,
                    "fast_share": (end["fast"] - start["fast"]) / max(1, forwarded),
                    "delivered": received / max(1, sent),
                }
                results[mode].append(window)
                print(
                    f"  {loop_kind:7} rep {rep + 1} {mode:6}: "
                    f"{window['us_per_packet']:6.1f} us/packet, "
                    f"{window['cpu_s_per_call_minute']:6.3f} CPU s/call-min, "
                    f"relay CPU {100 * window['cpu_share']:5.1f} %, "
                    f"{window['forwarded_per_s']:6.0f} fwd/s, "
                    f"fast {100 * window['fast_share']:5.1f} %, "
                    f"delivered {100 * window['delivered']:5.1f} %",
                    flush=True,
                )
        return results
    finally:
        stop.set()
        if tick_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await tick_task
        for endpoint in endpoints:
            endpoint.closed = True
            await endpoint.pc.close()
        await relay.stop()


def median(windows: list[dict[str, float]], key: str) -> float:
    return statistics.median(window[key] for window in windows)


def report(loop_kind: str, results: Windows, calls: int) -> None:
    base, fast = results["aiortc"], results["fast"]
    print(f"\n{loop_kind} loop, {calls} two-way calls, medians of {len(base)} windows per path")
    print(f"  {'figure':34} {'aiortc path':>12} {'fast path':>12} {'ratio':>8}")
    rows: list[tuple[str, str, Callable[[float], str]]] = [
        ("relay CPU per forwarded packet", "us_per_packet", lambda v: f"{v:.1f} us"),
        ("  of which in the kernel", "system_us_per_packet", lambda v: f"{v:.1f} us"),
        ("relay CPU per call-minute", "cpu_s_per_call_minute", lambda v: f"{v:.3f} s"),
        ("relay CPU (share of one core)", "cpu_share", lambda v: f"{100 * v:.1f} %"),
        ("packets forwarded per second", "forwarded_per_s", lambda v: f"{v:.0f}"),
        ("packets delivered to endpoints", "delivered", lambda v: f"{100 * v:.2f} %"),
        ("share forwarded on the fast path", "fast_share", lambda v: f"{100 * v:.1f} %"),
    ]
    for label, key, fmt in rows:
        b, f = median(base, key), median(fast, key)
        ratio = f"{f / b:.2f}x" if b else "-"
        print(f"  {label:34} {fmt(b):>12} {fmt(f):>12} {ratio:>8}")
    per_core_base = 60.0 / median(base, "cpu_s_per_call_minute")
    per_core_fast = 60.0 / median(fast, "cpu_s_per_call_minute")
    print(
        f"  {'calls per core (60 / CPU s per min)':34} {per_core_base:>12.0f} "
        f"{per_core_fast:>12.0f} {per_core_fast / per_core_base:>7.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--reps", type=int, default=5, help="windows per path and loop")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after a switch")
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--relay-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay_child:
        loop = new_loop(args.loop)
        try:
            loop.run_until_complete(relay_child())
        finally:
            loop.close()
        return

    restrict_host_addresses(["127.0.0.1"])
    kinds = [kind for kind in args.loops.split(",") if kind]
    if "uvloop" in kinds and not uvloop_available():
        print("uvloop is not installed: measuring the asyncio loop only")
        kinds.remove("uvloop")
    print(
        f"relay forwarding: {args.calls} calls ({100 * args.calls} packets/s to forward), "
        f"{args.reps} x {args.window:.0f} s windows per path, cpus={os.cpu_count()}"
    )
    # The generator itself runs on uvloop when it can: its own cost is not measured,
    # but the lighter it is, the less it disturbs the relay on a small machine.
    gen_loop = new_loop("uvloop" if uvloop_available() else "asyncio")
    all_results: dict[str, Windows] = {}
    try:
        for kind in kinds:
            print(f"\nrelay on {kind}:")
            all_results[kind] = gen_loop.run_until_complete(measure_loop(kind, args))
    finally:
        gen_loop.close()
    for kind, results in all_results.items():
        report(kind, results, args.calls)
    if "asyncio" in all_results and "uvloop" in all_results:
        base = median(all_results["asyncio"]["aiortc"], "us_per_packet")
        print("\nper forwarded packet against the aiortc path on the asyncio loop:")
        for kind, results in all_results.items():
            for mode in ("aiortc", "fast"):
                value = median(results[mode], "us_per_packet")
                print(f"  {kind:8} {mode:7} {value:6.1f} us  {value / base:.2f}x")


if __name__ == "__main__":
    main()
