"""Bytes-level RTP header rewriting for the relay's fast path (voice/rtp/header.py)."""

from __future__ import annotations

import itertools
import struct

from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from voice.rtp.header import (
    forward_packet,
    header_length,
    payload_end,
    rewrite_header,
    sequence_and_timestamp,
    ssrc_of,
)
from voice.rtp.rewriter import StreamRewriter, sequence_delta, timestamp_delta

FRAME = 960
OUT_SSRC = 0x11223344
OUT_PT = 111


def rtp(
    seq: int,
    ts: int,
    *,
    ssrc: int = 0xCAFE,
    pt: int = 96,
    marker: int = 0,
    payload: bytes = b"opus",
    csrc: list[int] | None = None,
    extension: tuple[int, bytes] | None = None,
    padding: int = 0,
) -> bytes:
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension else 0) | len(csrc or [])
    data = struct.pack("!BBHII", first, (marker << 7) | pt, seq, ts, ssrc)
    for value in csrc or []:
        data += struct.pack("!I", value)
    if extension:
        profile, body = extension
        data += struct.pack("!HH", profile, len(body) // 4) + body
    data += payload
    if padding:
        data += bytes(padding - 1) + bytes([padding])
    return data


def forward(
    rewriter: StreamRewriter, packet: bytes, source: object, now: float, extension: bytes = b""
) -> bytearray | None:
    header = header_length(packet)
    return forward_packet(
        packet,
        header,
        payload_end(packet, header),
        rewriter,
        source,
        now,
        ssrc=OUT_SSRC,
        payload_type=OUT_PT,
        extension=extension,
    )


def parsed(data: bytes | bytearray) -> RtpPacket:
    return RtpPacket.parse(bytes(data))


def test_header_length_covers_csrc_and_extension() -> None:
    assert header_length(rtp(1, 2)) == 12
    assert header_length(rtp(1, 2, csrc=[1, 2])) == 20
    assert header_length(rtp(1, 2, extension=(0xBEDE, b"\x10\x01\x00\x00"))) == 20
    assert header_length(rtp(1, 2, csrc=[7], extension=(0xBEDE, bytes(8)))) == 28
    assert header_length(b"\x80\x60") == -1
    assert header_length(b"\x40" + bytes(20)) == -1  # version 1
    # An extension announcing more words than the packet holds.
    assert header_length(rtp(1, 2, extension=(0xBEDE, bytes(4)))[:18]) == -1


def test_payload_end_skips_padding() -> None:
    packet = rtp(1, 2, payload=b"abcdef", padding=4)
    assert payload_end(packet, header_length(packet)) == 18
    plain = rtp(1, 2, payload=b"abcdef")
    assert payload_end(plain, 12) == len(plain)


def test_rewrite_header_sets_ssrc_payload_type_and_keeps_marker() -> None:
    rewriter = StreamRewriter(initial_sequence_number=500, initial_timestamp=9000)
    packet = bytearray(rtp(40_000, 123_456, pt=96, marker=1, payload=b"xyz"))
    assert rewrite_header(packet, rewriter, "a", 0.0, ssrc=OUT_SSRC, payload_type=OUT_PT)
    out = parsed(packet)
    assert (out.sequence_number, out.timestamp, out.ssrc) == (500, 9000, OUT_SSRC)
    assert out.payload_type == OUT_PT and out.marker == 1
    assert out.payload == b"xyz"
    assert sequence_and_timestamp(packet) == (500, 9000)
    assert ssrc_of(packet) == OUT_SSRC


def test_forwarding_matches_the_rewriter_used_by_the_slow_path() -> None:
    bytes_rewriter = StreamRewriter(initial_sequence_number=7, initial_timestamp=70)
    object_rewriter = StreamRewriter(initial_sequence_number=7, initial_timestamp=70)
    inputs = [("ring", i, i * FRAME, i * 0.02) for i in range(5)]
    inputs += [(("b", 1), 30_000 + i, 5_000_000 + i * FRAME, 0.1 + i * 0.02) for i in range(5)]
    for source, seq, ts, now in inputs:
        out = forward(bytes_rewriter, rtp(seq, ts), source, now)
        expected = object_rewriter.rewrite(source, seq, ts, now)
        assert out is not None and expected is not None
        assert sequence_and_timestamp(out) == (expected.sequence_number, expected.timestamp)


def test_source_switch_is_gap_free_and_dtx_gaps_are_kept() -> None:
    rewriter = StreamRewriter(initial_sequence_number=100, initial_timestamp=1_000)
    outputs: list[tuple[int, int]] = []
    now = 0.0
    for index in range(10):  # ringback
        out = forward(rewriter, rtp(index, index * FRAME), ("ringback", 1), now)
        assert out is not None
        outputs.append(sequence_and_timestamp(out))
        now += 0.02
    # Forwarded stream, with a DTX pause: 400 ms without packets, sequence continuous.
    forwarded = [(60_000 + i, 2_000_000 + i * FRAME) for i in range(5)]
    forwarded += [(60_005 + i, 2_000_000 + (25 + i) * FRAME) for i in range(5)]
    for seq, ts in forwarded:
        out = forward(rewriter, rtp(seq, ts, ssrc=0xB0B), ("b", 0xB0B), now)
        assert out is not None
        outputs.append(sequence_and_timestamp(out))
        now += 0.02
    sequence_steps = [sequence_delta(b[0], a[0]) for a, b in itertools.pairwise(outputs)]
    timestamp_steps = [timestamp_delta(b[1], a[1]) for a, b in itertools.pairwise(outputs)]
    assert sequence_steps == [1] * 19, "no sequence gap invented, none at the switch"
    assert timestamp_steps[:14] == [FRAME] * 14
    assert timestamp_steps[14] == 21 * FRAME, "the sender's DTX jump is kept as it is"
    assert timestamp_steps[15:] == [FRAME] * 4


def test_loss_gap_is_kept() -> None:
    rewriter = StreamRewriter(initial_sequence_number=0, initial_timestamp=0)
    first = forward(rewriter, rtp(10, 0), "s", 0.0)
    after_loss = forward(rewriter, rtp(13, 3 * FRAME), "s", 0.06)
    assert first is not None and after_loss is not None
    assert sequence_and_timestamp(after_loss) == (3, 3 * FRAME)


def test_sixteen_and_thirty_two_bit_wrap() -> None:
    rewriter = StreamRewriter(initial_sequence_number=0xFFFE, initial_timestamp=0xFFFFFFFF - FRAME)
    seqs, stamps = [], []
    for index in range(4):
        # The input wraps too, at a different point.
        out = forward(
            rewriter,
            rtp((0xFFFF + index) & 0xFFFF, (0xFFFFFC00 + index * FRAME) % (1 << 32)),
            "s",
            0,
        )
        assert out is not None
        seq, ts = sequence_and_timestamp(out)
        seqs.append(seq)
        stamps.append(ts)
    assert seqs == [0xFFFE, 0xFFFF, 0, 1]
    assert stamps == [0xFFFFFFFF - FRAME, 0xFFFFFFFF, FRAME - 1, 2 * FRAME - 1]


def test_packets_older_than_the_current_source_start_are_dropped() -> None:
    rewriter = StreamRewriter(initial_sequence_number=0, initial_timestamp=0)
    assert forward(rewriter, rtp(500, 0), "s", 0.0) is not None
    assert forward(rewriter, rtp(499, 0), "s", 0.0) is None


def test_csrc_extension_and_padding_are_replaced_by_the_outgoing_block() -> None:
    rewriter = StreamRewriter(initial_sequence_number=1, initial_timestamp=2)
    incoming = rtp(
        5,
        6,
        payload=b"payload!",
        csrc=[0xAAAA, 0xBBBB],
        extension=(0xBEDE, b"\x22\x01\x02\x03\x40\x05\x00\x00"),
        padding=3,
    )
    mid_block = b"\xbe\xde\x00\x01" + b"\x10\x30\x00\x00"  # one-byte id 1, mid "0"
    out = forward(rewriter, incoming, "s", 0.0, extension=mid_block)
    assert out is not None
    assert len(out) == 12 + len(mid_block) + len(b"payload!")
    extensions_map = HeaderExtensionsMap()
    packet = RtpPacket.parse(bytes(out), extensions_map)
    assert packet.csrc == [] and packet.padding_size == 0
    assert packet.payload == b"payload!"
    assert packet.ssrc == OUT_SSRC and packet.payload_type == OUT_PT
    assert bytes(out[12:20]) == mid_block
    bare = forward(
        StreamRewriter(initial_sequence_number=1, initial_timestamp=2), incoming, "s", 0.0
    )
    assert bare is not None
    assert bare[0] == 0x80 and bytes(bare[12:]) == b"payload!"


def test_empty_payload_is_dropped() -> None:
    rewriter = StreamRewriter(initial_sequence_number=1, initial_timestamp=2)
    assert forward(rewriter, rtp(1, 1, payload=b""), "s", 0.0) is None
    assert forward(rewriter, rtp(1, 1, payload=b"", padding=4), "s", 0.0) is None
