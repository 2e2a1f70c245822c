"""The relay's fast path: SRTP forwarding straight from a leg's socket.

aiortc's receive path costs a lot per packet: aioice parses every datagram
as STUN, queues it, the DTLS transport's task takes it off the queue,
unprotects it, parses it into an RtpPacket, routes it and awaits the
receiver; sending serializes a new RtpPacket and awaits two more layers.
Once a leg's ICE and DTLS are up none of that is needed for RTP, so the
fast path intercepts datagrams where they arrive:

    StunProtocol.datagram_received (the nominated pair's socket, this leg only)
      └ RTP with the leg's Opus payload type (RFC 7983 / 5761 demux: byte 0
        in 128..191 and a payload type that RTCP's 200..206 cannot be)
          → rx SRTP unprotect (the pylibsrtp Session aiortc made for this leg)
          → reception statistics of the leg (loss, jitter, media timeout)
          → header rewrite on bytes onto the other leg's stream
            (voice/rtp/header.py through that leg's StreamRewriter)
          → tx SRTP protect with the other leg's Session
          → sendto on the other leg's nominated pair, to its remote address
      └ everything else (STUN, DTLS, RTCP, other payload types) goes to
        aioice's own handler unchanged.

So aiortc keeps doing ICE, consent freshness (RFC 7675), the DTLS handshake
and SRTP key export, RTCP (sender/receiver reports, RTT), and the slow path
stays the fallback: while a leg is not connected, not bridged, or its
nominated pair has changed, packets take aiortc's path and the forwarding
in `Leg.on_rtp`. Nothing here queues, spawns a task or keeps per-packet state.

Seams into aiortc 1.16 / aioice 0.13, all through voice/relay/seams.py:

- the nominated pair's StunProtocol.datagram_received, shadowed by an
  instance attribute; asyncio's and uvloop's datagram transports look the
  method up on every datagram.
- the DTLS transport's SRTP sessions, state and header extension map, its
  aioice Connection and that connection's nominated pair.

A Leg is changed only through its public surface (voice/relay/leg.py):
`received_on_fast_path`, `count_sent` and its stream's `rewriter`.

`enabled` switches the fast path for the whole process (see `set_enabled`):
the benchmark compares both paths with the same calls.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import pylibsrtp
from aiortc.rtp import RtpPacket

from voice.relay import seams
from voice.rtp.header import FIXED_HEADER, forward_packet, header_length, payload_end
from voice.rtp.rewriter import StreamRewriter

__all__ = ["FastPath", "ForwardingLeg", "enabled", "set_enabled"]

#: The fast path is used by legs of this process (the benchmark switches it off).
enabled = True

#: RTP component (rtcp-mux: RTP and RTCP share it).
COMPONENT = 1

_SEQUENCE_TIMESTAMP_SSRC = struct.Struct("!HII")

_installed: weakref.WeakSet[FastPath] = weakref.WeakSet()

#: An unprotected packet: bytes, header length, payload end, arrival time,
#: sequence number, timestamp, SSRC.
Received = tuple[bytes, int, int, float, int, int, int]


class ForwardingLeg(Protocol):
    """A relay leg as the fast path sees it (voice.relay.leg.Leg): what it reads,
    and the only calls through which it changes the leg."""

    @property
    def leg_id(self) -> str: ...

    @property
    def peer(self) -> ForwardingLeg | None: ...

    @property
    def closed(self) -> bool: ...

    @property
    def notice_task(self) -> object | None: ...

    @property
    def fast_path(self) -> FastPath | None: ...

    @property
    def payload_type(self) -> int: ...

    @property
    def ssrc(self) -> int: ...

    @property
    def mid(self) -> str | None: ...

    @property
    def sender(self) -> Any: ...

    @property
    def rewriter(self) -> StreamRewriter:
        """The leg's outgoing stream: the fast path maps forwarded packets onto it."""
        ...

    def ensure_fast_path(self) -> FastPath | None: ...

    def received_on_fast_path(
        self, ssrc: int, sequence_number: int, timestamp: int, size: int
    ) -> float:
        """Count one of the leg's packets (`size` payload octets); its arrival time."""
        ...

    def count_sent(self, size: int, now: float) -> None: ...


def set_enabled(value: bool) -> None:
    """Switch the fast path on or off for every leg of this process.

    Off: every installed interception is removed at once, so packets take
    aiortc's path exactly as without this module. On: legs install it again
    with their next packet.
    """
    global enabled
    enabled = value
    if not value:
        for fast_path in list(_installed):
            fast_path.uninstall()


