"""Capture the fuzzing corpus from real calls: ``python -m tests.fuzz.capture``.

Runs a real server on 127.0.0.1 with its SIP trunk pointed at SIPp, and records

- every SIP datagram the trunk sends and receives during an outgoing call to a
  phone number (SIPp answers and echoes, digits included), an incoming call from
  a phone number that an app user answers, a rejected and a cancelled call, and
  an INVITE challenged for digest credentials and sent again with them;
- every WebSocket message our app client sends in those calls and in an app to
  app call (invite with aiortc's real SDP offer, accept with its answer, reject,
  hangup, dtmf, ping, auth).

The corpus is written to tests/fuzz/corpus/{sip,ws}. Ports are normalised (the
trunk's port to 5060, the peer's to 5070; the fuzzers put their own back), and the
device token of ``auth`` is replaced by a placeholder. Needs sipp.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from signaling.keys import TRUNK
from signaling.sip.message import SipTarget
from signaling.sip.transport import SipTransport, _Datagrams
from signaling.sip.trunk import IncomingCall, TrunkSettings
from tests.conftest import ALICE, BOB, server_config, start_server
from tests.fuzz.mutate import CORPUS, PEER_PORT, TRUNK_PORT
from tests.integration.provisioning import add_bundle, add_operator, add_subscriber
from tests.integration.sip_trunk_support import SDP, running_trunk, until
from tests.integration.sip_trunk_support import Sipp as RawSipp
from tests.integration.sipp import Sipp
from tests.ports import free_port
from voice.client.signaling import SignalingClient
from voice.codecs.g711 import alaw_encode

LANDLINE = "+4930555000100"

sip_capture: list[tuple[str, bytes]] = []
ws_capture: list[dict[str, Any]] = []


def _record_sip() -> None:
    receive = _Datagrams.datagram_received
    send = SipTransport.send

    def datagram_received(self: _Datagrams, data: bytes, addr: tuple[str | bytes, int]) -> None:
        sip_capture.append((f"in-{self.owner.bound_port}-{addr[1]}", data))
        receive(self, data, addr)

    def sent(self: SipTransport, peer: SipTarget, data: bytes) -> None:
        sip_capture.append((f"out-{self.bound_port}-{peer.port}", data))
        send(self, peer, data)

    _Datagrams.datagram_received = datagram_received  # type: ignore[method-assign]
    SipTransport.send = sent  # type: ignore[method-assign]


def _record_ws() -> None:
    original = SignalingClient.send

    async def send(self: SignalingClient, kind: str, **fields: Any) -> str:
        message_id = await original(self, kind, **fields)
        ws_capture.append({"type": kind, "id": message_id, **fields})
        return message_id

    SignalingClient.send = send  # type: ignore[method-assign]


async def _phone_network_calls(workdir: Path) -> None:
    sbc_port = free_port(socket.SOCK_DGRAM)
    server = await start_server(
        server_config(
            workdir,
            sip_listen="127.0.0.1:0",
            sip_sbc=(f"udp:127.0.0.1:{sbc_port}",),
            sip_accepted_sources=("127.0.0.1",),
            sip_options_interval=0.0,
        )
    )
    try:
        operator = await add_operator(server)
        bundle = await add_bundle(server, operator, phone_minutes=100)
        await add_subscriber(server, ALICE, operator, bundle)
        alice, bob = await server.phone(ALICE), await server.phone(BOB)
        trunk_port = next(p for t, _h, p in server.app[TRUNK].addresses if t == "udp")

        def sipp(scenario: str, **options: Any) -> Sipp:
            run_dir = workdir / f"sipp-{scenario}"
            run_dir.mkdir()
            options.setdefault("port", sbc_port)
            return Sipp(scenario, workdir=run_dir, **options)

        async def trunk_up() -> None:
            await until(lambda: server.app[TRUNK].up)

        # An app user calls a phone number: answered, digits, hung up by us.
        far_end = sipp("trunk_uas_echo.xml", echo=True)
        await trunk_up()
        call = await alice.call(LANDLINE, source="tone:440")
        assert await call.connected(timeout=10)
        await asyncio.sleep(1.0)
        await call.send_dtmf("19#")
        await asyncio.sleep(1.5)
        await call.hangup()
        await call.ended(timeout=5)
        await far_end.finished(timeout=10)

        # Busy, and cancelled while ringing.
        for scenario in ("trunk_uas_busy.xml", "trunk_uas_cancelled.xml"):
            far_end = sipp(scenario)
            await trunk_up()
            call = await alice.call(LANDLINE)
            if scenario == "trunk_uas_cancelled.xml":
                await call.ringing(timeout=10)
                await call.hangup()
            await call.ended(timeout=10)
            await far_end.finished(timeout=10)

        # A phone number calls an app user, who answers; the network hangs up.
        seconds = np.arange(8000 * 5) / 8000
        tone = alaw_encode(0.5 * np.sin(2 * np.pi * 1000 * seconds))
        caller = sipp(
            "trunk_uac_tone.xml",
            port=free_port(socket.SOCK_DGRAM),
            remote=f"127.0.0.1:{trunk_port}",
            service=BOB,
            files={"tone.raw": tone},
        )
        incoming = await bob.incoming(timeout=10)
        await incoming.accept()
        await incoming.ended(timeout=15)
        await caller.finished(timeout=10)

        # App to app: answered and hung up, then declined.
        call = await alice.call(BOB)
        incoming = await bob.incoming(timeout=10)
        await incoming.accept()
        assert await call.connected(timeout=10)
        await call.hangup()
        await call.ended(timeout=5)
        call = await alice.call(BOB)
        incoming = await bob.incoming(timeout=10)
        await incoming.reject()
        await call.ended(timeout=5)
        await alice.signaling.send("ping")
        await asyncio.sleep(0.2)
    finally:
        for phone in server.phones:
            await phone.close()
        await server.runner.cleanup()


async def _digest_exchange(workdir: Path) -> None:
    async def answer(call: IncomingCall) -> None:
        await call.answer(SDP)

    settings = TrunkSettings(
        listen_port=0,
        accepted_sources=("127.0.0.1",),
        inbound_username="operator-sbc",
        inbound_password="capture-only-password",
        inbound_algorithms=("MD5",),
        options_interval=0.0,
        user_agent="Anruf",  # the scenario checks Server
    )
    async with running_trunk(settings, answer) as trunk:
        port = trunk.addresses[0][2]
        sipp = RawSipp(
            workdir,
            scenario="sip_uac_auth.xml",
            remote=f"127.0.0.1:{port}",
            args=(
                *("-s", LANDLINE, "-au", "operator-sbc", "-ap", "capture-only-password"),
                *("-auth_uri", f"{LANDLINE}@127.0.0.1:{port};user=phone"),
            ),
        )
        await sipp.exit_code()


def _normalise(data: bytes, ports: dict[int, int]) -> bytes:
    def port(match: re.Match[bytes]) -> bytes:
        number = int(match.group(1))
        return b":%d" % ports.get(number, number)

    return re.sub(rb":(\d{4,5})\b", port, data)


def _write(directory: Path, name: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def _save() -> None:
    sip_dir, ws_dir = CORPUS / "sip", CORPUS / "ws"
    for directory in (sip_dir, ws_dir):
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            old.unlink()
    seen: set[bytes] = set()
    index = 0

    def first_line(d: bytes) -> str:
        return d.split(b"\r\n", 1)[0].decode(errors="replace")

    for label, data in sip_capture:
        direction, ours, theirs = label.split("-")
        normalised = _normalise(data, {int(ours): TRUNK_PORT, int(theirs): PEER_PORT})
        if normalised in seen or not normalised.strip():
            continue
        seen.add(normalised)
        words = re.sub(r"[^A-Za-z0-9]+", "-", first_line(normalised).split(" sip:")[0])[:24]
        index += 1
        _write(sip_dir, f"{index:03d}-{direction}-{words.strip('-').lower()}.sip", normalised)
    ws_capture.append({"type": "auth", "id": "a1", "token": "TOKEN"})
    for number, message in enumerate(ws_capture, 1):
        text = json.dumps(message, separators=(",", ":")).encode()
        _write(ws_dir, f"{number:03d}-{message['type']}.json", text)
    print(f"{index} SIP messages, {len(ws_capture)} WebSocket messages in {CORPUS}")


async def main() -> None:
    _record_sip()
    _record_ws()
    with tempfile.TemporaryDirectory() as tmp:
        await _phone_network_calls(Path(tmp))
        digest_dir = Path(tmp) / "digest"
        digest_dir.mkdir()
        await _digest_exchange(digest_dir)
    _save()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
