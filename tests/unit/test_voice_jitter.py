"""The RTP leg's reordering buffer."""

from __future__ import annotations

from voice.relay.jitter import JitterBuffer, Slot


def payload(n: int) -> bytes:
    return bytes([n % 256]) * 4


def released(buffer: JitterBuffer, order: list[int], base: int = 65530) -> list[Slot]:
    slots: list[Slot] = []
    for n in order:
        slots += buffer.push((base + n) % 65536, (1000 + 160 * n) % (1 << 32), payload(n))
    return slots


def test_in_order_stream_is_released_after_depth() -> None:
    buffer = JitterBuffer(depth=2)
    assert released(buffer, [0, 1]) == []
    slots = released(buffer, [2, 3, 4])
    assert [s.payload for s in slots] == [payload(0), payload(1), payload(2)]
    assert [s.sequence_number for s in slots] == [65530, 65531, 65532]  # wraps fine


def test_reorders_within_depth() -> None:
    buffer = JitterBuffer(depth=2)
    slots = released(buffer, [0, 2, 1, 3, 5, 4, 6, 7, 8])
    assert [s.payload for s in slots] == [payload(n) for n in range(7)]
    assert buffer.concealed == 0


def test_fills_a_hole_without_stalling() -> None:
    buffer = JitterBuffer(depth=2)
    slots = released(buffer, [0, 1, 2, 4, 5, 6, 7])
    assert [s.lost for s in slots] == [False, False, False, True, False, False]
    lost = slots[3]
    assert lost.sequence_number == (65530 + 3) % 65536
    assert lost.timestamp == 1000 + 160 * 3  # estimated from the packet spacing
    assert buffer.concealed == 1


def test_late_and_duplicate_packets_are_dropped() -> None:
    buffer = JitterBuffer(depth=1)
    slots = released(buffer, [0, 1, 2, 0, 2, 3])
    assert [s.payload for s in slots] == [payload(0), payload(1), payload(2)]
    assert buffer.late == 1 and buffer.duplicates == 1


def test_restart_of_the_sequence_space() -> None:
    buffer = JitterBuffer(depth=1)
    released(buffer, [0, 1, 2])
    slots = released(buffer, [5000, 5001, 5002])
    assert buffer.restarts == 1
    # What was held is played out first, then the new stream starts.
    assert [s.payload for s in slots] == [payload(2), payload(5000), payload(5001)]


def test_flush_releases_everything() -> None:
    buffer = JitterBuffer(depth=3)
    released(buffer, [0, 2])
    assert [s.lost for s in buffer.flush()] == [False, True, False]
