import pytest

from voice.rtp.rtcp import compact_ntp, delay_since_last_sr, ntp_timestamp, round_trip_time
from voice.rtp.stats import ReceptionStatistics

FRAME = 960


def feed(stats: ReceptionStatistics, seqs: list[int], start: float = 0.0) -> None:
    for index, seq in enumerate(seqs):
        stats.receive(seq & 0xFFFF, (seq * FRAME) & 0xFFFFFFFF, start + index * 0.02, 100)


def test_counts_without_loss() -> None:
    stats = ReceptionStatistics(48000)
    feed(stats, list(range(50)))
    assert stats.packets_received == 50
    assert stats.bytes_received == 5000
    assert stats.packets_lost == 0
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_loss_from_sequence_gaps_and_fraction_lost() -> None:
    stats = ReceptionStatistics(48000)
    seqs = [s for s in range(100) if s % 10 != 3]
    feed(stats, seqs)
    assert stats.packets_lost == 10
    assert stats.fraction_lost() == (10 << 8) // 100
    # The next interval had no loss.
    feed(stats, list(range(100, 120)), start=2.0)
    assert stats.fraction_lost() == 0


def test_sequence_wraparound_is_not_loss() -> None:
    stats = ReceptionStatistics(48000)
    feed(stats, list(range(65530, 65546)))
    assert stats.packets_lost == 0
    assert stats.extended_highest_sequence == 65545


def test_reordering_and_duplicates() -> None:
    stats = ReceptionStatistics(48000)
    feed(stats, [0, 1, 3, 2, 4, 4])
    assert stats.packets_lost == 0
    assert stats.packets_received == 6


def test_sender_restart_resyncs_after_two_packets() -> None:
    stats = ReceptionStatistics(48000)
    feed(stats, [0, 1, 2, 40_000, 40_001, 40_002])
    assert stats.packets_lost == 0
    assert stats.extended_highest_sequence == 40_002


def test_interarrival_jitter_rfc3550() -> None:
    stats = ReceptionStatistics(48000)
    # Every other packet arrives 10 ms late: |D| = 480 ticks on every packet after the first.
    for index in range(400):
        late = 0.01 if index % 2 else 0.0
        stats.receive(index, index * FRAME, index * 0.02 + late, 100)
    # J converges to the mean |D| (480 ticks = 10 ms).
    assert stats.jitter == pytest.approx(480, rel=0.01)
    assert stats.jitter_ms == pytest.approx(10.0, rel=0.01)


def test_round_trip_time_from_lsr_and_dlsr() -> None:
    sent = 1_700_000_000.25
    lsr = compact_ntp(ntp_timestamp(sent))
    # Peer held the SR 100 ms, the report arrived 130 ms after sending.
    dlsr = delay_since_last_sr(sent + 0.115, sent + 0.015)
    rtt = round_trip_time(sent + 0.130, lsr, dlsr)
    assert rtt == pytest.approx(0.030, abs=0.001)
    assert round_trip_time(sent, 0, 0) is None
    assert round_trip_time(sent - 1.0, lsr, 0) is None
