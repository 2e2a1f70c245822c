"""The RFC 4475 torture messages (tests/fixtures/rfc4475) sent over UDP to a running
trunk from an accepted source: each is answered as the RFC says, and the trunk never
falls over (an OPTIONS is still answered after each, and nothing is logged with a
traceback).

The messages' Vias name hosts of 192.0.2.0/24 with no port (or :5050, or rport), so
the answers go to the source address at port 5060 or 5050 (RFC 3261 §18.2.2). The
test peer therefore binds both ports on an address of its own in 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from signaling.sip.trunk import IncomingCall, TrunkSettings
from tests.integration.sip_trunk_support import CALLEE, running_trunk, trunk_port

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rfc4475"
SETTINGS = TrunkSettings(listen_port=0, accepted_sources=("127.0.0.0/8",), options_interval=0)

#: The final answer of a request that is valid, however odd: anything but 400 and 500.
ANSWERED = "answered"
#: A response (or one that cannot be read as one) is dropped: nothing comes back.
SILENT = "silent"


@dataclass(frozen=True)
class Expect:
    """What the RFC says the trunk answers: ``ANSWERED``, ``SILENT`` or these statuses."""

    outcome: str | frozenset[int]
    why: str


def statuses(*codes: int) -> frozenset[int]:
    return frozenset(codes)


EXPECTED: dict[str, Expect] = {
    # 3.1.1: valid messages. INVITEs reach the call handler, which declines (486).
    "wsinv": Expect(ANSWERED, "3.1.1.1: all elements treat it as well formed"),
    "intmeth": Expect(statuses(501), "3.1.1.2: endpoints answer an unknown method 501"),
    "esc01": Expect(ANSWERED, "3.1.1.3: well formed"),
    "escnull": Expect(ANSWERED, "3.1.1.4: well formed (a REGISTER: 405 here)"),
    "esc02": Expect(statuses(501), "3.1.1.5: an endpoint rejects the unknown method with 501"),
    "lwsdisp": Expect(statuses(200), "3.1.1.6: accepted as well formed"),
    "longreq": Expect(ANSWERED, "3.1.1.7: well formed"),
    "dblreq": Expect(ANSWERED, "3.1.1.8: the REGISTER handled, the trailing INVITE ignored"),
    "semiuri": Expect(statuses(200), "3.1.1.9: well formed"),
    "transports": Expect(statuses(200), "3.1.1.10: processed as if every Via were UDP"),
    "mpart01": Expect(ANSWERED, "3.1.1.11: well formed (a MESSAGE: 405 here)"),
    "unreason": Expect(SILENT, "3.1.1.12: a well-formed response to no request of ours"),
    "noreason": Expect(SILENT, "3.1.1.13: a well-formed response to no request of ours"),
    # 3.1.2: invalid messages.
    "badinv01": Expect(statuses(400), "3.1.2.1: respond 400"),
    "clerr": Expect(statuses(400), "3.1.2.2: over UDP, respond 400"),
    "ncl": Expect(statuses(400), "3.1.2.3: respond with an error"),
    "scalar02": Expect(statuses(400), "3.1.2.4: 400 for the CSeq"),
    "scalarlg": Expect(SILENT, "3.1.2.5: a response, discarded"),
    "quotbal": Expect(statuses(400), "3.1.2.6: return 400"),
    "ltgtruri": Expect(statuses(400), "3.1.2.7: reject with 400"),
    "lwsruri": Expect(statuses(400), "3.1.2.8: respond 400"),
    "lwsstart": Expect(statuses(400), "3.1.2.9: acceptable to reject as malformed"),
    "trws": Expect(statuses(400), "3.1.2.10: acceptable to reject as malformed"),
    "escruri": Expect(statuses(400), "3.1.2.11: acceptable to reject with 400"),
    "baddate": Expect(ANSWERED, "3.1.2.12: Date unread here, so not a reason to reject"),
    "regbadct": Expect(statuses(400), "3.1.2.13: reasonable to respond 400"),
    "badaspec": Expect(statuses(400), "3.1.2.14: reasonable to reject with 400"),
    "baddn": Expect(statuses(400), "3.1.2.15: reasonable to reject with 400"),
    "badvers": Expect(statuses(505), "3.1.2.16: respond 505 Version Not Supported"),
    "mismatch01": Expect(statuses(400), "3.1.2.17: respond 400"),
    "mismatch02": Expect(statuses(400, 501), "3.1.2.18: 501, or 400"),
    "bigcode": Expect(SILENT, "3.1.2.19: a response with a code over 699, dropped"),
    # 3.2 and 3.3.
    "badbranch": Expect(statuses(200, 400), "3.2.1: 400, or RFC 2543 matching"),
    "insuf": Expect(statuses(400), "3.3.1: ideally respond 400"),
    "unkscm": Expect(statuses(416), "3.3.2: reject with 416"),
    "novelsc": Expect(statuses(416, 404), "3.3.3: 416 (or 404 for a scheme sometimes served)"),
    "unksm2": Expect(
        statuses(400, 405, 416), "3.3.4: must not break; a registrar answers 400 (405 here)"
    ),
    "bext01": Expect(statuses(420), "3.3.5: 420 Bad Extension for the Require"),
    "invut": Expect(statuses(415), "3.3.6: 415 Unsupported Media Type"),
    "regaut01": Expect(ANSWERED, "3.3.7: an unknown Authorization scheme (405 here)"),
    "multi01": Expect(statuses(400), "3.3.8: respond 400"),
    "mcl01": Expect(statuses(400), "3.3.9: respond 400"),
    "bcast": Expect(SILENT, "3.3.10: a response, not forwarded anywhere"),
    "zeromf": Expect(statuses(200), "3.3.11: an endpoint answers OPTIONS as usual"),
    "cparam01": Expect(ANSWERED, "3.3.12: well formed (405 here)"),
    "cparam02": Expect(ANSWERED, "3.3.13: well formed (405 here)"),
    "regescrt": Expect(ANSWERED, "3.3.14: well formed (405 here)"),
    "sdp01": Expect(statuses(406), "3.3.15: 406, as no body type the request accepts is ours"),
    "inv2543": Expect(ANSWERED, "3.4.1: RFC 2543 syntax is accepted and processed"),
}


def test_every_message_of_the_corpus_has_an_expectation() -> None:
    assert {p.stem for p in FIXTURES.glob("*.sip")} == set(EXPECTED)


class Peer(asyncio.DatagramProtocol):
    """A UDP socket that collects what it gets."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.received.append(data)


