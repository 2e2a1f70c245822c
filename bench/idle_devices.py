"""Idle connected devices per node: the node's memory (VmRSS) per open device WebSocket.

    .venv/bin/python -m bench.idle_devices [--levels 1000,5000,10000,19500] [--rounds 2]

One `anruf serve` node (python -m signaling.cli serve) on a fresh PostgreSQL
database ``anruf_bench_<random>`` (dropped at exit). The devices are registered
first through the REST API by a separate node (fictional test numbers
+49177009…, code 246810), so the measured node starts without that history.
Client processes (--clients of them, each from its own source address
127.0.0.2, 127.0.0.3, … so ephemeral ports do not run short) then open the
devices' WebSockets (/v1/ws, ``Authorization: Bearer``), wait for ``welcome`` and
keep reading, as an idle app does: the node's heartbeat (ws_heartbeat, 20 s by
default) pings them and they answer. At each level the bench waits for the
connections to settle and reads the node's VmRSS (/proc/PID/status); it checks
that /metrics reports exactly that many ``anruf_connected_devices`` and that a
sample of devices (--sample per client) gets ``pong`` for ``ping``. At the top
level it holds the connections for one heartbeat interval and more, then checks
again (a device that missed the heartbeat would have been dropped).

Baseline, same run, same clients and levels: a bare aiohttp WebSocket server
(uvloop, the same heartbeat and message size limit) that only sends a welcome,
keeps the socket in a dict and answers ping with pong.

Each round starts a fresh node and a fresh baseline server; the RSS with no
device connected is read after 50 devices connected and left (warm code paths).
Growth per device = (RSS at N - RSS at 0) / N; the headline is the median over
rounds at the top level: devices per GiB of growth, and devices that fit in
1 GiB of RSS including the node's own starting RSS. The last line of output is a
JSON object with all figures.

Limits: RLIMIT_NOFILE is raised as far as the hard limit allows (each
connection is a file descriptor in the node); when the hard limit is 20,000 the
top level is 19,500 devices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import random
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
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
    die_with_parent,
    exit_on_sigterm,
    machine_load,
    raise_nofile,
    rss_bytes,
    workdir,
)
from tests.ports import free_port
from wire import Ping, Pong, Welcome

GIB = 1 << 30
HEARTBEAT = 20.0
MAX_MESSAGE = 64 * 1024


def _run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# -- registering the devices ----------------------------------------------------


async def register_devices(url: str, count: int, concurrency: int = 16) -> list[str]:
    """``count`` devices on distinct test numbers; their tokens."""
    import aiohttp

    tokens: list[str] = [""] * count
    pending = iter(range(count))
    async with aiohttp.ClientSession() as session:

        async def lane() -> None:
            for index in pending:
                number = NUMBER_FORMAT.format(TEST_FIRST + index)
                async with session.post(url + "/v1/verification", json={"number": number}) as r:
                    if r.status != 202:
                        raise RuntimeError(f"verification {r.status}: {await r.text()}")
                body = {"number": number, "code": TEST_CODE, "name": "idle"}
                async with session.post(url + "/v1/devices", json=body) as r:
                    answer = await r.json()
                    if r.status != 201:
                        raise RuntimeError(f"devices {r.status}: {answer}")
                tokens[index] = answer["token"]

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return tokens


# -- the bare aiohttp WebSocket server (baseline, child process) --------------


def _bare_main(port: int, ready: Any) -> None:
    from aiohttp import WSMsgType, web

    die_with_parent()
    sockets: dict[str, web.WebSocketResponse] = {}

    async def websocket(request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").partition(" ")[2]
        if not token:
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        sockets[token] = ws
        await ws.send_str(json.dumps({"type": Welcome.type, "device_id": token[:8]}))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if data.get("type") == Ping.type:
                        await ws.send_str(json.dumps({"type": Pong.type, "ref": data.get("id")}))
        finally:
            sockets.pop(token, None)
        return ws

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=f"anruf_connected_devices {float(len(sockets))}\n")

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/v1/ws", websocket)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    _run(serve())


# -- the devices (client processes) -------------------------------------------


class Devices:
    """One client process's open device WebSockets, each with its reader."""

    def __init__(self, source: str, tokens: list[str]) -> None:
        self.source = source
        self.tokens = tokens
        self.sockets: list[Any] = []
        self.readers: list[asyncio.Task[None]] = []
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.unexpected: list[str] = []
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, local_addr=(self.source, 0))
        self.session = aiohttp.ClientSession(connector=connector)

    async def _open_one(self, url: str, token: str) -> None:
        import aiohttp

        ws = await self.session.ws_connect(
            url + "/v1/ws",
            headers={"Authorization": f"Bearer {token}"},
            autoping=True,
            heartbeat=None,  # the server's heartbeat pings us; we answer
            timeout=aiohttp.ClientWSTimeout(ws_close=30),
        )
        first = await ws.receive(timeout=30)
        data = json.loads(first.data) if isinstance(first.data, str) else {}
        if data.get("type") != Welcome.type:
            await ws.close()
            raise RuntimeError(f"no welcome: {first.type} {first.data!r}")
        self.sockets.append(ws)
        self.readers.append(asyncio.get_running_loop().create_task(self._read(ws)))

    async def _read(self, ws: Any) -> None:
        from aiohttp import WSMsgType

        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self.waiting.get(str(data.get("ref")))
            if data.get("type") == Pong.type and future is not None and not future.done():
                future.set_result(None)
            elif len(self.unexpected) < 5:
                self.unexpected.append(msg.data[:200])

    async def open(self, url: str, target: int, concurrency: int = 32) -> dict[str, Any]:
        wanted = iter(self.tokens[len(self.sockets) : target])
        errors: list[str] = []

        async def lane() -> None:
            for token in wanted:
                try:
                    await self._open_one(url, token)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return {"open": self.alive(), "errors": len(errors), "error_samples": errors[:3]}

    def alive(self) -> int:
        return sum(1 for ws in self.sockets if not ws.closed)

    async def ping(self, sample: int) -> dict[str, Any]:
        chosen = random.sample(self.sockets, min(sample, len(self.sockets)))
        ok = 0
        for n, ws in enumerate(chosen):
            ref = f"p{time.monotonic_ns()}-{n}"
            future = asyncio.get_running_loop().create_future()
            self.waiting[ref] = future
            try:
                await ws.send_str(json.dumps({"type": Ping.type, "id": ref}))
                await asyncio.wait_for(future, 10)
                ok += 1
            except (TimeoutError, ConnectionError, RuntimeError):
                pass
            finally:
                self.waiting.pop(ref, None)
        return {"pinged": len(chosen), "pong": ok, "unexpected": self.unexpected[:3]}

    async def close_all(self) -> dict[str, Any]:
        sockets, self.sockets = self.sockets, []
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.readers = []
        return {"open": 0}


