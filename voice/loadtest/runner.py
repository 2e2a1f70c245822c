"""Drives a load run: registers test numbers, places calls at a rate up to a
concurrency on worker processes, collects each call's result, samples the server."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from voice.client.signaling import SignalingClient
from voice.ice import restrict_host_addresses
from voice.loadtest.impair import Impairment, ImpairmentProxy
from voice.loadtest.line import CallPlan, Line
from voice.loadtest.server import DEFAULT_CODE, DEFAULT_PREFIX, ServerSampler, SpawnedServer

Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class LoadOptions:
    server: str | None = None  # None: spawn one
    server_pid: int | None = None
    relay_mode: str = "forward"  # for a spawned server
    calls: int | None = 20
    rate: float = 5.0  # calls started per second
    concurrency: int = 10
    duration: float | None = None  # stop starting calls after this many seconds
    hold: float = 10.0
    audio: str = "tone"
    pesq_sample: int = 3
    workers: int = 1
    impair: str = ""
    number_prefix: str = DEFAULT_PREFIX
    code: str = DEFAULT_CODE
    #: call index -> fault ("silent", "crossed"); proves that integrity checks bite
    faults: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerPlan:
    worker: int
    workers: int
    server: str
    lines: tuple[tuple[str, str, str], ...]  # caller token, callee token, callee number
    calls: int | None
    rate: float
    duration: float | None
    hold: float
    audio: str
    pesq_sample: int
    impair: str
    faults: dict[int, str]


class Registry:
    """Registers the load generator's numbers once and hands out their credentials."""

    def __init__(self, server: str, prefix: str, code: str) -> None:
        self.server = server
        self.prefix = prefix
        self.code = code
        self.tokens: list[tuple[str, str]] = []  # (number, token)

    def number(self, index: int) -> str:
        return f"{self.prefix}{index:04d}"

    async def ensure(self, count: int) -> list[tuple[str, str]]:
        while len(self.tokens) < count:
            batch = range(len(self.tokens), min(count, len(self.tokens) + 20))
            self.tokens.extend(
                await asyncio.gather(*(self._register(self.number(i)) for i in batch))
            )
        return self.tokens[:count]

    async def _register(self, number: str) -> tuple[str, str]:
        session = SignalingClient(self.server)
        try:
            device = await session.register(number, self.code, "loadtest")
        finally:
            await session.close()
        return number, str(device["token"])


async def drive(plan: WorkerPlan, emit: Emit) -> None:
    """One worker: its lines carry calls paced at its share of the rate."""
    restrict_host_addresses(["127.0.0.1"])
    impairment = Impairment.parse(plan.impair) if plan.impair else Impairment()
    proxy = ImpairmentProxy(impairment, seed=plan.worker) if impairment else None
    if proxy is not None:
        await proxy.start()
    lines = [Line(plan.server, a, b, number, path=proxy) for a, b, number in plan.lines]
    await asyncio.gather(*(line.open() for line in lines))
    free: asyncio.Queue[Line] = asyncio.Queue()
    for line in lines:
        free.put_nowait(line)

    async def carry(line: Line, call: CallPlan) -> None:
        try:
            result = (await line.run_call(call)).to_dict()
        except Exception as exc:  # a broken call is a result, not the end of the run
            result = {"index": call.index, "ok": False, "end_reason": None, "error": repr(exc)}
        result["worker"] = plan.worker
        emit({"type": "call", "result": result})
        free.put_nowait(line)

    started = time.monotonic()
    placed = 0
    tasks: set[asyncio.Task[None]] = set()
    try:
        while plan.calls is None or placed < plan.calls:
            due = started + placed / plan.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if plan.duration is not None and time.monotonic() - started >= plan.duration:
                break
            line = await free.get()
            index = plan.worker + plan.workers * placed
            call = CallPlan(
                index=index,
                hold=plan.hold,
                audio=plan.audio,
                pesq=plan.audio == "speech" and plan.worker == 0 and placed < plan.pesq_sample,
                fault=plan.faults.get(index),
            )
            emit({"type": "started", "index": index})
            task = asyncio.get_running_loop().create_task(carry(line, call))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            placed += 1
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(line.close() for line in lines), return_exceptions=True)
        if proxy is not None:
            await proxy.close()
            emit({"type": "impairment", "stats": proxy.stats.as_dict()})


