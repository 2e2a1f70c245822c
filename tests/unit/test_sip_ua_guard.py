"""The user agent's pure helpers on a fake clock: the source guard, the digest
lockout and the SBC health."""

from __future__ import annotations

import ipaddress

from signaling.sip.guard import Admission, AuthGuard, SourceGuard
from signaling.sip.health import SbcHealth
from signaling.sip.message import SipTarget

SBC_NET = (ipaddress.ip_network("192.0.2.0/28"),)


def guard(rate: float = 2.0, block_after: float = 1.0) -> SourceGuard:
    return SourceGuard(SBC_NET, rate=rate, block_after=block_after, block_seconds=10.0)


def test_accepted_sources_are_the_networks() -> None:
    g = guard()
    assert g.accepted("192.0.2.3")
    assert not g.accepted("192.0.2.16")
    assert not g.accepted("not an address")


def test_a_stranger_over_its_rate_is_limited_then_blocked() -> None:
    g = guard()
    verdicts = [g.charge("198.51.100.1", 100.0 + i * 0.1) for i in range(20)]
    assert verdicts[:4] == [Admission.ADMITTED] * 4  # a burst of two seconds' worth
    assert Admission.LIMITED in verdicts
    assert verdicts[-1] is Admission.BLOCKED
    assert g.blocked("198.51.100.1", 102.0)
    assert not g.blocked("198.51.100.1", 112.0)  # the block ends


def test_an_accepted_source_is_limited_but_never_blocked() -> None:
    g = guard()
    verdicts = [g.charge("192.0.2.1", 100.0 + i * 0.1) for i in range(40)]
    assert Admission.BLOCKED not in verdicts
    assert verdicts[-1] is Admission.LIMITED


def test_503_is_paced_to_one_a_second_and_only_for_accepted_sources() -> None:
    g = guard()
    assert g.may_answer_503("192.0.2.1", 100.0)
    assert not g.may_answer_503("192.0.2.1", 100.5)
    assert g.may_answer_503("192.0.2.1", 101.0)
    assert not g.may_answer_503("198.51.100.1", 100.0)


def test_auth_guard_locks_a_pair_out_after_max_failures() -> None:
    auth = AuthGuard(3, 60.0)
    assert not auth.failed("192.0.2.1", "sbc", 0.0)
    assert not auth.failed("192.0.2.1", "sbc", 1.0)
    assert auth.failed("192.0.2.1", "sbc", 2.0)
    assert auth.locked_out("192.0.2.1", "sbc", 30.0)
    assert not auth.locked_out("192.0.2.1", "other", 30.0)
    assert not auth.locked_out("192.0.2.2", "sbc", 30.0)
    assert auth.locked(30.0) == [("192.0.2.1", "sbc")]
    assert not auth.locked_out("192.0.2.1", "sbc", 62.0)
    assert auth.locked(62.0) == []


def test_auth_guard_success_forgets_and_zero_never_locks() -> None:
    auth = AuthGuard(2, 60.0)
    auth.failed("192.0.2.1", "sbc", 0.0)
    auth.succeeded("192.0.2.1", "sbc")
    assert not auth.failed("192.0.2.1", "sbc", 1.0)
    never = AuthGuard(0, 60.0)
    assert not any(never.failed("192.0.2.1", "sbc", float(i)) for i in range(100))


def test_auth_guard_is_bounded() -> None:
    auth = AuthGuard(1, 60.0, max_keys=10)
    for i in range(100):
        auth.failed(f"198.51.100.{i}", "sbc", 0.0)
    assert len(auth.locked(1.0)) == 10


def test_sbc_health_picks_the_first_target_that_is_up() -> None:
    first, second = SipTarget("udp", "192.0.2.1", 5060), SipTarget("udp", "192.0.2.2", 5060)
    health = SbcHealth((first, second), options_interval=30.0)
    assert health.pick() is None
    assert health.due() == [first, second]
    assert health.due() == []  # both OPTIONS still under way
    assert health.answered(second, True) is True  # the trunk came up
    assert health.pick() == second
    assert health.answered(first, True) is None  # no change overall
    assert health.pick() == first
    assert health.mark(first, False) is None
    assert health.mark(second, False) is False  # the last one went down
    assert health.pick() is None


def test_without_keepalive_the_first_target_is_used() -> None:
    target = SipTarget("udp", "192.0.2.1", 5060)
    health = SbcHealth((target,), options_interval=0.0)
    assert not health.keepalive
    assert health.pick() == target
