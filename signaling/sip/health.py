"""Which SBC targets are up: the OPTIONS keep-alive's bookkeeping. Pure.

Each target is pinged with OPTIONS every ``options_interval`` (RFC 3261 §11); any
final response marks it up, no response (Timer F) or a failed transport marks it
down, and so does an INVITE that got no response (Timer B). Calls go to the first
target that is up, in the order of the settings. With ``options_interval`` 0
there is no keep-alive and the first target is always used.
"""

from __future__ import annotations

from dataclasses import dataclass

from signaling.sip.message import SipTarget


@dataclass
class TargetState:
    up: bool = False
    options_pending: bool = False


class SbcHealth:
    def __init__(self, targets: tuple[SipTarget, ...], options_interval: float) -> None:
        self.options_interval = options_interval
        self.targets = {target: TargetState() for target in targets}
        #: Whether any target is up (what ``mark`` reports changes of).
        self.up = False

    @property
    def keepalive(self) -> bool:
        return self.options_interval > 0 and bool(self.targets)

    def due(self) -> list[SipTarget]:
        """The targets to ping now: those without an OPTIONS still under way."""
        due = [t for t, state in self.targets.items() if not state.options_pending]
        for target in due:
            self.targets[target].options_pending = True
        return due

    def answered(self, target: SipTarget, ok: bool) -> bool | None:
        """The OPTIONS to ``target`` got a final response (``ok``) or none."""
        state = self.targets.get(target)
        if state is not None:
            state.options_pending = False
        return self.mark(target, ok)

    def mark(self, target: SipTarget, up: bool) -> bool | None:
        """``target`` is up or down; the new overall state when it changed, else None."""
        state = self.targets.get(target)
        if state is None:
            return None
        state.up = up
        overall = any(s.up for s in self.targets.values())
        if overall == self.up:
            return None
        self.up = overall
        return overall

    def pick(self) -> SipTarget | None:
        """Where a new call goes: the first target that is up."""
        if not self.targets:
            return None
        if self.options_interval <= 0:
            return next(iter(self.targets))
        for target, state in self.targets.items():
            if state.up:
                return target
        return None


__all__ = ["SbcHealth", "TargetState"]
