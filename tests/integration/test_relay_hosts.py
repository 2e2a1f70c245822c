"""Relay hosts: `anruf relay` processes registered in Redis carry the calls of a server.

Every relay host here is a real `anruf relay` process on 127.0.0.1 with a media
port range of its own (so an SDP shows which host it came from); the server
finds them in Redis logical database 2 and places calls on the least-loaded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import struct
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from signaling.keys import CALLS, RELAY
from tests.conftest import ALICE, BOB, CAROL, Server, ServerFactory, require_redis
from tests.ports import free_port
from voice.audio import tone_fraction
from voice.client.client import Call, Phone
from voice.client.media import SAMPLE_RATE
from voice.relay.api import WORKER_LOST
from voice.relay.control import encode_message
from voice.relay.control_auth import (
    auth_request,
    challenge,
    check_authenticated,
    new_nonce,
    proof,
)
from voice.relay.pool import RelayPool
from voice.relay.registry import HostRecord, encode_record, host_key, parse_record
from voice.relay.server import read_frame

pytestmark = pytest.mark.timeout(120)

DAVE = "+4917700000004"
ANRUF = Path(sys.executable).parent / "anruf"
HEARTBEAT = 0.5
TTL = 1.5
#: The relay hosts' and the servers' relay_secret (the hosts get it from the environment).
SECRET = "test-relay-secret-0001"


async def wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@dataclass
class RelayHostProcess:
    host_id: str
    control_port: int
    ports: tuple[int, int]
    process: asyncio.subprocess.Process
    log: Path

    def owns_port(self, port: int) -> bool:
        return self.ports[0] <= port <= self.ports[1]


@dataclass
class Hosts:
    redis_url: str
    tmp_path: Path
    redis: aioredis.Redis
    started: list[RelayHostProcess] = field(default_factory=list)

    async def start(
        self, host_id: str, ports: tuple[int, int], *extra: str, wait: bool = True
    ) -> RelayHostProcess:
        control_port = free_port()
        log = self.tmp_path / f"{host_id}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                str(ANRUF),
                "relay",
                "--control",
                f"127.0.0.1:{control_port}",
                "--id",
                host_id,
                "--redis-url",
                self.redis_url,
                "--media-bind-address",
                "127.0.0.1",
                "--media-port-min",
                str(ports[0]),
                "--media-port-max",
                str(ports[1]),
                "--heartbeat",
                str(HEARTBEAT),
                "--ttl",
                str(TTL),
                *extra,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "ANRUF_RELAY_SECRET": SECRET},
            )
        host = RelayHostProcess(host_id, control_port, ports, process, log)
        self.started.append(host)
        if wait:
            async with asyncio.timeout(30):
                while await self.record(host_id) is None:
                    assert process.returncode is None, log.read_text()
                    await asyncio.sleep(0.1)
        return host

    async def record(self, host_id: str) -> HostRecord | None:
        raw = await self.redis.get(host_key(host_id))
        return None if raw is None else parse_record(raw)

    async def wait_record(
        self, host_id: str, check: Callable[[HostRecord | None], bool], limit: float = 10.0
    ) -> HostRecord | None:
        async with asyncio.timeout(limit):
            while True:
                record = await self.record(host_id)
                if check(record):
                    return record
                await asyncio.sleep(0.1)


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[Hosts]:
    url = require_redis(2)
    client = aioredis.Redis.from_url(url)
    found = Hosts(url, tmp_path, client)
    yield found
    for host in found.started:
        if host.process.returncode is None:
            host.process.kill()
        await host.process.wait()
    await client.aclose()


async def registry_server(make_server: ServerFactory, hosts: Hosts, **settings: object) -> Server:
    """A server whose relay legs live on the relay hosts in Redis (``settings`` on top)."""
    return await make_server(
        **{
            "relay_source": "registry",
            "redis_url": hosts.redis_url,
            "relay_heartbeat": HEARTBEAT,
            "relay_secret": SECRET,
            **settings,
        }
    )


def relay_of(server: Server) -> RelayPool:
    relay = server.app[RELAY]
    assert isinstance(relay, RelayPool)
    return relay


async def connect(
    caller: Phone, callee: Phone, number: str, caller_tone: int, callee_tone: int
) -> tuple[Call, Call]:
    outgoing = await caller.call(number, source=f"tone:{caller_tone}")
    incoming = await callee.incoming(timeout=10, source=f"tone:{callee_tone}")
    await outgoing.ringing(timeout=5)
    await incoming.accept()
    assert await outgoing.connected(timeout=10)
    assert await incoming.connected(timeout=10)
    await outgoing.media.wait_for_tone(callee_tone, timeout=5)  # type: ignore[union-attr]
    await incoming.media.wait_for_tone(caller_tone, timeout=5)  # type: ignore[union-attr]
    return outgoing, incoming


def media_ports(sdp: str) -> set[int]:
    """The ports of the SDP's candidates and m= line."""
    ports = {int(port) for port in re.findall(r"^a=candidate:\S+ \d+ udp \d+ \S+ (\d+)", sdp, re.M)}
    ports |= {int(port) for port in re.findall(r"^m=audio (\d+)", sdp, re.M)}
    return ports


