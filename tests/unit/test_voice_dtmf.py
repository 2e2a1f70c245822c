"""RFC 4733 telephone-events: payloads, the sender's schedule, the receiver."""

from __future__ import annotations

import pytest

from voice.relay.dtmf import (
    DtmfReceiver,
    TelephoneEvent,
    digit_event,
    dtmf_schedule,
    event_digit,
)


def test_payload_round_trip() -> None:
    # RFC 4733 §2.3: event 5, E bit, volume 10, duration 800 (100 ms at 8 kHz).
    payload = TelephoneEvent(5, end=True, volume=10, duration=800).encode()
    assert payload == bytes([5, 0x80 | 10, 0x03, 0x20])
    assert TelephoneEvent.decode(payload) == TelephoneEvent(5, True, 10, 800)
    assert TelephoneEvent.decode(bytes([11, 0x3F, 0, 160])) == TelephoneEvent(11, False, 63, 160)
    with pytest.raises(ValueError):
        TelephoneEvent.decode(b"\x01\x02")


def test_digit_codes() -> None:
    assert [digit_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_event("d") == 15
    assert event_digit(11) == "#"
    assert event_digit(16) is None  # flash is no digit
    with pytest.raises(ValueError):
        digit_event("E")


def test_schedule_of_two_digits() -> None:
    packets = dtmf_schedule("1#", clock_rate=8000, tone=0.1, gap=0.06, interval=0.02)
    first = [p for p in packets if p.timestamp == 0]
    second = [p for p in packets if p.timestamp != 0]
    # Five updates (20..100 ms), the last one three times with the E bit.
    assert len(first) == len(second) == 7
    events = [TelephoneEvent.decode(p.payload) for p in first]
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert all(e.event == 1 for e in events)
    assert [p.marker for p in first] == [True] + [False] * 6
    assert [round(p.send_at, 3) for p in first] == [0, 0.02, 0.04, 0.06, 0.08, 0.08, 0.08]
    # The second digit starts after the first one and the gap: 160 ms = 1280 samples.
    assert {p.timestamp for p in second} == {1280}
    assert second[0].marker and second[0].send_at == pytest.approx(0.16)
    assert TelephoneEvent.decode(second[-1].payload).event == 11


def test_receiver_reports_each_digit_once() -> None:
    receiver = DtmfReceiver()
    heard: list[str] = []
    for packet in dtmf_schedule("5#5"):
        heard += receiver.receive(packet.timestamp, packet.payload)
    assert heard == ["5", "#", "5"]


def test_receiver_reports_an_event_whose_end_packets_were_lost() -> None:
    receiver = DtmfReceiver()
    heard: list[str] = []
    for packet in dtmf_schedule("73"):
        if packet.timestamp == 0 and TelephoneEvent.decode(packet.payload).end:
            continue
        heard += receiver.receive(packet.timestamp, packet.payload)
    assert heard == ["7", "3"]


def test_schedule_at_48khz() -> None:
    packets = dtmf_schedule("9", clock_rate=48000)
    assert TelephoneEvent.decode(packets[-1].payload).duration == 4800