@dataclass
class Source:
    """The accepted source: ports 5060 (sends, and gets most answers) and 5050 on
    one address of 127.0.0.0/8."""

    host: str
    main: Peer
    other: Peer

    def received(self) -> list[bytes]:
        return self.main.received + self.other.received

    def send(self, data: bytes, port: int) -> None:
        assert self.main.transport is not None
        self.main.transport.sendto(data, ("127.0.0.1", port))


@contextlib.asynccontextmanager
async def source() -> AsyncIterator[Source]:
    loop = asyncio.get_running_loop()
    rng = random.Random()
    for _ in range(20):
        host = f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
        opened: list[asyncio.DatagramTransport] = []
        try:
            for port in (5060, 5050):
                transport, _ = await loop.create_datagram_endpoint(Peer, local_addr=(host, port))
                opened.append(transport)
        except OSError:
            for transport in opened:
                transport.close()
            continue
        peers = [cast(Peer, t.get_protocol()) for t in opened]
        try:
            yield Source(host, peers[0], peers[1])
        finally:
            for transport in opened:
                transport.close()
        return
    pytest.fail("no free address with ports 5060 and 5050 in 127.0.0.0/8")


def answers_to(message: bytes, received: list[bytes]) -> list[int]:
    """Status codes of the responses to ``message`` among ``received``: matched by its
    Call-ID, or by its branch when it has no Call-ID."""
    found = re.search(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)", message)
    key = b"Call-ID: " + found.group(1) if found else re.findall(rb"branch=(\S+)", message)[0]
    codes = []
    for data in received:
        status = re.match(rb"SIP/2\.0 (\d{3}) ", data)
        if status and key in data:
            codes.append(int(status.group(1)))
    return codes


async def final_answer(source: Source, message: bytes, timeout: float = 2.0) -> int | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        finals = [c for c in answers_to(message, source.received()) if c >= 200]
        if finals:
            return finals[0]
        await asyncio.sleep(0.02)
    return None


def options_probe(host: str, n: int) -> bytes:
    return (
        f"OPTIONS sip:{CALLEE}@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bKprobe{n}\r\n"
        f"From: <sip:+4917700000001@{host}>;tag=probe{n}\r\n"
        f"To: <sip:{CALLEE}@127.0.0.1>\r\n"
        f"Call-ID: torture-probe-{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def decline(call: IncomingCall) -> None:
    await call.reject(486)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_the_trunk_answers_each_torture_message_as_the_rfc_says(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    expect = EXPECTED[name]
    message = (FIXTURES / f"{name}.sip").read_bytes()
    caplog.set_level(logging.WARNING)
    async with source() as peer, running_trunk(SETTINGS, decline) as trunk:
        port = trunk_port(trunk)
        peer.send(message, port)
        if expect.outcome == SILENT:
            await asyncio.sleep(0.3)
            assert answers_to(message, peer.received()) == [], expect.why
        else:
            status = await final_answer(peer, message)
            assert status is not None, f"no final answer; {expect.why}"
            if expect.outcome == ANSWERED:
                assert status not in (400, 500) and (200 <= status < 700), (status, expect.why)
            else:
                assert status in expect.outcome, (status, expect.why)
        # Still serving, and nothing went wrong inside.
        probe = options_probe(peer.host, 1)
        peer.send(probe, port)
        assert await final_answer(peer, probe) == 200
        assert trunk.stats["internal_errors"] == 0
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
