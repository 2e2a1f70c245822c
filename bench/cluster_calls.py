"""Verified call setups per second for 1 node and 2 nodes sharing one PostgreSQL and one Redis.

    .venv/bin/python -m bench.cluster_calls [--rounds 3] [--seconds 4] [--hold 1]

Nodes are `anruf serve` subprocesses (bench/_nodes.py) on free ports of
127.0.0.1, all on one fresh database ``anruf_bench_<random>`` (dropped at exit)
and Redis logical database 4 (flushed before each node count), with the relay in
each node's process (relay_workers 0; --relay-workers N for worker processes, whose
CPU is then counted with their node). The 1-node figure also runs with redis_url
set: a cluster of one.

Load-generator processes (--workers of them) carry calls on lines of
voice/loadtest/line.py: a caller device and a callee device (two fictional test
numbers, +491770091xxxx, code 246810: no SMS) with their own WebSockets, lean
aiortc endpoints (ICE and DTLS-SRTP by aiortc, pre-encoded Opus sent raw) and a
tone pair of its own per call and direction. With 2 nodes every caller sits on
one node and its callee on the other (half of the lines each way), so every call
crosses nodes: the callee's call.incoming and call.accept travel over Redis, the
media goes to the caller's node's relay.

A call counts as verified only if call.accepted reached both devices, each side
heard the other's own signature (decoded from the RTP that arrived: the callee
received the caller's audio, the caller the callee's), both saw call.ended
``completed`` after the hang-up, and the call's record in PostgreSQL says
``completed``. Setup time is call.invite sent -> the first packet of the
callee's audio at the caller (media flowing both ways has to be set up).

Load is open-loop: calls start at an offered rate for --seconds, each on a free
line, held --hold seconds, then hung up; a call that finds no free line fails. The
rate climbs the ladder (--rates) until a step verifies fewer than 99 % of its
calls or its setup p95 reaches 1 s; the step before is held. --rounds climbs per
node count; medians are the headline.

Baseline, same run, same load-generator processes: the same calls (same
endpoints, audio, checks and hold) between two endpoints connected directly, the
offer and answer handed over in process. It is the cost of the client side
alone: the load generator shares the cores with the nodes, so the direct rate
bounds what this machine can show, and the clients' CPU per call against the
nodes' says what a node on cores of its own would carry.

CPU is utime+stime from /proc over each step (from the first call started to the
last CDR read): the nodes' (signaling and relay), PostgreSQL's and Redis's
processes on this machine, the load generators'; and the machine's busy time
from /proc/stat. The last line of output is a JSON object with all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench._nodes import (
    DEFAULT_POSTGRES,
    REPO,
    TEST_CODE,
    TEST_PREFIX,
    BenchDatabase,
    Node,
    cpu_seconds,
    machine_load,
    workdir,
)
from voice.loadtest.server import process_cpu_seconds
from wire import EndReason

DEFAULT_REDIS = "redis://127.0.0.1:6379/4"
#: The bench's numbers: NUMBER_PREFIX + 4 digits, inside the nodes' test range.
NUMBER_PREFIX = TEST_PREFIX + "1"
#: Signatures each load-generator process cycles through (encoded before it is timed).
SIGNATURE_POOL = 240
#: A step holds when at least this share of its calls is verified ...
VERIFIED_SHARE = 0.99
#: ... and setup p95 stays under this (ms).
SETUP_P95_MS = 1000.0
#: How long the CDRs of a step's calls may take to appear.
CDR_WAIT = 5.0


# -- the load generator (child processes) --------------------------------------


@dataclass(frozen=True)
class LineSpec:
    caller_url: str
    callee_url: str
    caller_token: str
    callee_token: str
    callee_number: str


@dataclass(frozen=True)
class WorkerSpec:
    worker: int
    lines: tuple[LineSpec, ...]
    hold: float


def _cross_line_class() -> Any:
    """voice/loadtest/line.py's Line with the callee's device on a node of its own, and
    each call's id and signaling time kept for the CDR check."""
    from voice.client.signaling import SignalingClient
    from voice.loadtest.line import CallPlan, Line, _Inbox

    class CrossLine(Line):
        def __init__(self, spec: LineSpec) -> None:
            super().__init__(
                spec.caller_url, spec.caller_token, spec.callee_token, spec.callee_number
            )
            if spec.callee_url != spec.caller_url:
                self.callee = SignalingClient(spec.callee_url, spec.callee_token)
                self._callee_inbox = _Inbox(self.callee, "callee")

        async def measure(self, plan: CallPlan) -> dict[str, Any]:
            """Line.place, keeping the call's id and invite -> call.accepted."""
            call = await self.place(plan)
            outcome = call.result.to_dict()
            outcome["call_id"] = call.call_id
            outcome["signaling_ms"] = (
                None
                if call.accepted_at is None
                else round((call.accepted_at - call.invited_at) * 1000.0, 3)
            )
            return outcome

    return CrossLine


