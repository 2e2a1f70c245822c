"""What importing the relay's contract costs: the package and the pool stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_after(statement: str) -> set[str]:
    """Top-level packages in sys.modules after `statement`, in a fresh interpreter."""
    script = f"{statement}\nimport sys\nprint(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_the_contract_and_the_pool_import_no_media_stack() -> None:
    for statement in (
        "from voice.relay import RelayUnavailable",
        "import voice.relay.control",
        "import voice.relay.pool",
    ):
        imported = imported_after(statement)
        assert not imported & {"aiortc", "aioice", "av", "numpy", "pylibsrtp"}, statement
