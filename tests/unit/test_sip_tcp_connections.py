"""The TCP connection table: caps, reserved slots, eviction and deadlines, with no sockets."""

from __future__ import annotations

import pytest

from signaling.sip.connections import (
    ConnectionTable,
    Expiry,
    Refusal,
    TcpLimits,
)

ATTACKER = "198.51.100.7"
SBC = "192.0.2.10"


def table(**limits: float) -> ConnectionTable:
    return ConnectionTable(TcpLimits(**limits))  # type: ignore[arg-type]


def test_defaults_are_sensible() -> None:
    limits = TcpLimits()
    assert limits.max_connections == 256
    assert 0 < limits.reserved_for_accepted < limits.max_connections
    assert limits.max_per_source < limits.max_connections - limits.reserved_for_accepted
    assert limits.message_timeout < limits.idle_timeout


@pytest.mark.parametrize(
    "bad",
    [
        {"max_connections": 0},
        {"reserved_for_accepted": -1},
        {"max_connections": 4, "reserved_for_accepted": 5},
        {"max_per_source": 0},
        {"idle_timeout": 0},
        {"message_timeout": -1},
        {"idle_timeout": float("inf")},
        {"message_timeout": float("nan")},
    ],
)
def test_bad_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TcpLimits(**bad)  # type: ignore[arg-type]


def test_one_source_is_capped() -> None:
    t = table(max_per_source=3)
    for _ in range(3):
        assert t.open_inbound(ATTACKER, accepted=False, now=0).connection is not None
    refused = t.open_inbound(ATTACKER, accepted=False, now=0)
    assert refused.connection is None and refused.refused is Refusal.PER_SOURCE
    # Another address is not affected, nor is an accepted source.
    assert t.open_inbound("198.51.100.8", accepted=False, now=0).connection is not None
    assert t.from_source(ATTACKER) == 3
    assert t.inbound == 4


def test_an_accepted_source_is_not_capped_per_source() -> None:
    t = table(max_per_source=1)
    opened = [t.open_inbound(SBC, accepted=True, now=0) for _ in range(5)]
    assert all(a.connection is not None for a in opened)
    assert t.from_source(SBC) == 5


def test_reserved_slots_are_for_accepted_sources_only() -> None:
    t = table(max_connections=10, reserved_for_accepted=3, max_per_source=100)
    for _ in range(7):
        assert t.open_inbound(ATTACKER, accepted=False, now=0).connection is not None
    full = t.open_inbound("198.51.100.9", accepted=False, now=0)
    assert full.refused is Refusal.FULL
    for _ in range(3):
        admitted = t.open_inbound(SBC, accepted=True, now=0)
        assert admitted.connection is not None and admitted.evicted is None
    assert t.inbound == 10


def test_an_accepted_source_evicts_the_longest_idle_stranger_when_all_is_full() -> None:
    t = table(max_connections=4, reserved_for_accepted=0, max_per_source=100)
    ids = []
    for n in range(4):
        connection = t.open_inbound(ATTACKER, accepted=False, now=float(n)).connection
        assert connection is not None
        ids.append(connection)
    t.received(ids[0], 10.0, in_message=False)  # the oldest is no longer the idlest
    admitted = t.open_inbound(SBC, accepted=True, now=11.0)
    assert admitted.connection is not None
    assert admitted.evicted == ids[1]
    assert ids[1] not in t and ids[0] in t
    assert t.inbound == 4 and t.from_source(ATTACKER) == 3


def test_accepted_sources_do_not_evict_each_other() -> None:
    t = table(max_connections=2, reserved_for_accepted=0)
    t.open_inbound(SBC, accepted=True, now=0)
    t.open_inbound(SBC, accepted=True, now=0)
    refused = t.open_inbound("192.0.2.11", accepted=True, now=1)
    assert refused.refused is Refusal.FULL and refused.evicted is None


def test_outbound_connections_take_no_slot_and_are_never_refused() -> None:
    t = table(max_connections=2, reserved_for_accepted=0)
    t.open_inbound(ATTACKER, accepted=False, now=0)
    t.open_inbound(ATTACKER, accepted=False, now=0)
    out = t.open_outbound(SBC, now=0)
    assert out in t
    assert t.inbound == 2 and len(t) == 3
    # Closing it frees nothing inbound and leaves the counts right.
    t.close(out)
    assert t.inbound == 2 and len(t) == 2