async def direct_call(index: int, hold: float) -> dict[str, Any]:
    """The baseline: the same call between two endpoints without the server."""
    from voice.loadtest.line import (
        DRAIN,
        END_TIMEOUT,
        SETUP_TIMEOUT,
        Ticker,
        _Call,
        _check_tone,
        _Endpoint,
        _new_pc,
        _Outbound,
    )
    from voice.loadtest.measure import DirectionMeter
    from voice.loadtest.signature import signature_for, tone_loop

    signature_a, signature_b = signature_for(index, "a"), signature_for(index, "b")
    loop_a, loop_b = tone_loop(signature_a), tone_loop(signature_b)
    meter_a = DirectionMeter(loop_a.index_of, len(loop_a))  # caller -> callee
    meter_b = DirectionMeter(loop_b.index_of, len(loop_b))  # back
    outcome: dict[str, Any] = {"index": index, "ok": False, "error": None, "setup_ms": None}
    endpoints: list[_Endpoint] = []
    ticker = Ticker.for_running_loop()
    streams: list[_Outbound] = []
    offered_at = 0.0
    try:
        async with asyncio.timeout(hold + SETUP_TIMEOUT + END_TIMEOUT):
            caller = _Endpoint(_new_pc(), meter_b)
            endpoints.append(caller)
            await caller.pc.setLocalDescription(await caller.pc.createOffer())
            offered_at = time.perf_counter()  # where a relayed call sends call.invite
            callee = _Endpoint(_new_pc(), meter_a)
            endpoints.append(callee)
            await callee.pc.setRemoteDescription(caller.pc.localDescription)
            await callee.pc.setLocalDescription(await callee.pc.createAnswer())
            await caller.pc.setRemoteDescription(callee.pc.localDescription)
            answered_at = time.perf_counter()
            outcome["signaling_ms"] = round((answered_at - offered_at) * 1000.0, 3)
            start = answered_at + max(0.3, hold / 2 - 0.5)
            meter_a.window = meter_b.window = (start, start + 1.0)
            streams = [_Outbound(caller, loop_a, meter_a), _Outbound(callee, loop_b, meter_b)]
            for stream in streams:
                ticker.add(stream)
            await asyncio.sleep(max(0.0, answered_at + hold - time.perf_counter()))
            for stream in streams:
                ticker.remove(stream)
            await asyncio.sleep(DRAIN)
    except Exception as exc:
        outcome["error"] = f"direct: {exc!r}"
    finally:
        for stream in streams:
            ticker.remove(stream)
        for endpoint in endpoints:
            endpoint.closed = True
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3.0):
                    await endpoint.pc.close()
    if meter_b.first_mapped_arrival is not None and offered_at:
        outcome["setup_ms"] = round((meter_b.first_mapped_arrival - offered_at) * 1000.0, 3)
    callee_peer = endpoints[1] if len(endpoints) > 1 else None
    caller_peer = endpoints[0] if endpoints else None
    a, _ = _check_tone(_Call._analysis_packets(meter_a, callee_peer), signature_a, index, "a")
    b, _ = _check_tone(_Call._analysis_packets(meter_b, caller_peer), signature_b, index, "b")
    outcome["directions"] = {"a": {"integrity": a}, "b": {"integrity": b}}
    outcome["end_reason"] = EndReason.COMPLETED if outcome["error"] is None else None
    outcome["ok"] = outcome["error"] is None and a == "ok" and b == "ok"
    return outcome


