"""The operator API over real HTTP on 127.0.0.1, as an operator uses it:
keys, settings, bundles, subscribers, usage, events, idempotent retries,
problem documents, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from openapi_spec_validator import validate

from signaling.carrier import events
from signaling.carrier.operators import NewOperator
from signaling.keys import DATABASE, OPERATORS, POLICY
from signaling.store.schema import operators
from tests.conftest import ALICE, BOB, Server, ServerFactory, require_postgres
from tests.integration.webhooks import Receiver

PROBLEM = "application/problem+json"
API = "/operator/v1"
CAROL = "+4917700000003"


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


class Operator:
    """An operator's HTTP client with one of its API keys."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self.session = session
        self.url = url
        self.key = key

    async def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.url + API + path, data=data, headers=sent
        ) as response:
            text = await response.text()
            return Answer(
                response.status, json.loads(text) if text else None, dict(response.headers)
            )

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.send("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return await self.send("POST", path, body, **kw)

    async def patch(self, path: str, body: Any, **kw: Any) -> Answer:
        return await self.send("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Answer:
        return await self.send("DELETE", path, **kw)


def assert_problem(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"].startswith(PROBLEM)
    body: dict[str, Any] = answer.body
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"urn:anruf:problem:{code}" and body["title"] and body["detail"]
    return body


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def new_operator(server: Server, name: str = "Netz Eins", **urls: str) -> NewOperator:
    return await server.app[OPERATORS].create_operator(name, **urls)


async def client_of(server: Server, session: aiohttp.ClientSession, **urls: str) -> Operator:
    return Operator(session, server.url, (await new_operator(server, **urls)).api_key)


TALK_100 = {"name": "Talk 100", "app_calls_included": True, "phone_minutes": 100}


async def add_event(server: Server, operator_id: str, number: str, percent: int = 80) -> str:
    async with server.app[DATABASE].transaction() as conn:
        return await events.append(
            conn,
            operator_id=operator_id,
            type="usage.threshold",
            data={"number": number, "percent": percent},
            ordering_key=number,
            now=time.time(),
        )


async def test_operators_see_only_their_own(server: Server, session: aiohttp.ClientSession) -> None:
    one = await new_operator(server)
    a = Operator(session, server.url, one.api_key)
    b = await client_of(server, session)
    bundle = (await a.post("/bundles", TALK_100)).body
    assert (
        await a.post("/subscribers", {"number": ALICE, "bundle_id": bundle["bundle_id"]})
    ).status == 201
    event_id = await add_event(server, one.operator.operator_id, ALICE)
    b_bundle = (await b.post("/bundles", TALK_100)).body

    bundle_path = f"/bundles/{bundle['bundle_id']}"
    for answer in (
        await b.get(bundle_path),
        await b.patch(bundle_path, {"phone_minutes": 1}),
        await b.post(bundle_path + "/retire"),
    ):
        assert_problem(answer, 404, "bundle_not_found")
    unknown = assert_problem(await b.get("/bundles/bun_unknown"), 404, "bundle_not_found")
    foreign = assert_problem(await b.get(bundle_path), 404, "bundle_not_found")
    assert foreign.keys() == unknown.keys()

    for answer in (
        await b.get(f"/subscribers/{ALICE}"),
        await b.get(f"/subscribers/{ALICE}/usage"),
        await b.patch(f"/subscribers/{ALICE}", {"bundle_id": b_bundle["bundle_id"]}),
        await b.post(f"/subscribers/{ALICE}/suspend"),
        await b.post(f"/subscribers/{ALICE}/resume"),
        await b.delete(f"/subscribers/{ALICE}"),
    ):
        assert_problem(answer, 404, "subscriber_not_found")
    assert (await b.get("/subscribers")).body["subscribers"] == []
    # B cannot put a number on A's bundle, nor take A's number (and learns not whose it is).
    on_foreign = await b.post("/subscribers", {"number": BOB, "bundle_id": bundle["bundle_id"]})
    assert_problem(on_foreign, 404, "bundle_not_found")
    taken = await b.post("/subscribers", {"number": ALICE, "bundle_id": b_bundle["bundle_id"]})
    detail = json.dumps(assert_problem(taken, 409, "number_unavailable"))
    assert one.operator.operator_id not in detail and "Netz" not in detail

    assert_problem(await b.get(f"/events/{event_id}"), 404, "event_not_found")
    assert_problem(await b.post(f"/events/{event_id}/redeliver"), 404, "event_not_found")
    assert (await b.get("/events")).body["events"] == []

    # A still has everything, unchanged.
    assert (await a.get(bundle_path)).body == bundle
    assert (await a.get(f"/subscribers/{ALICE}")).body["status"] == "active"
    assert [e["id"] for e in (await a.get("/events")).body["events"]] == [event_id]


async def test_key_rotation(server: Server, session: aiohttp.ClientSession) -> None:
    first = await client_of(server, session)
    created = await first.post("/keys")
    assert created.status == 201 and created.headers["Cache-Control"] == "no-store"
    second_key = created.body["api_key"]
    assert second_key.startswith("ak_") and second_key != first.key
    second = Operator(session, server.url, second_key)
    # Both keys work; they belong to the same operator.
    assert (await first.get("/operator")).body == (await second.get("/operator")).body

    listed = (await second.get("/keys")).body["keys"]
    assert [k["current"] for k in listed] == [False, True]
    assert listed[1]["key_id"] == created.body["key_id"]
    assert all(set(k) == {"key_id", "created_at", "current"} for k in listed)
    assert_problem(await first.post("/keys"), 409, "key_limit_reached")

    # The new key revokes the old one; the old one fails at once.
    first_id = listed[0]["key_id"]
    assert (await second.delete(f"/keys/{first_id}")).status == 204
    refused = assert_problem(await first.get("/operator"), 401, "unauthorized")
    assert refused["detail"]
    answer = await first.get("/operator")
    assert (
        answer.headers["WWW-Authenticate"] == 'Bearer realm="anruf-operator", error="invalid_token"'
    )
    assert_problem(await second.delete(f"/keys/{created.body['key_id']}"), 409, "last_key")
    assert_problem(await second.delete(f"/keys/{first_id}"), 404, "key_not_found")

    # No key at all, or a device's token, is not an operator.
    async with session.get(server.url + API + "/operator") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="anruf-operator"'
    device_token = await server.register(ALICE)
    assert_problem(await second.get("/operator", key=device_token), 401, "unauthorized")


async def test_idempotent_provisioning(server: Server, session: aiohttp.ClientSession) -> None:
    op = await client_of(server, session)
    once = {"Idempotency-Key": "bundle-talk-100"}
    first = await op.post("/bundles", TALK_100, headers=once)
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    retry = await op.post("/bundles", TALK_100, headers=once)
    assert (retry.status, retry.body) == (201, first.body)
    assert retry.headers["Idempotent-Replayed"] == "true"
    # The same object written differently is the same request.
    same = json.dumps(dict(reversed(TALK_100.items())), indent=2).encode()
    assert (await op.post("/bundles", raw=same, headers=once)).body == first.body
    assert len((await op.get("/bundles")).body["bundles"]) == 1

    reused = await op.post("/bundles", {**TALK_100, "phone_minutes": 200}, headers=once)
    assert_problem(reused, 422, "idempotency_key_reused")
    assert_problem(await op.post("/keys", headers=once), 422, "idempotency_key_reused")
    other = await op.post("/bundles", TALK_100, headers={"Idempotency-Key": "bundle-2"})
    assert other.status == 201 and other.body["bundle_id"] != first.body["bundle_id"]
    assert len((await op.get("/bundles")).body["bundles"]) == 2

    bundle_id = first.body["bundle_id"]
    order = {"number": "0177 00000001", "bundle_id": bundle_id}
    added = await op.post("/subscribers", order, headers={"Idempotency-Key": "order-1"})
    again = await op.post("/subscribers", order, headers={"Idempotency-Key": "order-1"})
    assert added.status == again.status == 201 and added.body == again.body
    assert again.headers["Idempotent-Replayed"] == "true"
    # Without the key, the retry is a second order of a number already held.
    assert_problem(await op.post("/subscribers", order), 409, "subscriber_exists")

    # Keys are the operator's own: another operator's same key is another request.
    b = await client_of(server, session, name="Netz Zwei")
    assert (await b.post("/bundles", TALK_100, headers=once)).status == 201

    # A new API key is never stored in clear: its replay has the id but not the secret.
    made = await op.post("/keys", headers={"Idempotency-Key": "key-1"})
    replay = await op.post("/keys", headers={"Idempotency-Key": "key-1"})
    assert made.body["api_key"].startswith("ak_")
    assert replay.body == {**made.body, "api_key": None}
    assert len((await op.get("/keys")).body["keys"]) == 2

    failed = await op.post("/subscribers", {"number": BOB, "bundle_id": "bun_x"},
                           headers={"Idempotency-Key": "order-2"})  # fmt: skip
    assert_problem(failed, 404, "bundle_not_found")
    fixed = await op.post("/subscribers", {"number": BOB, "bundle_id": "bun_x"},
                          headers={"Idempotency-Key": "order-2"})  # fmt: skip
    assert "Idempotent-Replayed" not in fixed.headers  # failures are not stored
    too_long = await op.post("/bundles", TALK_100, headers={"Idempotency-Key": "k" * 256})
    assert_problem(too_long, 400, "invalid_idempotency_key")


async def test_bundle_lifecycle(server: Server, session: aiohttp.ClientSession) -> None:
    op = await client_of(server, session)
    created = await op.post(
        "/bundles",
        {"name": "Phone 30", "app_calls_included": False, "phone_minutes": 30,
         "increment": "60/1", "fair_use_minutes": 600},
    )  # fmt: skip
    assert created.status == 201
    bundle = created.body
    assert bundle["period"] == "monthly" and bundle["status"] == "active"
    assert bundle["increment"] == {"first": 60, "next": 1}
    path = f"/bundles/{bundle['bundle_id']}"
    assert (await op.get(path)).body == bundle

    changed = await op.patch(
        path, {"phone_minutes": 60, "period": 3600, "fair_use_minutes": None,
               "increment": {"first": 30, "next": 30}},
    )  # fmt: skip
    assert changed.status == 200
    assert {k: changed.body[k] for k in ("phone_minutes", "period", "fair_use_minutes")} == {
        "phone_minutes": 60,
        "period": 3600,
        "fair_use_minutes": None,
    }
    assert changed.body["increment"] == {"first": 30, "next": 30}
    assert changed.body["name"] == "Phone 30" and changed.body["updated_at"] >= bundle["updated_at"]

    subscriber = {"number": ALICE, "bundle_id": bundle["bundle_id"]}
    assert (await op.post("/subscribers", subscriber)).status == 201
    retired = await op.post(path + "/retire")
    assert retired.status == 200 and retired.body["status"] == "retired"
    assert retired.body["retired_at"] is not None
    assert_problem(await op.patch(path, {"phone_minutes": 1}), 409, "bundle_retired")
    refused = await op.post("/subscribers", {"number": BOB, "bundle_id": bundle["bundle_id"]})
    assert_problem(refused, 409, "bundle_retired")
    # Its subscriber keeps it.
    assert (await op.get(f"/subscribers/{ALICE}")).body["bundle_id"] == bundle["bundle_id"]
    other = (await op.post("/bundles", TALK_100)).body
    listed = (await op.get("/bundles")).body["bundles"]
    assert [(b["bundle_id"], b["status"]) for b in listed] == [
        (bundle["bundle_id"], "retired"),
        (other["bundle_id"], "active"),
    ]


async def test_bundle_fraud_guards(server: Server, session: aiohttp.ClientSession) -> None:
    op = await client_of(server, session)
    plain = (await op.post("/bundles", TALK_100)).body
    assert plain["allowed_destinations"] == []  # any destination
    assert plain["max_phone_calls_per_hour"] is None  # the deployment's default
    assert plain["max_phone_minutes_per_hour"] is None

    created = await op.post(
        "/bundles",
        {**TALK_100, "allowed_destinations": ["+49", "+43676", "+49"],
         "max_phone_calls_per_hour": 10, "max_phone_minutes_per_hour": 0},
    )  # fmt: skip
    assert created.status == 201, created.body
    bundle = created.body
    assert bundle["allowed_destinations"] == ["+49", "+43676"]  # each once, in order
    assert (bundle["max_phone_calls_per_hour"], bundle["max_phone_minutes_per_hour"]) == (10, 0)
    path = f"/bundles/{bundle['bundle_id']}"
    assert (await op.get(path)).body == bundle

    # Only what a PATCH names changes; null falls back to the deployment's default.
    changed = await op.patch(
        path, {"allowed_destinations": ["+41"], "max_phone_calls_per_hour": None}
    )
    assert changed.status == 200, changed.body
    assert changed.body["allowed_destinations"] == ["+41"]
    assert changed.body["max_phone_calls_per_hour"] is None
    assert changed.body["max_phone_minutes_per_hour"] == 0
    cleared = await op.patch(path, {"allowed_destinations": []})
    assert cleared.body["allowed_destinations"] == [] and cleared.body["phone_minutes"] == 100
    assert (await op.get(path)).body == cleared.body

    # The call policy rates with what the API stored.
    subscriber = {"number": ALICE, "bundle_id": bundle["bundle_id"]}
    assert (await op.post("/subscribers", subscriber)).status == 201
    await op.patch(path, {"allowed_destinations": ["+49"], "max_phone_minutes_per_hour": 45})
    subscription = await server.app[POLICY].subscription(ALICE)
    assert subscription is not None
    assert subscription.bundle.allowed_destinations == ("+49",)
    assert subscription.bundle.max_phone_minutes_per_hour == 45

    for body in (
        {"allowed_destinations": ["49"]},  # no plus
        {"allowed_destinations": ["+049"]},  # no country code starts with 0
        {"allowed_destinations": ["+49 177"]},
        {"allowed_destinations": ["+" + "1" * 16]},  # longer than a number
        {"allowed_destinations": ["+"]},
        {"allowed_destinations": "+49"},  # a list
        {"allowed_destinations": [49]},
        {"allowed_destinations": None},  # [] for any destination
        {"allowed_destinations": [f"+{n}" for n in range(1, 52)]},  # more than 50
        {"max_phone_calls_per_hour": -1},
        {"max_phone_minutes_per_hour": 100_001},
        {"max_phone_calls_per_hour": "10"},
    ):
        for answer in (await op.post("/bundles", {**TALK_100, **body}), await op.patch(path, body)):
            problem = assert_problem(answer, 400, "invalid_body")
            assert problem["errors"] and problem["errors"][0]["field"].startswith(
                next(iter(body))
            ), (body, problem)
    assert (await op.get(path)).body["allowed_destinations"] == ["+49"]  # unchanged


async def test_subscriber_lifecycle(server: Server, session: aiohttp.ClientSession) -> None:
    op = await client_of(server, session)
    talk = (await op.post("/bundles", TALK_100)).body["bundle_id"]
    more = await op.post("/bundles", {**TALK_100, "name": "Talk 500", "phone_minutes": 500})
    added = await op.post("/subscribers", {"number": "0177 00000001", "bundle_id": talk})
    assert added.status == 201
    assert added.body["number"] == ALICE and added.body["status"] == "active"
    for number in (CAROL, BOB):
        await op.post("/subscribers", {"number": number, "bundle_id": talk})

    page = (await op.get("/subscribers?limit=2")).body
    assert [s["number"] for s in page["subscribers"]] == [ALICE, BOB]
    rest = (await op.get(f"/subscribers?limit=2&after={page['next_cursor']}")).body
    assert [s["number"] for s in rest["subscribers"]] == [CAROL]
    assert rest["next_cursor"] is None

    # A URL-encoded "+" is the same number.
    assert (await op.get("/subscribers/%2B4917700000001")).body == added.body
    suspended = await op.post(f"/subscribers/{ALICE}/suspend")
    assert suspended.body["status"] == "suspended"
    assert (await op.get("/subscribers?status=suspended")).body["subscribers"] == [suspended.body]
    resumed = await op.post(f"/subscribers/{ALICE}/resume")
    assert resumed.body["status"] == "active"

    moved = await op.patch(f"/subscribers/{ALICE}", {"bundle_id": more.body["bundle_id"]})
    assert moved.body["bundle_id"] == more.body["bundle_id"]
    assert moved.body["activated_at"] == added.body["activated_at"]

    assert (await op.delete(f"/subscribers/{ALICE}")).status == 204
    assert_problem(await op.get(f"/subscribers/{ALICE}"), 404, "subscriber_not_found")
    assert_problem(await op.delete(f"/subscribers/{ALICE}"), 404, "subscriber_not_found")
    # The number is free again.
    assert (await op.post("/subscribers", {"number": ALICE, "bundle_id": talk})).status == 201


async def test_suspension_stops_the_next_call(
    server: Server, session: aiohttp.ClientSession
) -> None:
    op = await client_of(server, session)
    talk = (await op.post("/bundles", TALK_100)).body["bundle_id"]
    await op.post("/subscribers", {"number": ALICE, "bundle_id": talk})
    alice = await server.phone(ALICE)
    bob = await server.phone(BOB)

    await op.post(f"/subscribers/{ALICE}/suspend")
    refused = await alice.call(BOB, source="tone:440")
    assert await refused.ended(timeout=5) == "not_allowed"
    assert refused.end_detail == "subscriber_suspended"

    await op.post(f"/subscribers/{ALICE}/resume")
    call = await alice.call(BOB, source="tone:440")
    incoming = await bob.incoming(timeout=10)
    assert incoming.peer == ALICE
    await call.hangup()


async def test_usage_of_a_fresh_subscriber(server: Server, session: aiohttp.ClientSession) -> None:
    op = await client_of(server, session)
    bundle = (await op.post("/bundles", {**TALK_100, "period": 3600})).body
    await op.post("/subscribers", {"number": ALICE, "bundle_id": bundle["bundle_id"]})
    usage = await op.get(f"/subscribers/{ALICE}/usage")
    assert usage.status == 200
    report = usage.body
    assert report["number"] == ALICE and report["bundle_id"] == bundle["bundle_id"]
    assert (report["minutes_used"], report["seconds_used"], report["calls"]) == (0, 0, 0)
    assert report["minutes_included"] == report["minutes_left"] == 100
    assert report["period_end"] - report["period_start"] == 3600


async def test_event_replay_with_a_cursor(server: Server, session: aiohttp.ClientSession) -> None:
    new = await new_operator(server)
    op = Operator(session, server.url, new.api_key)
    operator_id = new.operator.operator_id
    other = await new_operator(server, "Netz Zwei")
    async with server.app[DATABASE].transaction() as conn:
        ids = [
            await events.append(
                conn,
                operator_id=operator_id,
                type="call.ringing" if n % 2 else "usage.threshold",
                data={"n": n},
                ordering_key=f"key-{n}",
                now=1_800_000_000.0 + n,
            )
            for n in range(5)
        ]
        await events.append(
            conn,
            operator_id=other.operator.operator_id,
            type="call.ringing",
            data={},
            ordering_key="key-x",
            now=1_800_000_000.0,
        )

    seen: list[dict[str, Any]] = []
    cursor = 0
    while True:
        page = (await op.get(f"/events?after={cursor}&limit=2")).body
        seen += page["events"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert [e["id"] for e in seen] == ids
    assert [e["data"] for e in seen] == [{"n": n} for n in range(5)]
    first = seen[0]
    assert first["type"] == "usage.threshold" and first["operator_id"] == operator_id
    assert set(first["delivery"]) == {"status", "attempts", "delivered_at", "last_error"}
    assert [e["cursor"] for e in seen] == sorted(e["cursor"] for e in seen)
    # Polling past the end returns nothing and keeps the cursor.
    end = (await op.get(f"/events?after={cursor}")).body
    assert end == {"events": [], "next_cursor": cursor, "has_more": False}

    ringing = (await op.get("/events?type=call.ringing")).body["events"]
    assert [e["id"] for e in ringing] == [ids[1], ids[3]]
    one = await op.get(f"/events/{ids[2]}")
    assert one.body["id"] == ids[2] and one.body["data"] == {"n": 2}
    assert_problem(await op.get("/events?type=call.unknown"), 400, "invalid_query")
    assert_problem(await op.get("/events?limit=501"), 400, "invalid_query")
    assert_problem(await op.get("/events?after=-1"), 400, "invalid_query")
    assert_problem(await op.get("/events?status=lost"), 400, "invalid_query")


async def test_redelivery_sends_an_event_again(
    server: Server, session: aiohttp.ClientSession
) -> None:
    receiver = await Receiver().start()
    try:
        new = await new_operator(server, webhook_url=receiver.url + "/events")
        receiver.secret = new.signing_secret
        op = Operator(session, server.url, new.api_key)
        event_id = await add_event(server, new.operator.operator_id, ALICE)
        await receiver.wait_ids({event_id})

        async def delivered() -> dict[str, Any]:
            async with asyncio.timeout(10):
                while True:
                    state: dict[str, Any] = (await op.get(f"/events/{event_id}")).body["delivery"]
                    if state["status"] == "delivered":
                        return state
                    await asyncio.sleep(0.05)

        assert (await delivered())["attempts"] >= 1
        again = await op.post(f"/events/{event_id}/redeliver")
        assert again.status == 202 and again.body["id"] == event_id
        assert again.body["delivery"]["status"] == "pending"
        assert again.body["delivery"]["attempts"] == 0
        await receiver.wait_for(lambda r: [x.event_id for x in r.accepted()] == [event_id] * 2)
        assert all(r.signature_error == "" for r in receiver.requests)
        await delivered()
        assert_problem(await op.post("/events/evt_unknown/redeliver"), 404, "event_not_found")
    finally:
        await receiver.close()


async def test_settings_and_signing_secret(server: Server, session: aiohttp.ClientSession) -> None:
    new = await new_operator(server)
    op = Operator(session, server.url, new.api_key)
    settings = (await op.get("/operator")).body
    assert settings == {
        "operator_id": new.operator.operator_id,
        "name": "Netz Eins",
        "webhook_url": "",
        "sms_url": "",
        "created_at": new.operator.created_at,
        "previous_signing_secret_active": False,
    }
    changed = await op.patch(
        "/operator", {"webhook_url": "https://hooks.example/anruf", "name": "Netz 1"}
    )
    assert changed.body == {
        **settings,
        "webhook_url": "https://hooks.example/anruf",
        "name": "Netz 1",
    }
    for bad in ({"webhook_url": "ftp://hooks.example"}, {"sms_url": "hooks.example/sms"},
                {"name": None}, {"name": ""}, {"colour": "blue"}):  # fmt: skip
        assert_problem(await op.patch("/operator", bad), 400, "invalid_body")

    rotated = await op.post("/signing-secret")
    assert rotated.status == 200 and rotated.headers["Cache-Control"] == "no-store"
    secret = rotated.body["signing_secret"]
    assert secret.startswith("whsec_") and secret != new.signing_secret
    assert rotated.body["previous_signing_secret_active"] is True
    async with server.app[DATABASE].read() as conn:
        row = (await conn.execute(sa.select(operators))).one()
    assert (row.signing_secret, row.previous_signing_secret) == (secret, new.signing_secret)
    assert (await op.delete("/signing-secret/previous")).status == 204
    assert (await op.get("/operator")).body["previous_signing_secret_active"] is False
    assert_problem(await op.delete("/signing-secret/previous"), 404, "no_previous_signing_secret")


async def test_bad_requests_are_problems(server: Server, session: aiohttp.ClientSession) -> None:
    op = await client_of(server, session)
    assert_problem(await op.post("/bundles", raw=b'{"name": '), 400, "malformed_json")
    assert_problem(await op.post("/bundles", [TALK_100]), 400, "invalid_body")
    for body in (
        {**TALK_100, "colour": "blue"},  # unknown field
        {**TALK_100, "phone_minutes": "100"},  # wrong type
        {**TALK_100, "app_calls_included": 1},
        {**TALK_100, "phone_minutes": -1},  # bounds
        {**TALK_100, "increment": {"first": 0, "next": 60}},
        {**TALK_100, "increment": {"first": 60, "next": 3601}},
        {**TALK_100, "increment": "9999/1"},
        {**TALK_100, "period": "weekly"},
        {**TALK_100, "period": 0},
        {**TALK_100, "fair_use_minutes": -5},
        {"name": "Talk"},  # missing fields
    ):
        answer = await op.post("/bundles", body)
        problem = assert_problem(answer, 400, "invalid_body")
        assert problem["errors"], body
    talk = (await op.post("/bundles", TALK_100)).body["bundle_id"]
    invalid = await op.post("/subscribers", {"number": "110", "bundle_id": talk})
    assert assert_problem(invalid, 400, "invalid_number")["reason"] == "not_callable"
    unknown = await op.patch("/subscribers/+4917700000009", {"bundle_id": talk})
    assert_problem(unknown, 404, "subscriber_not_found")
    assert_problem(await op.get("/subscribers/not-a-number"), 404, "subscriber_not_found")
    assert_problem(await op.get("/subscribers?limit=0"), 400, "invalid_query")
    assert_problem(await op.get("/subscribers?status=gone"), 400, "invalid_query")
    assert_problem(await op.delete("/keys/key_unknown"), 404, "key_not_found")


async def test_openapi_covers_every_operator_route(
    server: Server, session: aiohttp.ClientSession
) -> None:
    async with session.get(server.url + "/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    routes = {
        (route.method, route.resource.canonical)
        for route in server.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith(API)
        and route.method != "HEAD"
    }
    assert len(routes) >= 23
    for method, path in routes:
        operation = document["paths"][path][method.lower()]
        assert operation["security"] == [{"operatorKey": []}], (method, path)
    assert document["components"]["securitySchemes"]["operatorKey"]["scheme"] == "bearer"
    create = document["paths"][f"{API}/bundles"]["post"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/BundleCreate"}
    assert "phone_minutes" in document["components"]["schemas"]["BundleCreate"]["required"]
    guards = document["components"]["schemas"]["BundleCreate"]["properties"]
    assert guards["allowed_destinations"]["items"]["pattern"] == r"^\+[1-9][0-9]{0,14}$"
    assert guards["allowed_destinations"]["maxItems"] == 50
    out = document["components"]["schemas"]["BundleOut"]["properties"]
    assert {"allowed_destinations", "max_phone_calls_per_hour"} <= set(out)
    assert "fraud.alert" in json.dumps(document)
    assert "/v1/devices" in document["paths"] and "/v1/ws" in document["paths"]


def test_admin_creates_operators_from_the_command_line(tmp_path: Path) -> None:
    anruf = [sys.executable, "-m", "signaling.cli", "operator"]
    data = ["--data-dir", str(tmp_path / "data")]
    made = subprocess.run(
        [*anruf, "create", "--name", "Netz Eins", "--webhook-url", "https://hooks.example/e",
         *data, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["api_key"].startswith("ak_")
    assert created["signing_secret"].startswith("whsec_")
    listed = subprocess.run([*anruf, "list", *data], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert created["operator_id"] in listed.stdout and "Netz Eins" in listed.stdout
    bad = subprocess.run(
        [*anruf, "create", "--name", "X", "--sms-url", "ftp://x", *data],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0 and "http" in bad.stderr


async def test_the_command_line_operator_uses_the_api(
    tmp_path: Path, make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    made = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling.cli", "operator", "create", "--name", "Netz Eins",
        "--data-dir", str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(made.communicate(), 60)
    assert made.returncode == 0, err.decode()
    key = next(w for w in out.decode().split() if w.startswith("ak_"))
    server = await make_server()  # the same data directory
    op = Operator(session, server.url, key)
    assert (await op.get("/operator")).body["name"] == "Netz Eins"


async def test_provisioning_on_postgresql(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await make_server(database_url=require_postgres())
    # The shared test database may hold earlier runs' rows: numbers of our own.
    number = "+491770000" + "".join(secrets.choice("0123456789") for _ in range(4))
    op = await client_of(server, session)
    bundle = (await op.post("/bundles", TALK_100)).body
    order = {"number": number, "bundle_id": bundle["bundle_id"]}
    key = {"Idempotency-Key": "pg-" + secrets.token_hex(8)}
    added = await op.post("/subscribers", order, headers=key)
    try:
        assert added.status == 201, added.body
        replay = await op.post("/subscribers", order, headers=key)
        assert replay.body == added.body and replay.headers["Idempotent-Replayed"] == "true"
        assert (await op.post(f"/subscribers/{number}/suspend")).body["status"] == "suspended"
        usage = (await op.get(f"/subscribers/{number}/usage")).body
        assert usage["minutes_left"] == 100
        b = await client_of(server, session)
        assert_problem(await b.get(f"/subscribers/{number}"), 404, "subscriber_not_found")
        second = await op.post("/keys")
        assert_problem(await op.post("/keys"), 409, "key_limit_reached")
        assert second.status == 201

        # The same request twice at once makes one bundle; the loser answers as a replay.
        at_once = {"Idempotency-Key": "pg-" + secrets.token_hex(8)}
        both = await asyncio.gather(
            *(op.post("/bundles", {**TALK_100, "name": "Twice"}, headers=at_once) for _ in "ab")
        )
        assert [a.status for a in both] == [201, 201] and both[0].body == both[1].body
        bundles = (await op.get("/bundles")).body["bundles"]
        assert [b["name"] for b in bundles].count("Twice") == 1
    finally:
        assert (await op.delete(f"/subscribers/{number}")).status == 204
