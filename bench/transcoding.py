"""Transcoding benchmark: concurrent WebRTC (Opus) <-> RTP (PCMA) calls one relay core carries.

    .venv/bin/python -m bench.transcoding [--ladder 10,20,40,60,80,100,120]
        [--window 4] [--reps 3] [--loop uvloop]

A real `Relay` (the production class) runs in a child process on one event
loop (uvloop by default, as relay workers do), so it uses at most one core.
This process drives calls through it: per call a lean WebRTC endpoint
(`RtpPeer`, the load generator's: aiortc for ICE and DTLS-SRTP, pre-encoded
Opus of a 440 Hz tone sent raw every 20 ms) answered by the relay (leg A),
and a plain-RTP peer (`voice.loadtest.rtp_peer.PlainRtpPeer`: a UDP socket
sending PCMA of an 880 Hz tone every 20 ms) on an RTP leg the relay offered
(leg B); the relay bridges them. One task ticks every sender.

Two modes, each climbing the same ladder of concurrent calls, in one run:

* transcode: the RTP peer answers PCMA, so the relay decodes Opus, decimates
  48 -> 8 kHz, encodes G.711 one way, and decodes G.711, interpolates to
  48 kHz, encodes Opus the other way, 50 frames/s each;
* forward (baseline): the RTP peer answers Opus: the relay forwards packets
  both ways with rewritten headers (SRTP on the WebRTC side only).

At each step: relay CPU (time.process_time in the relay process, kernel time
included) over --reps windows of --window seconds, and the packets sent and
received by the endpoints over the same windows (loss, both directions).
A mode stops climbing at loss >= 0.5 % or relay CPU > 90 % of a core.
Printed: per step the medians; per mode the highest step that passed, the
relay CPU per call, and calls per core (90 % of a core / CPU per call), and
the transcode/forward ratio. The generator's own CPU is printed too: on a
2-core machine it shares the machine with the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import statistics
import sys
import time
from typing import Any

from aiortc import RTCSessionDescription

from bench.relay_forwarding import Endpoint as AppEndpoint
from bench.relay_forwarding import RelayProcess, new_loop
from voice.ice import restrict_host_addresses
from voice.loadtest.rtp_peer import PlainRtpPeer, opus_tone_payloads

FRAME_SECONDS = 0.02
LOSS_LIMIT = 0.005
CPU_LIMIT = 0.9


# -- relay process ----------------------------------------------------------------


async def relay_child() -> None:
    """Serve JSON-line commands on stdin/stdout with a Relay in this process."""
    from voice.relay.relay import Relay

    restrict_host_addresses(["127.0.0.1"])
    relay = Relay(bind_address="127.0.0.1", media_timeout=120.0)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        command = json.loads(line)
        op = command["op"]
        if op == "answer":
            reply(await relay.answer(command["leg"], command["sdp"]))
        elif op == "offer_rtp":
            reply(await relay.offer_rtp(command["leg"]))
        elif op == "accept_rtp":
            await relay.accept_rtp_answer(command["leg"], command["sdp"])
            reply(None)
        elif op == "bridge":
            relay.bridge(command["a"], command["b"])
            reply(None)
        elif op == "sample":
            legs = list(relay._legs.values())
            rtp_legs = list(relay._rtp_legs.values())
            reply(
                {
                    "cpu": time.process_time(),
                    "system": os.times().system,
                    "connected": sum(1 for leg in legs if leg.connected),
                    "to_webrtc": sum(leg.frames_to_webrtc for leg in rtp_legs),
                    "from_webrtc": sum(leg.frames_from_webrtc for leg in rtp_legs),
                    "forwarded": sum(leg.forwarded_packets for leg in rtp_legs),
                    "loop": type(loop).__module__,
                }
            )
        elif op == "close_all":
            await relay.close()
            reply(None)
        elif op == "quit":
            await relay.close()
            reply(None)
            return


def relay_process(loop_kind: str, profile: str = "") -> RelayProcess:
    """The relay child of this benchmark (its own ops: RTP legs, transcoding)."""
    return RelayProcess(loop_kind, "bench.transcoding", ["--profile", profile] if profile else [])


# -- endpoints -------------------------------------------------------------------


class Call:
    def __init__(self, index: int, app: AppEndpoint, phone: PlainRtpPeer) -> None:
        self.index = index
        self.app = app
        self.phone = phone


async def set_up_call(
    relay: RelayProcess, index: int, codec: str, opus: list[bytes], phone_opus: list[bytes]
) -> Call:
    app = AppEndpoint(opus)
    await app.pc.setLocalDescription(await app.pc.createOffer())
    answer = await relay.call("answer", leg=f"c{index}:app", sdp=app.pc.localDescription.sdp)
    await app.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    phone = PlainRtpPeer(
        codec=codec, tone=880.0, record=False, payloads=phone_opus if codec == "opus" else None
    )
    await phone.open()
    offer = await relay.call("offer_rtp", leg=f"c{index}:sip")
    await relay.call("accept_rtp", leg=f"c{index}:sip", sdp=phone.answer(offer))
    await relay.call("bridge", a=f"c{index}:app", b=f"c{index}:sip")
    return Call(index, app, phone)


async def ticker(calls: list[Call], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    while not stop.is_set():
        for call in list(calls):
            await call.app.tick()
            if call.app.number:  # the phone starts with the app (both connected)
                call.phone.tick()
        deadline += FRAME_SECONDS
        delay = deadline - loop.time()
        if delay < -0.2:
            deadline = loop.time()
            delay = 0.0
        await asyncio.sleep(max(0.0, delay))


def counters(calls: list[Call]) -> dict[str, int]:
    return {
        "app_sent": sum(call.app.packets_sent for call in calls),
        "app_received": sum(call.app.received for call in calls),
        "phone_sent": sum(call.phone.sent for call in calls),
        "phone_received": sum(call.phone.received for call in calls),
    }


# -- measurement -----------------------------------------------------------------


async def climb(mode: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    codec = "PCMA" if mode == "transcode" else "opus"
    relay = relay_process(args.loop, f"{args.profile}.{mode}" if args.profile else "")
    calls: list[Call] = []
    stop = asyncio.Event()
    tick_task = asyncio.create_task(ticker(calls, stop))
    steps: list[dict[str, Any]] = []
    opus = opus_tone_payloads(440.0)
    phone_opus = opus_tone_payloads(880.0)
    try:
        for target in args.ladder:
            new: list[Call] = []
            for index in range(len(calls), target):
                new.append(await set_up_call(relay, index, codec, opus, phone_opus))
            async with asyncio.timeout(60):
                while (await relay.call("sample"))["connected"] < target or not all(  # noqa: ASYNC110
                    call.app.connected for call in new
                ):
                    await asyncio.sleep(0.2)
            calls.extend(new)
            await asyncio.sleep(args.settle)
            windows: list[dict[str, float]] = []
            for _ in range(args.reps):
                before, start = counters(calls), await relay.call("sample")
                generator_before = time.process_time()
                started = time.monotonic()
                await asyncio.sleep(args.window)
                end, after = await relay.call("sample"), counters(calls)
                elapsed = time.monotonic() - started
                generator_cpu = time.process_time() - generator_before
                sent = (after["app_sent"] - before["app_sent"]) + (
                    after["phone_sent"] - before["phone_sent"]
                )
                received = (after["app_received"] - before["app_received"]) + (
                    after["phone_received"] - before["phone_received"]
                )
                cpu = (end["cpu"] - start["cpu"]) / elapsed
                windows.append(
                    {
                        "cpu": cpu,
                        "cpu_per_call": cpu / target,
                        "system_share": (end["system"] - start["system"])
                        / max(1e-9, end["cpu"] - start["cpu"]),
                        "loss": max(0.0, 1.0 - received / max(1, sent)),
                        "generator_cpu": generator_cpu / elapsed,
                        "transcoded_per_s": (
                            end["to_webrtc"]
                            - start["to_webrtc"]
                            + end["from_webrtc"]
                            - start["from_webrtc"]
                        )
                        / elapsed,
                        "forwarded_per_s": (end["forwarded"] - start["forwarded"]) / elapsed,
                    }
                )
            step = {"calls": target, "loop": end["loop"]}
            for key in windows[0]:
                step[key] = statistics.median(window[key] for window in windows)
            step["passed"] = step["loss"] < LOSS_LIMIT and step["cpu"] <= CPU_LIMIT
            steps.append(step)
            print(
                f"  {mode:9} {target:4} calls: relay CPU {100 * step['cpu']:5.1f} % "
                f"({1000 * step['cpu_per_call']:.2f} ms/s per call), "
                f"kernel {100 * step['system_share']:.0f} % of it, "
                f"loss {100 * step['loss']:.3f} %, "
                f"transcoded {step['transcoded_per_s']:6.0f} frames/s, "
                f"forwarded {step['forwarded_per_s']:6.0f} pkt/s, "
                f"generator CPU {100 * step['generator_cpu']:5.1f} %"
                + ("" if step["passed"] else "  <- limit"),
                flush=True,
            )
            if not step["passed"]:
                break
        return steps
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await tick_task
        for call in calls:
            call.app.closed = True
            await call.app.pc.close()
            await call.phone.close()
        await relay.stop()


def summary(steps: list[dict[str, Any]]) -> dict[str, float]:
    passed = [step for step in steps if step["passed"]]
    best = passed[-1] if passed else steps[0]
    # CPU per call from the steps that passed (the relay not saturated), median.
    per_call = statistics.median(step["cpu_per_call"] for step in (passed or steps))
    return {
        "highest_passing_calls": float(best["calls"]) if passed else 0.0,
        "cpu_per_call_ms_per_s": 1000 * per_call,
        "calls_per_core": CPU_LIMIT / per_call,
        "reached_limit": float(not steps[-1]["passed"]),
    }


async def run(args: argparse.Namespace) -> None:
    results: dict[str, list[dict[str, Any]]] = {}
    for mode in ("transcode", "forward"):
        print(f"\n{mode}:", flush=True)
        results[mode] = await climb(mode, args)
    transcode, forward = summary(results["transcode"]), summary(results["forward"])
    print("\nsummary (medians of windows; calls per core = 90 % of a core / relay CPU per call)")
    print(f"  {'figure':38} {'transcode':>12} {'forward':>12} {'ratio':>8}")
    print(
        f"  {'highest step passed (loss < 0.5 %)':38} "
        f"{transcode['highest_passing_calls']:>12.0f} {forward['highest_passing_calls']:>12.0f}"
        f" {'':>8}"
    )
    print(
        f"  {'relay CPU per call (ms per s)':38} {transcode['cpu_per_call_ms_per_s']:>12.2f} "
        f"{forward['cpu_per_call_ms_per_s']:>12.2f} "
        f"{transcode['cpu_per_call_ms_per_s'] / forward['cpu_per_call_ms_per_s']:>7.1f}x"
    )
    print(
        f"  {'calls per core':38} {transcode['calls_per_core']:>12.0f} "
        f"{forward['calls_per_core']:>12.0f} "
        f"{transcode['calls_per_core'] / forward['calls_per_core']:>7.2f}x"
    )
    for mode, figures in (("transcode", transcode), ("forward", forward)):
        if not figures["reached_limit"]:
            print(f"  ({mode}: the ladder ended before a limit; calls per core is projected)")
    print(json.dumps({"transcode": transcode, "forward": forward, "steps": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ladder", default="10,20,40,60,80,100,120")
    parser.add_argument("--window", type=float, default=4.0, help="seconds per window")
    parser.add_argument("--reps", type=int, default=3, help="windows per step")
    parser.add_argument("--settle", type=float, default=1.5, help="seconds after adding calls")
    parser.add_argument("--loop", default="uvloop", help="the relay's event loop")
    parser.add_argument(
        "--profile", default="", help="write the relay's cProfile stats to PROFILE.<mode>"
    )
    parser.add_argument("--relay-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay_child:
        loop = new_loop(args.loop)
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        try:
            if profiler is not None:
                profiler.enable()
            loop.run_until_complete(relay_child())
        finally:
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            loop.close()
        return
    args.ladder = [int(value) for value in args.ladder.split(",") if value]
    restrict_host_addresses(["127.0.0.1"])
    print(
        f"transcoding: WebRTC Opus <-> RTP PCMA calls through one relay process "
        f"({args.loop}), ladder {args.ladder}, {args.reps} x {args.window:.0f} s windows, "
        f"cpus={os.cpu_count()}",
        flush=True,
    )
    loop = new_loop("uvloop")
    try:
        loop.run_until_complete(run(args))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