def carrier(relay: RelayPool, call: Call, *candidates: RelayHostProcess) -> RelayHostProcess:
    """The relay host carrying the call, checked against the callee's SDP."""
    assert call.call_id is not None
    host_id = relay.host_of_call(call.call_id)
    (host,) = [host for host in candidates if host.host_id == host_id]
    ports = media_ports(call.incoming_sdp)
    assert ports and all(host.owns_port(port) for port in ports), (ports, host.ports)
    assert "c=IN IP4 127.0.0.1" in call.incoming_sdp
    return host


def talk_fraction(call: Call, freq: int) -> float:
    assert call.media is not None
    audio = call.media.received()[call.media.markers["talk"] :]
    return tone_fraction(audio, SAMPLE_RATE, freq)


async def test_calls_go_to_the_less_loaded_host_and_a_killed_host_ends_only_its_calls(
    make_server: ServerFactory, hosts: Hosts
) -> None:
    east = await hosts.start("east", (42000, 42099))
    west = await hosts.start("west", (42100, 42199))
    server = await registry_server(make_server, hosts)
    relay = relay_of(server)
    assert set(relay.host_loads) == {"east", "west"}  # connected before the server serves
    alice, bob = await server.phone(ALICE), await server.phone(BOB)
    carol, dave = await server.phone(CAROL), await server.phone(DAVE)

    # The first call: audio both ways through one host, whose registered load rises.
    first_out, first_in = await connect(alice, bob, BOB, 440, 880)
    first = carrier(relay, first_in, east, west)
    other = west if first is east else east
    record = await hosts.wait_record(first.host_id, lambda r: r is not None and r.legs == 2)
    assert record is not None and record.calls == 1 and record.media == "127.0.0.1"
    assert record.control == f"127.0.0.1:{first.control_port}" and record.state == "up"
    await wait_for(lambda: relay.host_loads == {first.host_id: 2, other.host_id: 0})

    # The second call goes to the other, less-loaded host.
    second_out, second_in = await connect(carol, dave, DAVE, 523, 659)
    assert carrier(relay, second_in, east, west) is other
    await hosts.wait_record(other.host_id, lambda r: r is not None and r.legs == 2)

    # Killing the first call's host ends that call, and only that one.
    second_out.media.mark("talk")  # type: ignore[union-attr]
    second_in.media.mark("talk")  # type: ignore[union-attr]
    first.process.send_signal(signal.SIGKILL)
    assert await first_out.ended(timeout=5) == "failed"
    assert await first_in.ended(timeout=5) == "failed"
    assert WORKER_LOST in first_out.end_detail and WORKER_LOST in first_in.end_detail
    await asyncio.sleep(1.5)
    assert second_out.state == "connected" and second_in.state == "connected"
    assert talk_fraction(second_out, 659) >= 0.9, "carol no longer hears dave"
    assert talk_fraction(second_in, 523) >= 0.9, "dave no longer hears carol"
    assert set(relay.host_loads) == {other.host_id}
    # Its registration expires; the server does not use it meanwhile.
    assert await hosts.wait_record(first.host_id, lambda r: r is None, limit=TTL + 3) is None

    # The next call goes to the surviving host.
    third_out, third_in = await connect(alice, bob, BOB, 587, 784)
    assert carrier(relay, third_in, east, west) is other
    await hosts.wait_record(other.host_id, lambda r: r is not None and r.legs == 4)
    for call in (second_out, third_out):
        await call.hangup()
        assert await call.ended(timeout=5) == "completed"
    await hosts.wait_record(other.host_id, lambda r: r is not None and r.legs == 0)
    assert server.app[CALLS].active_calls == 0 and relay.active_legs == 0
    history = await alice.signaling.history()
    assert [entry["end_reason"] for entry in history[:2]] == ["completed", "failed"]


