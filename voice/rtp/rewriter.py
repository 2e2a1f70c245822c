"""Map several input RTP streams onto one continuous output stream.

A relay leg sends one RTP stream to its device (one SSRC, RFC 3550 §5.1),
but the packets on it come from different places over a call's life: first
the relay's own ringback, then the other leg's forwarded packets. A receiver
treats a jump in sequence number as loss and a jump in timestamp as a gap in
playout, so the switch between sources must look like nothing happened.
Within one source, gaps are kept as they are: they are real loss (the
receiver should conceal it) or DTX (timestamps jump, sequence numbers don't).

Sans-I/O: fed header fields and the current time, returns header fields.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

SEQUENCE_MODULO = 1 << 16
TIMESTAMP_MODULO = 1 << 32


def sequence_delta(a: int, b: int) -> int:
    """Signed distance a - b between two 16-bit sequence numbers (RFC 1982 style)."""
    delta = (a - b) % SEQUENCE_MODULO
    return delta - SEQUENCE_MODULO if delta >= SEQUENCE_MODULO // 2 else delta


def timestamp_delta(a: int, b: int) -> int:
    """Signed distance a - b between two 32-bit RTP timestamps."""
    delta = (a - b) % TIMESTAMP_MODULO
    return delta - TIMESTAMP_MODULO if delta >= TIMESTAMP_MODULO // 2 else delta


@dataclass(frozen=True)
class RewrittenHeader:
    sequence_number: int
    timestamp: int


class StreamRewriter:
    """The RTP stream state (sequence number, timestamp) of one outgoing stream.

    `rewrite(source, seq, ts, now)` translates a packet of input stream
    `source` onto the output stream. When the source changes, the new source
    continues at last sequence number + 1, and its timestamps continue at the
    last timestamp plus the wall-clock time elapsed (at least one frame), so
    the receiver's playout clock keeps running at real time.
    """

    def __init__(
        self,
        *,
        initial_sequence_number: int,
        initial_timestamp: int,
        clock_rate: int = 48000,
        frame_samples: int = 960,
    ) -> None:
        self._clock_rate = clock_rate
        self._frame_samples = frame_samples
        self._initial_sequence_number = initial_sequence_number % SEQUENCE_MODULO
        self._initial_timestamp = initial_timestamp % TIMESTAMP_MODULO
        self._source: Hashable | None = None
        self._sequence_offset = 0
        self._timestamp_offset = 0
        self._first_input_sequence = 0
        # Highest output header so far and when it was produced.
        self._last_sequence_number: int | None = None
        self._last_timestamp = 0
        self._last_time = 0.0
        self.packets = 0
        # Output fields of the last packet `map` accepted.
        self.out_sequence_number = 0
        self.out_timestamp = 0

    @property
    def source(self) -> Hashable | None:
        return self._source

    @property
    def last_sequence_number(self) -> int | None:
        return self._last_sequence_number

    @property
    def last_timestamp(self) -> int:
        return self._last_timestamp

    def rewrite(
        self, source: Hashable, sequence_number: int, timestamp: int, now: float
    ) -> RewrittenHeader | None:
        """Output header for this input packet, or None to drop it.

        A packet older than the first one seen from the current source is
        dropped: its output sequence number would collide with packets
        already sent from the previous source.
        """
        if not self.map(source, sequence_number, timestamp, now):
            return None
        return RewrittenHeader(self.out_sequence_number, self.out_timestamp)

    def map(self, source: Hashable, sequence_number: int, timestamp: int, now: float) -> bool:
        """Like `rewrite`, without building a header object: False to drop the packet.

        The output fields are left in `out_sequence_number` and `out_timestamp`
        (the per-packet forwarding path reads them from there).
        """
        if source != self._source:
            self._switch(source, sequence_number, timestamp, now)
        elif sequence_delta(sequence_number, self._first_input_sequence) < 0:
            return False

        out_sequence = (sequence_number + self._sequence_offset) % SEQUENCE_MODULO
        out_timestamp = (timestamp + self._timestamp_offset) % TIMESTAMP_MODULO
        if (
            self._last_sequence_number is None
            or sequence_delta(out_sequence, self._last_sequence_number) > 0
        ):
            self._last_sequence_number = out_sequence
            self._last_timestamp = out_timestamp
            self._last_time = now
        self.packets += 1
        self.out_sequence_number = out_sequence
        self.out_timestamp = out_timestamp
        return True

    def _switch(self, source: Hashable, sequence_number: int, timestamp: int, now: float) -> None:
        if self._last_sequence_number is None:
            next_sequence = self._initial_sequence_number
            next_timestamp = self._initial_timestamp
        else:
            elapsed = round((now - self._last_time) * self._clock_rate)
            next_sequence = (self._last_sequence_number + 1) % SEQUENCE_MODULO
            next_timestamp = (
                self._last_timestamp + max(self._frame_samples, elapsed)
            ) % TIMESTAMP_MODULO
        self._source = source
        self._first_input_sequence = sequence_number
        self._sequence_offset = (next_sequence - sequence_number) % SEQUENCE_MODULO
        self._timestamp_offset = (next_timestamp - timestamp) % TIMESTAMP_MODULO
