"""What the benchmarks share: `anruf serve` nodes as subprocesses (every benchmark that
runs a server starts it as a Node), SIPp command lines for the phone network's side, a
throwaway PostgreSQL database, and CPU and memory readings from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.ports import free_port

#: The repository's root: nodes run from it, scenario files are found from it.
REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Where throwaway databases are created (trust authentication, user postgres).
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432"
#: Fictional numbers +49 177 00xx xxxx; the bench's test-number range is +49 177 009x xxxx.
NUMBER_FORMAT = "+4917700{:06d}"
TEST_PREFIX = "+49177009"
TEST_CODE = "246810"
#: First index of the test range in NUMBER_FORMAT (indices below go through real codes).
TEST_FIRST = 900_000


def die_with_parent() -> None:
    """In a child: SIGKILL when the bench process dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15


def rss_bytes(pid: int) -> int:
    """VmRSS of a process from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def postgres_cpu(database: str | None = None) -> dict[int, float]:
    """CPU seconds of every process named postgres alive now (the server and its
    backends, if PostgreSQL runs on this machine), by pid: utime + stime, plus
    cutime + cstime, in which the postmaster collects the backends that ended.

    With ``database``, only the backends connected to it (named in their command
    line), so other users of the same server are not counted; backends that end
    between two readings are then missed."""
    found: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as comm:
                if comm.read().strip() != "postgres":
                    continue
            if database is not None:
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    if f" {database} ".encode() not in cmdline.read():
                        continue
            with open(f"/proc/{entry.name}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        found[int(entry.name)] = sum(int(v) for v in fields[11:15]) / CLK_TCK  # fields 14-17
    return found


def postgres_cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU PostgreSQL used between two postgres_cpu() readings. A backend that ended in
    between is counted through the postmaster, with the CPU it had used before too."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def postgres_cpu_seconds() -> float:
    """All CPU seconds PostgreSQL's processes have used so far (see postgres_cpu): the
    difference of two readings is what PostgreSQL used in between, ended backends too."""
    return sum(postgres_cpu().values())


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE to ``wanted`` if allowed, else to the hard limit; the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    else:
        try:  # raising the hard limit needs CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- a throwaway PostgreSQL database ------------------------------------------


class BenchDatabase:
    """``anruf_bench_<random>`` on the server of ``base_url``; dropped by drop()."""

    def __init__(self, base_url: str = DEFAULT_POSTGRES) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = "anruf_bench_" + secrets.token_hex(4)
        self.url = f"{self.base_url}/{self.name}"

    def _admin_dsn(self) -> str:
        return self.base_url.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"

    async def _execute(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._admin_dsn())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self) -> None:
        asyncio.run(self._execute(f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    async def fetch_value(self, sql: str) -> object:
        import asyncpg

        dsn = self.url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()


# -- one node -------------------------------------------------------------------


class Node:
    """`anruf serve` (python -m signaling.cli serve) on 127.0.0.1 and a free port.

    Settings come from ANRUF_* variables: ``settings`` maps setting names to
    values (``{"database_url": ...}``); other ANRUF_* variables of this
    environment are not passed on. The log (stdout and stderr) goes to a file.
    """

    def __init__(
        self, name: str, settings: dict[str, str], workdir: Path, profile: bool = False
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self.data_dir = workdir / f"{name}-data"
        self.settings = {"data_dir": str(self.data_dir), "node_name": name, **settings}
        self.proc: subprocess.Popen[bytes] | None = None
        #: With profile, the node runs under cProfile and writes its statistics here at exit.
        self.profile_path = workdir / f"{name}.prof" if profile else None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANRUF_")}
        for key, value in self.settings.items():
            env[f"ANRUF_{key.upper()}"] = value
        # With -m, Python finds signaling.cli in the working directory, the repository.
        command = [sys.executable, "-m", "signaling.cli", "serve", "--port", str(self.port)]
        if self.profile_path is not None:
            command[1:1] = ["-m", "cProfile", "-o", str(self.profile_path)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops us
                preexec_fn=die_with_parent,
            )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.url + "/healthz", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not healthy after {timeout:.0f} s")
            time.sleep(0.1)

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        """SIGTERM (aiohttp shuts down cleanly), SIGKILL if it lingers. Idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


# -- SIPp: the phone network's side -----------------------------------------------


def sipp_binary() -> str:
    """The sipp executable; without it the benchmark stops with how to install it."""
    path = shutil.which("sipp")
    if path is None:
        raise SystemExit("sipp is not installed (apt install sip-tester)")
    return path


def sipp_command(
    scenario: Path, target: str, *options: str, source: str = "127.0.0.1"
) -> list[str]:
    """SIPp playing ``scenario`` against ``target`` (HOST:PORT) from ``source`` on a free UDP
    port, never reading its keyboard; ``options`` are SIPp's own (-r RATE, -m CALLS, ...)."""
    local = ("-i", source, "-p", str(free_port(socket.SOCK_DGRAM)))
    return [sipp_binary(), "-sf", str(scenario), *local, *options, "-nostdin", target]


def exit_on_sigterm() -> None:
    """SIGTERM ends the bench like Ctrl-C, through its cleanup (nodes, database)."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="anruf-bench-")


def machine_load() -> str:
    """The load average and the busiest other processes, to record the noise."""
    with open("/proc/loadavg") as loadavg:
        load = " ".join(loadavg.read().split()[:3])
    try:
        top = subprocess.run(
            ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.splitlines()[:5]
    except (OSError, subprocess.SubprocessError):
        top = []
    busy = ", ".join(" ".join(line.split()) for line in top)
    return f"load average {load}; busiest (ps %CPU since start): {busy}"
