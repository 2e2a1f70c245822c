"""Mutation fuzzing of the SIP trunk of a real server (sip_listen on 127.0.0.1).

The fuzzer plays the operator's SBC. It fires mutants of captured SIP messages
(tests/fuzz/corpus/sip: INVITE, ACK, BYE, CANCEL, responses, a digest exchange)
at the trunk over UDP and over TCP in random chunks, with live Call-IDs swapped
in; it answers the trunk's own INVITEs (an app user keeps calling a phone number)
with mutated responses built from them; an app user's device rings for the
INVITEs to its number. Meanwhile a well-formed OPTIONS and /healthz must be
answered within ANSWER_WITHIN. Afterwards: no ERROR logged and no internal error
counted, the trunk's transactions, dialogs, calls and connections, the calls and
the relay legs are back at zero, memory kept is bounded, and a SIPp call from the
network to the app user works end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import aiohttp

from signaling.keys import CALLS, RELAY, TRUNK
from signaling.sip.message import (
    ParseError,
    Request,
    Response,
    SipTarget,
    make_response,
    parse_message,
)
from signaling.sip.transaction import TimerValues
from signaling.sip.trunk import Ended, Progress, SipTrunk, TrunkSettings
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
from tests.fuzz.mutate import PEER_PORT, TRUNK_PORT, load_corpus, mutate_bytes, mutate_sip
from tests.integration.provisioning import add_bundle, add_operator, add_subscriber
from tests.integration.sip_trunk_support import (
    SDP,
    Events,
    RawPeer,
    running_trunk,
    trunk_port,
    until,
)
from tests.integration.sipp import Sipp
from tests.ports import free_port
from voice.client.client import Phone

LANDLINE = "+4930555000100"
#: Timers of RFC 3261 scaled down (T1 50 ms: Timers B, F, H, J 3.2 s; D 1 s), so the
#: transactions the fuzzer leaves behind end within the test.
FAST_TIMERS = TimerValues(t1=0.05, t2=0.4, t4=0.5, d=1.0)
COPIED = ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")


def _header(message: bytes, names: tuple[str, ...]) -> list[bytes]:
    head = message.split(b"\r\n\r\n", 1)[0]
    return [
        line
        for line in head.split(b"\r\n")[1:]
        if line.split(b":", 1)[0].strip().lower().decode(errors="replace") in names
    ]


class Sbc(asyncio.DatagramProtocol):
    """The fuzzer's UDP socket: the trunk's SBC. It answers the trunk's requests
    (mutated while ``fuzzing``, well-formed after), and remembers the Call-IDs it
    sees so that mutants can name live calls."""

    def __init__(self, responses: list[bytes], rng: random.Random) -> None:
        self.responses = responses
        self.rng = rng
        self.fuzzing = True
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.trunk_port = 0
        self.call_ids: list[bytes] = []
        self.waiting: dict[bytes, asyncio.Future[int]] = {}
        self.received = 0
        self.unparsable = 0

    @classmethod
    async def open(cls, responses: list[bytes], rng: random.Random) -> Sbc:
        sbc = cls(responses, rng)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: sbc, local_addr=("127.0.0.1", 0))
        return sbc

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = transport.get_extra_info("sockname")[1]

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", self.trunk_port))

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.received += 1
        try:
            message = parse_message(data)
        except ParseError:
            # A response to a mutant copies its broken Via, From, To, Call-ID and CSeq.
            self.unparsable += 1
            return
        call_id = message.call_id.encode()
        if isinstance(message, Response):
            future = self.waiting.get(call_id)
            if future is not None and message.cseq.method == "OPTIONS":
                if not future.done() and message.status >= 200:
                    future.set_result(message.status)
                return
        if call_id not in self.call_ids:
            self.call_ids = [*self.call_ids[-19:], call_id]
        if isinstance(message, Response):
            return
        if message.method == "ACK":
            return
        self.answer(message, data)

    def answer(self, request: Request, data: bytes) -> None:
        """A response to one of the trunk's requests: a corpus response with the
        request's Via, From, To, Call-ID and CSeq, mutated while fuzzing."""
        if self.fuzzing:
            template = self.rng.choice(self.responses)
        elif request.method == "INVITE":
            template = b"SIP/2.0 486 Busy Here\r\nContent-Length: 0\r\n\r\n"
        else:
            template = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        head, _, body = template.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        kept = [line for line in lines[1:] if line not in _header(template, COPIED)]
        copied = _header(data, COPIED)
        copied = [
            line + b";tag=sbc1"
            if line.lower().startswith((b"to:", b"t:")) and b"tag=" not in line
            else line
            for line in copied
        ]
        response = b"\r\n".join([lines[0], *copied, *kept]) + b"\r\n\r\n" + body
        if self.fuzzing and self.rng.random() < 0.6:
            response = mutate_sip(response, self.rng, self.responses)
        self.send(response)

    async def options(self, name: str) -> int:
        """A well-formed OPTIONS: its final status, within ANSWER_WITHIN. Sent again
        every 0.5 s meanwhile, as over UDP a client does (Timer E): a datagram may
        be lost on a busy loopback, a trunk that stopped answering may not."""
        call_id = f"probe-{name}@127.0.0.1"
        request = (
            f"OPTIONS sip:{LANDLINE}@127.0.0.1:{self.trunk_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
            f"From: <sip:probe@127.0.0.1>;tag={name}\r\n"
            f"To: <sip:{LANDLINE}@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[call_id.encode()] = future
        try:
            async with asyncio.timeout(ANSWER_WITHIN):
                while True:
                    self.send(request)
                    with contextlib.suppress(TimeoutError):
                        return await asyncio.wait_for(asyncio.shield(future), 0.5)
        finally:
            del self.waiting[call_id.encode()]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _addressed(message: bytes, sbc: Sbc, rng: random.Random) -> bytes:
    """A corpus message with the live ports put back, and perhaps a live Call-ID."""
    message = message.replace(b":%d" % PEER_PORT, b":%d" % sbc.port)
    message = message.replace(b":%d" % TRUNK_PORT, b":%d" % sbc.trunk_port)
    if sbc.call_ids and rng.random() < 0.4:
        live = rng.choice(sbc.call_ids)
        # A Call-ID echoed from a mutant may hold a backslash: a literal replacement.
        message = re.sub(rb"(?im)^(call-id|i)[ \t]*:.*$", lambda _: b"Call-ID: " + live, message)
    return message


async def _over_tcp(port: int, stream: bytes, rng: random.Random) -> None:
    """A TCP connection: the stream in random chunks, the answers read, closed."""
    with contextlib.suppress(OSError, TimeoutError):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            at = 0
            while at < len(stream):
                step = rng.choice([1, 7, 100, 1500, len(stream)])
                writer.write(stream[at : at + step])
                at += step
                await writer.drain()
            async with asyncio.timeout(0.2):
                while await reader.read(65536):
                    pass
        finally:
            writer.close()


async def _calls_to_a_phone_number(alice: Phone, stop: asyncio.Event) -> int:
    """The app user calls the phone number again and again, hanging up each call."""
    count = 0
    while not stop.is_set():
        call = await alice.call(LANDLINE)
        count += 1
        await asyncio.sleep(0.8)
        if call.call_id is not None:
            with contextlib.suppress(Exception):
                await call.hangup()
        with contextlib.suppress(TimeoutError):
            await call.ended(timeout=3)
        if call.media is not None:
            await call.media.close()
    return count


async def _fuzz(server: Server, sbc: Sbc, corpus: list[bytes], seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    sent = 0
    next_probe = loop.time()
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if loop.time() >= next_probe:
                next_probe = loop.time() + 0.5
                assert await sbc.options(str(sent)) == 200
                async with asyncio.timeout(ANSWER_WITHIN):
                    async with session.get(server.url + "/healthz") as response:
                        assert response.status == 200
            message = _addressed(rng.choice(corpus), sbc, rng)
            mutant = message if rng.random() < 0.1 else mutate_sip(message, rng, corpus)
            if rng.random() < 0.04:
                parts = [mutant, *(mutate_bytes(rng.choice(corpus), rng) for _ in range(2))]
                await _over_tcp(sbc.trunk_port, b"".join(parts), rng)
            else:
                sbc.send(mutant[:65000])
            sent += 1
            if sent % 10 == 0:
                await asyncio.sleep(0.005)
    return sent


def _counts(server: Server) -> Callable[[], dict[str, int]]:
    trunk: SipTrunk = server.app[TRUNK]

    def counts() -> dict[str, int]:
        return {
            "calls": server.app[CALLS].active_calls,
            "relay legs": server.app[RELAY].active_legs,
            "transactions": len(trunk.ua.layer.transactions),
            "trunk calls": len(trunk.ua.calls),
            "active trunk calls": len(trunk.ua.active),
            "client handlers": len(trunk.ua.handlers),
            "incoming": len(trunk.ua.incoming),
            "retransmissions": len(trunk.ua.retransmissions),
            "tcp connections": len(trunk._transport.connections),
            "internal errors": trunk.stats["internal_errors"],
        }

    return counts


async def test_mutated_sip_messages_break_nothing(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    rng = random.Random(FUZZ_SEED)
    corpus = load_corpus("sip")
    responses = [m for m in corpus if m.startswith(b"SIP/2.0")]
    sbc = await Sbc.open(responses, rng)
    server = await make_server(
        sip_listen="127.0.0.1:0",
        sip_sbc=(f"udp:127.0.0.1:{sbc.port}",),
        sip_accepted_sources=("127.0.0.1",),
        sip_options_interval=0.0,
        sip_requests_per_second=100_000.0,
        sip_max_calls_per_second=1000.0,
        ring_timeout=2.0,
        media_timeout=3.0,
        overload_loop_lag=0.0,
        call_attempts_per_minute=6000.0,
        call_attempt_burst=1000,
    )
    trunk: SipTrunk = server.app[TRUNK]
    trunk.settings = dataclasses.replace(trunk.settings, timers=FAST_TIMERS)
    trunk.ua.layer.t = FAST_TIMERS
    sbc.trunk_port = next(port for kind, _host, port in trunk.addresses if kind == "udp")
    operator = await add_operator(server)
    bundle = await add_bundle(server, operator, phone_minutes=100_000)
    await add_subscriber(server, ALICE, operator, bundle)
    counts = _counts(server)
    baseline = counts()
    calling: asyncio.Task[int] | None = None
    try:
        with watching_logs() as logs, tracing_memory():
            alice, bob = await server.phone(ALICE), await server.phone(BOB)
            stop = asyncio.Event()
            calling = asyncio.create_task(_calls_to_a_phone_number(alice, stop))
            warm = await _fuzz(server, sbc, corpus, min(3.0, FUZZ_SECONDS / 4), FUZZ_SEED + 1)
            memory_before = traced_memory()
            sent = await _fuzz(server, sbc, corpus, FUZZ_SECONDS, FUZZ_SEED)
            stop.set()
            outgoing = await calling
            sbc.fuzzing = False
            after = await settle(counts, baseline, timeout=20.0)
            memory_after = traced_memory()
            assert after == baseline, f"state left behind after {sent} messages: {after}"
            assert memory_after - memory_before < MEMORY_BOUND, (memory_before, memory_after)
            assert sent + warm > 500 and outgoing >= 2, (sent, outgoing)
            assert trunk.stats["messages_malformed"] > 100, trunk.stats
            assert trunk.stats["calls_incoming"] > 0 and trunk.stats["calls_outgoing"] > 0
            print(f"{sent + warm} messages, {outgoing} outgoing calls, {dict(trunk.stats)}")

            # A phone number calls the app user, who answers: it works end to end.
            bob_calls = await _drain_incoming(bob)
            caller = Sipp(
                "trunk_uac_tone.xml",
                port=free_port(socket.SOCK_DGRAM),
                remote=f"127.0.0.1:{sbc.trunk_port}",
                service=BOB,
                files={"tone.raw": b"\xd5" * 8000 * 5},
                workdir=tmp_path,
            )
            incoming = await bob.incoming(timeout=10)
            assert incoming.peer == LANDLINE, bob_calls
            await incoming.accept()
            assert await incoming.connected(timeout=10)
            assert await incoming.ended(timeout=15) == "completed"
            assert await caller.finished(timeout=10) == 0, caller.errors()
            assert await settle(counts, baseline, timeout=10.0) == baseline
        assert not logs.unexpected(), logs.unexpected()
    finally:
        if calling is not None:
            calling.cancel()  # a failure above must not leave the app user calling
        sbc.close()


async def _drain_incoming(phone: Phone) -> int:
    """Forget the calls that rang during the fuzzing (all over by now)."""
    drained = 0
    with contextlib.suppress(TimeoutError):
        while True:
            await phone.incoming(timeout=0.05)
            drained += 1
    return drained


# Regressions: what the fuzzer found ----------------------------------------------------


async def _requests(
    peer: RawPeer, method: str, count: int = 1, timeout: float = 5.0
) -> list[Request]:
    """The requests of ``method`` the peer got (retransmissions once), waiting for
    ``count`` of them."""

    def found() -> list[Request]:
        out: dict[tuple[str, int], Request] = {}
        for raw in peer.received:
            with contextlib.suppress(ParseError):
                message = parse_message(raw)
                if isinstance(message, Request) and message.method == method:
                    out.setdefault((message.call_id, message.cseq.seq), message)
        return list(out.values())

    await until(lambda: len(found()) >= count, timeout)
    return found()


async def test_an_invite_without_a_from_tag_gets_400() -> None:
    """Found by the fuzzer: an INVITE whose From had no tag raised DialogError inside
    the trunk (an internal error), and its transaction was never answered."""
    peer = await RawPeer.open()
    settings = TrunkSettings(listen_port=0, accepted_sources=("127.0.0.1",), options_interval=0)
    try:
        with watching_logs() as logs:
            async with running_trunk(settings) as trunk:
                invite = (
                    f"INVITE sip:{LANDLINE}@127.0.0.1 SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKnotag;rport\r\n"
                    "From: <sip:+4917700000001@127.0.0.1>\r\n"
                    f"To: <sip:{LANDLINE}@127.0.0.1>\r\n"
                    "Call-ID: no-from-tag\r\nCSeq: 1 INVITE\r\n"
                    f"Contact: <sip:+4917700000001@127.0.0.1:{peer.port}>\r\n"
                    f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}"
                ).encode()
                responses = await peer.exchange(invite, trunk_port(trunk))
                assert [r.status for r in responses][-1:] == [400], responses
                assert "From tag" in (responses[-1].headers.get("Warning") or "")
                assert trunk.stats["internal_errors"] == 0
        assert not logs.unexpected(), logs.unexpected()
    finally:
        peer.close()


async def test_a_cancelled_invite_that_never_ends_is_let_go() -> None:
    """Found by the fuzzer: an INVITE answered 180 and then nothing, even after our
    CANCEL, kept its transaction and its handler for as long as the process ran."""
    peer = await RawPeer.open()
    settings = TrunkSettings(
        listen_port=0,
        sbc=(SipTarget("udp", "127.0.0.1", peer.port),),
        options_interval=0,
        timers=FAST_TIMERS,
    )
    try:
        async with running_trunk(settings) as trunk:
            events = Events()
            call = await trunk.invite(
                to_number=LANDLINE, from_number=ALICE, sdp=SDP, on_event=events
            )
            (invite,) = await _requests(peer, "INVITE")
            peer.send(make_response(invite, 180, to_tag="far").encode(), trunk_port(trunk))
            await events.wait_for(Progress)
            await call.cancel("cancelled")
            (cancel,) = await _requests(peer, "CANCEL")
            peer.send(make_response(cancel, 200).encode(), trunk_port(trunk))
            # No 487 ever comes: after 64*T1 the call ends, its transaction with it.
            ended = await events.wait_for(Ended, timeout=FAST_TIMERS.timeout + 5)
            assert isinstance(ended, Ended) and ended.status == 487
            # (An ended call lingers 64*T1 + T4 for late retransmissions.)
            await until(
                lambda: not (trunk.ua.layer.transactions or trunk.ua.handlers or trunk.ua.calls),
                FAST_TIMERS.timeout + FAST_TIMERS.t4 + 2,
            )
    finally:
        peer.close()


async def test_an_answer_without_usable_sdp_fails_the_call(make_server: ServerFactory) -> None:
    """Found by the fuzzer: a 200 OK with no (or a broken) SDP raised ValueError in a
    task of the call service ("Task exception was never retrieved") and the call
    waited for media. Now the call fails at once and the network gets its ACK and BYE."""
    peer = await RawPeer.open()
    try:
        server = await make_server(
            sip_listen="127.0.0.1:0",
            sip_sbc=(f"udp:127.0.0.1:{peer.port}",),
            sip_accepted_sources=("127.0.0.1",),
            sip_options_interval=0.0,
        )
        operator = await add_operator(server)
        bundle = await add_bundle(server, operator, phone_minutes=100)
        await add_subscriber(server, ALICE, operator, bundle)
        port = next(p for kind, _h, p in server.app[TRUNK].addresses if kind == "udp")
        with watching_logs() as logs:
            alice = await server.phone(ALICE)
            for n, body in enumerate([b"", b"v=0\r\nm=audio 0 RTP/AVP 8\r\n"]):
                outgoing = await alice.call(LANDLINE)
                invite = (await _requests(peer, "INVITE", n + 1))[n]
                ok = make_response(invite, 200, to_tag=f"far{n}", body=body)
                ok.headers.set("Contact", f"<sip:{LANDLINE}@127.0.0.1:{peer.port}>")
                if body:
                    ok.headers.set("Content-Type", "application/sdp")
                peer.send(ok.encode(), port)
                assert await outgoing.ended(timeout=5) == "failed"
                assert len(await _requests(peer, "BYE", n + 1)) == n + 1
            await asyncio.sleep(0.2)
            assert server.app[CALLS].active_calls == 0
        assert not logs.unexpected(), logs.unexpected()
    finally:
        peer.close()
