"""baresip (Debian's baresip-core), headless, as a phone on the operator's network.

It answers calls at once (answermode=auto) or dials one (``dial``), sends an
8 kHz WAV tone (aufile) in G.711, and records what it hears (sndfile writes
``dump-*-dec.wav``). All on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import in_ci
from tests.ports import free_port

MODULES = ("g711", "aufile", "aubridge", "account", "menu", "sndfile")


def baresip_binary() -> str:
    path = shutil.which("baresip")
    if path is None:
        if in_ci():
            pytest.fail("baresip is not installed (Debian package baresip-core)")
        pytest.skip("baresip is not installed (apt install baresip-core)")
    return path


class Baresip:
    def __init__(
        self, workdir: Path, *, tone: int, seconds: int, dial: str = "", user: str = "far"
    ) -> None:
        self.workdir = workdir
        self.port = free_port(socket.SOCK_DGRAM)
        workdir.mkdir(parents=True, exist_ok=True)
        tone_file = workdir / "tone.wav"
        subprocess.run(
            [
                *("sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(tone_file)),
                *("synth", str(seconds + 5), "sine", str(tone), "vol", "0.5"),
            ],
            check=True,
        )
        lines = [
            "poll_method epoll",
            f"sip_listen 127.0.0.1:{self.port}",
            "net_interface 127.0.0.1",
            f"audio_source aufile,{tone_file}",
            "audio_player aubridge,nil",
            "audio_alert aubridge,nil",
            "module_path /usr/lib/baresip/modules",
            *(f"module {name}.so" for name in MODULES),
            f"snd_path {workdir}",
        ]
        (workdir / "config").write_text("\n".join(lines) + "\n")
        (workdir / "accounts").write_text(
            f"<sip:{user}@127.0.0.1>;regint=0;audio_codecs=PCMA,PCMU;answermode=auto\n"
        )
        args = [baresip_binary(), "-f", str(workdir), "-t", str(seconds)]
        if dial:
            args += ["-e", f"/dial {dial}"]
        self.log = open(workdir / "baresip.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )

    def heard(self) -> tuple[np.ndarray, int]:
        """What baresip decoded (its received audio) and the sample rate."""
        dumps = sorted(self.workdir.glob("dump-*-dec.wav"))
        assert dumps, "baresip recorded nothing: " + self.output()
        with wave.open(str(dumps[-1])) as wav:
            rate = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        return samples, rate

    def output(self) -> str:
        self.log.flush()
        return (self.workdir / "baresip.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
