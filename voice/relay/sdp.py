"""Checks on SDP handed to the relay, before aiortc sees it."""

from __future__ import annotations

import re

from voice.relay.api import NoOpusError

__all__ = ["NoOpusError", "check_dtls_fingerprint", "opus_payload_types"]

_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/48000(?:/\d+)?$", re.IGNORECASE)
_FINGERPRINT = re.compile(r"^a=fingerprint:\S+ \S+$", re.IGNORECASE)


def opus_payload_types(sdp: str) -> list[int]:
    """Payload types mapped to opus/48000 in the SDP's audio sections.

    ValueError if the text is not a usable SDP session description;
    NoOpusError if it is one but carries no Opus audio.
    """
    if not isinstance(sdp, str) or not sdp.strip():
        raise ValueError("SDP is empty")
    lines = [line.strip() for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if lines[0] != "v=0":
        raise ValueError("SDP must start with 'v=0' (RFC 8866 §5)")
    if not any(line.startswith("m=") for line in lines):
        raise ValueError("SDP has no media section")
    payload_types: list[int] = []
    in_audio = False
    for line in lines:
        if line.startswith("m="):
            fields = line[2:].split()
            in_audio = len(fields) >= 4 and fields[0] == "audio" and fields[1] != "0"
        elif in_audio:
            match = _RTPMAP.match(line)
            if match:
                payload_types.append(int(match.group(1)))
    if not payload_types:
        raise NoOpusError("SDP has no Opus audio (a=rtpmap:<pt> opus/48000/2)")
    return payload_types


def check_dtls_fingerprint(sdp: str) -> None:
    """ValueError unless every media section has a DTLS certificate fingerprint, its
    own or the session's (RFC 8122 section 5): WebRTC media is always DTLS-SRTP
    (RFC 8827 section 6.5), and aiortc fails an assertion in a background task
    without one."""
    session = False
    sections: list[bool] = []  # per media section: a fingerprint of its own
    for raw in sdp.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("m="):
            sections.append(False)
        elif _FINGERPRINT.match(line):
            if sections:
                sections[-1] = True
            else:
                session = True
    if not sections or not (session or all(sections)):
        raise ValueError("SDP has no DTLS fingerprint for its media (a=fingerprint, RFC 8122)")
