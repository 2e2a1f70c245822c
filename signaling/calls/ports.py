"""What CallService needs of the rest of the node: the media relay, the numbers,
presence and the operator's SIP trunk.

Small Protocols, so the service runs against fakes in tests. The record store's
(``RecordSink``, ``LiveStore``) are in live.py, the operator policy's in quota.py,
and what the call's parts need of the service itself (``CallHost``) in host.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from voice.relay.api import LegStats

if TYPE_CHECKING:
    from signaling.sip.session import CallEvent

__all__ = [
    "Directory",
    "InboundSip",
    "MediaRelay",
    "OutboundSip",
    "Presence",
    "Reoffer",
    "Trunk",
]


class MediaRelay(Protocol):
    """What CallService needs of the media relay (voice.relay.Relay)."""

    async def answer(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str: ...
    async def offer(self, leg_id: str, *, call_id: str = "") -> str: ...
    async def accept_answer(self, leg_id: str, answer_sdp: str) -> None: ...
    def start_ringback(self, leg_id: str) -> None: ...
    def play_notice(self, leg_id: str) -> None: ...
    def send_dtmf(self, leg_id: str, digits: str) -> None: ...
    async def offer_rtp(self, leg_id: str, *, call_id: str = "") -> str: ...
    async def answer_rtp(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str: ...
    async def accept_rtp_answer(self, leg_id: str, answer_sdp: str) -> None: ...
    async def update_rtp(self, leg_id: str, offer_sdp: str) -> str: ...
    def bridge(self, a: str, b: str) -> None: ...
    async def close_leg(self, leg_id: str) -> LegStats: ...


class Directory(Protocol):
    """Numbers known to the service (IdentityService)."""

    def normalise(self, raw: str, region: str | None = None) -> str:
        """E.164; raises InvalidNumberError."""
        ...

    async def is_registered(self, number: str) -> bool: ...


class Presence(Protocol):
    """Which devices are online where (signaling.presence.Presence)."""

    @property
    def node_id(self) -> str: ...

    async def send(self, device_id: str, text: str) -> bool: ...
    async def online(self, device_id: str) -> bool: ...
    async def devices(self, number: str) -> list[str]: ...
    async def busy(self, number: str) -> bool: ...
    async def call_started(self, call_id: str, numbers: tuple[str, ...]) -> None: ...
    async def call_ended(self, call_id: str, numbers: tuple[str, ...]) -> None: ...


#: A re-INVITE's offer in, our answer out (raises: the re-INVITE fails, 488).
Reoffer = Callable[[str], Awaitable[str]]


class OutboundSip(Protocol):
    """Our INVITE to the network (signaling.sip.trunk.OutboundCall)."""

    on_reoffer: Reoffer | None

    async def cancel(self, reason: str = "") -> None: ...
    async def bye(self, reason: str = "") -> None: ...


class InboundSip(Protocol):
    """The network's INVITE to us (signaling.sip.trunk.IncomingCall)."""

    @property
    def from_number(self) -> str: ...
    @property
    def to_number(self) -> str: ...
    @property
    def offer_sdp(self) -> str: ...

    on_reoffer: Reoffer | None
    on_event: Callable[[CallEvent], None] | None

    async def progress(self, status: int = 180, sdp: str | None = None) -> None: ...
    async def answer(self, sdp: str) -> None: ...
    async def reject(
        self, status: int, reason: str = "", *, retry_after: int | None = None
    ) -> None: ...
    async def bye(self, reason: str = "") -> None: ...


class Trunk(Protocol):
    """What CallService needs of the operator's SIP trunk (signaling.sip.trunk.SipTrunk)."""

    @property
    def up(self) -> bool: ...

    async def invite(
        self, *, to_number: str, from_number: str, sdp: str, on_event: Callable[[Any], None]
    ) -> OutboundSip: ...
