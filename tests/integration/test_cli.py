"""The `anruf` command as a user runs it: serve, login, answer, call."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.ports import free_port
from voice.audio.analysis import tone_fraction
from voice.audio.wav import read_wav

ANRUF = [sys.executable, "-m", "signaling.cli"]


def wait_healthy(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_login_answer_and_call_from_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*ANRUF, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--test-number-prefix", "+4917700000", "--test-code", "246810"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_healthy(url)
        for number, who in (("+4917700000001", "alice"), ("0177 00000002", "bob")):
            login = subprocess.run(
                [*ANRUF, "login", number, "--server", url, "--code", "246810",
                 "--profile-dir", str(tmp_path / who)],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert login.returncode == 0, login.stderr
            assert "Signed in as +49177000000" in login.stdout
        answer = subprocess.Popen(
            [*ANRUF, "answer", "--profile-dir", str(tmp_path / "bob"), "--play", "tone:880",
             "--record", str(tmp_path / "bob.wav"), "--duration", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        time.sleep(2)
        call = subprocess.run(
            [*ANRUF, "call", "+4917700000002", "--profile-dir", str(tmp_path / "alice"),
             "--play", "tone:440", "--record", str(tmp_path / "alice.wav"), "--duration", "3"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        answered, _ = answer.communicate(timeout=30)
        assert call.returncode == 0, call.stdout + call.stderr
        assert "Connected after" in call.stdout
        assert "Call ended: completed." in call.stdout
        assert "Incoming call from +4917700000001" in answered
        assert "Call ended: completed." in answered

        alice, rate = read_wav(tmp_path / "alice.wav")
        bob, _ = read_wav(tmp_path / "bob.wav")
        assert tone_fraction(alice, rate, 880) >= 0.85
        assert tone_fraction(bob, rate, 440) >= 0.85

        unknown = subprocess.run(
            [*ANRUF, "call", "+4917700000002", "--profile-dir", str(tmp_path / "nobody")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert unknown.returncode == 1
        assert "run `anruf login NUMBER` first" in unknown.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_serve_refuses_a_bad_trunk_setting_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [*ANRUF, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data")],
        env={**os.environ, "ANRUF_SIP_LISTEN": "127.0.0.1:not-a-port"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "sip_listen" in result.stderr
    assert "Traceback" not in result.stderr
