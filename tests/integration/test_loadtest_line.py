"""Load-test lines through the real server and relay on loopback: calls carry their own
signatures, are measured, and faults (silence, crossed audio) are caught."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.conftest import TEST_PREFIX, Server, ServerFactory
from voice.loadtest.line import CallPlan, CallResult, Line, Ticker

HOLD = 3.0

LineFactory = Callable[[Server, int], Awaitable[Line]]


@pytest.fixture
async def make_line() -> AsyncIterator[LineFactory]:
    lines: list[Line] = []

    async def make(server: Server, number: int) -> Line:
        caller, callee = f"{TEST_PREFIX}{number:02d}", f"{TEST_PREFIX}{number + 1:02d}"
        line = Line(
            server.url, await server.register(caller), await server.register(callee), callee
        )
        await line.open()
        lines.append(line)
        return line

    yield make
    await asyncio.gather(*(line.close() for line in lines))


async def carry(line: Line, plans: list[CallPlan]) -> list[CallResult]:
    return [await line.run_call(plan) for plan in plans]


async def test_three_lines_carry_measured_calls_concurrently(
    make_server: ServerFactory, make_line: LineFactory
) -> None:
    server = await make_server()
    lines = [await make_line(server, 10 + 2 * n) for n in range(3)]
    plans = [[CallPlan(index=2 * n + k, hold=HOLD) for k in range(2)] for n in range(3)]
    results = [r for rs in await asyncio.gather(*map(carry, lines, plans)) for r in rs]

    assert sorted(r.index for r in results) == list(range(6))
    for result in results:
        summary = result.to_dict()
        assert result.ok, summary
        assert result.error is None and result.end_reason == "completed", summary
        assert result.pdd_ms is not None and 0 < result.pdd_ms < 1000, summary
        assert result.setup_ms is not None and result.pdd_ms < result.setup_ms < 1000, summary
        assert result.talk_s is not None and HOLD <= result.talk_s < HOLD + 1, summary
        assert result.mos is not None and result.mos >= 4.0, summary
        for direction in ("a", "b"):
            measured = result.directions[direction]
            assert measured.integrity == "ok", summary
            assert measured.signature_heard == measured.signature_expected, summary
            assert measured.lost == 0 and measured.loss_pct == 0.0, summary
            assert measured.received >= 0.9 * HOLD * 50, summary
            assert measured.delay_ms_p50 is not None and 0 < measured.delay_ms_p50 < 50, summary
            assert measured.jitter_ms < 20, summary
    # One ticker paced every stream, and stopped with the last call.
    ticker = Ticker.for_running_loop()
    assert ticker.active == 0


async def test_faults_are_caught_and_speech_is_scored(
    make_server: ServerFactory, make_line: LineFactory
) -> None:
    server = await make_server()
    silent_line, crossed_line, speech_line = [await make_line(server, 30 + 2 * n) for n in range(3)]
    silent, crossed, speech = await asyncio.gather(
        silent_line.run_call(CallPlan(index=40, hold=HOLD, fault="silent")),
        crossed_line.run_call(CallPlan(index=41, hold=HOLD, fault="crossed")),
        speech_line.run_call(CallPlan(index=42, hold=HOLD, audio="speech", pesq=True)),
    )

    assert silent.end_reason == "completed" and not silent.ok
    assert silent.directions["a"].integrity == "silent", silent.to_dict()
    assert silent.directions["a"].received == 0
    assert silent.directions["b"].integrity == "ok", silent.to_dict()

    assert crossed.end_reason == "completed" and not crossed.ok
    assert crossed.directions["a"].integrity == "crossed", crossed.to_dict()
    # What the callee heard is call 42's caller signature, not its own caller's.
    assert crossed.directions["a"].signature_heard != crossed.directions["a"].signature_expected
    assert crossed.directions["b"].integrity == "ok"

    assert speech.ok, speech.to_dict()
    assert speech.directions["a"].signature_heard == "speech"
    assert speech.pesq is not None and speech.pesq > 3.5, speech.to_dict()
    print(f"wideband PESQ of the speech call: {speech.pesq}")


async def test_a_call_to_an_offline_number_fails_fast_with_the_reason(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    caller = await server.register(f"{TEST_PREFIX}50")
    callee = await server.register(f"{TEST_PREFIX}51")
    line = Line(server.url, caller, callee, f"{TEST_PREFIX}52")  # nobody answers that number
    await line.open()
    try:
        result = await asyncio.wait_for(line.run_call(CallPlan(index=0, hold=HOLD)), 15)
    finally:
        await line.close()
    assert not result.ok and result.end_reason == "unavailable/not_an_app_user"
    assert result.error is not None and "unavailable" in result.error, result.to_dict()


async def test_calls_are_measured_through_a_transcoding_relay(
    make_server: ServerFactory, make_line: LineFactory
) -> None:
    # The relay re-encodes: packets are not the sender's, so the peer's audio
    # is recognised by ear (setup time, integrity, PESQ); delay is not measured.
    server = await make_server(relay_mode="transcode")
    tone_line, speech_line = [await make_line(server, 60 + 2 * n) for n in range(2)]
    tone, speech = await asyncio.gather(
        tone_line.run_call(CallPlan(index=60, hold=HOLD)),
        speech_line.run_call(CallPlan(index=61, hold=HOLD, audio="speech", pesq=True)),
    )
    for result in (tone, speech):
        assert result.ok, result.to_dict()
        assert result.setup_ms is not None and result.setup_ms < 1000
        assert result.directions["a"].delay_ms_mean is None
    assert speech.pesq is not None and speech.pesq > 3.5, speech.to_dict()
    print(f"wideband PESQ through the transcoding relay: {speech.pesq}")
