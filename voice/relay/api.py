"""The relay contract: what every media relay backend offers, and how it fails.

Three backends implement `MediaRelay`: the in-process relay
(voice.relay.relay.Relay, or TranscodingRelay), and a RelayPool
(voice.relay.pool) whose legs live in worker processes or on relay hosts.
CallService and the tests see only this contract.

- Legs are named by the caller (`leg_id`, any non-empty string the caller
  chooses; the relay never reads anything into it). A leg is created by
  `answer`/`offer` (WebRTC) or `offer_rtp`/`answer_rtp` (plain RTP), each
  given the call it belongs to (`call_id`): legs of one call are kept where
  they can be bridged (one worker process, one relay host). Without a
  call_id a leg is a call of its own.
- Negotiation is async (it may cross a process or a network); media control
  (ringback, notice, bridge, DTMF) and `stats` are synchronous and never wait.
- Errors: `RelayError` is the base of the relay's own. `RelayUnavailable` is
  an outage (no worker or host can serve, it died, or it did not answer): the
  request may have been fine, so it is never a ValueError. `NoOpusError`,
  `NoCommonCodecError` and `UnknownLegError` are bad requests and also
  ValueErrors, as is any other unusable SDP or argument (a plain ValueError).
- Each operation also exists as a frozen dataclass (`Operation`): the form in
  which it crosses a control channel (voice/relay/control.py) and is carried out
  on a relay (voice/relay/server.py: `perform`).

Sans-I/O: no asyncio, no aiortc here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from wire.reasons import MediaFailure

__all__ = [
    "WORKER_LOST",
    "AcceptAnswer",
    "AcceptRtpAnswer",
    "Answer",
    "AnswerRtp",
    "Bridge",
    "CloseLeg",
    "LegStats",
    "MediaRelay",
    "NewLeg",
    "NoCommonCodecError",
    "NoOpusError",
    "Offer",
    "OfferRtp",
    "Operation",
    "PlayNotice",
    "RelayError",
    "RelayUnavailable",
    "RelayWorkerError",
    "SendDtmf",
    "StartRingback",
    "Stats",
    "StopRingback",
    "UnknownLegError",
    "UpdateRtp",
]

#: on_leg_failed detail for the legs of a worker process or relay host that was lost.
WORKER_LOST = MediaFailure.RELAY_WORKER_LOST


# -- errors -------------------------------------------------------------------


class RelayError(Exception):
    """Base of the relay's own errors."""


class RelayUnavailable(RelayError):
    """No relay worker or host can serve the request: none alive, it went away, or it
    did not answer. An outage, not a bad request: never a ValueError."""


class RelayWorkerError(RelayError, RuntimeError):
    """An unexpected error inside a relay worker or host, whose type does not cross the
    control channel."""


class NoOpusError(RelayError, ValueError):
    """The SDP has no audio section offering Opus (RFC 7587)."""


class NoCommonCodecError(RelayError, ValueError):
    """The peer offered (or answered) no codec this relay can use on an RTP leg."""


class UnknownLegError(RelayError, KeyError, ValueError):
    """No such leg (never created, or already closed).

    Both a KeyError (a lookup failed) and a ValueError, so callers that
    treat any unusable request as ValueError also catch an answer arriving
    for a leg that was closed in the meantime.
    """


# -- leg statistics -------------------------------------------------------------


@dataclass(frozen=True)
class LegStats:
    """Counters of one leg: received from its device, sent to its device.

    Bytes are RTP payload octets (RFC 3550 §6.4.1 octet count). Loss and
    jitter (RFC 3550 A.3, A.8) are of the device's stream as the relay
    received it; rtt_ms comes from the device's receiver reports on the
    relay's sender reports (§6.4.1), None until one arrived.
    """

    packets_received: int = 0
    packets_sent: int = 0
    packets_lost: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    jitter_ms: float = 0.0
    rtt_ms: float | None = None
    #: Datagrams from the device dropped because the receive queue was full (overload).
    packets_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def then(self, later: LegStats) -> LegStats:
        """One device's legs in turn (its leg was replaced mid-call): counts add up,
        jitter is the worse, the round trip the latest known."""
        return LegStats(
            packets_received=self.packets_received + later.packets_received,
            packets_sent=self.packets_sent + later.packets_sent,
            packets_lost=self.packets_lost + later.packets_lost,
            bytes_received=self.bytes_received + later.bytes_received,
            bytes_sent=self.bytes_sent + later.bytes_sent,
            jitter_ms=max(self.jitter_ms, later.jitter_ms),
            rtt_ms=later.rtt_ms if later.rtt_ms is not None else self.rtt_ms,
            packets_dropped=self.packets_dropped + later.packets_dropped,
        )


