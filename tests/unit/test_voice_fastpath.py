"""The relay fast path's demux, forwarding and fallbacks, with stand-ins for aiortc/aioice."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from voice.relay import fastpath
from voice.relay.fastpath import FastPath
from voice.rtp.rewriter import StreamRewriter
from voice.rtp.stats import ReceptionStatistics

OPUS = 111
KEY_A = os.urandom(30)
KEY_B = os.urandom(30)


def session(key: bytes, outbound: bool) -> Session:
    direction = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
    return Session(Policy(key=key, ssrc_type=direction))


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


class Protocol:
    """aioice's StunProtocol as far as the fast path sees it."""

    def __init__(self) -> None:
        self.transport = Transport()
        self.original: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.original.append(data)


class FakeLeg:
    """A relay Leg as far as the fast path may see and change it (fastpath.ForwardingLeg)."""

    def __init__(self, leg_id: str, key: bytes, port: int) -> None:
        self.leg_id = leg_id
        self.protocol = Protocol()
        self.pair = SimpleNamespace(protocol=self.protocol, remote_addr=("127.0.0.1", port))
        self.connection = SimpleNamespace(_nominated={1: self.pair})
        self.dtls = SimpleNamespace(
            _state=DtlsState.CONNECTED,
            # What the device sends us, and what we send it: same key both ways here.
            _rx_srtp=session(key, outbound=False),
            _tx_srtp=session(key, outbound=True),
            transport=SimpleNamespace(_connection=self.connection),
            _rtp_header_extensions_map=HeaderExtensionsMap(),
        )
        self.sender = SimpleNamespace(transport=self.dtls)
        self.payload_type = OPUS
        self.ssrc = 0x5000 + port
        self.mid = "0"
        self.peer: FakeLeg | None = None
        self.closed = False
        self.fast_path_packets = 0
        self.remote_ssrc: int | None = None
        self.reception = ReceptionStatistics(48000)
        self.rewriter = StreamRewriter(initial_sequence_number=100, initial_timestamp=1000)
        self.packets_sent = 0
        self.bytes_sent = 0
        self.last_send_time = 0.0
        self.fast_path: FastPath | None = None
        self.notice_task: object | None = None

    def received_on_fast_path(
        self, ssrc: int, sequence_number: int, timestamp: int, size: int
    ) -> float:
        self.fast_path_packets += 1
        self.remote_ssrc = ssrc
        self.reception.receive(sequence_number, timestamp, 1.0, size)
        return 1.0

    def count_sent(self, size: int, now: float) -> None:
        self.packets_sent += 1
        self.bytes_sent += size
        self.last_send_time = now

    def ensure_fast_path(self) -> FastPath | None:
        # As Leg.ensure_fast_path does.
        if self.fast_path is None or not self.fast_path.current():
            if self.fast_path is not None:
                self.fast_path.uninstall()
            self.fast_path = FastPath.install(self)
        return self.fast_path


@pytest.fixture
def legs() -> Iterator[tuple[FakeLeg, FakeLeg]]:
    a, b = FakeLeg("a", KEY_A, 4000), FakeLeg("b", KEY_B, 5000)
    a.peer, b.peer = b, a
    assert a.ensure_fast_path() is not None and b.ensure_fast_path() is not None
    yield a, b
    fastpath.set_enabled(True)


def device_packet(leg: FakeLeg, seq: int, pt: int = OPUS, payload: bytes = b"opus!") -> bytes:
    """An SRTP packet as the device of `leg` sends it."""
    plain = struct.pack("!BBHII", 0x80, pt, seq, seq * 960, 0xD00D) + payload
    return session(KEY_A if leg.leg_id == "a" else KEY_B, outbound=True).protect(plain)


def received_by_device(leg: FakeLeg, data: bytes) -> RtpPacket:
    key = KEY_A if leg.leg_id == "a" else KEY_B
    return RtpPacket.parse(session(key, outbound=False).unprotect(data))


def test_rtp_is_forwarded_to_the_peer_pair_and_counted(legs: tuple[FakeLeg, FakeLeg]) -> None:
    a, b = legs
    a.protocol.datagram_received(device_packet(a, 7), ("127.0.0.1", 4000))
    assert a.protocol.original == []
    assert len(b.protocol.transport.sent) == 1
    data, addr = b.protocol.transport.sent[0]
    assert addr == ("127.0.0.1", 5000)
    packet = received_by_device(b, data)
    assert packet.ssrc == b.ssrc and packet.payload_type == OPUS
    assert (packet.sequence_number, packet.timestamp) == (100, 1000)
    assert packet.payload == b"opus!"
    assert a.fast_path_packets == 1 and a.reception.packets_received == 1
    assert a.remote_ssrc == 0xD00D
    assert b.packets_sent == 1 and b.bytes_sent == 5 and b.last_send_time == 1.0


def test_no_audio_is_forwarded_over_a_notice_and_the_stream_continues_after(
    legs: tuple[FakeLeg, FakeLeg],
) -> None:
    a, b = legs
    b.notice_task = object()  # the relay plays b its notice tone
    a.protocol.datagram_received(device_packet(a, 7), ("127.0.0.1", 4000))
    assert b.protocol.transport.sent == [] and a.protocol.original == []
    assert a.reception.packets_received == 1  # still counted as received
    b.notice_task = None
    a.protocol.datagram_received(device_packet(a, 8), ("127.0.0.1", 4000))
    ((data, _addr),) = b.protocol.transport.sent
    assert received_by_device(b, data).payload == b"opus!"


