"""Call setup benchmark: sequential app-to-app calls through a running server and relay.

    .venv/bin/python -m bench.call_setup [--calls 100] [--talk 2.0] [--server URL]

Two app devices in this process call each other through the server: the
caller (+4917700000101) plays tone:440, the callee (+4917700000102) answers at
once and plays tone:880. Each call talks --talk seconds, then the caller
hangs up; every call must end "completed".

Figures, each with a baseline measured in the same run:

* setup time: the caller's ``call.invite`` sent -> the first received frame
  in which the caller's endpoint hears the callee's 880 Hz tone
  (``MediaEndpoint.wait_for_tone``). Baseline: a direct aiortc call between
  two MediaEndpoints in this process (offer and answer handed over in
  process, no server, no relay), from starting ``create_offer`` to hearing
  880 Hz. Also shown: the relay call timed from the caller's create_offer,
  which is the like-for-like comparison with the baseline.
* server CPU per call-minute: utime+stime of the server process
  (/proc/PID/stat) over each call, divided by the call's connected minutes
  (call.accepted -> call.ended as the caller sees them). Baseline: this
  process's CPU (time.process_time) per call-minute during the direct
  calls, i.e. one aiortc endpoint pair that encodes and decodes.

Direct and relayed calls are interleaved (direct, relayed, direct, ...) so
both see the same machine noise; medians are the headline figures.

By default a server is started as a subprocess on a free port on 127.0.0.1
with a temporary data directory and the fictional test number range; it is
killed at exit. With --server URL an existing server is used (it must accept
the test numbers with --test-code); give --server-pid to measure its CPU.
All media stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import numpy as np

from bench._nodes import Node, cpu_seconds, workdir
from voice.audio.analysis import tone_fraction
from voice.client.client import Call, Phone
from voice.client.media import SAMPLE_RATE, MediaEndpoint
from voice.client.signaling import SignalingClient
from voice.ice import restrict_host_addresses
from wire import CallAccepted, EndReason

TEST_PREFIX = "+4917700000"
TEST_CODE = "246810"
CALLER = "+4917700000101"
CALLEE = "+4917700000102"
CALLER_TONE = 440
CALLEE_TONE = 880
SETUP_TARGET_P95_MS = 300.0

T = TypeVar("T")


# -- server process -----------------------------------------------------------


def own_server(tmp: Path) -> Node:
    """`anruf serve` on a free port with its data in ``tmp`` and the test number range."""
    settings = {
        "host": "127.0.0.1",
        "media_bind_address": "127.0.0.1",
        "test_number_prefix": TEST_PREFIX,
        "test_code": TEST_CODE,
    }
    return Node("server", settings, tmp)


# -- one call -------------------------------------------------------------------


@dataclass
class Sample:
    kind: str  # "relay" or "direct"
    index: int
    ok: bool = False
    setup_s: float | None = None  # relay: invite sent -> tone; direct: create_offer -> tone
    setup_from_offer_s: float | None = None  # relay: create_offer started -> tone
    connected_s: float = 0.0  # connected seconds
    client_cpu_s: float = 0.0  # this process
    server_cpu_s: float | None = None  # the server process, same window
    end_reasons: tuple[str | None, ...] = ()
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def minutes(self) -> float:
        return self.connected_s / 60.0


async def _first(aw: Awaitable[T], ended: Call, what: str, timeout: float) -> T:
    """Await ``aw`` unless the call ends first (then fail at once, with its reason)."""
    task = asyncio.ensure_future(aw)
    end_task = asyncio.ensure_future(ended.ended(timeout=timeout + 1))
    try:
        done, _ = await asyncio.wait(
            {task, end_task}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        if task in done:
            return task.result()
        if end_task in done:
            raise RuntimeError(
                f"{what}: call ended first ({ended.end_reason}"
                f"{': ' + ended.end_detail if ended.end_detail else ''})"
            )
        raise TimeoutError(f"{what}: no result in {timeout:.0f} s")
    finally:
        for pending in (task, end_task):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending


def _server_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError):
        return None


async def relay_call(
    index: int, caller: Phone, callee: Phone, talk: float, timeout: float, server_pid: int | None
) -> Sample:
    sample = Sample("relay", index)
    call: Call | None = None
    incoming: Call | None = None
    answering: asyncio.Task[Call] | None = None

    async def answer() -> Call:
        taken = await callee.incoming(timeout=timeout, source=f"tone:{CALLEE_TONE}")
        await taken.accept()  # auto-answer, immediately
        return taken

    server0 = _server_cpu(server_pid)
    cpu0 = time.process_time()
    try:
        async with asyncio.timeout(talk + 3 * timeout):
            answering = asyncio.create_task(answer())
            started = time.monotonic()
            call = await caller.call(CALLEE, source=f"tone:{CALLER_TONE}")
            assert call.media is not None
            heard = await _first(
                call.media.wait_for_tone(CALLEE_TONE, timeout), call, "hearing the callee", timeout
            )
            sample.setup_s = heard - call.invited_at
            sample.setup_from_offer_s = heard - started
            incoming = await _first(answering, call, "callee answering", timeout)
            await _first(call.connected(timeout), call, CallAccepted.type, timeout)
            assert call.connected_at is not None
            await asyncio.sleep(max(0.0, call.connected_at + talk - time.monotonic()))
            await call.hangup()
            await call.ended(timeout)
            ended_at = time.monotonic()
            await incoming.ended(timeout)
            sample.connected_s = ended_at - call.connected_at
    except Exception as exc:
        sample.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        sample.client_cpu_s = time.process_time() - cpu0
        server1 = _server_cpu(server_pid)
        if server0 is not None and server1 is not None:
            sample.server_cpu_s = server1 - server0
        if answering is not None and not answering.done():
            answering.cancel()
            with contextlib.suppress(BaseException):
                await answering
        incoming = incoming or _incoming_of(callee, call)
        sample.end_reasons = (
            call.end_reason if call else None,
            incoming.end_reason if incoming else None,
        )
        await _tidy(caller, callee, call, incoming)

    if not sample.error and sample.end_reasons != (EndReason.COMPLETED, EndReason.COMPLETED):
        sample.error = f"ended {sample.end_reasons[0]!r} / {sample.end_reasons[1]!r}" + (
            f" ({call.end_detail})" if call is not None and call.end_detail else ""
        )
    if not sample.error and incoming is not None and incoming.media is not None:
        # The other direction, checked after the timed window: did the callee hear the caller?
        audio = incoming.media.received()
        marks = incoming.media.markers
        talked = audio[marks.get("connected", 0) : marks.get("ended", len(audio))]
        fraction = tone_fraction(talked[SAMPLE_RATE // 2 :], SAMPLE_RATE, CALLER_TONE)
        if fraction < 0.8:
            sample.notes.append(f"callee heard {CALLER_TONE} Hz in only {fraction:.0%} of the call")
    sample.ok = not sample.error
    return sample


def _incoming_of(callee: Phone, call: Call | None) -> Call | None:
    if call is None or call.call_id is None:
        return None
    return callee.calls.get(call.call_id)


async def _tidy(caller: Phone, callee: Phone, *calls: Call | None) -> None:
    """Leave both phones idle for the next call, whatever happened to this one."""
    for call in calls:
        if call is None:
            continue
        if call.state != "ended":
            with contextlib.suppress(Exception):
                await call.hangup()
            with contextlib.suppress(Exception):
                await call.ended(timeout=5)
        if call.media is not None:
            with contextlib.suppress(Exception):
                await call.media.close()
    # Incoming calls nobody took (e.g. the caller timed out first): decline them.
    while True:
        try:
            stray = await callee.incoming(timeout=0.05)
        except TimeoutError:
            break
        with contextlib.suppress(Exception):
            await stray.reject()
        if stray.media is not None:
            await stray.media.close()
    # Phone.calls keeps every call forever; drop ended ones so 100 calls stay small.
    for phone in (caller, callee):
        for call_id, call in list(phone.calls.items()):
            if call.state == "ended":
                del phone.calls[call_id]
        if phone.closed.is_set():  # lost its WebSocket: come back for the next call
            with contextlib.suppress(Exception):
                await phone.connect()


async def direct_call(index: int, talk: float, timeout: float, server_pid: int | None) -> Sample:
    """Two MediaEndpoints in this process, offer/answer handed over directly."""
    sample = Sample("direct", index)
    caller = MediaEndpoint(source=f"tone:{CALLER_TONE}")
    callee = MediaEndpoint(source=f"tone:{CALLEE_TONE}")
    server0 = _server_cpu(server_pid)
    cpu0 = time.process_time()
    try:
        async with asyncio.timeout(talk + 2 * timeout):
            started = time.monotonic()
            offer = await caller.create_offer()
            answer = await callee.answer(offer)
            await caller.accept_answer(answer)
            connected_at = time.monotonic()  # the point where a relayed call is "accepted"
            heard = await caller.wait_for_tone(CALLEE_TONE, timeout)
            sample.setup_s = sample.setup_from_offer_s = heard - started
            await asyncio.sleep(max(0.0, connected_at + talk - time.monotonic()))
            await caller.close()
            await callee.close()
            sample.connected_s = time.monotonic() - connected_at
    except Exception as exc:
        sample.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        await caller.close()
        await callee.close()
        sample.client_cpu_s = time.process_time() - cpu0
        server1 = _server_cpu(server_pid)
        if server0 is not None and server1 is not None:
            sample.server_cpu_s = server1 - server0
    sample.ok = not sample.error
    return sample


# -- figures --------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _per_minute(samples: Sequence[Sample], attr: str) -> tuple[float | None, float | None]:
    """(median of per-call CPU s/min, total CPU / total minutes)."""
    rows = [(getattr(s, attr), s.minutes) for s in samples if s.ok and s.minutes > 0]
    rows = [(cpu, minutes) for cpu, minutes in rows if cpu is not None]
    if not rows:
        return None, None
    median = statistics.median(cpu / minutes for cpu, minutes in rows)
    total = sum(cpu for cpu, _ in rows) / sum(minutes for _, minutes in rows)
    return median, total


def summarise(
    relay: Sequence[Sample], direct: Sequence[Sample], args: argparse.Namespace, server_pid: Any
) -> dict[str, Any]:
    ok_relay = [s for s in relay if s.ok]
    ok_direct = [s for s in direct if s.ok]
    setup = [s.setup_s * 1000 for s in ok_relay if s.setup_s is not None]
    setup_offer = [s.setup_from_offer_s * 1000 for s in ok_relay if s.setup_from_offer_s]
    base = [s.setup_s * 1000 for s in ok_direct if s.setup_s is not None]
    server_med, server_total = _per_minute(ok_relay, "server_cpu_s")
    base_med, base_total = _per_minute(ok_direct, "client_cpu_s")
    clients_med, _ = _per_minute(ok_relay, "client_cpu_s")
    idle_med, _ = _per_minute(ok_direct, "server_cpu_s")
    p95 = _pct(setup, 95)
    figures = {
        "calls": len(relay),
        "completed": len(ok_relay),
        "failed": len(relay) - len(ok_relay),
        "baseline_calls": len(direct),
        "baseline_failed": len(direct) - len(ok_direct),
        "talk_s": args.talk,
        "setup_ms_p50": _pct(setup, 50),
        "setup_ms_p95": _pct(setup, 95),
        "setup_target_p95_ms": SETUP_TARGET_P95_MS,
        "setup_p95_within_target": p95 < SETUP_TARGET_P95_MS if p95 is not None else None,
        "setup_from_offer_ms_p50": _pct(setup_offer, 50),
        "setup_from_offer_ms_p95": _pct(setup_offer, 95),
        "baseline_setup_ms_p50": _pct(base, 50),
        "baseline_setup_ms_p95": _pct(base, 95),
        "setup_ratio_p50": _ratio(_pct(setup, 50), _pct(base, 50)),
        "setup_ratio_p95": _ratio(_pct(setup, 95), _pct(base, 95)),
        "setup_from_offer_ratio_p50": _ratio(_pct(setup_offer, 50), _pct(base, 50)),
        "setup_from_offer_ratio_p95": _ratio(_pct(setup_offer, 95), _pct(base, 95)),
        "server_cpu_s_per_call_min": server_med,
        "server_cpu_s_per_call_min_total": server_total,
        "baseline_endpoint_pair_cpu_s_per_call_min": base_med,
        "baseline_endpoint_pair_cpu_s_per_call_min_total": base_total,
        "server_cpu_ratio": _ratio(server_med, base_med),
        "server_cpu_ratio_total": _ratio(server_total, base_total),
        "bench_clients_cpu_s_per_call_min_relayed": clients_med,
        "server_idle_cpu_s_per_min_during_baseline": idle_med,
        "connected_call_minutes": sum(s.minutes for s in ok_relay),
        "server_pid_measured": server_pid is not None,
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def print_table(f: dict[str, Any]) -> None:
    rows = [
        # (figure, stat, relayed key, baseline key, ratio key, unit)
        ("setup, invite sent -> callee's tone", "p50", "setup_ms_p50", "baseline_setup_ms_p50",
         "setup_ratio_p50", "ms"),
        ("", "p95", "setup_ms_p95", "baseline_setup_ms_p95", "setup_ratio_p95", "ms"),
        ("setup, create_offer -> callee's tone", "p50", "setup_from_offer_ms_p50",
         "baseline_setup_ms_p50", "setup_from_offer_ratio_p50", "ms"),
        ("", "p95", "setup_from_offer_ms_p95", "baseline_setup_ms_p95",
         "setup_from_offer_ratio_p95", "ms"),
        ("server CPU per call-minute", "median", "server_cpu_s_per_call_min",
         "baseline_endpoint_pair_cpu_s_per_call_min", "server_cpu_ratio", "s"),
        ("", "total", "server_cpu_s_per_call_min_total",
         "baseline_endpoint_pair_cpu_s_per_call_min_total", "server_cpu_ratio_total", "s"),
    ]  # fmt: skip
    header = ("figure", "stat", "relayed", "baseline", "ratio")
    lines = [header] + [
        (
            name,
            stat,
            _fmt(f[value], " " + unit, 1 if unit == "ms" else 3),
            _fmt(f[base], " " + unit, 1 if unit == "ms" else 3),
            _fmt(f[ratio], "x", 2),
        )
        for name, stat, value, base, ratio, unit in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print()
    for number, line in enumerate(lines):
        print(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if number == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print(
        f"calls: {f['completed']}/{f['calls']} completed, {f['failed']} failed; "
        f"baseline: {f['baseline_calls'] - f['baseline_failed']}/{f['baseline_calls']} ok; "
        f"talk {f['talk_s']} s; {_fmt(f['connected_call_minutes'], ' connected call-min', 2)}"
    )
    within = f["setup_p95_within_target"]
    print(
        f"setup p95 target < {SETUP_TARGET_P95_MS:.0f} ms: "
        + ("n/a" if within is None else "met" if within else "NOT met")
    )
    print(
        "baseline setup: direct aiortc call in process (create_offer -> tone). "
        "baseline CPU: this process during direct calls (one endpoint pair encoding + decoding)."
    )
    print(
        f"also: this process per relayed call-minute (both app endpoints + signaling): "
        f"{_fmt(f['bench_clients_cpu_s_per_call_min_relayed'], ' s', 3)}; "
        f"server CPU per minute while idle (during baseline calls): "
        f"{_fmt(f['server_idle_cpu_s_per_min_during_baseline'], ' s', 3)}"
    )


# -- run --------------------------------------------------------------------------


async def register(url: str, number: str, name: str) -> str:
    client = SignalingClient(url)
    try:
        device = await client.register(number, TEST_CODE, name)
    finally:
        await client.close()
    return str(device["token"])


async def server_metrics(url: str) -> dict[str, float]:
    """Unlabelled gauges from /metrics (anruf_active_calls, anruf_connected_devices)."""
    values: dict[str, float] = {}
    with contextlib.suppress(Exception):
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response,
        ):
            for line in (await response.text()).splitlines():
                if line.startswith("anruf_") and "{" not in line:
                    name, _, value = line.partition(" ")
                    values[name] = float(value)
    return values


def _progress(sample: Sample, total: int) -> None:
    if sample.ok:
        detail = f"setup {sample.setup_s * 1000:6.1f} ms" if sample.setup_s is not None else ""
        cpu = (
            f" server {sample.server_cpu_s:.2f} s" if sample.server_cpu_s is not None else ""
        ) + f" bench {sample.client_cpu_s:.2f} s"
        extra = ("  " + "; ".join(sample.notes)) if sample.notes else ""
        print(f"  {sample.kind:6} {sample.index:3}/{total}  {detail}  cpu{cpu}{extra}", flush=True)
    else:
        print(f"  {sample.kind:6} {sample.index:3}/{total}  FAILED: {sample.error}", flush=True)


async def run(args: argparse.Namespace) -> int:
    restrict_host_addresses(["127.0.0.1"])  # before any media, ours or (in process) anyone's
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)

    tmp = workdir()
    server: Node | None = None
    server_log = ""
    server_pid: int | None = args.server_pid
    url = args.server
    phones: list[Phone] = []
    relay: list[Sample] = []
    direct: list[Sample] = []
    interrupted = False
    metrics_after: dict[str, float] = {}
    try:
        if url is None:
            server = own_server(Path(tmp.name))
            server.start()
            atexit.register(server.stop)  # also on a second Ctrl-C
            url = server.url
            server_pid = server.pid
            print(f"server: pid {server_pid}, {url}, log {server.log_path}", flush=True)
            await asyncio.to_thread(server.wait_healthy, 30.0)
        url = url.rstrip("/")
        caller = await Phone.open(url, await register(url, CALLER, "bench-caller"))
        phones.append(caller)
        callee = await Phone.open(url, await register(url, CALLEE, "bench-callee"))
        phones.append(callee)
        baseline_calls = args.baseline_calls or max(args.calls, 20)
        print(
            f"{args.calls} relayed calls and {baseline_calls} direct baseline calls, "
            f"interleaved; {args.warmup} warm-up call(s) of each kind not counted; "
            f"talk {args.talk} s",
            flush=True,
        )
        for index in range(args.warmup):
            warm = await direct_call(index + 1, args.talk, args.timeout, None)
            _progress(warm, args.warmup)
            warm = await relay_call(index + 1, caller, callee, args.talk, args.timeout, None)
            _progress(warm, args.warmup)
        for index in range(max(args.calls, baseline_calls)):
            if index < baseline_calls:
                direct.append(await direct_call(index + 1, args.talk, args.timeout, server_pid))
                _progress(direct[-1], baseline_calls)
            if index < args.calls:
                relay.append(
                    await relay_call(index + 1, caller, callee, args.talk, args.timeout, server_pid)
                )
                _progress(relay[-1], args.calls)
        metrics_after = await server_metrics(url)
    except asyncio.CancelledError:
        interrupted = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        print("\ninterrupted: figures below cover the calls made so far", flush=True)
    finally:
        for phone in phones:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(phone.close(), 10)
            if args.server is not None:  # leave a shared server without our bench devices
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(phone.signaling.revoke(phone.device_id), 10)
                with contextlib.suppress(Exception):
                    await phone.signaling.close()
        if server is not None:
            await asyncio.to_thread(server.stop)
            if server.log_path.exists():
                server_log = server.log_path.read_text(errors="replace")
        tmp.cleanup()

    figures = summarise(relay, direct, args, server_pid)
    print_table(figures)
    failures = [s for s in relay + direct if not s.ok]
    if failures:
        print(f"\n{len(failures)} failed call(s):")
        for s in failures:
            print(f"  {s.kind} #{s.index}: {s.error}")
    notes = [s for s in relay if s.notes]
    if notes:
        print(f"\n{len(notes)} relayed call(s) with audio notes:")
        for s in notes:
            print(f"  relay #{s.index}: {'; '.join(s.notes)}")
    if metrics_after:
        leftover = metrics_after.get("anruf_active_calls", 0.0)
        print(f"\nserver after the run: anruf_active_calls={leftover:g}")
        figures["server_active_calls_after"] = leftover
    if server is not None:
        problems = [
            line
            for line in server_log.splitlines()
            if any(word in line for word in ("ERROR", "WARNING", "Traceback", "CRITICAL"))
        ]
        figures["server_log_problem_lines"] = len(problems)
        if problems:
            print(f"\nserver log: {len(problems)} warning/error line(s), first ones:")
            for line in problems[:10]:
                print("  " + line[:300])
    figures["interrupted"] = interrupted
    print(json.dumps(figures, sort_keys=False))
    if interrupted:
        return 130
    return 0 if not failures else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="relayed calls (default 100)")
    parser.add_argument("--talk", type=float, default=2.0, help="seconds each call talks")
    parser.add_argument(
        "--server", metavar="URL", help="use this running server instead of starting one"
    )
    parser.add_argument(
        "--server-pid", type=int, help="with --server: its process id, to measure its CPU"
    )
    parser.add_argument(
        "--baseline-calls",
        type=int,
        help="direct baseline calls (default: as many as --calls, at least 20)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="uncounted warm-up calls of each kind (default 1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds allowed for each step of a call"
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.talk <= 0:
        parser.error("--calls must be >= 1 and --talk > 0")
    if args.server_pid is not None and args.server is None:
        parser.error("--server-pid goes with --server")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:  # a second Ctrl-C: no summary, but the server is still stopped
        return 130


if __name__ == "__main__":
    sys.exit(main())
