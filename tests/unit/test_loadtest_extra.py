"""The loadtest extra (rich, matplotlib, pesq) stays out of a server: `anruf serve`
never imports it, and `anruf loadtest` without it says how to install it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXTRA = ("rich", "matplotlib", "pesq")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_running_server_imports_nothing_of_the_loadtest_extra(tmp_path: Path) -> None:
    code = f"""
        import asyncio, json, sys
        from pathlib import Path
        from aiohttp import ClientSession, web
        import signaling.cli
        from signaling.app import create_app
        from signaling.config import Config

        async def main():
            config = Config(data_dir=Path({str(tmp_path)!r}), relay_workers=0)
            runner = web.AppRunner(create_app(config))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            async with ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{{port}}/metrics") as response:
                    assert response.status == 200
            await runner.cleanup()

        asyncio.run(main())
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {EXTRA!r})))
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_anruf_help_imports_nothing_of_the_loadtest_extra() -> None:
    result = run_python(
        f"""
        import contextlib, io, json, sys
        from signaling.cli import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["serve", "--help"])
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {EXTRA!r})))
        """
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_loadtest_without_the_extra_says_how_to_install_it() -> None:
    # sys.modules[name] = None: the module counts as not installed.
    result = run_python(
        """
        import sys
        sys.modules["pesq"] = None
        sys.modules["rich"] = None
        from signaling.cli import main
        sys.exit(main(["loadtest", "--calls", "1"]))
        """
    )
    assert result.returncode == 2
    assert "pip install 'anruf[loadtest]'" in result.stderr
    assert "missing: rich, pesq" in result.stderr