class Generator:
    """One load-generator process: its lines, and steps of open-loop calls."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.lines: list[Any] = []
        self.calls = 0

    async def open(self) -> None:
        from voice.ice import restrict_host_addresses
        from voice.loadtest.signature import signature_for, tone_loop

        restrict_host_addresses(["127.0.0.1"])
        for slot in range(SIGNATURE_POOL):  # encode every signature before anything is timed
            tone_loop(signature_for(self._index(slot), "a"))
            tone_loop(signature_for(self._index(slot), "b"))
        cross_line = _cross_line_class()
        self.lines = [cross_line(spec) for spec in self.spec.lines]
        for start in range(0, len(self.lines), 20):
            await asyncio.gather(*(line.open() for line in self.lines[start : start + 20]))

    def _index(self, slot: int) -> int:
        return self.spec.worker * SIGNATURE_POOL + slot % SIGNATURE_POOL

    async def close(self) -> None:
        await asyncio.gather(*(line.close() for line in self.lines), return_exceptions=True)

    async def step(self, kind: str, rate: float, seconds: float, offset: float) -> dict[str, Any]:
        from voice.loadtest.line import CallPlan

        loop = asyncio.get_running_loop()
        free: deque[Any] = deque(self.lines)
        results: list[dict[str, Any]] = []
        tasks: list[asyncio.Task[None]] = []
        count = max(1, round(rate * seconds))
        hold = self.spec.hold

        async def relayed(line: Any, index: int) -> None:
            try:
                results.append(await line.measure(CallPlan(index=index, hold=hold)))
            finally:
                free.append(line)

        async def direct(index: int) -> None:
            results.append(await direct_call(index, hold))

        started = loop.time() + offset
        for number in range(count):
            await asyncio.sleep(max(0.0, started + number / rate - loop.time()))
            index = self._index(self.calls)
            self.calls += 1
            if kind == "direct":
                tasks.append(loop.create_task(direct(index)))
            elif free:
                tasks.append(loop.create_task(relayed(free.popleft(), index)))
            else:
                results.append({"index": index, "ok": False, "error": "no free line"})
        await asyncio.gather(*tasks)
        return {"calls": results, "offered": count}


def _worker_main(spec: WorkerSpec, conn: Connection) -> None:
    from bench._nodes import die_with_parent

    die_with_parent()

    async def serve() -> None:
        generator = Generator(spec)
        await generator.open()
        conn.send({"ready": True})
        loop = asyncio.get_running_loop()
        try:
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command["op"] == "stop":
                    break
                reply = await generator.step(
                    command["kind"], command["rate"], command["seconds"], command["offset"]
                )
                conn.send(reply)
        finally:
            await generator.close()

    asyncio.run(serve())


class Generators:
    """The load-generator processes of one node count."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for spec in specs:
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_main, args=(spec, theirs), daemon=True)
            process.start()
            self.conns.append(ours)
            self.processes.append(process)
        for conn, started in zip(self.conns, self.processes, strict=True):
            if not conn.poll(120):
                raise RuntimeError(f"load generator {started.pid} did not start")
            conn.recv()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def step(self, kind: str, rate: float, seconds: float) -> tuple[int, list[dict[str, Any]]]:
        workers = len(self.conns)
        for w, conn in enumerate(self.conns):
            conn.send(
                {
                    "op": "step",
                    "kind": kind,
                    "rate": rate / workers,
                    "seconds": seconds,
                    "offset": w / rate,  # the workers' calls interleave evenly
                }
            )
        offered, calls = 0, []
        for conn in self.conns:
            reply = conn.recv()
            offered += int(reply["offered"])
            calls.extend(reply["calls"])
        return offered, calls

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send({"op": "stop"})
        for process in self.processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


# -- readings ------------------------------------------------------------------


