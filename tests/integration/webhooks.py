"""Webhook test parts: an operator's HTTP receiver on 127.0.0.1, and operator rows.

The operator API is not used here: operators, bundles and subscribers are
inserted directly, the way the API stores them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from signaling.carrier import events, signing
from signaling.store.database import Database
from signaling.store.schema import bundles, operators, subscribers

SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"


@dataclass(frozen=True)
class Received:
    """One request as the operator saw it."""

    path: str
    body: bytes
    headers: dict[str, str]
    at: float
    #: The signature checked with the receiver's secret: "" if valid, else the error.
    signature_error: str

    @property
    def envelope(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def event_id(self) -> str:
        return str(self.envelope["id"])


@dataclass
class Receiver:
    """An operator's webhook and SMS endpoints: records every request, then answers.

    ``fail_first`` requests are answered 500; ``reject`` (event ids) always are;
    each request waits ``delay`` seconds before its answer.
    """

    secret: str = SECRET
    fail_first: int = 0
    reject: set[str] = field(default_factory=set)
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    #: Event ids that arrived while a request for the same event was still open.
    overlapping: list[str] = field(default_factory=list)
    url: str = ""
    _open: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            signing.verify(
                body, request.headers.get(signing.SIGNATURE_HEADER, ""), self.secret, time.time()
            )
            error = ""
        except signing.SignatureError as exc:
            error = str(exc)
        received = Received(request.path, body, dict(request.headers), time.time(), error)
        failing = len(self.requests) < self.fail_first
        self.requests.append(received)
        self._changed.set()
        if received.event_id in self._open:
            self.overlapping.append(received.event_id)
        self._open.add(received.event_id)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self._open.discard(received.event_id)
        if failing or received.event_id in self.reject:
            return web.json_response({"error": "try later"}, status=500)
        return web.json_response({"ok": True})

    def accepted(self) -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        return [
            r
            for index, r in enumerate(self.requests)
            if index >= self.fail_first and r.event_id not in self.reject
        ]

    def ids(self, path: str | None = None) -> set[str]:
        return {r.event_id for r in self.accepted() if path is None or r.path == path}

    async def wait_for(self, done: Callable[[Receiver], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not done(self):
                self._changed.clear()
                await self._changed.wait()

    async def wait_ids(self, ids: set[str], timeout: float = 10.0) -> None:
        await self.wait_for(lambda r: ids <= r.ids(), timeout)


async def add_operator(
    db: Database,
    operator_id: str,
    *,
    webhook_url: str = "",
    sms_url: str = "",
    secret: str = SECRET,
    previous_secret: str | None = None,
) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            operators.insert().values(
                operator_id=operator_id,
                name=f"Operator {operator_id}",
                webhook_url=webhook_url,
                sms_url=sms_url,
                signing_secret=secret,
                previous_signing_secret=previous_secret,
                created_at=time.time(),
            )
        )


async def add_subscriber(db: Database, number: str, operator_id: str) -> None:
    now = time.time()
    bundle_id = f"b_{operator_id}"
    async with db.transaction() as conn:
        exists = await conn.scalar(
            bundles.select()
            .with_only_columns(bundles.c.bundle_id)
            .where(bundles.c.bundle_id == bundle_id)
        )
        if exists is None:
            await conn.execute(
                bundles.insert().values(
                    bundle_id=bundle_id,
                    operator_id=operator_id,
                    name="App calls",
                    app_calls_included=True,
                    phone_minutes=100,
                    period_seconds=None,
                    increment_first=60,
                    increment_next=60,
                    fair_use_minutes=None,
                    created_at=now,
                    updated_at=now,
                )
            )
        await conn.execute(
            subscribers.insert().values(
                number=number,
                operator_id=operator_id,
                bundle_id=bundle_id,
                status="active",
                activated_at=now,
                created_at=now,
                updated_at=now,
            )
        )


async def append_events(
    db: Database,
    operator_id: str,
    keys: list[str],
    per_key: int,
    *,
    type: str = "call.ringing",
    created: float | None = None,
) -> list[str]:
    """``per_key`` events for each key, interleaved across keys; their ids in order."""
    ids: list[str] = []
    async with db.transaction() as conn:
        for n in range(per_key):
            for key in keys:
                event_id = await events.append(
                    conn,
                    operator_id=operator_id,
                    type=type,
                    data={"call_id": key, "n": n},
                    ordering_key=key,
                    now=time.time() if created is None else created,
                )
                ids.append(event_id)
    return ids


def first_arrivals(requests: list[Received]) -> list[Received]:
    """Each event's first request, in arrival order (an operator de-duplicating by id)."""
    seen: set[str] = set()
    first: list[Received] = []
    for r in requests:
        if r.event_id not in seen:
            seen.add(r.event_id)
            first.append(r)
    return first


def sequences_by_key(requests: list[Received]) -> dict[str, list[int]]:
    order: dict[str, list[int]] = {}
    for r in requests:
        envelope = r.envelope
        order.setdefault(envelope["ordering_key"], []).append(envelope["sequence"])
    return order


async def sms_code(receiver: Receiver, number: str, timeout: float = 5.0) -> str:
    """The code the operator was asked to text to ``number`` (a signed sms.send)."""

    def sent(r: Receiver) -> bool:
        return any(x.path == "/sms" and x.envelope["data"]["to"] == number for x in r.requests)

    await receiver.wait_for(sent, timeout)
    (request,) = [x for x in receiver.requests if x.envelope["data"]["to"] == number]
    assert request.signature_error == ""
    assert request.headers["Anruf-Event-Type"] == "sms.send"
    data = request.envelope["data"]
    assert data["text"] == f"Your Anruf code is {data['code']}"
    return str(data["code"])
