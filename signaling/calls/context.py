"""What CallService keeps of one call besides its machine: legs, lock, timer, sides."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from signaling.calls.machine import Call
from signaling.calls.parties import Party, PhoneNetwork
from signaling.calls.timers import TimerHandle

if TYPE_CHECKING:
    from signaling.calls.ports import InboundSip, OutboundSip
    from signaling.carrier.policy import Admission
    from voice.relay.api import LegStats

__all__ = ["CallContext", "NetworkSide"]


@dataclass
class NetworkSide:
    """The phone-network side of a call (signaling/calls/trunk_side.py)."""

    party: PhoneNetwork
    #: Our INVITE to the network (an app user calls a phone number) …
    outbound: OutboundSip | None = None
    #: … or the network's INVITE to us (a phone number calls an app user).
    inbound: InboundSip | None = None
    #: The SIP call is over (no CANCEL/BYE/final response from us any more).
    ended: bool = False
    #: Our SDP answer to the network's INVITE, sent with the 200 when an app answers.
    answer: str | None = None


@dataclass
class CallContext:
    call: Call
    invite_ref: str | None
    started: float  # monotonic, for the setup-time histogram
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    legs: dict[Party, str] = field(default_factory=dict)  # party -> relay leg id
    #: The one timer of the call, armed from the machine's next_deadline().
    timer: TimerHandle | None = None
    ringing_announced: bool = False
    network: NetworkSide | None = None
    #: The operator policy's decision (None without a policy).
    admission: Admission | None = None
    #: The call has a row in live_calls (removed with its record).
    live: bool = False
    #: Stats of legs a device had before it moved to a new one (call.renegotiate).
    earlier_stats: dict[Party, LegStats] = field(default_factory=dict)

    def leg(self, party: Party) -> str:
        return self.legs.setdefault(party, f"{self.call.call_id}:{party}")

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
