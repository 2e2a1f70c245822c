"""Overload: a node at max_calls, or whose event loop lags, refuses new calls at once
(failed/overloaded; trunk INVITEs 503 with Retry-After; HTTP 503 while the loop lags)
while the calls already up keep their audio; it takes calls again afterwards. A load
run at more than twice a node's capacity shows the same."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from signaling.keys import TRUNK
from tests.conftest import ALICE, BOB, CAROL, ServerFactory
from tests.integration.sip_trunk_support import SDP, RawPeer
from tests.integration.test_calls import RATE, connect, heard
from tests.integration.test_limits import metric, metrics
from tests.integration.test_loadtest import LOAD_PREFIX
from tests.integration.test_sip_trunk_bad_input import request, statuses
from voice.audio.analysis import tone_fraction
from voice.loadtest.report import build_report
from voice.loadtest.runner import LoadOptions, run
from voice.loadtest.slo import parse_slos

DAVE = "+4917700000004"
#: Blocks the event loop (the point of the test).
stall = time.sleep


async def test_at_max_calls_a_new_call_is_refused_and_the_call_up_keeps_its_audio(
    make_server: ServerFactory,
) -> None:
    server = await make_server(
        max_calls=1,
        sip_listen="127.0.0.1:0",
        sip_accepted_sources=("127.0.0.1",),
        sip_options_interval=0.0,
    )
    alice, bob = await server.phone(ALICE), await server.phone(BOB)
    carol, dave = await server.phone(CAROL), await server.phone(DAVE)
    outgoing, incoming = await connect(alice, bob)
    await asyncio.sleep(1.0)

    started = time.monotonic()
    refused = await carol.call(DAVE, source="tone:660")
    assert await refused.ended(timeout=5) == "failed"
    latency = time.monotonic() - started
    assert refused.end_detail == "overloaded"
    assert latency < 0.5, latency
    assert dave.calls == {}  # never rang

    # The operator's network is refused too: 503 with Retry-After, before any work.
    peer = await RawPeer.open()
    try:
        port = next(p for t, _h, p in server.app[TRUNK].addresses if t == "udp")
        invite = request(
            peer,
            "INVITE",
            n=1,
            extra="Contact: <sip:x@127.0.0.1>\r\nContent-Type: application/sdp\r\n",
            body=SDP.encode(),
        )
        responses = await peer.exchange(invite, port, wait=0.5)
        assert statuses(responses)[-1] == 503, statuses(responses)
        assert responses[-1].headers.get("Retry-After") == "2"
    finally:
        peer.close()

    await asyncio.sleep(2.0)
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    assert await incoming.ended(timeout=5) == "completed"
    assert tone_fraction(heard(outgoing), RATE, 880) >= 0.9, "alice stopped hearing bob"
    assert tone_fraction(heard(incoming), RATE, 440) >= 0.9, "bob stopped hearing alice"

    # Below max_calls again: calls are taken.
    outgoing, incoming = await connect(alice, bob)
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    text = await metrics(server)
    assert metric(text, "anruf_calls_refused_total", cause="max_calls", direction="app") == 1
    assert metric(text, "anruf_calls_refused_total", cause="max_calls", direction="trunk") == 1


async def test_a_lagging_event_loop_refuses_calls_and_http_but_not_health(
    make_server: ServerFactory,
) -> None:
    server = await make_server(overload_loop_lag=0.2)
    alice = await server.phone(ALICE)
    await server.phone(BOB)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/v1/devices") as response:
            assert response.status == 401  # not overloaded: the usual answer
        # The server's loop (this process's) is kept busy: 0.3 s stalls, one after the
        # other, with only the monitor's samples in between (a saturated loop).
        for _ in range(5):
            stall(0.3)
            await asyncio.sleep(0.01)
        async with session.get(server.url + "/v1/devices") as response:
            assert response.status == 503
            body = await response.json(content_type=None)
            assert body["code"] == "overloaded" and body["retry_after"] == 2
            assert response.headers["Retry-After"] == "2"
            assert response.headers["Content-Type"].startswith("application/problem+json")
        for path in ("/healthz", "/readyz", "/metrics"):
            async with session.get(server.url + path) as response:
                assert response.status == 200, path
        text = await metrics(server)
        assert metric(text, "anruf_overloaded") == 1
        assert metric(text, "anruf_event_loop_lag_seconds") >= 0.2
        refused = await alice.call(BOB)
        assert await refused.ended(timeout=5) == "failed"
        assert refused.end_detail == "overloaded"

        await asyncio.sleep(1.2)  # a second of good samples: the node recovers
        async with session.get(server.url + "/v1/devices") as response:
            assert response.status == 401
        text = await metrics(server)
        assert metric(text, "anruf_overloaded") == 0
        assert metric(text, "anruf_http_overload_refusals_total") == 1
        assert metric(text, "anruf_calls_refused_total", cause="loop_lag", direction="app") == 1


async def test_a_load_run_beyond_capacity_is_refused_and_the_calls_up_sound_clean(
    make_server: ServerFactory,
) -> None:
    server = await make_server(test_number_prefix=LOAD_PREFIX, max_calls=3)
    options = LoadOptions(
        server=server.url, calls=8, concurrency=8, rate=20, hold=4, number_prefix=LOAD_PREFIX
    )
    outcome = await run(options)
    taken = [r for r in outcome.results if r["ok"]]
    refused = [r for r in outcome.results if not r["ok"]]
    assert len(taken) == 3, [r["error"] for r in refused]
    assert {r["end_reason"] for r in refused} == {"failed/overloaded"}, refused
    for call in taken:  # twice capacity and more offered: no harm to the calls up
        assert call["end_reason"] == "completed"
        assert call["mos"] >= 4.0
        for direction in call["directions"].values():
            assert direction["integrity"] == "ok" and direction["lost"] == 0
    report = build_report(outcome, parse_slos("failed=0%"))
    assert report["calls"]["end_reasons"] == {"completed": 3, "failed/overloaded": 5}
    assert report["slo_met"] is False
