"""The impairment spec, the sans-I/O schedule and SDP rewriting of the impairment proxy."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice.loadtest.impair import (
    Impairment,
    ImpairmentProxy,
    ImpairmentSchedule,
    is_rtp_or_rtcp,
)

# -- parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("loss=5%,jitter=30ms,delay=50ms", Impairment(loss=0.05, delay=0.05, jitter=0.03)),
        ("loss=0.05", Impairment(loss=0.05)),
        ("delay=0.05s", Impairment(delay=0.05)),
        ("delay=0.05", Impairment(delay=0.05)),
        ("jitter=500us", Impairment(jitter=0.0005)),
        (" LOSS = 2.5 % , Delay=1s ", Impairment(loss=0.025, delay=1.0)),
        ("loss=100%", Impairment(loss=1.0)),
        ("loss=0%", Impairment()),
        ("", Impairment()),
        ("none", Impairment()),
    ],
)
def test_parse_good_specs(spec: str, expected: Impairment) -> None:
    parsed = Impairment.parse(spec)
    assert parsed.loss == pytest.approx(expected.loss)
    assert parsed.delay == pytest.approx(expected.delay)
    assert parsed.jitter == pytest.approx(expected.jitter)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("loss", "key=value"),
        ("loss=", "key=value"),
        ("=5%", "key=value"),
        ("drop=5%", "unknown key 'drop'"),
        ("loss=5%,loss=6%", "given twice"),
        ("loss=five", "not a percentage or fraction"),
        ("loss=5", "above 100 %"),
        ("loss=150%", "above 100 %"),
        ("loss=-5%", "not a percentage"),
        ("delay=50m", "not a duration"),
        ("delay=fast", "not a duration"),
        ("jitter=-3ms", "not a duration"),
        ("loss=5%;delay=50ms", "not a percentage"),
    ],
)
def test_parse_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Impairment.parse(spec)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="fraction"):
        Impairment(loss=2.0)
    with pytest.raises(ValueError, match=">= 0"):
        Impairment(delay=-0.1)
    with pytest.raises(ValueError, match=">= 0"):
        Impairment(jitter=float("nan"))


def test_truth_and_text() -> None:
    assert not Impairment()
    assert Impairment(loss=0.01)
    assert Impairment(delay=0.01)
    assert Impairment(jitter=0.01)
    assert str(Impairment()) == "none"
    text = str(Impairment(loss=0.05, delay=0.05, jitter=0.03))
    assert text == "loss=5%,delay=50ms,jitter=30ms"
    assert Impairment.parse(text) == Impairment.parse("loss=5%,delay=50ms,jitter=30ms")


# -- the schedule ------------------------------------------------------------------


def test_loss_over_many_packets_is_close_to_the_fraction() -> None:
    schedule = ImpairmentSchedule(Impairment(loss=0.05), seed=7)
    results = [schedule.schedule(i * 0.02) for i in range(20_000)]
    dropped = sum(result is None for result in results)
    assert 0.043 <= dropped / 20_000 <= 0.057
    # Delivered packets go at once without delay or jitter.
    assert all(result == i * 0.02 for i, result in enumerate(results) if result is not None)


@pytest.mark.parametrize("seed", range(5))
def test_loss_holds_for_any_seed(seed: int) -> None:
    schedule = ImpairmentSchedule(Impairment(loss=0.05), seed=seed)
    dropped = sum(schedule.schedule(0.0) is None for _ in range(20_000))
    assert abs(dropped / 20_000 - 0.05) <= 0.007


def test_same_seed_same_schedule_other_seed_other() -> None:
    impairment = Impairment(loss=0.1, delay=0.05, jitter=0.03)
    first = [ImpairmentSchedule(impairment, seed=1).schedule(1.0) for _ in range(3)]
    a = ImpairmentSchedule(impairment, seed=1)
    b = ImpairmentSchedule(impairment, seed=1)
    c = ImpairmentSchedule(impairment, seed=2)
    run_a = [a.schedule(t * 0.02) for t in range(500)]
    assert run_a == [b.schedule(t * 0.02) for t in range(500)]
    assert run_a != [c.schedule(t * 0.02) for t in range(500)]
    assert len(set(first)) == 1


def test_delay_and_jitter_stay_in_bounds_and_reorder() -> None:
    schedule = ImpairmentSchedule(Impairment(delay=0.05, jitter=0.03), seed=3)
    arrivals = [i * 0.02 for i in range(5_000)]
    due = [schedule.schedule(now) for now in arrivals]
    holds = []
    for now, when in zip(arrivals, due, strict=True):
        assert when is not None
        holds.append(when - now)
    assert min(holds) >= 0.02 - 1e-9
    assert max(holds) <= 0.08 + 1e-9
    assert sum(holds) / len(holds) == pytest.approx(0.05, abs=0.002)
    # Jitter wider than the packet spacing reorders, as netem does.
    delivered = [when for when in due if when is not None]
    assert any(later < earlier for earlier, later in itertools.pairwise(delivered))


def test_jitter_larger_than_delay_never_delivers_before_arrival() -> None:
    schedule = ImpairmentSchedule(Impairment(delay=0.01, jitter=0.05), seed=0)
    for i in range(2_000):
        now = 100.0 + i * 0.02
        when = schedule.schedule(now)
        assert when is not None
        assert now <= when <= now + 0.06 + 1e-9


def test_zero_impairment_passes_everything_at_once() -> None:
    schedule = ImpairmentSchedule(Impairment(), seed=0)
    for i in range(1_000):
        assert schedule.schedule(i * 0.01) == i * 0.01


def test_total_loss_drops_everything() -> None:
    schedule = ImpairmentSchedule(Impairment(loss=1.0))
    assert all(schedule.schedule(float(i)) is None for i in range(1_000))


@given(
    loss=st.floats(0, 1),
    delay=st.floats(0, 2),
    jitter=st.floats(0, 2),
    now=st.floats(0, 1e6),
    seed=st.integers(0, 2**32),
)
def test_schedule_property(loss: float, delay: float, jitter: float, now: float, seed: int) -> None:
    schedule = ImpairmentSchedule(Impairment(loss=loss, delay=delay, jitter=jitter), seed=seed)
    when = schedule.schedule(now)
    if when is not None:
        assert now <= when <= now + delay + jitter + 1e-6


# -- demultiplexing and SDP -------------------------------------------------------


def test_only_rtp_and_rtcp_are_impaired() -> None:
    assert is_rtp_or_rtcp(bytes([0x80, 96]))  # RTP v2
    assert is_rtp_or_rtcp(bytes([0x81, 200]))  # RTCP SR
    assert is_rtp_or_rtcp(bytes([191]))
    assert not is_rtp_or_rtcp(bytes([0x00, 0x01]))  # STUN binding request
    assert not is_rtp_or_rtcp(bytes([22, 0xFE, 0xFD]))  # DTLS handshake
    assert not is_rtp_or_rtcp(bytes([192]))
    assert not is_rtp_or_rtcp(b"")


RELAY_SDP = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "m=audio 40000 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 127.0.0.1",
        "a=rtpmap:96 opus/48000/2",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
        "a=candidate:2 1 udp 1694498815 127.0.0.1 40002 typ srflx raddr 127.0.0.1 rport 40000",
        "a=candidate:3 1 tcp 1518280447 127.0.0.1 9 typ host tcptype passive",
        "a=candidate:4 1 udp 2130706431 ::1 40004 typ host",
        "a=end-of-candidates",
        "",
    ]
)


async def test_rewrite_sdp_points_relay_candidates_at_proxy_ports() -> None:
    async with ImpairmentProxy(Impairment(loss=0.1)) as proxy:
        rewritten = proxy.rewrite_sdp(RELAY_SDP)
        ports = proxy.relay_ports
        assert set(ports) == {("127.0.0.1", 40000), ("127.0.0.1", 40002)}
        first, second = ports[("127.0.0.1", 40000)], ports[("127.0.0.1", 40002)]
        assert first != second and first[0] == second[0] == "127.0.0.1"
        lines = rewritten.split("\r\n")
        assert f"a=candidate:1 1 udp 2130706431 127.0.0.1 {first[1]} typ host" in lines
        assert (
            f"a=candidate:2 1 udp 1694498815 127.0.0.1 {second[1]} typ srflx "
            "raddr 127.0.0.1 rport 40000"
        ) in lines
        # TCP and IPv6 candidates are left alone; the default address follows the proxy.
        assert "a=candidate:3 1 tcp 1518280447 127.0.0.1 9 typ host tcptype passive" in lines
        assert "a=candidate:4 1 udp 2130706431 ::1 40004 typ host" in lines
        assert f"m=audio {first[1]} UDP/TLS/RTP/SAVPF 96" in lines
        assert "c=IN IP4 127.0.0.1" in lines
        assert rewritten.endswith("\r\n")
        # Once per relay address: the same SDP again maps to the same ports.
        assert proxy.rewrite_sdp(RELAY_SDP) == rewritten
        assert proxy.client_ports == {}
        client = proxy.rewrite_client_sdp(RELAY_SDP.replace("4000", "5000"))
        assert set(proxy.client_ports) == {("127.0.0.1", 50000), ("127.0.0.1", 50002)}
        assert "50000" not in client.replace("rport 50000", "")
    with pytest.raises(RuntimeError):
        proxy.rewrite_sdp(RELAY_SDP)


def test_stats_flatten_for_reports() -> None:
    proxy = ImpairmentProxy(Impairment(loss=0.1))
    proxy.stats.upstream.forwarded = 9
    proxy.stats.upstream.dropped = 1
    proxy.stats.downstream.passed = 2
    flat = proxy.stats.as_dict()
    assert flat == proxy.stats.as_dict()
    assert flat["upstream_forwarded"] == 9 and flat["upstream_dropped"] == 1
    assert flat["downstream_passed"] == 2 and flat["downstream_delayed"] == 0
    assert len(flat) == 8
    assert proxy.stats.upstream.loss_fraction == pytest.approx(0.1)
