"""RTP header rewriting on bytes (RFC 3550 §5.1), for the relay's forwarding path.

A forwarded packet keeps its payload and marker bit; its SSRC, sequence
number and timestamp become those of the outgoing leg's stream (through that
leg's `StreamRewriter`, so the stream stays gap-free across a source switch
and keeps the sender's own gaps: loss and DTX), its payload type becomes the
one negotiated on the outgoing leg, and CSRCs, the incoming header extension
and padding are replaced by the outgoing leg's own extension block (header
extension IDs are negotiated per leg, so the incoming ones mean nothing on
the other leg).

Sans-I/O, no RtpPacket objects: these functions work on `bytes` and
`bytearray` with `struct`, the cheapest form Python offers per packet.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable

from voice.rtp.rewriter import StreamRewriter

#: Size of the fixed RTP header (no CSRC, no extension).
FIXED_HEADER = 12
RTP_VERSION_BITS = 0x80
EXTENSION_BIT = 0x10
PADDING_BIT = 0x20
MARKER_BIT = 0x80

_SEQUENCE_TIMESTAMP = struct.Struct("!HI")
_SEQUENCE_TIMESTAMP_SSRC = struct.Struct("!HII")
_SSRC = struct.Struct("!I")
_EXTENSION_WORDS = struct.Struct("!H")


def header_length(packet: bytes | bytearray) -> int:
    """Length of the RTP header (fixed part, CSRCs, extension), or -1 if malformed.

    Malformed: not version 2, or shorter than the header it announces.
    """
    size = len(packet)
    if size < FIXED_HEADER or packet[0] & 0xC0 != RTP_VERSION_BITS:
        return -1
    length = FIXED_HEADER + 4 * (packet[0] & 0x0F)
    if packet[0] & EXTENSION_BIT:
        if size < length + 4:
            return -1
        length += 4 + 4 * _EXTENSION_WORDS.unpack_from(packet, length + 2)[0]
    return length if length <= size else -1


def payload_end(packet: bytes | bytearray, header: int) -> int:
    """End of the payload (before any padding, §5.1 P bit); <= header if there is none."""
    size = len(packet)
    if packet[0] & PADDING_BIT:
        return size - packet[size - 1]
    return size


def sequence_and_timestamp(packet: bytes | bytearray) -> tuple[int, int]:
    sequence_number, timestamp = _SEQUENCE_TIMESTAMP.unpack_from(packet, 2)
    return sequence_number, timestamp


def ssrc_of(packet: bytes | bytearray) -> int:
    ssrc: int = _SSRC.unpack_from(packet, 8)[0]
    return ssrc


def rewrite_header(
    packet: bytearray,
    rewriter: StreamRewriter,
    source: Hashable,
    now: float,
    *,
    ssrc: int,
    payload_type: int,
) -> bool:
    """Rewrite the fixed header of `packet` in place onto `rewriter`'s output stream.

    Sequence number and timestamp are mapped by the rewriter (False: drop the
    packet, it predates the current source), the SSRC and payload type are
    set, the marker bit is kept. CSRCs and extensions are left as they are.
    """
    sequence_number, timestamp = _SEQUENCE_TIMESTAMP.unpack_from(packet, 2)
    if not rewriter.map(source, sequence_number, timestamp, now):
        return False
    packet[1] = (packet[1] & MARKER_BIT) | (payload_type & 0x7F)
    _SEQUENCE_TIMESTAMP_SSRC.pack_into(
        packet, 2, rewriter.out_sequence_number, rewriter.out_timestamp, ssrc
    )
    return True


def forward_packet(
    packet: bytes,
    header: int,
    end: int,
    rewriter: StreamRewriter,
    source: Hashable,
    now: float,
    *,
    ssrc: int,
    payload_type: int,
    extension: bytes = b"",
) -> bytearray | None:
    """The packet to send on the outgoing leg, or None to drop it.

    `header` and `end` bound the payload (`header_length`, `payload_end`);
    `extension` is the outgoing leg's header extension block (profile,
    length and elements, as aiortc would serialize it; b"" for none).
    """
    if end <= header:
        return None
    out = bytearray(packet)
    if end != len(out):
        del out[end:]
    out[FIXED_HEADER:header] = extension
    out[0] = RTP_VERSION_BITS | EXTENSION_BIT if extension else RTP_VERSION_BITS
    if not rewrite_header(out, rewriter, source, now, ssrc=ssrc, payload_type=payload_type):
        return None
    return out