def _worker_main(plan: WorkerPlan, results: multiprocessing.Queue[dict[str, Any]]) -> None:
    try:
        asyncio.run(drive(plan, results.put))
    finally:
        results.put({"type": "done", "worker": plan.worker, "cpu_s": time.process_time()})


def split(total: int | None, parts: int, part: int) -> int | None:
    if total is None:
        return None
    return total // parts + (1 if part < total % parts else 0)


@dataclass
class RunOutcome:
    options: LoadOptions
    server_url: str
    results: list[dict[str, Any]]
    wall_s: float
    generator_cpu_s: float
    sampler: ServerSampler
    impairment: dict[str, Any]
    max_active: int


async def run(
    options: LoadOptions,
    *,
    registry: Registry | None = None,
    on_event: Emit | None = None,
) -> RunOutcome:
    """One load run against ``options.server`` (which must be set; see `spawned`)."""
    assert options.server is not None
    concurrency = max(1, options.concurrency)
    workers = max(1, min(options.workers, concurrency))
    registry = registry or Registry(options.server, options.number_prefix, options.code)
    numbers = await registry.ensure(2 * concurrency)
    lines = [
        (numbers[2 * i][1], numbers[2 * i + 1][1], numbers[2 * i + 1][0])
        for i in range(concurrency)
    ]

    results: list[dict[str, Any]] = []
    impairment: dict[str, Any] = {}
    active = 0
    max_active = 0

    def handle(event: dict[str, Any]) -> None:
        nonlocal active, max_active
        if event["type"] == "started":
            active += 1
            max_active = max(max_active, active)
        elif event["type"] == "call":
            active -= 1
            results.append(event["result"])
        elif event["type"] == "impairment":
            for key, value in event["stats"].items():
                impairment[key] = impairment.get(key, 0) + value
        if on_event is not None:
            on_event({**event, "active": active})

    sampler = ServerSampler(options.server, options.server_pid)
    started = time.monotonic()
    cpu_before = time.process_time()
    sampler.start(started)
    plans = [
        WorkerPlan(
            worker=w,
            workers=workers,
            server=options.server,
            lines=tuple(lines[w::workers]),
            calls=split(options.calls, workers, w),
            rate=options.rate / workers,
            duration=options.duration,
            hold=options.hold,
            audio=options.audio,
            pesq_sample=options.pesq_sample,
            impair=options.impair,
            faults=options.faults,
        )
        for w in range(workers)
    ]
    worker_cpu = 0.0
    try:
        if workers == 1:
            await drive(plans[0], handle)
        else:
            worker_cpu = await _run_workers(plans, handle)
    finally:
        await sampler.stop()
    return RunOutcome(
        options=options,
        server_url=options.server,
        results=sorted(results, key=lambda r: r["index"]),
        wall_s=time.monotonic() - started,
        generator_cpu_s=time.process_time() - cpu_before + worker_cpu,
        sampler=sampler,
        impairment=impairment,
        max_active=max_active,
    )


async def _run_workers(plans: list[WorkerPlan], handle: Emit) -> float:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    processes = [
        context.Process(target=_worker_main, args=(plan, results), daemon=True) for plan in plans
    ]
    for process in processes:
        process.start()
    loop = asyncio.get_running_loop()
    done = 0
    cpu = 0.0
    try:
        while done < len(processes):
            try:
                event = await loop.run_in_executor(None, results.get, True, 1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and results.empty():
                    break
                continue
            if event["type"] == "done":
                done += 1
                cpu += float(event["cpu_s"])
            else:
                handle(event)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    return cpu


@contextlib.asynccontextmanager
async def spawned(options: LoadOptions) -> Any:
    """Options pointing at a server spawned for the run (when none was given)."""
    if options.server is not None:
        yield options
        return
    server = SpawnedServer(
        number_prefix=options.number_prefix, code=options.code, relay_mode=options.relay_mode
    )
    try:
        await server.start()
        yield replace(options, server=server.url, server_pid=server.pid)
    finally:
        server.stop()


def cpu_count() -> int:
    return os.cpu_count() or 1
