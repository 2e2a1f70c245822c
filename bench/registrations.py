"""Verified registrations per second for 1 node and 2 nodes sharing one PostgreSQL database.

    .venv/bin/python -m bench.registrations [--rounds 5] [--seconds 5] [--workers 2]

Nodes are `anruf serve` subprocesses (python -m signaling.cli serve) on free
ports of 127.0.0.1, all on one fresh database ``anruf_bench_<random>`` (dropped
at exit), configured through ANRUF_* variables. Load-generator processes (aiohttp
clients, --workers of them) drive, each for its own distinct fictional number:

* ``register``: the production path. POST /v1/verification (202; the code is
  stored salted and hashed, the hourly send count is written) and the node's
  console sender logs the code (sms_sender "console": no SMS goes out); the load
  generator reads it from the node's log and POSTs /v1/devices with it (201 and a
  token). With 2 nodes the code is requested on one node and verified on the
  other, as behind a load balancer.
* ``register-test``: the same two requests for numbers under the test prefix
  (+49177009…, code 246810). The node stores nothing for the code request and
  compares the code with test_code, so this is the cheapest registration.
* ``healthz`` (baseline): GET /healthz, a trivial endpoint of the same nodes with
  one database round trip (SELECT 1).

Every response is checked (status and body); a phase with any error does not
count. Load is closed-loop: each of --concurrency tasks per node (split over the
workers) starts the next operation when its last one ended. First a short sweep over
the concurrency levels picks, per node count, the level with the most
registrations per second and no error; then --rounds rounds of each kind, kinds
alternating so they see the same machine noise. Each phase has --warmup seconds
that are not counted, then --seconds counted. CPU per registration is the nodes'
utime+stime (/proc/PID/stat) over the counted window ÷ registrations completed in
it; PostgreSQL's (the backends connected to the bench database; one that ends
within the window, an overflow connection of a node's pool, is missed) and the
load generators' are reported the same way. At the end the devices table must hold
exactly as many devices as registrations succeeded.

Settings for the bench (said so in the output): code_sends_per_hour stays at the
default 5 (each number asks once), relay_workers 0 (no media is relayed),
test_number_prefix +49177009 with test_code 246810. The bench stands where a load
balancer would: trusted_proxies is 127.0.0.1 and each registration carries
X-Forwarded-For with an address of its own from 198.18.0.0/15 (RFC 2544's
benchmarking range; only a header, no packet goes there), so the per-source code
limits are checked as in production but each phone is its own source. The load
generators share the machine's cores with the nodes and PostgreSQL, so a node's
figure on a dedicated core is extrapolated from its CPU per registration. The
last line of output is a JSON object with all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench._nodes import (
    DEFAULT_POSTGRES,
    NUMBER_FORMAT,
    TEST_CODE,
    TEST_FIRST,
    TEST_PREFIX,
    BenchDatabase,
    Node,
    cpu_seconds,
    exit_on_sigterm,
    machine_load,
    postgres_cpu,
    postgres_cpu_between,
    workdir,
)

KINDS = ("healthz", "register", "register-test")
CODE_MARK = "verification code for "
#: Where the bench says its phones are (X-Forwarded-For): RFC 2544's benchmarking range.
BENCH_SOURCES = ipaddress.ip_network("198.18.0.0/15")


# -- the load generator (child processes) --------------------------------------


@dataclass
class WorkerSpec:
    kind: str
    urls: list[str]
    logs: list[str]
    concurrency: int
    #: Number indices this worker uses: first, first + step, first + 2 * step, ...
    first: int
    step: int
    limit: int


@dataclass
class WorkerResult:
    counted: int = 0
    total: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    #: How many numbers this worker used.
    used: int = 0


class CodeTail:
    """Follows the nodes' logs and hands out each number's code as it is logged."""

    def __init__(self, paths: list[str]) -> None:
        self._files = [open(path, "rb") for path in paths]  # noqa: SIM115 (closed in close)
        for f in self._files:
            f.seek(0, 2)
        self._rest = [b""] * len(self._files)
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())

    def expect(self, number: str) -> None:
        """Register interest before the request, so a fast log line is not missed."""
        self._waiting[number] = asyncio.get_running_loop().create_future()

    async def wait(self, number: str, timeout: float = 10.0) -> str:
        try:
            return await asyncio.wait_for(self._waiting[number], timeout)
        finally:
            self._waiting.pop(number, None)

    async def _follow(self) -> None:
        while True:
            for index, f in enumerate(self._files):
                data = f.read()
                if not data:
                    continue
                data = self._rest[index] + data
                lines = data.split(b"\n")
                self._rest[index] = lines.pop()
                for raw in lines:
                    at = raw.find(CODE_MARK.encode())
                    if at < 0:
                        continue
                    number, _, code = raw[at + len(CODE_MARK) :].decode().partition(": ")
                    future = self._waiting.get(number)
                    if future is not None and not future.done():
                        future.set_result(code.strip())
            await asyncio.sleep(0.002)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for f in self._files:
            f.close()


async def _drive(spec: WorkerSpec, ready: Any, go: Any, window: Any) -> WorkerResult:
    import aiohttp

    result = WorkerResult()
    numbers: Iterator[int] = iter(range(spec.first, spec.limit, spec.step))
    tail = CodeTail(spec.logs) if spec.kind == "register" else None
    if tail is not None:
        tail.start()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    nodes = len(spec.urls)
    turn = 0

    def fail(message: str) -> None:
        result.errors += 1
        if len(result.error_samples) < 5:
            result.error_samples.append(message)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def healthz(url: str) -> bool:
            async with session.get(url + "/healthz") as response:
                body = await response.json()
                if response.status != 200 or body.get("status") != "ok":
                    fail(f"healthz {response.status} {body}")
                    return False
            return True

        async def register(first_url: str, second_url: str) -> bool:
            index = next(numbers, None)
            if index is None:
                raise ValueError("out of fictional numbers for this phase")
            result.used += 1
            number = NUMBER_FORMAT.format(index)
            if tail is not None:
                tail.expect(number)
            # As behind a load balancer: each phone is a source of its own.
            source = {"X-Forwarded-For": str(BENCH_SOURCES[index % BENCH_SOURCES.num_addresses])}
            async with session.post(
                first_url + "/v1/verification", json={"number": number}, headers=source
            ) as response:
                body = await response.json()
                if response.status != 202 or body.get("number") != number:
                    fail(f"verification {response.status} {body}")
                    return False
            code = TEST_CODE if tail is None else await tail.wait(number)
            async with session.post(
                second_url + "/v1/devices",
                json={"number": number, "code": code, "name": "bench"},
                headers=source,
            ) as response:
                body = await response.json()
                if (
                    response.status != 201
                    or body.get("number") != number
                    or not body.get("token")
                    or not str(body.get("device_id", "")).startswith("dev_")
                ):
                    fail(f"devices {response.status} {body}")
                    return False
            return True

        async def one() -> bool:
            nonlocal turn
            first = spec.urls[turn % nodes]
            second = spec.urls[(turn + 1) % nodes]
            turn += 1
            if spec.kind == "healthz":
                return await healthz(first)
            return await register(first, second)

        # Warm the keep-alive connections before the clock starts.
        for url in spec.urls:
            await healthz(url)
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        start, end = window[0], window[1]
        cpu0: float | None = None

        async def loop() -> None:
            nonlocal cpu0
            while True:
                now = time.monotonic()
                if now >= end:
                    return
                if now >= start and cpu0 is None:
                    cpu0 = time.process_time()
                began = time.perf_counter()
                try:
                    ok = await one()
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    fail(f"{type(exc).__name__}: {exc}")
                    ok = False
                done = time.monotonic()
                if ok:
                    result.total += 1
                    if start <= done < end:
                        result.counted += 1
                        result.latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(loop() for _ in range(spec.concurrency)))
        result.cpu_s = time.process_time() - (cpu0 if cpu0 is not None else time.process_time())
    if tail is not None:
        await tail.close()
    return result


def _worker_main(spec: WorkerSpec, ready: Any, go: Any, window: Any, out: Connection) -> None:
    try:
        import uvloop

        result = uvloop.run(_drive(spec, ready, go, window))
    except ImportError:
        result = asyncio.run(_drive(spec, ready, go, window))
    out.send(asdict(result))
    out.close()


# -- one phase: some kind of load on the nodes for a while --------------------


@dataclass
class Phase:
    kind: str
    nodes: int
    concurrency: int
    seconds: float
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    per_second: float = 0.0
    node_cpu_s: float = 0.0
    postgres_cpu_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    registered: int = 0  # successful registrations, counted window or not

    def cpu_ms_per_op(self, what: str) -> float:
        value = {
            "node": self.node_cpu_s,
            "postgres": self.postgres_cpu_s,
            "loadgen": self.loadgen_cpu_s,
        }[what]
        return 1000 * value / self.ok if self.ok else float("nan")


class Numbers:
    """Hands out disjoint, interleaved index ranges of the fictional numbers."""

    def __init__(self) -> None:
        self.next = {"register": 0, "register-test": TEST_FIRST}
        self.limit = {"register": TEST_FIRST, "register-test": 1_000_000}


def run_phase(
    kind: str,
    nodes: list[Node],
    concurrency: int,
    workers: int,
    warmup: float,
    seconds: float,
    numbers: Numbers,
    database: str,
) -> Phase:
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    window = ctx.Array("d", 2)
    first = numbers.next.get(kind, 0)
    limit = numbers.limit.get(kind, 0)
    procs: list[tuple[Any, Connection, Any]] = []
    for w in range(workers):
        share = concurrency // workers + (1 if w < concurrency % workers else 0)
        spec = WorkerSpec(
            kind=kind,
            urls=[node.url for node in nodes],
            logs=[str(node.log_path) for node in nodes],
            concurrency=max(1, share),
            first=first + w,
            step=workers,
            limit=limit,
        )
        ready = ctx.Event()
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker_main, args=(spec, ready, go, window, send))
        proc.start()
        send.close()
        procs.append((proc, receive, ready))
    for _, _, ready in procs:
        if not ready.wait(30):
            raise RuntimeError("a load generator did not start")
    start = time.monotonic() + 0.05 + warmup
    end = start + seconds
    window[0], window[1] = start, end
    go.set()
    pids = [node.pid for node in nodes]
    time.sleep(max(0.0, start - time.monotonic()))
    node0 = sum(cpu_seconds(pid) for pid in pids)
    pg0 = postgres_cpu(database)
    time.sleep(max(0.0, end - time.monotonic()))
    node1 = sum(cpu_seconds(pid) for pid in pids)
    pg1 = postgres_cpu(database)
    phase = Phase(kind=kind, nodes=len(nodes), concurrency=concurrency, seconds=seconds)
    latencies: list[float] = []
    used = 0
    for proc, receive, _ in procs:
        if not receive.poll(60):
            raise RuntimeError("a load generator did not report")
        result = WorkerResult(**receive.recv())
        proc.join(10)
        phase.ok += result.counted
        phase.registered += result.total if kind != "healthz" else 0
        phase.errors += result.errors
        phase.error_samples += result.error_samples
        phase.loadgen_cpu_s += result.cpu_s
        latencies += result.latencies
        used = max(used, result.used)
    if kind in numbers.next:
        numbers.next[kind] = first + used * workers + workers
    phase.per_second = phase.ok / seconds
    phase.node_cpu_s = node1 - node0
    phase.postgres_cpu_s = postgres_cpu_between(pg0, pg1)
    if latencies:
        latencies.sort()
        phase.p50_ms = 1000 * latencies[len(latencies) // 2]
        phase.p99_ms = 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return phase


# -- the run -------------------------------------------------------------------


def start_nodes(count: int, database_url: str, tmp: Path, profile: bool = False) -> list[Node]:
    settings = {
        "database_url": database_url,
        "test_number_prefix": TEST_PREFIX,
        "test_code": TEST_CODE,
        "code_sends_per_hour": "5",
        "trusted_proxies": "127.0.0.1",
        "relay_workers": "0",
        "sms_sender": "console",
    }
    nodes = [Node(f"node{i + 1}", settings, tmp, profile) for i in range(count)]
    for node in nodes:
        node.start()
    for node in nodes:
        node.wait_healthy()
    return nodes


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="counted seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per phase")
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--concurrency",
        default="4,8,16",
        help="closed-loop levels (operations in flight per node) to sweep; the best is used",
    )
    parser.add_argument("--nodes", default="1,2", help="node counts to measure")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server for the database")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the nodes under cProfile and print their busiest functions (slows them)",
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    levels = [int(v) for v in args.concurrency.split(",")]
    node_counts = [int(v) for v in args.nodes.split(",")]

    print(f"machine: {multiprocessing.cpu_count()} cores; {machine_load()}")
    print(
        "settings: code_sends_per_hour 5 (each number asks once), trusted_proxies 127.0.0.1 "
        "(each registration's own X-Forwarded-For from 198.18.0.0/15), relay_workers 0, "
        f"sms_sender console, test_number_prefix {TEST_PREFIX} test_code {TEST_CODE}; "
        f"{args.workers} load-generator processes on the same cores"
    )
    database = BenchDatabase(args.postgres)
    database.create()
    print(f"database: {database.name}")
    numbers = Numbers()
    report: dict[str, Any] = {"database": database.name, "nodes": {}}
    failed = False
    tmp = workdir()
    try:
        for count in node_counts:
            nodes = start_nodes(count, database.url, Path(tmp.name), args.profile)
            try:
                phases = measure(count, nodes, args, levels, numbers, database.name)
            finally:
                for node in nodes:
                    node.stop()
            if args.profile:
                print_profile(nodes)
            summary = summarise(count, phases)
            report["nodes"][str(count)] = summary
            failed = failed or any(p.errors for p in phases if p.concurrency == summary["level"])
        registered = sum(s["registered"] for s in report["nodes"].values() if isinstance(s, dict))
        in_database = asyncio.run(database.fetch_value("SELECT count(*) FROM devices"))
        report["devices_registered"] = registered
        report["devices_in_database"] = in_database
        print(f"\ndevices: {registered} registrations answered 201, {in_database} in the database")
        if in_database != registered:
            print("MISMATCH between registrations and devices in the database")
            failed = True
        print_summary(report)
        print(f"machine after: {machine_load()}")
    finally:
        tmp.cleanup()
        database.drop()
    print(json.dumps(report))
    return 1 if failed else 0


def measure(
    count: int,
    nodes: list[Node],
    args: argparse.Namespace,
    levels: list[int],
    numbers: Numbers,
    database: str,
) -> list[Phase]:
    phases: list[Phase] = []

    def run(kind: str, level: int, seconds: float) -> Phase:
        phase = run_phase(kind, nodes, level, args.workers, args.warmup, seconds, numbers, database)
        phases.append(phase)
        print(
            f"  {count} node(s) {kind:14} c={level:3}  {phase.per_second:7.1f}/s  "
            f"p50 {phase.p50_ms:6.1f} ms p99 {phase.p99_ms:6.1f} ms  "
            f"CPU/op node {phase.cpu_ms_per_op('node'):.2f} ms "
            f"pg {phase.cpu_ms_per_op('postgres'):.2f} ms "
            f"loadgen {phase.cpu_ms_per_op('loadgen'):.2f} ms  errors {phase.errors}"
            + (f" {phase.error_samples[:2]}" if phase.errors else ""),
            flush=True,
        )
        return phase

    print(f"\n{count} node(s): sweep")
    best, best_rate = levels[0] * count, -1.0
    for per_node in levels:
        level = per_node * count
        phase = run("register", level, max(2.0, args.seconds / 2))
        phase.kind = "sweep"
        if phase.errors == 0 and phase.per_second > best_rate:
            best, best_rate = level, phase.per_second
    print(f"{count} node(s): rounds at concurrency {best}")
    for _ in range(args.rounds):
        for kind in KINDS:
            run(kind, best, args.seconds)
    return phases


def summarise(count: int, phases: list[Phase]) -> dict[str, Any]:
    level = next(
        (p.concurrency for p in phases if p.kind != "sweep"),
        phases[0].concurrency,
    )
    summary: dict[str, Any] = {
        "level": level,
        "registered": sum(p.registered for p in phases),
        "errors": sum(p.errors for p in phases),
    }
    for kind in KINDS:
        rounds = [p for p in phases if p.kind == kind]

        def per_op(what: str, rounds: list[Phase] = rounds) -> float:
            return _median([p.cpu_ms_per_op(what) for p in rounds])

        summary[kind] = {
            "per_second": _median([p.per_second for p in rounds]),
            "rounds": [round(p.per_second, 1) for p in rounds],
            "p50_ms": _median([p.p50_ms for p in rounds]),
            "p99_ms": _median([p.p99_ms for p in rounds]),
            "node_cpu_ms": per_op("node"),
            "postgres_cpu_ms": per_op("postgres"),
            "loadgen_cpu_ms": per_op("loadgen"),
            "errors": sum(p.errors for p in rounds),
        }
    base = summary["healthz"]["per_second"]
    for kind in ("register", "register-test"):
        entry = summary[kind]
        entry["ratio_to_healthz"] = entry["per_second"] / base if base else float("nan")
        # One node is one Python process: at most one core.
        entry["per_node_core"] = 1000 / entry["node_cpu_ms"] if entry["node_cpu_ms"] else 0.0
    return summary


def print_profile(nodes: list[Node], top: int = 40) -> None:
    import pstats

    paths = [str(n.profile_path) for n in nodes if n.profile_path and n.profile_path.exists()]
    if not paths:
        print("no profile was written")
        return
    stats = pstats.Stats(*paths)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def print_summary(report: dict[str, Any]) -> None:
    print("\nmedians:")
    for count, s in report["nodes"].items():
        base = s["healthz"]
        print(
            f"  {count} node(s), concurrency {s['level']}: baseline GET /healthz "
            f"{base['per_second']:.0f}/s (node CPU {base['node_cpu_ms']:.2f} ms per request)"
        )
        for kind in ("register", "register-test"):
            e = s[kind]
            print(
                f"    {kind:14} {e['per_second']:7.1f}/s  rounds {e['rounds']}  "
                f"ratio to healthz {e['ratio_to_healthz']:.3f}  p50 {e['p50_ms']:.1f} ms "
                f"p99 {e['p99_ms']:.1f} ms"
            )
            print(
                f"    {'':14} CPU per registration: nodes {e['node_cpu_ms']:.2f} ms, "
                f"PostgreSQL {e['postgres_cpu_ms']:.2f} ms, load generator "
                f"{e['loadgen_cpu_ms']:.2f} ms; one node on a core of its own: "
                f"~{e['per_node_core']:.0f}/s"
            )


if __name__ == "__main__":
    sys.exit(main())