def _client_main(source: str, tokens: list[str], commands: Connection) -> None:
    die_with_parent()

    async def serve() -> None:
        devices = Devices(source, tokens)
        await devices.start()
        loop = asyncio.get_running_loop()
        while True:
            command, argument = await loop.run_in_executor(None, commands.recv)
            if command == "open":
                url, target = argument
                commands.send(await devices.open(url, target))
            elif command == "ping":
                commands.send(await devices.ping(argument))
            elif command == "alive":
                commands.send({"open": devices.alive()})
            elif command == "close":
                commands.send(await devices.close_all())
            elif command == "exit":
                await devices.close_all()
                await devices.session.close()
                commands.send({})
                return

    _run(serve())


class Clients:
    def __init__(self, tokens: list[str], count: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for k in range(count):
            mine, theirs = ctx.Pipe()
            share = tokens[k::count]
            proc = ctx.Process(target=_client_main, args=(f"127.0.0.{k + 2}", share, theirs))
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    def ask(self, command: str, per_client: list[Any] | Any) -> list[dict[str, Any]]:
        arguments = per_client if isinstance(per_client, list) else [per_client] * len(self.pipes)
        for pipe, argument in zip(self.pipes, arguments, strict=True):
            pipe.send((command, argument))
        answers = []
        for pipe in self.pipes:
            if not pipe.poll(600):
                raise RuntimeError(f"a client process did not answer {command}")
            answers.append(pipe.recv())
        return answers

    def open(self, url: str, total: int) -> dict[str, Any]:
        count = len(self.pipes)
        targets = [total // count + (1 if k < total % count else 0) for k in range(count)]
        answers = self.ask("open", [(url, t) for t in targets])
        return {
            "open": sum(a["open"] for a in answers),
            "errors": sum(a["errors"] for a in answers),
            "error_samples": [s for a in answers for s in a["error_samples"]][:3],
        }

    def ping(self, sample: int) -> dict[str, Any]:
        answers = self.ask("ping", sample)
        return {
            "pinged": sum(a["pinged"] for a in answers),
            "pong": sum(a["pong"] for a in answers),
            "unexpected": [u for a in answers for u in a["unexpected"]][:3],
        }

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("exit", None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# -- measuring one server -------------------------------------------------------


@dataclass
class Level:
    devices: int
    rss: int
    connected_metric: float
    pinged: int
    pong: int
    errors: int


@dataclass
class Ramp:
    server: str
    rss0: int
    levels: list[Level] = field(default_factory=list)
    held: Level | None = None
    problems: list[str] = field(default_factory=list)

    def per_device(self, level: Level) -> float:
        return (level.rss - self.rss0) / level.devices


def _connected(url_get: Any) -> float:
    text = url_get("/metrics")
    found = re.search(r"^anruf_connected_devices\s+(\S+)", text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def ramp(
    name: str,
    url: str,
    pid: int,
    url_get: Any,
    clients: Clients,
    levels: list[int],
    sample: int,
    settle: float,
    hold: float,
) -> Ramp:
    clients.open(url, 50)  # warm the code paths, then leave
    clients.ask("close", None)
    time.sleep(settle)
    result = Ramp(server=name, rss0=rss_bytes(pid))
    print(f"  {name}: RSS with no device {result.rss0 / 2**20:.1f} MiB", flush=True)

    def check(devices: int) -> Level:
        opened = clients.open(url, devices)
        time.sleep(settle)
        pings = clients.ping(sample)
        level = Level(
            devices=devices,
            rss=rss_bytes(pid),
            connected_metric=_connected(url_get),
            pinged=pings["pinged"],
            pong=pings["pong"],
            errors=opened["errors"],
        )
        alive = sum(a["open"] for a in clients.ask("alive", None))
        if opened["errors"]:
            samples = opened["error_samples"]
            result.problems.append(f"{devices}: {opened['errors']} failed {samples}")
        if alive != devices or level.connected_metric != devices:
            result.problems.append(
                f"{devices}: clients hold {alive}, server reports {level.connected_metric}"
            )
        if level.pong != level.pinged:
            result.problems.append(f"{devices}: {level.pong}/{level.pinged} pongs")
        if pings["unexpected"]:
            result.problems.append(f"{devices}: unexpected {pings['unexpected']}")
        print(
            f"  {name}: {devices:6} devices  RSS {level.rss / 2**20:8.1f} MiB  "
            f"growth {result.per_device(level) / 1024:6.2f} KiB/device  "
            f"connected (metrics) {level.connected_metric:.0f}  "
            f"pong {level.pong}/{level.pinged}  errors {level.errors}",
            flush=True,
        )
        return level

    for devices in levels:
        result.levels.append(check(devices))
    if hold > 0:
        time.sleep(hold)
        result.held = check(levels[-1])
        print(f"  {name}: after {hold:.0f} s more (a heartbeat interval)", flush=True)
    clients.ask("close", None)
    return result


# -- the run -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1000,5000,10000,20000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--sample", type=int, default=25, help="devices pinged per client")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before reading")
    parser.add_argument("--hold", type=float, default=HEARTBEAT + 5, help="seconds at the top")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server for the database")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    wanted = [int(v) for v in args.levels.split(",")]
    limit = raise_nofile(max(wanted) + 1000)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    top = min(max(wanted), limit - 500)
    levels = sorted({min(v, top) for v in wanted})
    print(f"machine: {multiprocessing.cpu_count()} cores; {machine_load()}")
    print(
        f"RLIMIT_NOFILE {limit} (hard {hard}); levels {levels}; heartbeat {HEARTBEAT:.0f} s "
        f"(ws_heartbeat default); {args.clients} client processes from 127.0.0.2-"
        f"{args.clients + 1}"
    )
    database = BenchDatabase(args.postgres)
    database.create()
    tmp = workdir()
    settings = {
        "database_url": database.url,
        "test_number_prefix": TEST_PREFIX,
        "test_code": TEST_CODE,
        "relay_workers": "0",
    }
    report: dict[str, Any] = {"levels": levels, "rounds": []}
    failed = False
    clients: Clients | None = None
    try:
        registrar = Node("registrar", settings, Path(tmp.name))
        registrar.start()
        registrar.wait_healthy()
        started = time.monotonic()
        tokens = _run(register_devices(registrar.url, levels[-1]))
        registrar.stop()
        print(f"registered {len(tokens)} devices in {time.monotonic() - started:.1f} s")
        clients = Clients(tokens, args.clients)
        for round_index in range(args.rounds):
            print(f"\nround {round_index + 1}")
            node = Node(f"node-{round_index + 1}", settings, Path(tmp.name))
            node.start()
            node.wait_healthy()
            try:
                node_ramp = ramp(
                    "node",
                    node.url,
                    node.pid,
                    node.get,
                    clients,
                    levels,
                    args.sample,
                    args.settle,
                    args.hold,
                )
            finally:
                node.stop()
            bare_ramp = run_bare(clients, levels, args)
            report["rounds"].append(
                {"node": _ramp_json(node_ramp), "baseline": _ramp_json(bare_ramp)}
            )
            for r in (node_ramp, bare_ramp):
                for problem in r.problems:
                    print(f"  PROBLEM {r.server}: {problem}")
                failed = failed or bool(r.problems)
        summary = summarise(report["rounds"], levels)
        report["summary"] = summary
        print_summary(summary)
        print(f"machine after: {machine_load()}")
    finally:
        if clients is not None:
            clients.stop()
        tmp.cleanup()
        database.drop()
    print(json.dumps(report))
    return 1 if failed else 0


def run_bare(clients: Clients, levels: list[int], args: argparse.Namespace) -> Ramp:
    import urllib.request

    ctx = multiprocessing.get_context("fork")
    port = free_port()
    ready = ctx.Event()
    proc = ctx.Process(target=_bare_main, args=(port, ready))
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the baseline server did not start")
        url = f"http://127.0.0.1:{port}"

        def get(path: str) -> str:
            with urllib.request.urlopen(url + path, timeout=10) as response:
                return str(response.read().decode())

        assert proc.pid is not None
        return ramp(
            "bare", url, proc.pid, get, clients, levels, args.sample, args.settle, args.hold
        )
    finally:
        proc.terminate()
        proc.join(10)


def _ramp_json(r: Ramp) -> dict[str, Any]:
    rows = [*r.levels, *([r.held] if r.held else [])]
    return {
        "rss0": r.rss0,
        "levels": [
            {
                "devices": level.devices,
                "rss": level.rss,
                "per_device": r.per_device(level),
                "connected_metric": level.connected_metric,
                "pong": f"{level.pong}/{level.pinged}",
            }
            for level in rows
        ],
        "held_per_device": r.per_device(r.held) if r.held else None,
        "problems": r.problems,
    }


def summarise(rounds: list[dict[str, Any]], levels: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for server in ("node", "baseline"):
        per_level = {}
        for n, devices in enumerate(levels):
            per_level[devices] = statistics.median(
                r[server]["levels"][n]["per_device"] for r in rounds
            )
        held = [r[server]["held_per_device"] for r in rounds if r[server]["held_per_device"]]
        top = statistics.median(held) if held else per_level[levels[-1]]
        rss0 = statistics.median(r[server]["rss0"] for r in rounds)
        summary[server] = {
            "rss0": rss0,
            "per_device": per_level,
            "top_per_device": top,
            "devices_per_gib": GIB / top,
            "devices_within_1_gib": (GIB - rss0) / top,
        }
    summary["ratio_node_to_baseline"] = (
        summary["node"]["top_per_device"] / summary["baseline"]["top_per_device"]
    )
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print("\nmedians:")
    for server in ("node", "baseline"):
        s = summary[server]
        levels = "  ".join(f"{n}: {v / 1024:.2f}" for n, v in s["per_device"].items())
        print(
            f"  {server:8} RSS with no device {s['rss0'] / 2**20:.1f} MiB; growth KiB/device "
            f"by level {levels}; at the top after the hold {s['top_per_device'] / 1024:.2f} KiB"
        )
        print(
            f"  {'':8} {s['devices_per_gib']:,.0f} devices per GiB of growth; "
            f"{s['devices_within_1_gib']:,.0f} devices within 1 GiB of RSS"
        )
    print(f"  node / baseline memory per device: {summary['ratio_node_to_baseline']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