async def test_a_host_started_later_is_used_and_a_stopping_host_takes_no_new_calls(
    make_server: ServerFactory, hosts: Hosts
) -> None:
    server = await registry_server(make_server, hosts)
    relay = relay_of(server)
    alice, bob = await server.phone(ALICE), await server.phone(BOB)
    carol, _dave = await server.phone(CAROL), await server.phone(DAVE)

    # No relay host yet: the call fails at once, as relay_unavailable.
    call = await alice.call(BOB, source="tone:440")
    assert await call.ended(timeout=5) == "failed"
    assert "relay_unavailable" in call.end_detail

    # A host that starts now is found without a restart.
    north = await hosts.start("north", (42200, 42299), "--drain-timeout", "30")
    await wait_for(lambda: "north" in relay.host_loads)
    outgoing, incoming = await connect(alice, bob, BOB, 440, 880)
    assert carrier(relay, incoming, north) is north

    # SIGTERM: it takes no new call, but the call in progress goes on.
    north.process.send_signal(signal.SIGTERM)
    await hosts.wait_record("north", lambda r: r is not None and r.state == "draining")
    await asyncio.sleep(2 * HEARTBEAT)  # the server reads the new state (the host refuses anyway)
    refused = await carol.call(DAVE, source="tone:523")
    assert await refused.ended(timeout=5) == "failed"
    assert "relay_unavailable" in refused.end_detail
    outgoing.media.mark("talk")  # type: ignore[union-attr]
    await asyncio.sleep(1.5)
    assert north.process.returncode is None
    assert talk_fraction(outgoing, 880) >= 0.9, "the call in progress lost its audio"

    # When it ends, the host removes its registration and exits.
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    async with asyncio.timeout(10):
        assert await north.process.wait() == 0, north.log.read_text()
    assert await hosts.record("north") is None
    assert "Traceback" not in north.log.read_text()


async def authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: str = SECRET
) -> None:
    """The node's side of the control handshake (voice/relay/control_auth.py)."""
    host_nonce, node_nonce, request = auth_request(secret, await read_frame(reader))
    writer.write(encode_message(request))
    check_authenticated(secret, host_nonce, node_nonce, await read_frame(reader))


async def control_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A control connection to a host, authenticated as a signaling node would."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await authenticate(reader, writer)
    return reader, writer


async def closed_by_host(reader: asyncio.StreamReader) -> bool:
    """Whether the host closes the connection (within 10 s) without sending more."""
    async with asyncio.timeout(10):
        return await reader.read(65536) == b""


async def read_reply(reader: asyncio.StreamReader, request_id: int) -> dict[str, object]:
    while True:
        message = await read_frame(reader)
        if message.get("id") == request_id:
            return message


