"""SIGKILL and restart under load: every call in progress ends on record and nothing
accepted before a crash is lost (registrations, call records, operator events)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.crash_audit import run_audit

pytestmark = pytest.mark.timeout(240)


async def test_nothing_accepted_is_lost_across_sigkill_and_restart(tmp_path: Path) -> None:
    audit = await run_audit(tmp_path, cycles=2, load_seconds=4.0, pairs=2)
    assert audit.registrations_acknowledged > 20 and audit.calls_placed > 4, audit
    assert audit.calls_in_progress_at_kill >= 1, audit  # the kills did hit live calls
    assert audit.registrations_lost == 0, audit
    assert audit.calls_without_record == 0, audit
    assert audit.killed_calls_misrecorded == 0, audit
    assert audit.killed_calls_untold == 0, audit  # told failed/node_lost once back
    assert audit.events_expected == audit.calls_placed and audit.events_lost == 0, audit
    assert audit.live_calls_left == 0, audit
