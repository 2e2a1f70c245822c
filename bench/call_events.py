"""Operator event latency: from the end of a call to the operator receiving call.ended.

    .venv/bin/python -m bench.call_events [--calls 50]

A server runs in this process on 127.0.0.1 (embedded SQLite in a temporary
directory, relay in-process) with one operator whose webhook endpoint is an
aiohttp receiver here, and the caller (+4917700000201) provisioned on one of
its bundles. For each of --calls sequential calls the caller calls
+4917700000202, who answers; after --talk seconds the caller hangs up.

Figures (medians and p99 over the calls), with a baseline from the same calls:

* hang-up -> the operator's receiver has the signed call.ended (the call
  record and its event committed, the delivery worker woken, signed and
  POSTed over HTTP);
* baseline: hang-up -> the callee's device has call.ended over its
  WebSocket (what the other party notices);
* ratio operator / callee.

Every call.ended must arrive exactly once with a valid signature.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp import web

from signaling.app import create_app
from signaling.carrier import signing
from signaling.carrier.operators import BundleSpec
from signaling.config import Config
from signaling.keys import OPERATORS
from signaling.store.operators import OperatorStore
from voice.client.client import Phone
from voice.client.signaling import SignalingClient
from voice.ice import restrict_host_addresses

CALLER = "+4917700000201"
CALLEE = "+4917700000202"
CODE = "246810"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Receiver:
    """The operator's webhook endpoint: notes when each call.ended arrives."""

    def __init__(self) -> None:
        self.secret = ""
        self.ended: dict[str, list[float]] = {}
        self.bad_signatures = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        try:
            signing.verify(body, request.headers["Anruf-Signature"], self.secret, now)
        except (KeyError, signing.SignatureError):
            self.bad_signatures += 1
            return web.Response(status=400)
        event = json.loads(body)
        if event["type"] == "call.ended":
            self.ended.setdefault(event["data"]["call_id"], []).append(now)
            self.arrived.set()
        return web.Response(status=204)


async def register(url: str, number: str) -> str:
    client = SignalingClient(url)
    try:
        device = await client.register(number, CODE, "bench")
    finally:
        await client.close()
    return str(device["token"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--talk", type=float, default=0.5)
    args = parser.parse_args()
    restrict_host_addresses(["127.0.0.1"])

    receiver = Receiver()
    hook_app = web.Application()
    hook_app.router.add_post("/events", receiver.handle)
    hook_runner = web.AppRunner(hook_app)
    await hook_runner.setup()
    hook_site = web.TCPSite(hook_runner, "127.0.0.1", 0)
    await hook_site.start()
    hook_port = hook_runner.addresses[0][1]

    with tempfile.TemporaryDirectory() as data_dir:
        config = Config(
            port=0,
            data_dir=Path(data_dir),
            test_number_prefix="+4917700000",
            test_code=CODE,
            relay_workers=0,
        )
        app = create_app(config)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        store: OperatorStore = app[OPERATORS]
        new = await store.create_operator(
            "Netz Eins", webhook_url=f"http://127.0.0.1:{hook_port}/events"
        )
        receiver.secret = new.signing_secret
        bundle = await store.create_bundle(
            new.operator.operator_id, BundleSpec("Talk 1000", True, 1000)
        )
        await store.add_subscriber(new.operator.operator_id, CALLER, bundle.bundle_id)

        caller = await Phone.open(url, await register(url, CALLER))
        callee = await Phone.open(url, await register(url, CALLEE))
        operator_ms: list[float] = []
        callee_ms: list[float] = []
        try:
            for _ in range(args.calls):
                outgoing = await caller.call(CALLEE)
                incoming = await callee.incoming(timeout=10)
                await incoming.accept()
                assert await outgoing.connected(timeout=10)
                await asyncio.sleep(args.talk)
                receiver.arrived.clear()
                hung_up = time.time()
                await outgoing.hangup()
                await incoming.ended(timeout=10)
                callee_ms.append((time.time() - hung_up) * 1000)
                call_id = outgoing.call_id or ""
                while call_id not in receiver.ended:
                    await asyncio.wait_for(receiver.arrived.wait(), 10)
                    receiver.arrived.clear()
                operator_ms.append((receiver.ended[call_id][0] - hung_up) * 1000)
            await asyncio.sleep(1.0)  # any duplicate would arrive by now
        finally:
            await caller.close()
            await callee.close()
            await runner.cleanup()
            await hook_runner.cleanup()

    duplicates = sum(len(times) - 1 for times in receiver.ended.values())
    print(f"call.ended to the operator: {args.calls} calls, {args.talk} s talk, SQLite")
    print(f"  {'figure':<42}{'median':>10}{'p99':>10}")
    for name, values in (
        ("hang-up -> operator has call.ended", operator_ms),
        ("baseline: hang-up -> callee device ended", callee_ms),
    ):
        print(f"  {name:<42}{statistics.median(values):>8.1f}ms{percentile(values, 99):>8.1f}ms")
    ratio_median = statistics.median(operator_ms) / statistics.median(callee_ms)
    ratio_p99 = percentile(operator_ms, 99) / percentile(callee_ms, 99)
    print(f"  ratio operator / callee: median {ratio_median:.2f}x, p99 {ratio_p99:.2f}x")
    print(
        f"  events: {len(receiver.ended)} of {args.calls} call.ended received, "
        f"{duplicates} duplicates, {receiver.bad_signatures} bad signatures"
    )


if __name__ == "__main__":
    asyncio.run(main())
