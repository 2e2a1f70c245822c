"""The server under test: spawned on embedded defaults, or a running one; and the
sampler that watches its CPU, memory and active calls while a run goes on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Fictional numbers of the load generator: prefix + 4 digits (the server's test range).
DEFAULT_PREFIX = "+491770000"
DEFAULT_CODE = "246810"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (the server and its relay workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants, from /proc (Linux)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited between the listing and the read
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def process_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants."""
    total = 0.0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


class SpawnedServer:
    """`anruf serve` in a child process on 127.0.0.1 with a range of test numbers."""

    def __init__(self, *, number_prefix: str, code: str, relay_mode: str = "forward") -> None:
        self.number_prefix = number_prefix
        self.code = code
        self.relay_mode = relay_mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="anruf-loadtest-")
        self.log_path = Path(self._dir.name) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, timeout: float = 30.0) -> None:
        command = [
            sys.executable, "-m", "signaling.cli", "serve",
            "--port", str(self.port),
            "--data-dir", str(Path(self._dir.name) / "data"),
            "--test-number-prefix", self.number_prefix,
            "--test-code", self.code,
            "--relay-mode", self.relay_mode,
        ]  # fmt: skip
        env = {
            **os.environ,
            "ANRUF_WS_MESSAGES_PER_SECOND": "1000",
            "ANRUF_WS_MESSAGE_BURST": "1000",
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited at start; see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError("the spawned server did not become healthy")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._dir.cleanup()


@dataclass
class ServerSample:
    t: float  # seconds since the run started
    cpu_pct: float | None  # 100 = one core
    rss_mb: float | None
    active_calls: float | None


@dataclass
class ServerSampler:
    """Samples the server once a second: CPU and memory when local, active calls from /metrics."""

    url: str
    pid: int | None
    interval: float = 1.0
    samples: list[ServerSample] = field(default_factory=list)
    cpu_seconds: float = 0.0
    _task: asyncio.Task[None] | None = None

    def start(self, started: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(started))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, started: float) -> None:
        last_cpu = process_cpu_seconds(self.pid) if self.pid else None
        first_cpu = last_cpu
        last_t = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while True:
                await asyncio.sleep(self.interval)
                now = time.monotonic()
                cpu_pct = rss = None
                if self.pid is not None and last_cpu is not None and first_cpu is not None:
                    with contextlib.suppress(OSError):
                        cpu = process_cpu_seconds(self.pid)
                        cpu_pct = (cpu - last_cpu) / (now - last_t) * 100
                        self.cpu_seconds = cpu - first_cpu
                        last_cpu = cpu
                        rss = process_rss_mb(self.pid)
                last_t = now
                self.samples.append(
                    ServerSample(
                        round(now - started, 2),
                        cpu_pct,
                        rss,
                        await _active_calls(session, self.url),
                    )
                )


async def _active_calls(session: aiohttp.ClientSession, url: str) -> float | None:
    try:
        async with session.get(
            url + "/metrics", timeout=aiohttp.ClientTimeout(total=2)
        ) as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    for line in text.splitlines():
        if line.startswith("anruf_active_calls "):
            return float(line.split()[1])
    return None
