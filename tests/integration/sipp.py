"""SIPp (Debian's sip-tester) as the operator's network, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.ports import free_port

SCENARIOS = Path(__file__).resolve().parents[1] / "sip"


def sipp_binary() -> str:
    """The sipp executable: missing fails loudly in CI and skips elsewhere."""
    path = shutil.which("sipp")
    if path is None:
        if in_ci():
            pytest.fail("sipp is not installed (Debian package sip-tester); .ci/run installs it")
        pytest.skip("sipp is not installed (apt install sip-tester)")
    return path


class Sipp:
    """One SIPp run of a scenario file from tests/sip (one call, then it exits)."""

    def __init__(
        self,
        scenario: str,
        *,
        port: int,
        remote: str = "",
        service: str = "",
        media_port: int | None = None,
        echo: bool = False,
        keys: dict[str, str] | None = None,
        files: dict[str, bytes] | None = None,
        workdir: Path,
        timeout: float = 30.0,
    ) -> None:
        args = [
            sipp_binary(),
            "-sf",
            str(SCENARIOS / scenario),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "1",
            "-nostdin",
            "-aa",  # answer OPTIONS keep-alives
            "-timeout",
            f"{int(timeout)}s",
            "-timeout_error",
            "-trace_err",
        ]
        args += ["-mp", str(media_port if media_port is not None else free_port(socket.SOCK_DGRAM))]
        if echo:
            args.append("-rtp_echo")
        if service:
            args += ["-s", service]
        for key, value in (keys or {}).items():
            args += ["-key", key, value]
        if remote:
            args.append(remote)
        for name, content in (files or {}).items():
            (workdir / name).write_bytes(content)  # e.g. what rtp_stream plays
        self.port = port
        self.process = subprocess.Popen(
            args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.workdir = workdir

    async def finished(self, timeout: float = 30.0) -> int:
        """SIPp's exit code: 0 when its one call went exactly as scripted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.process.poll() is None:
            if loop.time() > deadline:
                self.process.kill()
                break
            await asyncio.sleep(0.05)
        return int(self.process.wait())

    def errors(self) -> str:
        logs = sorted(self.workdir.glob("*_errors.log"))
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in logs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
