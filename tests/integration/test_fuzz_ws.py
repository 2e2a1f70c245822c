"""Mutation fuzzing of the WebSocket protocol against a real server.

Captured messages of real calls (tests/fuzz/corpus/ws: invites with aiortc's SDP
offers, accepts, rejects, hangups, digits, pings, auth) are mutated and sent by two
registered devices, live call ids swapped in, and as the first (auth) message of
fresh connections, for FUZZ_SECONDS. Meanwhile every device is pinged and /healthz
asked: each must answer within ANSWER_WITHIN. Afterwards no ERROR was logged, the
calls, presence links and relay legs are back at zero, memory kept is bounded, and
a normal call works end to end.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp

from signaling.keys import CALLS, PRESENCE, RELAY
from tests.conftest import ALICE, BOB, Server, ServerFactory
from tests.fuzz.harness import (
    ANSWER_WITHIN,
    FUZZ_SECONDS,
    FUZZ_SEED,
    MEMORY_BOUND,
    settle,
    traced_memory,
    tracing_memory,
    watching_logs,
)
from tests.fuzz.mutate import load_corpus, mutate_ws

#: Close codes a fuzzed connection may get: ours, too big, unauthenticated, flood.
EXPECTED_CLOSE_CODES = {1000, 1009, 4001, 1008}


class Device:
    """One fuzzing WebSocket connection of a registered device, reconnected when the
    server closes it (an oversized frame closes it with 1009, as it should)."""

    def __init__(self, server: Server, token: str, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.token = token
        self.session = session
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.pongs: dict[str, asyncio.Future[None]] = {}
        self.call_ids: list[str] = []
        self.codes: dict[str, int] = {}
        self.close_codes: list[int | None] = []

    async def connect(self) -> None:
        url = self.server.url.replace("http", "ws", 1) + "/v1/ws"
        headers = {"Authorization": f"Bearer {self.token}"}
        self.ws = await self.session.ws_connect(url, headers=headers, max_msg_size=0)
        welcome = json.loads((await self.ws.receive(timeout=5)).data)
        assert welcome["type"] == "welcome", welcome
        self.reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data: dict[str, Any] = json.loads(msg.data)
            if data.get("type") == "pong" and data.get("ref") in self.pongs:
                self.pongs.pop(data["ref"]).set_result(None)
            if data.get("type") == "error":
                self.codes[data["code"]] = self.codes.get(data["code"], 0) + 1
            call_id = data.get("call_id")
            if isinstance(call_id, str) and call_id not in self.call_ids:
                self.call_ids = [*self.call_ids[-9:], call_id]
        self.close_codes.append(ws.close_code)

    async def send(self, frame: str | bytes, binary: bool = False) -> None:
        if self.ws is None or self.ws.closed:
            await self.close()
            await self.connect()
        assert self.ws is not None
        try:
            if binary:
                await self.ws.send_bytes(frame if isinstance(frame, bytes) else frame.encode())
            else:
                text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            pass  # closed under us (1009): the next send reconnects

    async def probe(self, name: str) -> None:
        """A ping must be answered within ANSWER_WITHIN, whatever came before it."""
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            future: asyncio.Future[None] = loop.create_future()
            self.pongs[name] = future
            await self.send(json.dumps({"type": "ping", "id": name}))
            try:
                await asyncio.wait_for(future, ANSWER_WITHIN)
                return
            except TimeoutError:
                # A socket the server just closed (1009) loses the ping: once more.
                assert attempt == 0 and self.ws is not None and self.ws.closed, (
                    f"ping {name} unanswered for {ANSWER_WITHIN} s"
                )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


def _swap_call_id(frame: bytes, rng: random.Random, devices: list[Device]) -> bytes:
    """A captured message about a live call (a call id the server gave out)."""
    ids = [call_id for device in devices for call_id in device.call_ids]
    if not ids or rng.random() < 0.3:
        return frame
    data = json.loads(frame)
    if "call_id" in data:
        data["call_id"] = rng.choice(ids)
    if data.get("type") == "call.invite" and rng.random() < 0.7:
        data["to"] = rng.choice([ALICE, BOB])
    return json.dumps(data).encode()


async def _first_messages(server: Server, frame: str | bytes) -> int | None:
    """A fresh connection whose first (auth) message is ``frame``: refused, cleanly."""
    url = server.url.replace("http", "ws", 1) + "/v1/ws"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        await ws.send_str(text)
        async with asyncio.timeout(ANSWER_WITHIN):
            async for _msg in ws:
                pass
        return ws.close_code


async def _fuzz(server: Server, devices: list[Device], seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    corpus = load_corpus("ws")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    sent = 0
    next_probe = loop.time()
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if loop.time() >= next_probe:
                next_probe = loop.time() + 0.5
                await asyncio.gather(*(d.probe(f"probe-{sent}") for d in devices))
                async with asyncio.timeout(ANSWER_WITHIN):
                    async with session.get(server.url + "/healthz") as response:
                        assert response.status == 200
            frame = _swap_call_id(rng.choice(corpus), rng, devices)
            mutant = frame if rng.random() < 0.15 else mutate_ws(frame, rng, corpus)
            if rng.random() < 0.03:
                close_code = await _first_messages(server, mutant)
                assert close_code in EXPECTED_CLOSE_CODES, close_code
            else:
                await rng.choice(devices).send(mutant, binary=rng.random() < 0.05)
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0.02)  # let the server's replies be read
    return sent


async def test_mutated_websocket_messages_break_nothing(make_server: ServerFactory) -> None:
    server = await make_server(
        ring_timeout=2.0,
        ws_messages_per_second=2000.0,
        ws_message_burst=4000,
        # The fuzzer shares the server's event loop (and traces memory): its lag is
        # bounded by the ping probes here, not refused as overload.
        overload_loop_lag=0.0,
        call_attempts_per_minute=6000.0,
        call_attempt_burst=1000,
    )
    app = server.app

    def counts() -> dict[str, int]:
        return {
            "calls": app[CALLS].active_calls,
            "presence": len(app[PRESENCE]),
            "relay legs": app[RELAY].active_legs,
        }

    baseline = counts()
    tokens = [await server.register(ALICE, "fuzz-a"), await server.register(BOB, "fuzz-b")]
    with watching_logs() as logs, tracing_memory():
        async with aiohttp.ClientSession() as session:
            devices = [Device(server, token, session) for token in tokens]
            for device in devices:
                await device.connect()
            warm = await _fuzz(server, devices, min(3.0, FUZZ_SECONDS / 4), FUZZ_SEED + 1)
            for device in devices:
                await device.close()
            assert await settle(counts, baseline) == baseline
            memory_before = traced_memory()
            for device in devices:
                await device.connect()
            sent = await _fuzz(server, devices, FUZZ_SECONDS, FUZZ_SEED)
            for device in devices:
                await device.close()
            after = await settle(counts, baseline)
            memory_after = traced_memory()
        assert after == baseline, f"state left behind after {sent} messages: {after}"
        assert memory_after - memory_before < MEMORY_BOUND, (memory_before, memory_after)
        assert sent + warm > 200, sent
        codes: dict[str, int] = {}
        for device in devices:
            for code, n in device.codes.items():
                codes[code] = codes.get(code, 0) + n
            # 1006 too: a server that closes a socket (1009) while our next frame is
            # still arriving makes its kernel reset the connection (TCP discards
            # unread data with an RST), so its close frame may never reach us.
            abnormal = {None, aiohttp.WSCloseCode.ABNORMAL_CLOSURE}
            assert set(device.close_codes) <= EXPECTED_CLOSE_CODES | abnormal, device.close_codes
        assert {"bad_json", "bad_message"} <= set(codes), codes
        assert "internal" not in codes, codes
        print(f"{sent + warm} messages, errors {codes}, calls {[d.call_ids for d in devices]}")

        # A normal call still works end to end.
        alice, bob = await server.phone(ALICE), await server.phone(BOB)
        call = await alice.call(BOB, source="tone:440")
        incoming = await bob.incoming(timeout=10)
        await incoming.accept()
        assert await call.connected(timeout=15)
        await call.hangup()
        assert await call.ended(timeout=5) == "completed"
        assert not logs.unexpected(), logs.unexpected()


async def test_a_device_gone_before_its_reply_is_no_error(make_server: ServerFactory) -> None:
    """Found by the fuzzer: a reply to a device whose connection was closing raised
    ClientConnectionResetError out of the message loop (logged as an ERROR)."""
    server = await make_server()
    token = await server.register(ALICE)
    url = server.url.replace("http", "ws", 1) + "/v1/ws"
    with watching_logs() as logs:
        for _ in range(20):
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
                await ws.receive(timeout=5)  # welcome
                for _ in range(30):  # each answered with an error frame
                    await ws.send_bytes(b"\x00" * 10)
                transport = ws._response.connection.transport  # type: ignore[union-attr]
                assert transport is not None
                transport.close()  # gone without a close handshake, right after
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    assert not logs.unexpected(), logs.unexpected()


async def test_json_nested_too_deeply_is_bad_json(make_server: ServerFactory) -> None:
    """Found by the fuzzer: thousands of nested brackets raised RecursionError out of
    the message loop (an ERROR logged, the socket dropped)."""
    server = await make_server()
    with watching_logs() as logs:
        async with aiohttp.ClientSession() as session:
            device = Device(server, await server.register(ALICE), session)
            await device.connect()
            assert device.ws is not None
            await device.ws.send_str('{"type": "ping", "id": ' + "[" * 20_000 + "]" * 20_000 + "}")
            await device.probe("after")
            await device.close()
            assert device.codes == {"bad_json": 1}
    assert not logs.unexpected(), logs.unexpected()
