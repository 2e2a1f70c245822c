"""Media anchoring: WebRTC legs (ICE, DTLS-SRTP), Opus packet forwarding, leg stats."""

from voice.relay.relay import LegStats, NoCommonCodecError, NoOpusError, Relay, UnknownLegError

__all__ = ["LegStats", "NoCommonCodecError", "NoOpusError", "Relay", "UnknownLegError"]