def test_stun_dtls_rtcp_and_other_payload_types_take_aioice_path(
    legs: tuple[FakeLeg, FakeLeg],
) -> None:
    a, b = legs
    stun = b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12)
    dtls = b"\x16\xfe\xfd" + bytes(20)
    rtcp_rr = struct.pack("!BBHI", 0x80, 201, 1, 0xD00D) + bytes(20)
    rtcp_sr = struct.pack("!BBHI", 0x80, 200, 6, 0xD00D) + bytes(30)
    other_pt = device_packet(a, 1, pt=13)
    for datagram in (stun, dtls, rtcp_rr, rtcp_sr, other_pt):
        a.protocol.datagram_received(datagram, ("127.0.0.1", 4000))
    assert a.protocol.original == [stun, dtls, rtcp_rr, rtcp_sr, other_pt]
    assert b.protocol.transport.sent == []


def test_falls_back_while_unbridged_closed_or_pair_changed(legs: tuple[FakeLeg, FakeLeg]) -> None:
    a, b = legs
    a.peer = None
    a.protocol.datagram_received(b"x" + device_packet(a, 1)[1:], ("127.0.0.1", 4000))
    assert len(a.protocol.original) == 1
    a.peer = b
    a.closed = True
    a.protocol.datagram_received(device_packet(a, 2), ("127.0.0.1", 4000))
    assert len(a.protocol.original) == 2
    a.closed = False
    # The peer's nominated pair changed: its next packet goes out on the new pair.
    new_pair = SimpleNamespace(protocol=Protocol(), remote_addr=("127.0.0.1", 5001))
    b.connection._nominated[1] = new_pair
    a.protocol.datagram_received(device_packet(a, 3), ("127.0.0.1", 4000))
    assert len(a.protocol.original) == 2
    assert b.protocol.transport.sent == []
    assert [addr for _, addr in new_pair.protocol.transport.sent] == [("127.0.0.1", 5001)]
    assert "datagram_received" not in vars(b.protocol), "old pair released"
    # This leg's own pair changed: aioice's path until the leg reinstalls.
    a.connection._nominated[1] = SimpleNamespace(protocol=Protocol(), remote_addr=("127.0.0.1", 2))
    a.protocol.datagram_received(device_packet(a, 4), ("127.0.0.1", 4000))
    assert len(a.protocol.original) == 3
    assert a.fast_path_packets == 1


def test_dtls_not_connected_falls_back(legs: tuple[FakeLeg, FakeLeg]) -> None:
    a, b = legs
    b.dtls._state = DtlsState.CLOSED
    a.protocol.datagram_received(device_packet(a, 1), ("127.0.0.1", 4000))
    assert len(a.protocol.original) == 1


def test_bad_srtp_is_dropped_not_passed_on(legs: tuple[FakeLeg, FakeLeg]) -> None:
    a, b = legs
    forged = bytearray(device_packet(a, 1))
    forged[-1] ^= 0xFF
    a.protocol.datagram_received(bytes(forged), ("127.0.0.1", 4000))
    assert a.fast_path is not None and a.fast_path.srtp_errors == 1
    assert a.protocol.original == [] and b.protocol.transport.sent == []


def test_switching_off_uninstalls_and_uninstall_restores_the_method(
    legs: tuple[FakeLeg, FakeLeg],
) -> None:
    a, b = legs
    assert "datagram_received" in vars(a.protocol)
    fastpath.set_enabled(False)
    assert "datagram_received" not in vars(a.protocol)
    assert "datagram_received" not in vars(b.protocol)
    assert a.fast_path is not None and not a.fast_path.current()
    fastpath.set_enabled(True)
    assert a.ensure_fast_path() is not None
    assert "datagram_received" in vars(a.protocol)
    # One interception per pair.
    assert FastPath.install(a) is None


def test_forwarded_stream_has_no_gaps_across_many_packets(legs: tuple[FakeLeg, FakeLeg]) -> None:
    a, b = legs
    device = session(KEY_A, outbound=True)
    for seq in range(65530, 65530 + 20):
        plain = struct.pack("!BBHII", 0x80, OPUS, seq & 0xFFFF, seq * 960 & 0xFFFFFFFF, 0xD00D)
        a.protocol.datagram_received(device.protect(plain + b"abc"), ("127.0.0.1", 4000))
    device_b = session(KEY_B, outbound=False)
    sequence_numbers = [
        RtpPacket.parse(device_b.unprotect(data)).sequence_number
        for data, _ in b.protocol.transport.sent
    ]
    assert sequence_numbers == list(range(100, 120))
    assert a.reception.packets_lost == 0


def test_the_stand_in_offers_what_a_leg_offers_the_fast_path() -> None:
    import inspect

    from voice.relay.leg import Leg

    for name in ("received_on_fast_path", "count_sent", "ensure_fast_path"):
        ours, theirs = getattr(FakeLeg, name), getattr(Leg, name)
        assert inspect.signature(ours) == inspect.signature(theirs), name
    for name in ("remote_ssrc", "payload_type", "mid"):
        assert isinstance(inspect.getattr_static(Leg, name), property), name
