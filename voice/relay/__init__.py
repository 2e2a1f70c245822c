"""Media anchoring: WebRTC legs (ICE, DTLS-SRTP), Opus packet forwarding, leg stats.

The contract every relay backend implements is voice/relay/api.py.
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
from voice.relay.relay import Relay

__all__ = [
    "LegStats",
    "MediaRelay",
    "NoCommonCodecError",
    "NoOpusError",
    "Relay",
    "RelayError",
    "RelayUnavailable",
    "UnknownLegError",
]
