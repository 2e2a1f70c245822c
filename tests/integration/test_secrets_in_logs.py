"""Secrets never reach the log: a real server on 127.0.0.1 logging at DEBUG as
`anruf serve -v` does (signaling.logs) while a device registers with a texted code
(after a wrong guess), connects its WebSocket, authenticates a second connection in
its first message and is signed out, and an operator uses the API with its key and
with a wrong one."""

from __future__ import annotations

import json
import logging
import re
import secrets

import aiohttp
import pytest

from signaling import logs
from signaling.keys import DATABASE, OPERATORS
from tests.conftest import ALICE, ServerFactory
from tests.integration.webhooks import SECRET, Receiver, add_operator, sms_code
from voice.client.signaling import ServerError, SignalingClient


async def test_no_code_token_or_key_is_logged(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logs.keep_secrets_out()
    receiver = await Receiver().start()
    server = await make_server(
        sms_sender="carrier",
        sms_default_operator="op_texts",
        test_number_prefix="",
        test_code="",
        webhook_poll_interval=0.02,
    )
    await add_operator(server.app[DATABASE], "op_texts", sms_url=receiver.url + "/sms")
    api_key = (await server.app[OPERATORS].create_operator("Netz Eins")).api_key
    wrong_key = "ak_" + secrets.token_urlsafe(24)
    wrong_token = secrets.token_urlsafe(32)
    client = SignalingClient(server.url)
    try:
        await client.request_code(ALICE)
        code = await sms_code(receiver, ALICE)
        wrong_code = f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"
        with pytest.raises(ServerError):
            await client.register(ALICE, wrong_code)
        device = await client.register(ALICE, code, "phone")
        token = str(device["token"])

        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.ws_connect(f"{server.url}/v1/ws", headers=headers) as ws:
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"
            async with http.ws_connect(f"{server.url}/v1/ws") as ws:
                await ws.send_str(json.dumps({"type": "auth", "token": token}))
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"
                await client.revoke(str(device["device_id"]))  # closes this connection
                await ws.receive(timeout=5)
            async with http.get(
                f"{server.url}/v1/devices", headers={"Authorization": f"Bearer {wrong_token}"}
            ) as response:
                assert response.status == 401
            for key, status in ((api_key, 200), (wrong_key, 401)):
                async with http.get(
                    f"{server.url}/operator/v1/bundles",
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    assert response.status == status
    finally:
        await client.close()
        await receiver.close()

    logged = "\n".join(
        f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert "registered for " + ALICE in logged  # the log was captured at all
    assert "/operator/v1/bundles" in logged  # and so were the access lines
    for name, digits in {"code": code, "wrong code": wrong_code}.items():
        # Digits alone: not inside a longer run (a timestamp, an id).
        assert not re.search(rf"(?<!\d){digits}(?!\d)", logged), f"the {name} was logged"
    for name, secret in {
        "device token": token,
        "unknown token": wrong_token,
        "API key": api_key,
        "unknown API key": wrong_key,
        "webhook secret": SECRET,
    }.items():
        assert secret not in logged, f"the {name} was logged"