async def test_bad_input_is_refused_without_harm_to_calls(
    make_server: ServerFactory, hosts: Hosts
) -> None:
    # A malformed registration, and a "host" whose control port speaks garbage.
    await hosts.redis.set(host_key("junk"), b"\xff not json")

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack("!I", 5) + b"hello")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Speaks the handshake without the secret, then says it is ready.
        writer.write(encode_message(challenge(new_nonce())))
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await read_frame(reader)
            writer.write(encode_message({"event": "authenticated", "args": ["0" * 64]}))
            writer.write(encode_message({"event": "ready", "args": [1, "asyncio"]}))
            await reader.read()
        writer.close()

    liar = await asyncio.start_server(garbage, "127.0.0.1", 0)
    pretender = await asyncio.start_server(impostor, "127.0.0.1", 0)
    for name, fake_server in (("liar", liar), ("impostor", pretender)):
        address = f"127.0.0.1:{fake_server.sockets[0].getsockname()[1]}"
        fake = HostRecord(id=name, control=address, media="127.0.0.1")
        await hosts.redis.set(host_key(name), encode_record(fake), px=60_000)
    south = await hosts.start("south", (42300, 42399))
    server = await registry_server(make_server, hosts)
    relay = relay_of(server)
    await wait_for(lambda: "south" in relay.host_loads)
    assert set(relay.host_loads) == {"south"}
    alice, bob = await server.phone(ALICE), await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob, BOB, 440, 880)
    assert carrier(relay, incoming, south) is south

    # Another control connection to the host: a request with bad arguments gets an
    # error answer, a leg id of the server's call means nothing on this connection,
    # and a garbled frame closes just this connection.
    reader, writer = await control_connection(south.control_port)
    assert (await read_frame(reader)).get("event") == "ready"
    writer.write(encode_message({"id": 1, "op": "answer", "args": [5]}))
    reply = await read_reply(reader, 1)
    assert isinstance(reply.get("error"), dict)
    leg_ids = [leg for leg in relay._legs if leg.startswith(f"{outgoing.call_id}:")]
    assert len(leg_ids) == 2
    writer.write(encode_message({"id": 2, "op": "close_leg", "args": [leg_ids[0]]}))
    assert "result" in await read_reply(reader, 2)
    writer.write(encode_message({"id": 3, "op": "bridge", "args": leg_ids}))
    assert "error" in await read_reply(reader, 3)
    writer.write(struct.pack("!I", 3) + b"{{{")
    await writer.drain()
    async with asyncio.timeout(5):
        while await reader.read(65536):
            pass
    writer.close()

    outgoing.media.mark("talk")  # type: ignore[union-attr]
    await asyncio.sleep(1.5)
    assert outgoing.state == "connected" and south.process.returncode is None
    assert talk_fraction(outgoing, 880) >= 0.9, "the server's call was disturbed"
    record = await hosts.record("south")
    assert record is not None and record.legs == 2
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    assert "Traceback" not in south.log.read_text()
    assert set(relay.host_loads) == {"south"}
    liar.close()
    pretender.close()


async def test_the_control_port_serves_only_those_who_know_the_relay_secret(
    make_server: ServerFactory, hosts: Hosts, tmp_path: Path
) -> None:
    guarded = await hosts.start("guarded", (42600, 42699))
    port = guarded.control_port
    server = await registry_server(make_server, hosts)
    alice, bob = await server.phone(ALICE), await server.phone(BOB)
    outgoing, _ = await connect(alice, bob, BOB, 440, 880)
    outgoing.media.mark("talk")  # type: ignore[union-attr]

    # A request instead of the answer to the challenge: closed, nothing carried out.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await read_frame(reader)).get("event") == "challenge"
    writer.write(encode_message({"id": 1, "op": "answer", "args": ["x:1", "v=0"]}))
    assert await closed_by_host(reader)
    writer.close()
    # The wrong secret: closed before anything else is said.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(asyncio.IncompleteReadError):
        await authenticate(reader, writer, "not-the-relay-secret")
    writer.close()
    # A proof seen on another connection (the host's own, reflected) is no good here.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    first = await read_frame(reader)
    nonce = str(first["args"][0])  # type: ignore[index]
    mine = "0" * 64
    reflected = proof(SECRET, "host", nonce, mine)
    writer.write(encode_message({"op": "auth", "args": [mine, reflected]}))
    assert await closed_by_host(reader)
    writer.close()
    # Saying nothing: closed after the handshake's time limit.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await read_frame(reader)
    assert await closed_by_host(reader)
    writer.close()

    # The call on the host never noticed, and the refusals were logged as such.
    await asyncio.sleep(1.0)
    assert outgoing.state == "connected"
    assert talk_fraction(outgoing, 880) >= 0.9, "the call was disturbed"
    log = guarded.log.read_text()
    assert log.count("refused") == 4 and "Traceback" not in log, log

    # A server with another secret does not use the host (nor the host it), and its
    # calls end for want of a relay.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = await registry_server(
        make_server, hosts, relay_secret="another-relay-secret", data_dir=other_dir
    )
    carol, dave = await other.phone(CAROL), await other.phone(DAVE)
    attempt = await carol.call(DAVE)
    assert await attempt.ended(timeout=10) == "failed"
    assert attempt.end_detail == "relay_unavailable"
    assert relay_of(other).host_loads == {}
    await dave.close()
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"


