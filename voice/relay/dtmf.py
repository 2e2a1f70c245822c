"""DTMF as RFC 4733 telephone-events: payload format, a sender schedule and a receiver.

Sans-I/O: the sender turns digits into a list of packets with their send
times and timestamps relative to the start; the receiver is fed the RTP
timestamp and payload of each telephone-event packet and says when a digit
has ended.

RFC 4733 §2.3: one event is a run of packets that share the RTP timestamp
of the event's start; the marker bit is set on the first; `duration` grows
with each update; the last packets carry the E (end) bit, and the end packet
is sent three times (§2.5.1.4) with the same duration. Event codes for DTMF
are 0-9, * (10), # (11), A-D (12-15) (§3.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "DIGITS",
    "DtmfReceiver",
    "ScheduledEvent",
    "TelephoneEvent",
    "digit_event",
    "dtmf_schedule",
    "event_digit",
]

#: DTMF digits by event code (RFC 4733 §3.2, Table 7).
DIGITS = "0123456789*#ABCD"
END_BIT = 0x80
#: Packets that carry the end of an event (RFC 4733 §2.5.1.4: sent three times).
END_PACKETS = 3
#: The tone's level, -dBm0 (RFC 4733 §2.3.4); 10 is a typical telephone level.
DEFAULT_VOLUME = 10

_EVENT = struct.Struct("!BBH")


def digit_event(digit: str) -> int:
    """Event code of a DTMF digit (0-9, *, #, A-D; a-d accepted)."""
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF digit: {digit!r} (0-9, *, #, A-D)")
    return code


def event_digit(event: int) -> str | None:
    """The DTMF digit of an event code, None for other events (e.g. 16 flash)."""
    return DIGITS[event] if 0 <= event < len(DIGITS) else None


@dataclass(frozen=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 payload: event, E bit, volume (-dBm0), duration (clock units)."""

    event: int
    end: bool = False
    volume: int = DEFAULT_VOLUME
    duration: int = 0

    def encode(self) -> bytes:
        if not 0 <= self.event <= 255:
            raise ValueError(f"event code {self.event} out of range")
        flags = (END_BIT if self.end else 0) | (self.volume & 0x3F)
        return _EVENT.pack(self.event, flags, min(self.duration, 0xFFFF))

    @classmethod
    def decode(cls, payload: bytes) -> TelephoneEvent:
        """The first event of a payload (RFC 4733 §2.5.1.1: one event per packet)."""
        if len(payload) < _EVENT.size:
            raise ValueError(f"telephone-event payload of {len(payload)} bytes, need 4")
        event, flags, duration = _EVENT.unpack_from(payload)
        return cls(event, bool(flags & END_BIT), flags & 0x3F, duration)


@dataclass(frozen=True)
class ScheduledEvent:
    """A packet of a DTMF sequence: when to send it and its RTP fields, relative to the start.

    `send_at` is seconds from the start of the sequence, `timestamp` clock units
    from the start (the event's start, shared by all its packets).
    """

    send_at: float
    timestamp: int
    marker: bool
    payload: bytes


def dtmf_schedule(
    digits: str,
    *,
    clock_rate: int = 8000,
    tone: float = 0.1,
    gap: float = 0.06,
    interval: float = 0.02,
    volume: int = DEFAULT_VOLUME,
) -> list[ScheduledEvent]:
    """Packets for `digits`: each a `tone`-second event updated every `interval` seconds,
    ended by three end packets, then `gap` seconds before the next digit."""
    events = [digit_event(digit) for digit in digits]
    step = round(interval * clock_rate)
    updates = max(1, round(tone / interval))
    schedule: list[ScheduledEvent] = []
    start = 0.0
    for event in events:
        timestamp = round(start * clock_rate)
        for index in range(1, updates + 1):
            end = index == updates
            payload = TelephoneEvent(event, end, volume, index * step).encode()
            copies = END_PACKETS if end else 1
            for _ in range(copies):
                # The first packet is sent at the start (duration one interval, as
                # RFC 4733 §2.5.1.2 allows), updates follow every interval.
                schedule.append(
                    ScheduledEvent(start + (index - 1) * interval, timestamp, index == 1, payload)
                )
        start += updates * interval + gap
    return schedule


class DtmfReceiver:
    """Digits out of received telephone-event packets, each once.

    A digit is reported when its end packet arrives; retransmitted end
    packets (same RTP timestamp) are not reported again. If every end packet
    of an event is lost, the event is reported when the next one starts.
    """

    def __init__(self) -> None:
        self._current: int | None = None  # timestamp of the event in progress
        self._current_event = 0
        self._reported: list[int] = []  # timestamps of the last events reported

    def receive(self, timestamp: int, payload: bytes) -> list[str]:
        """Digits that ended with this packet (usually none or one)."""
        try:
            event = TelephoneEvent.decode(payload)
        except ValueError:
            return []
        digits: list[str] = []
        if timestamp in self._reported:
            return digits  # an end retransmission, or an update after the end
        if self._current is not None and self._current != timestamp:
            # A new event began before the previous one's end arrived (all lost).
            digits += self._report(self._current, self._current_event)
        if event.end:
            digits += self._report(timestamp, event.event)
            self._current = None
        else:
            self._current = timestamp
            self._current_event = event.event
        return digits

    def _report(self, timestamp: int, event: int) -> list[str]:
        self._current = None
        self._reported.append(timestamp)
        del self._reported[:-8]
        digit = event_digit(event)
        return [digit] if digit is not None else []