def named_pids(name: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as comm:
                if comm.read().strip() == name:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def database_backends_cpu(database: str) -> dict[int, float]:
    """utime + stime of the PostgreSQL backends serving ``database``, by pid (their
    process title names it); other databases' backends and the shared background
    processes are left out, since other work on this machine uses them too."""
    found: dict[int, float] = {}
    marker = f" {database} ".encode()
    for pid in named_pids("postgres"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if marker not in cmdline.read():
                    continue
            found[pid] = cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue
    return found


def _cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings by pid (processes that started are counted whole)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def machine_busy() -> float:
    """Seconds of CPU time the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += process_cpu_seconds(pid)
    return total


@dataclass
class Reading:
    at: float
    nodes: float
    clients: float
    postgres: dict[int, float]
    redis: float
    bench: float
    machine: float

    @classmethod
    def take(cls, nodes: list[int], clients: list[int], redis: list[int], db: str) -> Reading:
        return cls(
            at=time.monotonic(),
            nodes=_tree_cpu(nodes),
            clients=_tree_cpu(clients),
            postgres=database_backends_cpu(db),
            redis=_tree_cpu(redis),
            bench=time.process_time(),
            machine=machine_busy(),
        )


# -- one step ------------------------------------------------------------------


@dataclass
class Step:
    kind: str
    nodes: int
    rate: float
    offered: int = 0
    verified: int = 0
    wall_s: float = 0.0
    setup_p50_ms: float | None = None
    setup_p95_ms: float | None = None
    signaling_p50_ms: float | None = None
    signaling_p95_ms: float | None = None
    #: CPU seconds per verified call.
    node_cpu: float | None = None
    client_cpu: float | None = None
    postgres_cpu: float | None = None
    redis_cpu: float | None = None
    #: The machine's busy share over the step (1.0 = every core busy) ...
    machine_busy: float = 0.0
    #: ... and the share of it that none of the processes above used (other work).
    other_busy: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return (
            self.offered > 0
            and self.verified >= VERIFIED_SHARE * self.offered
            and self.setup_p95_ms is not None
            and self.setup_p95_ms < SETUP_P95_MS
        )


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


async def _cdr_reasons(dsn: str, call_ids: list[str]) -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        found: dict[str, str] = {}
        deadline = time.monotonic() + CDR_WAIT
        while True:
            rows = await conn.fetch(
                "SELECT call_id, end_reason FROM calls WHERE call_id = ANY($1::text[])",
                call_ids,
            )
            found = {str(row["call_id"]): str(row["end_reason"]) for row in rows}
            if len(found) == len(call_ids) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def _failure(call: dict[str, Any], cdr: str | None, kind: str) -> str | None:
    """Why a call is not verified; None if it is."""
    if call.get("error"):
        return str(call["error"])[:80]
    directions = call.get("directions") or {}
    for name in ("a", "b"):
        integrity = (directions.get(name) or {}).get("integrity")
        if integrity != "ok":
            return f"audio {name} {integrity}"
    if call.get("end_reason") != EndReason.COMPLETED:
        return f"ended {call.get('end_reason')}"
    if call.get("setup_ms") is None:
        return "no setup time"
    if kind == "relayed" and cdr != EndReason.COMPLETED:
        return f"CDR {cdr}"
    return None


def run_step(
    kind: str,
    node_count: int,
    rate: float,
    seconds: float,
    generators: Generators,
    node_pids: list[int],
    redis_pids: list[int],
    dsn: str,
) -> Step:
    step = Step(kind=kind, nodes=node_count, rate=rate)
    database = dsn.rsplit("/", 1)[1]
    before = Reading.take(node_pids, generators.pids, redis_pids, database)
    step.offered, calls = generators.step(kind, rate, seconds)
    cdrs: dict[str, str] = {}
    if kind == "relayed":
        ids = [str(c["call_id"]) for c in calls if c.get("call_id")]
        cdrs = asyncio.run(_cdr_reasons(dsn, ids)) if ids else {}
    after = Reading.take(node_pids, generators.pids, redis_pids, database)
    failures: Counter[str] = Counter()
    setups: list[float] = []
    signaling: list[float] = []
    for call in calls:
        reason = _failure(call, cdrs.get(str(call.get("call_id"))), kind)
        if reason is None:
            step.verified += 1
            setups.append(float(call["setup_ms"]))
            if call.get("signaling_ms") is not None:
                signaling.append(float(call["signaling_ms"]))
        else:
            failures[reason] += 1
            if len(step.samples) < 3:
                step.samples.append(f"#{call.get('index')}: {call.get('error') or reason}")
    step.failures = dict(failures)
    step.setup_p50_ms = _percentile(setups, 0.5)
    step.setup_p95_ms = _percentile(setups, 0.95)
    step.signaling_p50_ms = _percentile(signaling, 0.5)
    step.signaling_p95_ms = _percentile(signaling, 0.95)
    step.wall_s = after.at - before.at
    if step.verified:
        per = 1.0 / step.verified
        step.node_cpu = (after.nodes - before.nodes) * per if node_pids else None
        step.client_cpu = (after.clients - before.clients) * per
        step.postgres_cpu = _cpu_between(before.postgres, after.postgres) * per
        step.redis_cpu = (after.redis - before.redis) * per if redis_pids else None
    cores = os.cpu_count() or 1
    capacity = step.wall_s * cores
    busy = after.machine - before.machine
    ours = (
        after.nodes
        - before.nodes
        + after.clients
        - before.clients
        + _cpu_between(before.postgres, after.postgres)
        + after.redis
        - before.redis
        + after.bench
        - before.bench
    )
    step.machine_busy = busy / capacity
    step.other_busy = max(0.0, busy - ours) / capacity
    return step


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _cpu_ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.0f}"


def print_step(step: Step) -> None:
    failed = ", ".join(f"{k} x{v}" for k, v in sorted(step.failures.items()))
    print(
        f"  {step.rate:5.1f}/s: {step.verified}/{step.offered} verified, setup p50/p95 "
        f"{_ms(step.setup_p50_ms)}/{_ms(step.setup_p95_ms)} ms (invite->accepted p50 "
        f"{_ms(step.signaling_p50_ms)}), CPU ms/call nodes {_cpu_ms(step.node_cpu)} "
        f"clients {_cpu_ms(step.client_cpu)} postgres {_cpu_ms(step.postgres_cpu)} "
        f"redis {_cpu_ms(step.redis_cpu)}, machine {100 * step.machine_busy:.0f} % busy "
        f"({100 * step.other_busy:.0f} % other work)"
        f"{' HELD' if step.held else ' FAILED'}{': ' + failed if failed else ''}",
        flush=True,
    )
    for sample in step.samples if not step.held else []:
        print(f"      {sample}")


def climb(
    kind: str,
    node_count: int,
    rates: list[float],
    seconds: float,
    generators: Generators,
    node_pids: list[int],
    redis_pids: list[int],
    dsn: str,
) -> tuple[Step | None, list[Step]]:
    """Steps up the ladder until one fails; the last step held (None if the first failed)."""
    label = "direct (baseline)" if kind == "direct" else f"{node_count} node(s)"
    print(f" climb: {label}", flush=True)
    held: Step | None = None
    steps = []
    for rate in rates:
        step = run_step(kind, node_count, rate, seconds, generators, node_pids, redis_pids, dsn)
        print_step(step)
        steps.append(step)
        if not step.held:
            break
        held = step
    return held, steps


# -- the run -------------------------------------------------------------------


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


async def register(url: str, count: int) -> list[tuple[str, str]]:
    from voice.loadtest.runner import Registry

    return await Registry(url, NUMBER_PREFIX, TEST_CODE).ensure(count)


def start_nodes(
    count: int, settings: dict[str, str], tmp: Path, label: str, profile: bool
) -> list[Node]:
    nodes = [Node(f"{label}-node{i + 1}", settings, tmp, profile) for i in range(count)]
    for node in nodes:
        node.start()
    for node in nodes:
        node.wait_healthy()
    return nodes


def line_specs(nodes: list[Node], numbers: list[tuple[str, str]], lines: int) -> list[LineSpec]:
    specs = []
    for i in range(lines):
        caller, callee = numbers[2 * i], numbers[2 * i + 1]
        # With 2 nodes: callers on node 1 and callees on node 2, and the other way round.
        home = nodes[i % len(nodes)]
        away = nodes[(i + 1) % len(nodes)]
        specs.append(LineSpec(home.url, away.url, caller[1], callee[1], callee[0]))
    return specs


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(held: list[Step | None]) -> dict[str, Any]:
    """Medians over rounds of the steps held (a round with none held counts as 0/s)."""
    steps = [s for s in held if s is not None]
    return {
        "rounds": len(held),
        "held_rates": [0.0 if s is None else s.rate for s in held],
        "setups_per_s": _median([0.0 if s is None else s.rate for s in held]),
        "setup_p50_ms": _median([s.setup_p50_ms for s in steps]),
        "setup_p95_ms": _median([s.setup_p95_ms for s in steps]),
        "signaling_p50_ms": _median([s.signaling_p50_ms for s in steps]),
        "node_cpu_s_per_call": _median([s.node_cpu for s in steps]),
        "client_cpu_s_per_call": _median([s.client_cpu for s in steps]),
        "postgres_cpu_s_per_call": _median([s.postgres_cpu for s in steps]),
        "redis_cpu_s_per_call": _median([s.redis_cpu for s in steps]),
        "machine_busy": _median([s.machine_busy for s in steps]),
        "other_busy": _median([s.other_busy for s in steps]),
    }


def print_profile(nodes: list[Node], top: int = 30) -> None:
    """The nodes' busiest functions (own time), all nodes of the count together."""
    import io
    import pstats

    paths = [str(n.profile_path) for n in nodes if n.profile_path and n.profile_path.exists()]
    if not paths:
        print("no profile was written")
        return
    out = io.StringIO()
    stats = pstats.Stats(*paths, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    print(out.getvalue())


def code_version() -> str:
    """The commit measured, and whether the server's code had changes not committed."""
    import subprocess

    def git(*command: str) -> str:
        try:
            done = subprocess.run(
                ["git", *command], cwd=REPO, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "signaling", "voice")
    return f"{git('rev-parse', '--short', 'HEAD') or '?'}" + (
        f" with uncommitted changes to {len(changed.splitlines())} files of signaling/ and voice/"
        if changed
        else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="climbs per node count")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of calls per step")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds each call is held")
    parser.add_argument(
        "--rates", default="4,8,12,16,20,24,28,32,40", help="offered calls/s through the nodes"
    )
    parser.add_argument(
        "--direct-rates", default="8,16,24,32,40,48,56,64,80", help="offered calls/s, direct"
    )
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--nodes", default="1,2", help="node counts to measure")
    parser.add_argument(
        "--no-direct",
        action="store_true",
        help="skip the direct baseline (else one climb per round with the first node count)",
    )
    parser.add_argument("--relay-workers", type=int, default=0, help="per node; 0 = in-process")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server for the database")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the nodes under cProfile and print where their time went (slows them)",
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis URL (its db is flushed)")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a node setting (repeatable), e.g. overload_loop_lag=0",
    )
    args = parser.parse_args(argv)
    rates = [float(v) for v in args.rates.split(",")]
    direct_rates = [float(v) for v in args.direct_rates.split(",")]
    node_counts = [int(v) for v in args.nodes.split(",")]
    # Lines enough for the top of the ladder: a call holds its line for setup, hold, hang-up.
    lines = math.ceil(max(rates) * (args.hold + 2.5)) + args.workers

    print(f"machine: {multiprocessing.cpu_count()} cores; {machine_load()}")
    print(
        f"settings: {' '.join(args.setting) or 'node defaults'} and "
        f"call_attempts_per_minute/call_attempt_burst lifted, relay_workers {args.relay_workers} "
        f"({'relay in the node process' if args.relay_workers == 0 else 'relay worker processes'}"
        f"), redis {args.redis}, test_number_prefix {TEST_PREFIX} test_code {TEST_CODE}; "
        f"{args.workers} load-generator processes with {lines} lines on the same cores; "
        f"steps of {args.seconds:g} s, calls held {args.hold:g} s",
        flush=True,
    )
    print(f"code: {code_version()}")
    database = BenchDatabase(args.postgres)
    database.create()
    dsn = database.url.replace("postgresql+asyncpg://", "postgresql://")
    print(f"database: {database.name}", flush=True)
    redis_pids = named_pids("redis-server")
    settings = {
        "database_url": database.url,
        "redis_url": args.redis,
        "test_number_prefix": TEST_PREFIX,
        "test_code": TEST_CODE,
        "relay_workers": str(args.relay_workers),
        "media_bind_address": "127.0.0.1",
        # Each line's caller places its calls back to back, far above what the per-device
        # guard against call floods allows one device (10 a minute): lift that guard only.
        "call_attempts_per_minute": "1000000",
        "call_attempt_burst": "1000000",
    }
    for setting in args.setting:
        key, _, value = setting.partition("=")
        settings[key.strip()] = value.strip()
    report: dict[str, Any] = {
        "settings": {
            "seconds": args.seconds,
            "hold": args.hold,
            "rates": rates,
            "direct_rates": direct_rates,
            "workers": args.workers,
            "relay_workers": args.relay_workers,
            "lines": lines,
        },
        "steps": [],
    }
    held: dict[str, list[Step | None]] = {}
    tmp = workdir()
    nodes: list[Node] = []
    generators: Generators | None = None
    try:
        numbers: list[tuple[str, str]] = []
        for count in node_counts:
            flush_redis(args.redis)
            nodes = start_nodes(count, settings, Path(tmp.name), f"n{count}", args.profile)
            if not numbers:
                started = time.monotonic()
                numbers = asyncio.run(register(nodes[0].url, 2 * lines))
                print(f"registered {len(numbers)} devices in {time.monotonic() - started:.1f} s")
            specs = line_specs(nodes, numbers, lines)
            generators = Generators(
                [
                    WorkerSpec(w, tuple(specs[w :: args.workers]), args.hold)
                    for w in range(args.workers)
                ]
            )
            node_pids = [node.pid for node in nodes]
            print(f"\n{count} node(s): {', '.join(n.url for n in nodes)}", flush=True)
            for round_index in range(args.rounds):
                print(f"round {round_index + 1}", flush=True)
                with_direct = not args.no_direct and count == node_counts[0]
                for kind in ["direct", "relayed"] if with_direct else ["relayed"]:
                    ladder = direct_rates if kind == "direct" else rates
                    top, steps = climb(
                        kind, count, ladder, args.seconds, generators, node_pids, redis_pids, dsn
                    )
                    key = "direct" if kind == "direct" else f"{count} node(s)"
                    held.setdefault(key, []).append(top)
                    report["steps"].extend(vars(s) for s in steps)
            generators.close()
            generators = None
            for node in nodes:
                node.stop()
            if args.profile:
                print_profile(nodes)
            nodes = []
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        if generators is not None:
            generators.close()
        for node in nodes:
            node.stop()
        database.drop()
        tmp.cleanup()

    print("\nmedians over rounds (the highest step held in each climb):")
    summary = {key: summarise(values) for key, values in held.items()}
    report["summary"] = summary
    direct = summary.get("direct", {}).get("setups_per_s")
    for key, figures in summary.items():
        ratio = (
            f", {figures['setups_per_s'] / direct:.2f}x direct"
            if direct and key != "direct" and figures["setups_per_s"] is not None
            else ""
        )
        print(
            f"  {key}: {figures['setups_per_s']} setups/s (held {figures['held_rates']}){ratio}; "
            f"setup p50/p95 {_ms(figures['setup_p50_ms'])}/{_ms(figures['setup_p95_ms'])} ms; "
            f"CPU ms per call: nodes {_cpu_ms(figures['node_cpu_s_per_call'])}, clients "
            f"{_cpu_ms(figures['client_cpu_s_per_call'])}, postgres "
            f"{_cpu_ms(figures['postgres_cpu_s_per_call'])}, redis "
            f"{_cpu_ms(figures['redis_cpu_s_per_call'])}; machine "
            f"{100 * (figures['machine_busy'] or 0):.0f} % busy "
            f"({100 * (figures['other_busy'] or 0):.0f} % other work)"
        )
        node_cpu, client_cpu = figures["node_cpu_s_per_call"], figures["client_cpu_s_per_call"]
        if key == "direct" and client_cpu:
            print(
                f"    the load generators alone: {1000 * client_cpu:.0f} ms of CPU per call, "
                f"{1 / client_cpu:.0f} calls/s per core"
            )
        elif node_cpu:
            print(
                f"    one core of node CPU (signaling + relay) would carry "
                f"{1 / node_cpu:.0f} setups/s; the load generators used "
                f"{client_cpu / node_cpu:.2f}x the nodes' CPU per call"
            )
    print(f"machine after: {machine_load()}")
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