async def test_a_host_whose_registration_expires_is_dropped_and_used_again_when_back(
    make_server: ServerFactory, hosts: Hosts
) -> None:
    up = await hosts.start("up", (42400, 42499))
    server = await registry_server(make_server, hosts)
    relay = relay_of(server)
    alice, bob = await server.phone(ALICE), await server.phone(BOB)
    outgoing, incoming = await connect(alice, bob, BOB, 440, 880)
    assert carrier(relay, incoming, up) is up

    # A stopped (hung) host keeps its connection open but no longer registers: once its
    # registration expires (long before the silence limit), its call ends.
    up.process.send_signal(signal.SIGSTOP)
    try:
        stopped_at = asyncio.get_running_loop().time()
        assert await outgoing.ended(timeout=TTL + 5) == "failed"
        assert asyncio.get_running_loop().time() - stopped_at < relay.hang_timeout
        assert WORKER_LOST in outgoing.end_detail
        assert await incoming.ended(timeout=5) == "failed"
        assert relay.host_loads == {}
    finally:
        up.process.send_signal(signal.SIGCONT)

    # Back in service: it registers again and the server uses it without a restart.
    await wait_for(lambda: "up" in relay.host_loads)
    outgoing, incoming = await connect(alice, bob, BOB, 523, 659)
    assert carrier(relay, incoming, up) is up
    await outgoing.hangup()
    assert await outgoing.ended(timeout=5) == "completed"
    record = await hosts.wait_record("up", lambda r: r is not None and r.legs == 0)
    assert record is not None and record.state == "up"


async def test_two_servers_share_a_host_and_each_one_s_legs_are_its_own(
    make_server: ServerFactory, hosts: Hosts, tmp_path: Path
) -> None:
    shared = await hosts.start("shared", (42500, 42599))
    first = await registry_server(make_server, hosts)
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = await registry_server(make_server, hosts, data_dir=second_dir)
    alice, bob = await first.phone(ALICE), await first.phone(BOB)
    carol, dave = await second.phone(CAROL), await second.phone(DAVE)
    one_out, one_in = await connect(alice, bob, BOB, 440, 880)
    two_out, two_in = await connect(carol, dave, DAVE, 523, 659)
    assert carrier(relay_of(first), one_in, shared) is shared
    assert carrier(relay_of(second), two_in, shared) is shared

    # The host counts both servers' legs, and each server sees the other's in the load.
    await hosts.wait_record("shared", lambda r: r is not None and (r.legs, r.calls) == (4, 2))
    await wait_for(lambda: relay_of(first).host_loads == {"shared": 4})
    await wait_for(lambda: relay_of(second).host_loads == {"shared": 4})

    # One server stops: its legs on the host close, the other's call goes on.
    await second.runner.cleanup()
    assert await two_out.ended(timeout=5) is not None
    await hosts.wait_record("shared", lambda r: r is not None and r.legs == 2)
    await wait_for(lambda: relay_of(first).host_loads == {"shared": 2})
    one_out.media.mark("talk")  # type: ignore[union-attr]
    await asyncio.sleep(1.5)
    assert one_out.state == "connected"
    assert talk_fraction(one_out, 880) >= 0.9, "the first server's call lost its audio"
    await one_out.hangup()
    assert await one_out.ended(timeout=5) == "completed"
