"""Rate limits against a real server: per source on code requests and code attempts
(also behind a trusted proxy), per number, call attempts per device; each gives its
clear error, recovers after its window and is counted in /metrics."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiohttp
import pytest

from signaling.api.limits import LIMITS
from tests.conftest import ALICE, CAROL, Server, ServerFactory
from voice.client.signaling import SignalingClient

#: Only this number is a test number here: the others are limited like real ones.
TEST_ONLY = "+4917700000099"
#: One request every 2 s, bursts of 3.
FAST_WINDOW = {"source_code_sends_per_hour": 1800.0, "source_code_send_burst": 3}


def number(n: int) -> str:
    return f"+49177000000{n:02d}"


async def post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None), dict(response.headers)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when it is not there yet)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def metrics(server: Server) -> str:
    async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as got:
        return await got.text()


def assert_too_many(status: int, body: dict[str, Any], headers: dict[str, str]) -> int:
    assert status == 429, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["code"] == "too_many_requests"
    assert body["type"] == "urn:anruf:problem:too_many_requests"
    assert body["status"] == 429 and "try again in" in body["detail"]
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 3 and body["retry_after"] == retry_after
    return retry_after


async def test_code_requests_per_source_are_limited_and_recover(
    make_server: ServerFactory,
) -> None:
    server = await make_server(test_number_prefix=TEST_ONLY, **FAST_WINDOW)
    url = server.url + "/v1/verification"
    async with aiohttp.ClientSession() as session:
        # Three codes to three numbers (under each number's own limit), then refused.
        for n in (11, 12, 13):
            status, body, _ = await post(session, url, {"number": number(n)})
            assert status == 202, body
        status, body, headers = await post(session, url, {"number": number(14)})
        retry_after = assert_too_many(status, body, headers)
        # The per-source refusal costs nothing and sends nothing: still refused.
        assert (await post(session, url, {"number": number(15)}))[0] == 429
        # Test numbers are exempt (load tests register them again and again).
        for _ in range(5):
            assert (await post(session, url, {"number": TEST_ONLY}))[0] == 202
        await asyncio.sleep(retry_after + 0.1)
        status, body, _ = await post(session, url, {"number": number(14)})
        assert status == 202, body
    text = await metrics(server)
    assert metric(text, "anruf_rate_limited_total", limit="verification_source") == 2


async def test_code_requests_per_number_are_limited(make_server: ServerFactory) -> None:
    server = await make_server(test_number_prefix=TEST_ONLY, code_sends_per_hour=2)
    url = server.url + "/v1/verification"
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            assert (await post(session, url, {"number": number(21)}))[0] == 202
        status, body, headers = await post(session, url, {"number": number(21)})
        assert status == 429 and body["code"] == "too_many_sends", body
        assert int(headers["Retry-After"]) > 3000  # the hour's oldest send must age out
        assert (await post(session, url, {"number": number(22)}))[0] == 202
    text = await metrics(server)
    assert metric(text, "anruf_rate_limited_total", limit="verification_number") == 1


async def test_sources_behind_a_trusted_proxy_are_told_apart(
    make_server: ServerFactory,
) -> None:
    server = await make_server(
        test_number_prefix=TEST_ONLY, trusted_proxies=("127.0.0.0/8",), **FAST_WINDOW
    )
    url = server.url + "/v1/verification"
    async with aiohttp.ClientSession() as session:
        for n in (31, 32, 33):
            status, _, _ = await post(session, url, {"number": number(n)}, **_via("203.0.113.5"))
            assert status == 202
        status, body, headers = await post(
            session, url, {"number": number(34)}, **_via("203.0.113.5")
        )
        assert_too_many(status, body, headers)
        # Another client behind the same proxy is not affected ...
        status, _, _ = await post(session, url, {"number": number(34)}, **_via("203.0.113.6"))
        assert status == 202
        # ... and a client cannot pose as another by writing its own header entry.
        forged = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}
        assert (await post(session, url, {"number": number(35)}, **forged))[0] == 429


async def test_a_forwarded_for_header_from_an_untrusted_peer_is_ignored(
    make_server: ServerFactory,
) -> None:
    server = await make_server(test_number_prefix=TEST_ONLY, **FAST_WINDOW)
    url = server.url + "/v1/verification"
    async with aiohttp.ClientSession() as session:
        statuses = [
            (await post(session, url, {"number": number(40 + n)}, **_via(f"203.0.113.{n}")))[0]
            for n in range(5)
        ]
    assert statuses == [202, 202, 202, 429, 429]


def _via(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def test_code_attempts_per_source_across_numbers(make_server: ServerFactory) -> None:
    server = await make_server(
        test_number_prefix=TEST_ONLY,
        source_code_attempts_per_hour=1800.0,
        source_code_attempt_burst=3,
    )
    url = server.url + "/v1/devices"
    async with aiohttp.ClientSession() as session:
        for n in (51, 52, 53):  # a guess for each of three numbers
            status, body, _ = await post(session, url, {"number": number(n), "code": "000000"})
            assert status == 400, body
        status, body, headers = await post(session, url, {"number": number(54), "code": "000000"})
        retry_after = assert_too_many(status, body, headers)
        await asyncio.sleep(retry_after + 0.1)
        status, body, _ = await post(session, url, {"number": number(54), "code": "000000"})
        assert status == 400, body
        # A test number still registers.
        status, body, _ = await post(session, url, {"number": TEST_ONLY, "code": "246810"})
        assert status == 201, body
    text = await metrics(server)
    assert metric(text, "anruf_rate_limited_total", limit="registration_source") == 1


async def register_with_sent_code(
    server: Server, caplog: pytest.LogCaptureFixture, raw_number: str
) -> str:
    """A device for a number that is not a test number: the code from the SMS log."""
    caplog.set_level(logging.INFO, logger="anruf.sms")
    async with aiohttp.ClientSession() as session:
        body = {"number": raw_number}
        assert (await post(session, server.url + "/v1/verification", body))[0] == 202
        found = [
            r.getMessage().rsplit(": ", 1)[1]
            for r in caplog.records
            if r.name == "anruf.sms" and raw_number in r.getMessage()
        ]
        body = {"number": raw_number, "code": found[-1]}
        status, device, _ = await post(session, server.url + "/v1/devices", body)
        assert status == 201, device
        return str(device["token"])


async def invite(client: SignalingClient, to: str) -> dict[str, Any]:
    """call.invite; the reply to it (call.ended, call.progress or error)."""
    ref = await client.send("call.invite", to=to, sdp="v=0")
    while True:
        message = await client.receive(timeout=5)
        if message.get("ref") == ref:
            return message


async def test_call_attempts_per_device_are_limited_and_recover(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # One call every 2 s, bursts of 2.
    server = await make_server(
        test_number_prefix=TEST_ONLY, call_attempts_per_minute=30.0, call_attempt_burst=2
    )
    client = SignalingClient(server.url, await register_with_sent_code(server, caplog, ALICE))
    try:
        await client.connect()

        # Carol has no device: the first two are settled as unavailable.
        for _ in range(2):
            reply = await invite(client, CAROL)
            assert reply["type"] == "call.ended" and reply["reason"] == "unavailable", reply
        refused = await invite(client, CAROL)
        assert refused["type"] == "error" and refused["code"] == "rate_limited", refused
        assert "try again in" in refused["message"]
        # The connection stays up and other messages are served.
        pong_ref = await client.send("ping")
        assert (await client.receive(timeout=5)) == {"type": "pong", "ref": pong_ref}
        await asyncio.sleep(2.1)
        reply = await invite(client, CAROL)
        assert reply["type"] == "call.ended", reply
    finally:
        await client.close()
    # A test number's device is exempt (load tests place calls back to back).
    tester = SignalingClient(server.url, await server.register(TEST_ONLY))
    try:
        await tester.connect()
        for _ in range(4):
            reply = await invite(tester, CAROL)
            assert reply["type"] == "call.ended", reply
    finally:
        await tester.close()
    text = await metrics(server)
    assert metric(text, "anruf_rate_limited_total", limit="call_attempts") == 1
    assert metric(text, "anruf_ws_errors_total", code="rate_limited") == 1
    assert len(server.app[LIMITS].call_attempts) == 1


async def test_limits_are_configurable_and_off_for_other_endpoints(server: Server) -> None:
    # The defaults: a burst of 10 code requests per source, nothing on discovery.
    limits = server.app[LIMITS]
    assert limits.code_sends.burst == 10 and limits.code_attempts.burst == 20
    async with aiohttp.ClientSession() as session:
        for _ in range(30):
            async with session.get(server.url + "/healthz") as response:
                assert response.status == 200