# -- the contract ---------------------------------------------------------------


class MediaRelay(Protocol):
    """What every relay backend offers (in-process, worker processes, relay hosts)."""

    #: (leg_id, detail) once when a leg fails: ICE/DTLS, consent, media timeout, or
    #: its worker or host was lost (WORKER_LOST).
    on_leg_failed: Callable[[str, str], None] | None
    #: (leg_id, digit) once per RFC 4733 event received on an RTP leg.
    on_dtmf: Callable[[str, str], None] | None

    @property
    def active_legs(self) -> int: ...

    async def answer(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        """Answer a device's offer (a new WebRTC leg); returns the relay's answer SDP."""
        ...

    async def offer(self, leg_id: str, *, call_id: str = "") -> str:
        """The relay's offer for a device (a new WebRTC leg)."""
        ...

    async def accept_answer(self, leg_id: str, answer_sdp: str) -> None:
        """Apply the device's answer to the relay's offer; media starts flowing."""
        ...

    async def offer_rtp(self, leg_id: str, *, call_id: str = "") -> str:
        """Our SDP offer for a new plain-RTP leg (for an INVITE to the operator)."""
        ...

    async def answer_rtp(self, leg_id: str, offer_sdp: str, *, call_id: str = "") -> str:
        """Answer the operator's offer with a new plain-RTP leg."""
        ...

    async def accept_rtp_answer(self, leg_id: str, answer_sdp: str) -> None: ...

    async def update_rtp(self, leg_id: str, offer_sdp: str) -> str: ...

    def send_dtmf(self, leg_id: str, digits: str) -> None: ...

    def start_ringback(self, leg_id: str) -> None: ...

    def stop_ringback(self, leg_id: str) -> None: ...

    def play_notice(self, leg_id: str) -> None: ...

    def bridge(self, a: str, b: str) -> None:
        """Forward media between legs a and b of one call both ways; ends ringback."""
        ...

    def stats(self, leg_id: str) -> LegStats:
        """The leg's counters (zero for an unknown leg); a pool's are at most a report old."""
        ...

    async def close_leg(self, leg_id: str) -> LegStats:
        """Close a leg (idempotent, never RelayUnavailable) and return its final stats."""
        ...

    async def close(self) -> None: ...


# -- operations as values -------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    leg_id: str
    offer_sdp: str
    call_id: str = ""


@dataclass(frozen=True)
class Offer:
    leg_id: str
    call_id: str = ""


@dataclass(frozen=True)
class OfferRtp:
    leg_id: str
    call_id: str = ""


@dataclass(frozen=True)
class AnswerRtp:
    leg_id: str
    offer_sdp: str
    call_id: str = ""


@dataclass(frozen=True)
class AcceptAnswer:
    leg_id: str
    answer_sdp: str


@dataclass(frozen=True)
class AcceptRtpAnswer:
    leg_id: str
    answer_sdp: str


@dataclass(frozen=True)
class UpdateRtp:
    leg_id: str
    offer_sdp: str


@dataclass(frozen=True)
class SendDtmf:
    leg_id: str
    digits: str


@dataclass(frozen=True)
class StartRingback:
    leg_id: str


@dataclass(frozen=True)
class StopRingback:
    leg_id: str


@dataclass(frozen=True)
class PlayNotice:
    leg_id: str


@dataclass(frozen=True)
class Bridge:
    a: str
    b: str


@dataclass(frozen=True)
class Stats:
    leg_id: str


@dataclass(frozen=True)
class CloseLeg:
    leg_id: str


#: The operations that create a leg (and so name its call).
NewLeg = Answer | Offer | OfferRtp | AnswerRtp
Operation = (
    Answer
    | Offer
    | OfferRtp
    | AnswerRtp
    | AcceptAnswer
    | AcceptRtpAnswer
    | UpdateRtp
    | SendDtmf
    | StartRingback
    | StopRingback
    | PlayNotice
    | Bridge
    | Stats
    | CloseLeg
)