def test_close_frees_the_slot_and_twice_is_harmless() -> None:
    t = table(max_connections=1, reserved_for_accepted=0)
    first = t.open_inbound(ATTACKER, accepted=False, now=0).connection
    assert first is not None
    assert t.open_inbound(ATTACKER, accepted=False, now=0).refused is Refusal.FULL
    t.close(first)
    t.close(first)
    assert t.inbound == 0 and t.from_source(ATTACKER) == 0
    assert t.open_inbound(ATTACKER, accepted=False, now=0).connection is not None


def test_an_idle_connection_expires_and_traffic_defers_it() -> None:
    t = table(idle_timeout=30, accepted_idle_timeout=40, message_timeout=5)
    quiet = t.open_inbound(ATTACKER, accepted=False, now=0).connection
    busy = t.open_inbound(ATTACKER, accepted=False, now=0).connection
    assert quiet is not None and busy is not None
    assert t.next_deadline() == 30
    t.received(busy, 20, in_message=False)  # e.g. a CRLF keep-alive
    t.sent(busy, 25)
    assert t.deadline(busy) == 55
    assert t.expired(29.9) == []
    assert t.expired(30) == [(quiet, Expiry.IDLE)]
    assert quiet not in t and t.inbound == 1
    assert t.next_deadline() == 55


def test_the_sbc_and_our_own_connections_may_stay_idle_longer() -> None:
    """An INVITE may ring for minutes with nothing on its connection, and its final
    answer goes back on that connection: the SBC's idle timeout is the longer one."""
    t = table(idle_timeout=30, accepted_idle_timeout=600)
    stranger = t.open_inbound(ATTACKER, accepted=False, now=0).connection
    sbc = t.open_inbound(SBC, accepted=True, now=0).connection
    ours = t.open_outbound(SBC, now=0)
    assert stranger is not None and sbc is not None
    assert t.deadline(stranger) == 30
    assert t.deadline(sbc) == t.deadline(ours) == 600
    assert t.expired(599) == [(stranger, Expiry.IDLE)]
    assert sorted(c for c, _ in t.expired(600)) == sorted([sbc, ours])


def test_a_message_must_end_within_the_message_timeout_of_its_first_byte() -> None:
    t = table(idle_timeout=100, message_timeout=5)
    slow = t.open_inbound(ATTACKER, accepted=False, now=0).connection
    assert slow is not None
    t.received(slow, 1, in_message=True)  # first bytes of a message
    assert t.deadline(slow) == 6
    t.received(slow, 4, in_message=True)  # more of it: the clock runs on
    assert t.deadline(slow) == 6
    assert t.expired(5.9) == []
    assert t.expired(6) == [(slow, Expiry.MESSAGE)]


def test_a_completed_message_stops_the_clock() -> None:
    t = table(accepted_idle_timeout=100, message_timeout=5)
    conn = t.open_inbound(SBC, accepted=True, now=0).connection
    assert conn is not None
    t.received(conn, 1, in_message=True)
    t.received(conn, 3, in_message=False)  # the message is complete
    assert t.deadline(conn) == 103
    t.received(conn, 50, in_message=True)  # the next one starts its own clock
    assert t.deadline(conn) == 55
    assert t.expired(54) == []


def test_pipelined_messages_each_get_their_own_message_timeout() -> None:
    """A busy peer whose chunks never end on a message boundary: each chunk completes
    a message and starts the next, whose clock starts with it."""
    t = table(idle_timeout=100, message_timeout=5)
    conn = t.open_inbound(SBC, accepted=True, now=0).connection
    assert conn is not None
    t.received(conn, 0, in_message=True)
    for now in range(1, 30):
        t.received(conn, float(now), in_message=True, completed=1)
        assert t.deadline(conn) == now + 5
        assert t.expired(float(now)) == []
    # A chunk that completes nothing leaves the clock of the message being read.
    t.received(conn, 31, in_message=True)
    assert t.deadline(conn) == 34


def test_events_for_unknown_connections_are_ignored() -> None:
    t = table()
    t.received(99, 1, in_message=True)
    t.sent(99, 1)
    t.close(99)
    assert t.deadline(99) is None
    assert t.next_deadline() is None
    assert t.expired(1e9) == []
