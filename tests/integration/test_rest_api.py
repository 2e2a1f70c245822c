"""The REST API over real HTTP on 127.0.0.1: registration, devices, discovery,
call history, and problem documents for every kind of bad request."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from signaling.api.problems import problem_middleware
from signaling.app import create_app
from signaling.calls.records import CallRecord
from signaling.config import Config
from signaling.keys import CDRS, DATABASE

ALICE = "+4917700000001"
BOB = "+4917700000002"
LOAD_TEST_NUMBER = "+4917799999901"
PROBLEM = "application/problem+json"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    config = Config(
        data_dir=tmp_path / "data",
        default_region="DE",
        code_sends_per_hour=2,
        code_attempts=3,
        test_number_prefix="+49177999999",
        test_code="123456",
        sms_sender="console",
    )
    app = create_app(config)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def _capture_sms(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anruf.sms")


def sent_code(caplog: pytest.LogCaptureFixture, number: str) -> str:
    """The last code the console sender logged for ``number``."""
    for record in reversed(caplog.records):
        if record.name == "anruf.sms" and number in record.getMessage():
            match = re.search(r"(\d{6})\s*$", record.getMessage())
            assert match
            return match.group(1)
    raise AssertionError(f"no code was sent to {number}")


def app_of(client: TestClient[web.Request, web.Application]) -> web.Application:
    assert client.app is not None
    return client.app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert body["status"] == status
    assert isinstance(body["type"], str) and isinstance(body["title"], str)
    if code is not None:
        assert body["code"] == code
        assert body["type"] == f"urn:anruf:problem:{code}"
        assert body["detail"]
    return body


async def register(
    client: TestClient[web.Request, web.Application],
    caplog: pytest.LogCaptureFixture,
    number: str,
    name: str = "",
) -> dict[str, Any]:
    response = await client.post("/v1/verification", json={"number": number})
    assert response.status == 202
    e164 = (await response.json())["number"]
    response = await client.post(
        "/v1/devices", json={"number": number, "code": sent_code(caplog, e164), "name": name}
    )
    assert response.status == 201
    body: dict[str, Any] = await response.json()
    return body


async def test_registration_flow(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.post("/v1/verification", json={"number": "0177 0000 0001"})
    assert response.status == 202
    assert await response.json() == {"number": ALICE, "expires_in": 300.0}

    response = await client.post(
        "/v1/devices",
        json={"number": "0177 0000 0001", "code": sent_code(caplog, ALICE), "name": "Phone"},
    )
    assert response.status == 201
    assert response.headers["Cache-Control"] == "no-store"
    phone = await response.json()
    assert phone["number"] == ALICE and phone["device_id"] and len(phone["token"]) >= 43

    laptop = await register(client, caplog, "+49 177 0000 0001", "Laptop")

    response = await client.get("/v1/devices", headers=bearer(phone["token"]))
    assert response.status == 200
    devices = (await response.json())["devices"]
    assert [(d["device_id"], d["name"], d["current"]) for d in devices] == [
        (phone["device_id"], "Phone", True),
        (laptop["device_id"], "Laptop", False),
    ]
    assert devices[0]["last_seen_at"] is not None

    # The laptop signs the phone out; the phone's token stops working at once.
    response = await client.delete(
        f"/v1/devices/{phone['device_id']}", headers=bearer(laptop["token"])
    )
    assert response.status == 204
    response = await client.get("/v1/devices", headers=bearer(phone["token"]))
    await assert_problem(response, 401)
    response = await client.get("/v1/devices", headers=bearer(laptop["token"]))
    assert [d["device_id"] for d in (await response.json())["devices"]] == [laptop["device_id"]]


async def test_contact_discovery(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    alice = await register(client, caplog, ALICE)
    await register(client, caplog, BOB)
    response = await client.post(
        "/v1/contacts/discover",
        json={"numbers": ["0177 0000 0002", "+4917700000009", "garbage", ALICE]},
        headers=bearer(alice["token"]),
    )
    assert response.status == 200
    assert await response.json() == {"registered": [BOB, ALICE]}

    response = await client.post(
        "/v1/contacts/discover",
        json={"numbers": [f"+49177000{i:05d}" for i in range(1001)]},
        headers=bearer(alice["token"]),
    )
    await assert_problem(response, 400, "too_many_numbers")


async def test_call_history(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    alice = await register(client, caplog, ALICE)
    cdrs = app_of(client)[CDRS]
    await cdrs.save(
        CallRecord("c1", ALICE, BOB, "d1", "d2", 1000.0, 1000.5, 1003.0, 1063.0, "hangup")
    )
    await cdrs.save(
        CallRecord("c2", BOB, ALICE, "d2", None, 2000.0, 2000.5, None, 2045.0, "no_answer")
    )
    response = await client.get("/v1/calls", headers=bearer(alice["token"]))
    assert response.status == 200
    calls = (await response.json())["calls"]
    assert [(c["call_id"], c["direction"], c["peer"], c["missed"]) for c in calls] == [
        ("c2", "incoming", BOB, True),
        ("c1", "outgoing", BOB, False),
    ]
    assert calls[1]["duration"] == 60.0

    response = await client.get(
        "/v1/calls", params={"limit": "1", "before": "2000"}, headers=bearer(alice["token"])
    )
    assert [c["call_id"] for c in (await response.json())["calls"]] == ["c1"]
    for params in ({"limit": "0"}, {"limit": "abc"}, {"limit": "1.5"}, {"before": "nan"}):
        response = await client.get("/v1/calls", params=params, headers=bearer(alice["token"]))
        await assert_problem(response, 400, "invalid_query")
    await assert_problem(await client.get("/v1/calls"), 401)


async def test_wrong_code(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    await client.post("/v1/verification", json={"number": ALICE})
    right = sent_code(caplog, ALICE)
    wrong = "000000" if right != "000000" else "111111"
    response = await client.post("/v1/devices", json={"number": ALICE, "code": wrong})
    body = await assert_problem(response, 400, "wrong_code")
    assert body["attempts_left"] == 2
    await client.post("/v1/devices", json={"number": ALICE, "code": wrong})
    response = await client.post("/v1/devices", json={"number": ALICE, "code": wrong})
    await assert_problem(response, 429, "too_many_attempts")

    response = await client.post("/v1/devices", json={"number": BOB, "code": "123456"})
    await assert_problem(response, 400, "code_expired")


async def test_send_limit_gives_429_with_retry_after(
    client: TestClient[web.Request, web.Application],
) -> None:
    for _ in range(2):
        response = await client.post("/v1/verification", json={"number": ALICE})
        assert response.status == 202
    response = await client.post("/v1/verification", json={"number": ALICE})
    body = await assert_problem(response, 429, "too_many_sends")
    retry_after = int(response.headers["Retry-After"])
    assert 3500 <= retry_after <= 3600
    assert body["retry_after"] == retry_after


async def test_test_numbers_register_repeatedly(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(4):  # beyond the hourly send limit
        response = await client.post("/v1/verification", json={"number": LOAD_TEST_NUMBER})
        assert response.status == 202
        response = await client.post(
            "/v1/devices", json={"number": LOAD_TEST_NUMBER, "code": "123456"}
        )
        assert response.status == 201
    assert not [r for r in caplog.records if r.name == "anruf.sms"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1, 2]", "invalid_body"),
        (b'{"number": "+4917700000001", "admin": true}', "invalid_body"),
        (b'{"number": 4917700000001}', "invalid_body"),
        (b'{"region": "DE"}', "invalid_body"),
        (b'{"number": "+4917700000001", "region": "Germany"}', "invalid_body"),
        (b'{"number": "' + b"1" * 65 + b'"}', "invalid_body"),
        (b'{"number": "0900 1234567"}', "invalid_number"),
        (b'{"number": "hello"}', "invalid_number"),
    ],
)
async def test_bad_bodies_are_problems(
    client: TestClient[web.Request, web.Application], body: bytes, code: str
) -> None:
    response = await client.post(
        "/v1/verification", data=body, headers={"Content-Type": "application/json"}
    )
    problem = await assert_problem(response, 400, code)
    if code == "invalid_number":
        assert problem["reason"] in {"not_callable", "not_a_number"}
    if code == "invalid_body" and body.startswith(b"{"):
        assert problem["errors"] and "input" not in problem["errors"][0]


async def test_oversized_body(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.post(
        "/v1/verification",
        data=b"{" + b" " * 2_000_000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    await assert_problem(response, 413)


async def test_authentication_required(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/v1/devices")
    await assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await client.get("/v1/devices", headers=bearer("made-up-token"))
    await assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    response = await client.get("/v1/devices", headers={"Authorization": "Basic dTpw"})
    await assert_problem(response, 401)

    alice = await register(client, caplog, ALICE)
    # Tokens are never read from the URL.
    response = await client.get("/v1/devices", params={"token": alice["token"]})
    await assert_problem(response, 401)
    response = await client.post(
        "/v1/contacts/discover", json={"numbers": []}, headers=bearer(alice["token"])
    )
    assert response.status == 200

    # Revoking one's own device signs it out.
    response = await client.delete(
        f"/v1/devices/{alice['device_id']}", headers=bearer(alice["token"])
    )
    assert response.status == 204
    for method, path in (
        ("GET", "/v1/devices"),
        ("GET", "/v1/calls"),
        ("POST", "/v1/contacts/discover"),
        ("DELETE", f"/v1/devices/{alice['device_id']}"),
    ):
        response = await client.request(method, path, headers=bearer(alice["token"]), json={})
        await assert_problem(response, 401)


async def test_revoking_unknown_or_foreign_device(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    alice = await register(client, caplog, ALICE)
    bob = await register(client, caplog, BOB)
    for device_id in ("dev_nope", bob["device_id"]):
        response = await client.delete(f"/v1/devices/{device_id}", headers=bearer(alice["token"]))
        await assert_problem(response, 404, "device_not_found")
    response = await client.get("/v1/devices", headers=bearer(bob["token"]))
    assert response.status == 200


async def test_http_errors_are_problems(client: TestClient[web.Request, web.Application]) -> None:
    await assert_problem(await client.get("/v1/nowhere"), 404)
    response = await client.put("/v1/devices")
    await assert_problem(response, 405)
    assert "GET" in response.headers["Allow"]


async def test_healthz(
    client: TestClient[web.Request, web.Application], monkeypatch: pytest.MonkeyPatch
) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}

    async def unreachable() -> None:
        raise ConnectionError("database down")

    monkeypatch.setattr(app_of(client)[DATABASE], "ping", unreachable)
    response = await client.get("/healthz")
    await assert_problem(response, 503)
    assert "database down" not in await response.text()


async def test_unexpected_errors_leak_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal state")

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get("/broken")
        body = await assert_problem(response, 500)
        assert "secret" not in await response.text()
        assert body["title"] == "Internal Server Error"
    assert any("secret internal state" in (r.exc_text or "") for r in caplog.records)
