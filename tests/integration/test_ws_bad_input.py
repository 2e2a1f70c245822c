"""Bad input on the WebSocket: clear errors, the connection stays up, nothing breaks."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from tests.conftest import ALICE, BOB, Server
from voice.ice import ice_configuration

SDP_WITHOUT_OPUS = """v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
t=0 0
m=audio 9 UDP/TLS/RTP/SAVPF 0
c=IN IP4 127.0.0.1
a=rtpmap:0 PCMU/8000
a=sendrecv
"""


async def open_ws(
    server: Server, token: str | None, session: aiohttp.ClientSession
) -> aiohttp.ClientWebSocketResponse:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await session.ws_connect(server.url.replace("http", "ws") + "/v1/ws", headers=headers)


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_malformed_and_unknown_messages_get_error_codes_and_the_socket_stays_up(
    server: Server, session: aiohttp.ClientSession
) -> None:
    ws = await open_ws(server, await server.register(ALICE), session)
    assert (await receive(ws))["type"] == "welcome"
    cases = [
        ("{oops", "bad_json"),
        ('"just a string"', "bad_message"),
        ('{"type": "call.teleport", "id": "9"}', "unknown_type"),
        ('{"type": "call.accept", "id": 3}', "bad_message"),
        ('{"type": "call.hangup", "call_id": "no-such-call"}', "call_not_found"),
        ('{"type": "call.invite", "to": "12", "sdp": "v=0"}', "invalid_number"),
        ('{"type": "call.invite", "to": "' + ALICE + '", "sdp": "v=0"}', "self_call"),
    ]
    for text, code in cases:
        await ws.send_str(text)
        reply = await receive(ws)
        assert reply["type"] == "error" and reply["code"] == code, (text, reply)
        assert reply["message"]
    await ws.send_bytes(b"\x00\x01")
    assert (await receive(ws))["code"] == "bad_message"
    await ws.send_str('{"type": "ping", "id": "p1"}')
    assert await receive(ws) == {"type": "pong", "ref": "p1"}
    await ws.close()


async def test_an_offer_without_opus_fails_the_call_with_a_reason(
    server: Server, session: aiohttp.ClientSession
) -> None:
    await server.phone(BOB)
    ws = await open_ws(server, await server.register(ALICE), session)
    await receive(ws)
    await ws.send_str(
        json.dumps({"type": "call.invite", "id": "i1", "to": BOB, "sdp": SDP_WITHOUT_OPUS})
    )
    reply = await receive(ws)
    assert reply["type"] == "call.ended" and reply["ref"] == "i1"
    assert (reply["reason"], reply["detail"]) == ("failed", "no_opus_in_offer")


async def test_oversized_frames_close_the_socket_with_1009(
    server: Server, session: aiohttp.ClientSession
) -> None:
    ws = await open_ws(server, await server.register(ALICE), session)
    await receive(ws)
    await ws.send_str('{"type": "ping", "pad": "' + "x" * 70_000 + '"}')
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 1009
    # the server is fine: the same device connects again
    ws2 = await open_ws(server, await server.register(ALICE), session)
    assert (await receive(ws2))["type"] == "welcome"


async def test_a_flood_is_refused_then_disconnected(
    server: Server, session: aiohttp.ClientSession
) -> None:
    ws = await open_ws(server, await server.register(ALICE), session)
    await receive(ws)
    for i in range(200):
        await ws.send_str(json.dumps({"type": "ping", "id": i}))
    codes = []
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        codes.append(json.loads(msg.data).get("code"))
    assert "rate_limited" in codes
    assert ws.close_code == 1008


async def test_unauthenticated_and_revoked_devices_are_refused(
    server: Server, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await open_ws(server, "not-a-credential", session)
    assert info.value.status == 401

    # no header: the first message must authenticate
    ws = await open_ws(server, None, session)
    await ws.send_str('{"type": "call.hangup", "call_id": "x"}')
    assert (await receive(ws))["code"] == "unauthenticated"
    await ws.receive(timeout=5)
    assert ws.close_code == 4001

    token = await server.register(ALICE)
    ws = await open_ws(server, None, session)
    await ws.send_str(json.dumps({"type": "auth", "token": token}))
    welcome = await receive(ws)
    assert welcome["type"] == "welcome" and welcome["number"] == ALICE

    other = await server.register(ALICE, "laptop")
    async with session.delete(
        f"{server.url}/v1/devices/{welcome['device_id']}",
        headers={"Authorization": f"Bearer {other}"},
    ) as response:
        assert response.status == 204
    assert (await receive(ws))["code"] == "unauthenticated"
    await ws.receive(timeout=5)
    assert ws.close_code == 4003
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await open_ws(server, token, session)


async def test_health_and_metrics(server: Server, session: aiohttp.ClientSession) -> None:
    await server.phone(ALICE)
    async with session.get(server.url + "/healthz") as response:
        assert response.status == 200
    async with session.get(server.url + "/metrics") as response:
        text = await response.text()
    assert "anruf_connected_devices 1.0" in text
    assert "anruf_call_setup_seconds_bucket" in text


async def test_an_offer_without_a_dtls_fingerprint_fails_the_call_at_once(
    server: Server, session: aiohttp.ClientSession
) -> None:
    pc = RTCPeerConnection(ice_configuration([]))
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()
    lines = pc.localDescription.sdp.split("\r\n")
    assert any(line.startswith("a=fingerprint:") for line in lines)
    offer = "\r\n".join(line for line in lines if not line.startswith("a=fingerprint:"))
    await server.phone(BOB)
    ws = await open_ws(server, await server.register(ALICE), session)
    await receive(ws)
    await ws.send_str(json.dumps({"type": "call.invite", "id": "i1", "to": BOB, "sdp": offer}))
    reply = await receive(ws)  # not a call that rings and never gets media
    assert reply["type"] == "call.ended" and reply["ref"] == "i1"
    assert (reply["reason"], reply["detail"]) == ("failed", "bad_sdp")