class FastPath:
    """One leg's nominated pair: intercepts its datagrams and sends on it.

    A snapshot of the leg's ICE pair and SRTP sessions, valid while that
    pair stays nominated and DTLS stays connected (`current`). The leg's own
    RTP is forwarded from here to its peer leg's FastPath.
    """

    def __init__(
        self,
        leg: ForwardingLeg,
        dtls: Any,
        nominated: dict[int, Any],
        pair: Any,
        sessions: tuple[pylibsrtp.Session, pylibsrtp.Session],
        extension: bytes,
    ) -> None:
        self.leg = leg
        self.dtls = dtls
        self.pair = pair
        self.protocol = pair.protocol
        self.transport = pair.protocol.transport
        self.remote_addr: tuple[str, int] = pair.remote_addr
        self.rx, self.tx = sessions
        self.payload_type = leg.payload_type
        self.ssrc = leg.ssrc
        self.extension = extension
        self.srtp_errors = 0
        self._nominated = nominated
        self._source: Hashable = None
        self._source_ssrc = -1
        self._original: Callable[[bytes, tuple[Any, ...]], None] = self.protocol.datagram_received
        self._hook: Callable[[bytes, tuple[Any, ...]], None] | None = None

    @classmethod
    def install(cls, leg: ForwardingLeg) -> FastPath | None:
        """Intercept the leg's nominated pair, or None if it has none yet."""
        dtls = leg.sender.transport
        if not seams.dtls_connected(dtls):
            return None
        sessions = seams.srtp_sessions(dtls)
        if sessions is None:
            return None
        nominated = seams.nominated_pairs(seams.ice_connection(dtls.transport))
        pair = nominated.get(COMPONENT) if nominated is not None else None
        if pair is None or getattr(pair.protocol, "transport", None) is None:
            return None
        if seams.datagrams_intercepted(pair.protocol):
            return None  # intercepted already (by another FastPath of this pair)
        assert nominated is not None
        fast_path = cls(leg, dtls, nominated, pair, sessions, _extension_block(leg, dtls))
        hook = fast_path.datagram_received
        seams.intercept_datagrams(pair.protocol, hook)
        fast_path._hook = hook
        _installed.add(fast_path)
        return fast_path

    def uninstall(self) -> None:
        if self._hook is not None:
            seams.release_datagrams(self.protocol, self._hook)
        self._hook = None
        _installed.discard(self)

    @property
    def installed(self) -> bool:
        return self._hook is not None

    def current(self) -> bool:
        """Still the leg's nominated pair, DTLS connected and the interception in place."""
        return (
            self._hook is not None
            and self._nominated.get(COMPONENT) is self.pair
            and seams.dtls_connected(self.dtls)
        )

    # -- per packet ---------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # RTP of this leg's Opus payload type: byte 1 is then 96..127 or
        # 224..255, never an RTCP packet type (200..206), STUN (0..3 in byte
        # 0) or DTLS (20..63 in byte 0).
        if (
            enabled
            and len(data) > FIXED_HEADER
            and data[0] & 0xC0 == 0x80
            and data[1] & 0x7F == self.payload_type
        ):
            leg = self.leg
            peer = leg.peer
            if peer is not None and not leg.closed and self.current():
                out = peer.fast_path
                if out is None or not out.current():
                    out = peer.ensure_fast_path()
                if out is not None:
                    self.forward(data, out)
                    return
        self._original(data, addr)

    def receive(self, data: bytes) -> Received | None:
        """Unprotect one of this leg's packets and count it in the leg's statistics."""
        try:
            plain = self.rx.unprotect(data)
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return None
        header = header_length(plain)
        if header < 0:
            return None
        end = payload_end(plain, header)
        sequence_number, timestamp, ssrc = _SEQUENCE_TIMESTAMP_SSRC.unpack_from(plain, 2)
        now = self.leg.received_on_fast_path(ssrc, sequence_number, timestamp, end - header)
        return plain, header, end, now, sequence_number, timestamp, ssrc

    def forward(self, data: bytes, out: FastPath) -> None:
        """Unprotect, count, rewrite, protect and send one of this leg's packets."""
        received = self.receive(data)
        if received is None:
            return
        plain, header, end, now, _sequence_number, _timestamp, ssrc = received
        leg = self.leg
        if ssrc != self._source_ssrc:
            # The same source key as Leg.on_rtp: switching paths is no source switch.
            self._source = (leg.leg_id, ssrc)
            self._source_ssrc = ssrc
        peer = out.leg
        if peer.notice_task is not None:
            return  # the relay speaks to that leg for a moment
        packet = forward_packet(
            plain,
            header,
            end,
            peer.rewriter,
            self._source,
            now,
            ssrc=out.ssrc,
            payload_type=out.payload_type,
            extension=out.extension,
        )
        if packet is None:
            return
        try:
            protected = out.tx.protect(bytes(packet))
        except pylibsrtp.Error:
            out.srtp_errors += 1
            return
        out.transport.sendto(protected, out.remote_addr)
        peer.count_sent(end - header, now)


def _extension_block(leg: ForwardingLeg, dtls: Any) -> bytes:
    """The header extension block aiortc's path puts on this leg's packets (the MID)."""
    probe = RtpPacket(payload_type=leg.payload_type, ssrc=leg.ssrc)
    probe.extensions.mid = leg.mid
    return probe.serialize(seams.header_extensions_map(dtls))[FIXED_HEADER:]
