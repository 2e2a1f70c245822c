"""The calls held on this node: by id, by party, by number and by relay leg."""

from __future__ import annotations

from signaling.calls.context import CallContext
from signaling.calls.parties import Party

__all__ = ["CallTable"]


class CallTable:
    def __init__(self) -> None:
        self._calls: dict[str, CallContext] = {}
        self._party_calls: dict[Party, set[str]] = {}
        self._number_calls: dict[str, set[str]] = {}
        self._leg_calls: dict[str, tuple[str, Party]] = {}  # leg id -> (call id, party)

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: str) -> bool:
        return call_id in self._calls

    def get(self, call_id: str) -> CallContext | None:
        return self._calls.get(call_id)

    def call_ids(self) -> list[str]:
        return list(self._calls)

    def add(self, ctx: CallContext, party: Party) -> None:
        """``party`` takes part in the call (its leg is named from now on)."""
        call = ctx.call
        self._calls[call.call_id] = ctx
        self._party_calls.setdefault(party, set()).add(call.call_id)
        self._leg_calls[ctx.leg(party)] = (call.call_id, party)
        for number in (call.caller, call.callee):
            self._number_calls.setdefault(number, set()).add(call.call_id)

    def calls_of(self, party: Party) -> list[str]:
        """The calls ``party`` takes part in here, in a stable order."""
        return sorted(self._party_calls.get(party, ()))

    def in_a_call(self, party: Party) -> bool:
        return bool(self._party_calls.get(party))

    def number_busy(self, number: str) -> bool:
        return bool(self._number_calls.get(number))

    def owner(self, leg_id: str) -> tuple[CallContext, Party] | None:
        """The call and party a relay leg belongs to."""
        found = self._leg_calls.get(leg_id)
        if found is None:
            return None
        ctx = self._calls.get(found[0])
        return None if ctx is None else (ctx, found[1])

    def move_leg(self, ctx: CallContext, party: Party, new_leg: str) -> str:
        """``party`` has a new leg; the old one's id, no longer in the table."""
        old_leg = ctx.leg(party)
        ctx.legs[party] = new_leg
        self._leg_calls[new_leg] = (ctx.call.call_id, party)
        self._leg_calls.pop(old_leg, None)
        return old_leg

    def leave(self, ctx: CallContext, party: Party) -> str | None:
        """``party`` leaves the call; its leg's id, if it had one."""
        leg = ctx.legs.pop(party, None)
        calls = self._party_calls.get(party)
        if calls is not None:
            calls.discard(ctx.call.call_id)
            if not calls:
                del self._party_calls[party]
        if leg is not None:
            self._leg_calls.pop(leg, None)
        return leg

    def remove(self, ctx: CallContext) -> None:
        """The call has ended: it is no longer here."""
        call = ctx.call
        self._calls.pop(call.call_id, None)
        for number in (call.caller, call.callee):
            calls = self._number_calls.get(number)
            if calls is not None:
                calls.discard(call.call_id)
                if not calls:
                    del self._number_calls[number]
