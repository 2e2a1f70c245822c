"""A small reordering buffer for a plain-RTP leg's incoming audio, paced by arrival.

The relay transcodes what an RTP leg sends (G.711) into Opus frames for a
WebRTC leg, and an encoder must see the audio in order and without holes.
This buffer holds packets for `depth` sequence numbers (40 ms at 20 ms
packets), releases them in sequence order, and releases a hole as a lost
slot (the caller conceals it) once `depth` later packets have arrived. It
never waits for a clock: each arriving packet releases what has become due,
so an on-time stream gets exactly one slot out per packet in, a lost packet
never stalls the stream, and no timer runs per leg. Timing jitter is left to
the WebRTC receiver's own jitter buffer: released slots keep their RTP
timestamps.

Sans-I/O: fed sequence numbers, timestamps and payloads; returns slots.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JitterBuffer", "Slot"]

SEQUENCE_MODULO = 1 << 16
TIMESTAMP_MODULO = 1 << 32
#: A jump this far ahead (or back) is a restarted stream, not loss: start over.
MAX_JUMP = 100


def _sequence_delta(a: int, b: int) -> int:
    delta = (a - b) % SEQUENCE_MODULO
    return delta - SEQUENCE_MODULO if delta >= SEQUENCE_MODULO // 2 else delta


@dataclass(frozen=True)
class Slot:
    """One released packet in sequence order; payload None for a lost packet."""

    sequence_number: int
    timestamp: int
    payload: bytes | None
    payload_type: int = 0

    @property
    def lost(self) -> bool:
        return self.payload is None


class JitterBuffer:
    def __init__(self, depth: int = 2, capacity: int = 16, default_step: int = 160) -> None:
        if depth < 0 or capacity < depth + 1:
            raise ValueError("need depth >= 0 and capacity > depth")
        self.depth = depth
        self.capacity = capacity
        self._held: dict[int, tuple[int, bytes, int]] = {}  # extended seq -> ts, payload, pt
        self._next: int | None = None  # extended sequence number to release next
        self._newest = 0
        self._last_timestamp: int | None = None
        self._last_lost = False
        self._step = default_step  # timestamp units per packet, learned
        self.received = 0
        self.released = 0
        self.concealed = 0
        self.late = 0
        self.duplicates = 0
        self.restarts = 0

    @property
    def step(self) -> int:
        """Timestamp units between consecutive packets, as learned from the stream."""
        return self._step

    def push(
        self, sequence_number: int, timestamp: int, payload: bytes, payload_type: int = 0
    ) -> list[Slot]:
        """Hold one packet; return the slots now due, in order."""
        self.received += 1
        if self._next is None:
            self._start(sequence_number)
        assert self._next is not None
        extended = self._next + _sequence_delta(sequence_number, self._next % SEQUENCE_MODULO)
        if extended < self._next:
            if self._next - extended > MAX_JUMP:
                self.restarts += 1
                self.reset()
                return self.push(sequence_number, timestamp, payload, payload_type)
            self.late += 1
            return []
        if extended - self._newest > MAX_JUMP:
            # The sender restarted its sequence: play out what is held, then start over.
            slots = self.flush()
            self.restarts += 1
            self._start(sequence_number)
            return slots + self.push(sequence_number, timestamp, payload, payload_type)
        if extended in self._held:
            self.duplicates += 1
            return []
        self._held[extended] = (timestamp, payload, payload_type)
        self._newest = max(self._newest, extended)
        return self._release(self.depth)

    def flush(self) -> list[Slot]:
        """Everything held, in order (holes concealed); the buffer stays in sequence."""
        if self._next is None:
            return []  # nothing was pushed since the start or a reset
        return self._release(0)

    def reset(self) -> None:
        """Forget everything: the next packet starts a new stream."""
        self._held.clear()
        self._next = None
        self._last_timestamp = None

    def _start(self, sequence_number: int) -> None:
        self._next = sequence_number
        self._newest = sequence_number

    def _release(self, depth: int) -> list[Slot]:
        slots: list[Slot] = []
        assert self._next is not None
        while self._held and (
            self._newest - self._next >= depth or len(self._held) > self.capacity
        ):
            held = self._held.pop(self._next, None)
            if held is None:
                timestamp = (
                    0
                    if self._last_timestamp is None
                    else (self._last_timestamp + self._step) % TIMESTAMP_MODULO
                )
                slots.append(Slot(self._next % SEQUENCE_MODULO, timestamp, None))
                self.concealed += 1
            else:
                timestamp, payload, payload_type = held
                if self._last_timestamp is not None and not self._last_lost:
                    step = (timestamp - self._last_timestamp) % TIMESTAMP_MODULO
                    if 0 < step < 8 * self._step:
                        self._step = step
                slots.append(Slot(self._next % SEQUENCE_MODULO, timestamp, payload, payload_type))
                self.released += 1
            self._last_timestamp = slots[-1].timestamp
            self._last_lost = held is None
            self._next += 1
        return slots
