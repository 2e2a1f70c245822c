"""Media anchoring: WebRTC legs (ICE, DTLS-SRTP), Opus packet forwarding, leg stats.

The contract every relay backend implements is voice/relay/api.py; this
package re-exports it and nothing heavier, so importing one of its modules
(or the contract) does not import aiortc. The in-process relay is
voice.relay.relay.Relay, the pool of worker processes or relay hosts
voice.relay.pool.RelayPool.
"""

from voice.relay.api import (
    LegStats,
    MediaRelay,
    NoCommonCodecError,
    NoOpusError,
    RelayError,
    RelayUnavailable,
    UnknownLegError,
)

__all__ = [
    "LegStats",
    "MediaRelay",
    "NoCommonCodecError",
    "NoOpusError",
    "RelayError",
    "RelayUnavailable",
    "UnknownLegError",
]
