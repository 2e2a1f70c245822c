from voice.rtp.rewriter import StreamRewriter, sequence_delta, timestamp_delta

FRAME = 960


def make(seq: int = 1000, ts: int = 50_000) -> StreamRewriter:
    return StreamRewriter(initial_sequence_number=seq, initial_timestamp=ts)


def test_first_source_starts_at_initial_state() -> None:
    rewriter = make()
    header = rewriter.rewrite("ringback", 7, 123, now=0.0)
    assert header is not None
    assert (header.sequence_number, header.timestamp) == (1000, 50_000)


def test_switch_from_ringback_to_forwarded_is_continuous() -> None:
    rewriter = make()
    now = 0.0
    for index in range(50):
        rewriter.rewrite("ringback", index, index * FRAME, now)
        now += 0.02
    last = rewriter.rewrite("ringback", 50, 50 * FRAME, now)
    assert last is not None
    # The other leg's packets arrive one frame later with unrelated numbering.
    now += 0.02
    first = rewriter.rewrite(("b", 0xDEAD), 40_000, 3_000_000_000, now)
    second = rewriter.rewrite(("b", 0xDEAD), 40_001, 3_000_000_000 + FRAME, now + 0.02)
    assert first is not None and second is not None
    assert sequence_delta(first.sequence_number, last.sequence_number) == 1
    assert timestamp_delta(first.timestamp, last.timestamp) == FRAME
    assert sequence_delta(second.sequence_number, first.sequence_number) == 1
    assert timestamp_delta(second.timestamp, first.timestamp) == FRAME


def test_switch_after_a_pause_advances_timestamp_by_wall_clock() -> None:
    rewriter = make()
    last = rewriter.rewrite("ringback", 0, 0, 10.0)
    first = rewriter.rewrite("forward", 5, 5, 10.5)
    assert last is not None and first is not None
    assert first.sequence_number == last.sequence_number + 1
    assert timestamp_delta(first.timestamp, last.timestamp) == 24_000


def test_wraparound_of_sequence_and_timestamp() -> None:
    rewriter = make(seq=0xFFFE, ts=0xFFFFFFFF - FRAME)
    outputs = []
    for index in range(4):
        header = rewriter.rewrite("s", 100 + index, 7 + index * FRAME, index * 0.02)
        assert header is not None
        outputs.append(header)
    assert [h.sequence_number for h in outputs] == [0xFFFE, 0xFFFF, 0, 1]
    assert [h.timestamp for h in outputs] == [
        0xFFFFFFFF - FRAME,
        0xFFFFFFFF,
        FRAME - 1,
        2 * FRAME - 1,
    ]


def test_input_wraparound_maps_through() -> None:
    rewriter = make(seq=10, ts=10)
    a = rewriter.rewrite("s", 0xFFFF, 0xFFFFFFFF, 0.0)
    b = rewriter.rewrite("s", 0, FRAME - 1, 0.02)
    assert a is not None and b is not None
    assert (a.sequence_number, b.sequence_number) == (10, 11)
    assert (a.timestamp, b.timestamp) == (10, 10 + FRAME)


def test_loss_and_dtx_gaps_are_preserved() -> None:
    rewriter = make(seq=500, ts=0)
    rewriter.rewrite("s", 10, 0, 0.0)
    lost = rewriter.rewrite("s", 13, 3 * FRAME, 0.06)  # 11 and 12 were lost
    dtx = rewriter.rewrite("s", 14, 20 * FRAME, 0.4)  # DTX: timestamps jump only
    assert lost is not None and dtx is not None
    assert (lost.sequence_number, lost.timestamp) == (503, 3 * FRAME)
    assert (dtx.sequence_number, dtx.timestamp) == (504, 20 * FRAME)


def test_gap_across_switch_does_not_leak_loss() -> None:
    rewriter = make(seq=0, ts=0)
    rewriter.rewrite("ringback", 0, 0, 0.0)
    # The forwarded stream starts at some sequence far from zero: no gap appears.
    first = rewriter.rewrite("forward", 30_000, 123_456, 0.02)
    assert first is not None and first.sequence_number == 1


def test_reordered_packet_keeps_its_place_but_pre_switch_packets_drop() -> None:
    rewriter = make(seq=0, ts=0)
    rewriter.rewrite("ringback", 0, 0, 0.0)
    rewriter.rewrite("forward", 100, 0, 0.02)
    rewriter.rewrite("forward", 102, 2 * FRAME, 0.06)
    late = rewriter.rewrite("forward", 101, FRAME, 0.07)
    assert late is not None and late.sequence_number == 2
    assert rewriter.last_sequence_number == 3
    # Older than the first packet seen from this source: would collide.
    assert rewriter.rewrite("forward", 99, 0, 0.08) is None
