"""Property: two user agent cores joined in memory, driven by any sequence of call
operations, lost datagrams and time, never fail inside and end every call exactly
once. Derandomized and bounded like tests/unit/test_prop_sip.py."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling.sip.session import CallError, Ended, IncomingSession, OutboundSession, Session
from signaling.sip.ua import CallUpdate, Reoffered, UserAgent
from tests.unit.test_sip_ua import (
    ANSWER,
    OURS,
    SBC,
    Clock,
    Node,
    reinvite,
    run_timers,
    settle,
    transfer,
)
from tests.unit.test_sip_ua import (
    settings as trunk_settings,
)

BOUNDED = settings(
    derandomize=True,
    database=None,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Deliveries, answers and hang-ups weigh more, so that calls get that far.
OPS = st.sampled_from(
    [
        *("invite_out", "invite_in", "progress", "reject", "cancel", "reinvite"),
        *("answer_reoffers", "lose", "tick"),
        *("answer",) * 2,
        *("bye",) * 2,
        *("deliver",) * 5,
    ]
)


def ended_count(node: Node, call: Session) -> int:
    return sum(
        1
        for e in node.events
        if isinstance(e, CallUpdate) and e.call is call and isinstance(e.event, Ended)
    )


@BOUNDED
@given(st.lists(st.tuples(OPS, st.integers(0, 7)), max_size=60), st.integers(0, 2**16))
def test_any_sequence_ends_every_call_once(steps: list[tuple[str, int]], seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    ours = Node(UserAgent(trunk_settings(OURS, SBC, max_calls_per_second=1000.0)), OURS)
    sbc = Node(UserAgent(trunk_settings(SBC, OURS, max_calls_per_second=1000.0)), SBC)
    for node in (ours, sbc):
        node.absorb(node.ua.start(5060, clock.now))
    sessions: list[tuple[Node, Session]] = []

    def pick(kind: type[Session], index: int) -> tuple[Node, Session] | None:
        matching = [(n, s) for n, s in sessions if isinstance(s, kind)]
        matching += [(n, c) for n in (ours, sbc) for c in n.offered() if isinstance(c, kind)]
        return matching[index % len(matching)] if matching else None

    for op, index in steps:
        now = clock.now
        try:
            if op in ("invite_out", "invite_in"):
                node = ours if op == "invite_out" else sbc
                placed, actions = node.ua.invite(
                    to_number="+4930555000100", from_number="+4917700000001", sdp=ANSWER, now=now
                )
                node.absorb(actions)
                sessions.append((node, placed))
            elif op in ("progress", "answer", "reject"):
                found = pick(IncomingSession, index)
                if found is not None:
                    node, incoming = found
                    assert isinstance(incoming, IncomingSession)
                    if op == "progress":
                        incoming.progress(180, now=now)
                    elif op == "answer":
                        incoming.answer(ANSWER, now=now)
                    else:
                        incoming.reject(486, now=now)
                    node.absorb(node.ua.take())
            elif op in ("cancel", "bye"):
                found = pick(OutboundSession if op == "cancel" else Session, index)
                if found is not None:
                    node, hanging_up = found
                    if isinstance(hanging_up, OutboundSession) and op == "cancel":
                        hanging_up.cancel("", now=now)
                    elif isinstance(hanging_up, OutboundSession | IncomingSession):
                        hanging_up.bye("", now=now)
                    node.absorb(node.ua.take())
            elif op == "reinvite":
                found = pick(OutboundSession, index)
                if found is not None and found[0] is sbc and found[1].state == "answered":
                    reinvite(sbc, found[1], ANSWER)
            elif op == "answer_reoffers":
                for node in (ours, sbc):
                    for event in [e for e in node.events if isinstance(e, Reoffered)]:
                        event.call.answer_reoffer(ANSWER, now=now)
                        node.absorb(node.ua.take())
            elif op == "deliver":
                transfer(ours, sbc, now)
                transfer(sbc, ours, now)
            elif op == "lose":
                for node in (ours, sbc):
                    node.outbox = [s for s in node.outbox if rng.random() < 0.5]
            elif op == "tick":
                run_timers((ours, sbc), clock, now + index * 0.7)
        except CallError:
            pass  # the application asked for something its call's state forbids
        for node in (ours, sbc):
            for session in [s for _, s in sessions] + list(node.offered()):
                assert ended_count(node, session) <= 1

    settle(ours, sbc, clock.now)
    for node in (ours, sbc):
        node.absorb(node.ua.stop(clock.now))
    settle(ours, sbc, clock.now)
    run_timers((ours, sbc), clock, clock.now + 100.0)
    for node in (ours, sbc):
        assert node.ua.stats["internal_errors"] == 0
        assert not node.ua.active
        mine: list[Session] = [c for n, c in sessions if n is node]
        for session in mine + list(node.offered()):
            assert ended_count(node, session) == 1, (session, node.events)
