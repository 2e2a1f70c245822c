"""Webhook delivery benchmark: events per second one node delivers to an operator.

    .venv/bin/python -m bench.webhooks [--events 5000] [--keys 500] [--repeat 5]

An operator's receiver (aiohttp, answers 200 at once) runs in a child process
on 127.0.0.1. Each round:

* delivery: --events events (--keys ordering keys, interleaved) are appended
  to the outbox of a fresh SQLite database in a temporary directory (or
  --database-url), then an EventDelivery worker (webhook_concurrency =
  --concurrency) is started and timed until every event is recorded
  ``delivered``: claim, HMAC signature, POST, and the outcome committed.
* baseline: the same body bytes POSTed with plain aiohttp by --concurrency
  tasks, no database and no signature, timed until the last response.

Then, with the worker idle and polling every 0.5 s, --latency single events
one after another: each appended in its own transaction, notify() called
after the commit, timed until its delivery is recorded (p50 and p95).

Rounds alternate (delivery, baseline, ...) so both see the same machine noise;
the headline figures are medians, and the ratio is delivery / baseline. The
last line of output is a JSON object with all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web

from signaling.carrier import events
from signaling.carrier.delivery import EventDelivery
from signaling.config import Config
from signaling.metrics import Metrics
from signaling.store.database import Database
from signaling.store.schema import events as events_table
from signaling.store.schema import operators

OPERATOR = "op_bench"


# -- the operator's receiver (child process) -----------------------------------


def _receiver_main(port_out: Any) -> None:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200)

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    _run(serve())


def _run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# -- one round of each ---------------------------------------------------------


async def _fill(db: Database, url: str, count: int, keys: int) -> list[bytes]:
    """A fresh outbox of ``count`` events over ``keys`` keys; their bodies."""
    async with db.transaction() as conn:
        await conn.execute(events_table.delete())
        await conn.execute(operators.delete().where(operators.c.operator_id == OPERATOR))
        await conn.execute(
            operators.insert().values(
                operator_id=OPERATOR,
                name="Bench operator",
                webhook_url=url,
                sms_url="",
                signing_secret="whsec_bench",
                previous_signing_secret=None,
                created_at=time.time(),
            )
        )
        now = time.time()
        for n in range(count):
            key = f"call-{n % keys}"
            await events.append(
                conn,
                operator_id=OPERATOR,
                type="call.ended",
                data={"call_id": key, "reason": "completed", "duration": 61.5, "n": n},
                ordering_key=key,
                now=now,
            )
        bodies = (await conn.execute(sa.select(events_table.c.body))).scalars().all()
    return [body.encode() for body in bodies]


async def delivery_round(db: Database, config: Config, total: int) -> float:
    """Seconds for a fresh EventDelivery to deliver the whole outbox."""
    metrics = Metrics()

    def delivered() -> float:
        # Counted once committed: the same as polling the table, without its cost.
        sample = metrics.registry.get_sample_value(
            "anruf_webhook_deliveries_total", {"outcome": "delivered"}
        )
        return sample or 0.0

    worker = EventDelivery(db, config, metrics)
    started = time.perf_counter()
    await worker.start()
    worker.notify()
    try:
        while delivered() < total:  # noqa: ASYNC110 (a counter, nothing to wait on)
            await asyncio.sleep(0.002)
        seconds = time.perf_counter() - started
    finally:
        await worker.stop()
    async with db.read() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count()).where(events_table.c.status == "delivered")
        )
    if count != total:
        raise RuntimeError(f"{count} of {total} events recorded as delivered")
    return seconds


async def baseline_round(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Seconds for plain aiohttp POSTs of the same bodies, same concurrency."""
    queue = iter(bodies)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=10),
    ) as http:

        async def post_all() -> None:
            for body in queue:
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"receiver answered {response.status}")

        started = time.perf_counter()
        await asyncio.gather(*(post_all() for _ in range(concurrency)))
        return time.perf_counter() - started


async def latency_round(db: Database, config: Config, count: int) -> list[float]:
    """Seconds from an event's commit (then notify) to its delivery being recorded."""
    metrics = Metrics()

    def delivered() -> float:
        sample = metrics.registry.get_sample_value(
            "anruf_webhook_deliveries_total", {"outcome": "delivered"}
        )
        return sample or 0.0

    worker = EventDelivery(db, config, metrics)
    await worker.start()
    seconds: list[float] = []
    try:
        for n in range(count):
            async with db.transaction() as conn:
                await events.append(
                    conn,
                    operator_id=OPERATOR,
                    type="call.ended",
                    data={"call_id": f"latency-{n}", "reason": "completed"},
                    ordering_key=f"latency-{n}",
                    now=time.time(),
                )
            started = time.perf_counter()
            worker.notify()
            while delivered() < n + 1:  # noqa: ASYNC110 (a counter, nothing to wait on)
                await asyncio.sleep(0.001)
            seconds.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)  # idle in between, as between call ends
    finally:
        await worker.stop()
    return seconds


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- the run -------------------------------------------------------------------


async def bench(args: argparse.Namespace, url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="anruf-bench-") as tmp:
        database_url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}"
        db = await Database.open(database_url)
        config = replace(
            Config(),
            webhook_concurrency=args.concurrency,
            webhook_poll_interval=0.5,
        )
        delivery: list[float] = []
        baseline: list[float] = []
        try:
            for round_ in range(args.repeat):
                bodies = await _fill(db, url, args.events, args.keys)
                seconds = await delivery_round(db, config, args.events)
                delivery.append(args.events / seconds)
                seconds = await baseline_round(url, bodies, args.concurrency)
                baseline.append(args.events / seconds)
                print(
                    f"round {round_ + 1}: delivery {delivery[-1]:7.0f} events/s   "
                    f"baseline {baseline[-1]:7.0f} POSTs/s",
                    flush=True,
                )
            latency = await latency_round(db, config, args.latency) if args.latency else [0.0]
        finally:
            async with db.transaction() as conn:
                await conn.execute(events_table.delete())
                await conn.execute(operators.delete().where(operators.c.operator_id == OPERATOR))
            await db.close()
    return {
        "events": args.events,
        "keys": args.keys,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "database": "postgresql" if args.database_url else "sqlite",
        "delivery_events_per_s": [round(x) for x in delivery],
        "baseline_posts_per_s": [round(x) for x in baseline],
        "delivery_median": round(statistics.median(delivery)),
        "baseline_median": round(statistics.median(baseline)),
        "ratio": round(statistics.median(delivery) / statistics.median(baseline), 3),
        "notify_to_delivered_ms_p50": round(_percentile(latency, 0.5) * 1000, 2),
        "notify_to_delivered_ms_p95": round(_percentile(latency, 0.95) * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency", type=int, default=200, help="single events timed")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    port_in, port_out = context.Pipe(duplex=False)
    receiver = context.Process(target=_receiver_main, args=(port_out,), daemon=True)
    receiver.start()
    try:
        if not port_in.poll(30):
            raise RuntimeError("the receiver did not start")
        url = f"http://127.0.0.1:{port_in.recv()}/hook"
        figures = _run(bench(args, url))
    except KeyboardInterrupt:
        return 130
    finally:
        receiver.terminate()
        with contextlib.suppress(Exception):
            receiver.join(5)
    print(
        f"median: delivery {figures['delivery_median']} events/s, "
        f"baseline {figures['baseline_median']} POSTs/s, ratio {figures['ratio']:.2f}; "
        f"notify to delivered p50 {figures['notify_to_delivered_ms_p50']} ms, "
        f"p95 {figures['notify_to_delivered_ms_p95']} ms"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
