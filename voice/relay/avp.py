"""SDP offer/answer for a plain-RTP audio leg (RTP/AVP, RFC 3264, RFC 8866).

The operator's side of a SIP trunk speaks RTP/AVP: G.711 (PCMA 8, PCMU 0,
RFC 3551), often Opus (RFC 7587) and RFC 4733 telephone-events. Sans-I/O:
text in, parsed descriptions and text out.

- `parse_audio` reads the first audio m-line: the connection address
  (media-level c= over session-level), port, codecs (static payload types
  need no rtpmap), direction (media-level over session-level, RFC 3264 §5.1)
  and ptime.
- `choose_codec`: Opus when offered (no transcoding), else PCMA, else PCMU;
  telephone-event if offered, at the chosen codec's clock rate when there is
  one. NoCommonCodecError (a ValueError) when nothing is usable.
- `answer_direction` and hold: RFC 3264 §8.4 (sendonly or inactive), and
  the RFC 2543 form c=0.0.0.0.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
from dataclasses import dataclass

from voice.relay.api import NoCommonCodecError

__all__ = [
    "OPUS",
    "PCMA",
    "PCMU",
    "TELEPHONE_EVENT",
    "TELEPHONE_EVENT_48K",
    "AudioDescription",
    "Codec",
    "Direction",
    "Negotiated",
    "NoCommonCodecError",
    "answer_direction",
    "build_sdp",
    "choose_codec",
    "match_answer",
    "parse_audio",
]


class Direction(enum.Enum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        """The side that wrote this direction sends media."""
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        """The side that wrote this direction wants media."""
        return self in (Direction.SENDRECV, Direction.RECVONLY)


@dataclass(frozen=True)
class Codec:
    """One payload format: encoding name, payload type, clock rate, channels, fmtp."""

    name: str
    payload_type: int
    clock_rate: int
    channels: int = 1
    fmtp: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.name.lower(), self.clock_rate)

    def with_payload_type(self, payload_type: int) -> Codec:
        return Codec(self.name, payload_type, self.clock_rate, self.channels, self.fmtp)

    def rtpmap(self) -> str:
        channels = f"/{self.channels}" if self.channels > 1 else ""
        return f"a=rtpmap:{self.payload_type} {self.name}/{self.clock_rate}{channels}"


PCMU = Codec("PCMU", 0, 8000)
PCMA = Codec("PCMA", 8, 8000)
OPUS = Codec("opus", 111, 48000, 2, "minptime=10;useinbandfec=1")
TELEPHONE_EVENT = Codec("telephone-event", 101, 8000, fmtp="0-16")
TELEPHONE_EVENT_48K = Codec("telephone-event", 110, 48000, fmtp="0-16")

#: Static payload types of RFC 3551 Table 4 that this relay can use without an rtpmap.
_STATIC = {0: PCMU, 8: PCMA}
#: Audio codecs in order of preference for an RTP leg.
PREFERENCE = (("opus", 48000), ("pcma", 8000), ("pcmu", 8000))
_SUPPORTED_AUDIO = frozenset(PREFERENCE)


@dataclass(frozen=True)
class AudioDescription:
    """The parts of an SDP's first audio section an RTP leg needs."""

    address: str
    port: int
    codecs: tuple[Codec, ...]
    direction: Direction = Direction.SENDRECV
    ptime: int | None = None
    protocol: str = "RTP/AVP"

    @property
    def on_hold(self) -> bool:
        """The writer wants no media (RFC 3264 §8.4; c=0.0.0.0 is RFC 2543 hold)."""
        return not self.direction.receives or self.port == 0 or _unspecified(self.address)

    def codec(self, payload_type: int) -> Codec | None:
        return next((c for c in self.codecs if c.payload_type == payload_type), None)


@dataclass(frozen=True)
class Negotiated:
    """What an RTP leg uses: the audio codec, telephone-event (or None), ptime."""

    codec: Codec
    telephone_event: Codec | None = None
    ptime: int = 20

    @property
    def transcoded(self) -> bool:
        """G.711 on the RTP leg: audio is transcoded to and from Opus."""
        return self.codec.key != OPUS.key


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _lines(sdp: str) -> list[str]:
    if not isinstance(sdp, str) or not sdp.strip():
        raise ValueError("SDP is empty")
    lines = [line.strip() for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if lines[0] != "v=0":
        raise ValueError("SDP must start with 'v=0' (RFC 8866 §5)")
    return lines


def _connection_address(line: str) -> str:
    # c=IN IP4 192.0.2.1 (RFC 8866 §5.7); a multicast TTL suffix is cut off.
    fields = line[2:].split()
    if len(fields) < 3 or fields[0] != "IN" or fields[1] not in ("IP4", "IP6"):
        raise ValueError(f"unusable connection line {line!r}")
    return fields[2].split("/")[0]


def parse_audio(sdp: str) -> AudioDescription:
    """The first audio section of an SDP (ValueError if there is none usable)."""
    lines = _lines(sdp)
    session_address: str | None = None
    session_direction = Direction.SENDRECV
    index = 0
    while index < len(lines) and not lines[index].startswith("m="):
        line = lines[index]
        if line.startswith("c="):
            session_address = _connection_address(line)
        elif line[2:] in Direction._value2member_map_ and line.startswith("a="):
            session_direction = Direction(line[2:])
        index += 1
    while index < len(lines):
        fields = lines[index][2:].split()
        start = index
        index += 1
        while index < len(lines) and not lines[index].startswith("m="):
            index += 1
        if len(fields) < 4 or fields[0] != "audio":
            continue
        return _audio_section(fields, lines[start + 1 : index], session_address, session_direction)
    raise ValueError("SDP has no audio section")


def _audio_section(
    fields: list[str],
    lines: list[str],
    session_address: str | None,
    session_direction: Direction,
) -> AudioDescription:
    try:
        port = int(fields[1].split("/")[0])
        payload_types = [int(value) for value in fields[3:]]
    except ValueError:
        raise ValueError(f"unusable media line m={' '.join(fields)}") from None
    protocol = fields[2]
    address = session_address
    direction = session_direction
    ptime: int | None = None
    rtpmaps: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    for line in lines:
        if line.startswith("c="):
            address = _connection_address(line)
        elif not line.startswith("a="):
            continue
        attribute, _, value = line[2:].partition(":")
        if attribute in Direction._value2member_map_ and not value:
            direction = Direction(attribute)
        elif attribute == "ptime":
            with contextlib.suppress(ValueError, OverflowError):  # "1e400", "inf"
                ptime = int(float(value))
        elif attribute == "rtpmap":
            number, _, encoding = value.partition(" ")
            parts = encoding.split("/")
            try:
                rtpmaps[int(number)] = (
                    parts[0],
                    int(parts[1]),
                    int(parts[2]) if len(parts) > 2 else 1,
                )
            except (ValueError, IndexError):
                continue
        elif attribute == "fmtp":
            number, _, parameters = value.partition(" ")
            if number.isdigit():
                fmtps[int(number)] = parameters.strip()
    if address is None:
        raise ValueError("SDP audio section has no connection address (c=)")
    codecs: list[Codec] = []
    for payload_type in payload_types:
        if payload_type in rtpmaps:
            name, rate, channels = rtpmaps[payload_type]
            codecs.append(Codec(name, payload_type, rate, channels, fmtps.get(payload_type, "")))
        elif payload_type in _STATIC:
            codecs.append(_STATIC[payload_type])
    return AudioDescription(address, port, tuple(codecs), direction, ptime, protocol)


def _telephone_event(codecs: tuple[Codec, ...], clock_rate: int) -> Codec | None:
    events = [codec for codec in codecs if codec.name.lower() == "telephone-event"]
    same_clock = [codec for codec in events if codec.clock_rate == clock_rate]
    candidates = same_clock or events
    return candidates[0] if candidates else None


def choose_codec(offer: AudioDescription) -> Negotiated:
    """Answer an offer: Opus if offered, else PCMA, else PCMU; telephone-event if offered."""
    if offer.protocol.upper() not in ("RTP/AVP", "RTP/AVPF"):
        raise NoCommonCodecError(f"media protocol {offer.protocol} is not plain RTP (RTP/AVP)")
    by_key: dict[tuple[str, int], Codec] = {}
    for codec in offer.codecs:
        by_key.setdefault(codec.key, codec)
    for key in PREFERENCE:
        chosen = by_key.get(key)
        if chosen is not None:
            event = _telephone_event(offer.codecs, chosen.clock_rate)
            return Negotiated(chosen, event, offer.ptime or 20)
    names = ", ".join(f"{c.name}/{c.clock_rate}" for c in offer.codecs) or "none"
    raise NoCommonCodecError(f"no usable audio codec offered (offered: {names})")


def match_answer(offered: tuple[Codec, ...], answer: AudioDescription) -> Negotiated:
    """The codec an answer to our offer chose: its first audio codec that we offered.

    Matched by name and clock rate; the payload type is the answer's, which is
    what we send with (RFC 3264 §6.1: each side's m-line numbers what it receives).
    """
    ours = {codec.key for codec in offered}
    for codec in answer.codecs:
        if codec.key in ours and codec.key in _SUPPORTED_AUDIO:
            event = _telephone_event(
                tuple(c for c in answer.codecs if c.key in ours), codec.clock_rate
            )
            return Negotiated(codec, event, answer.ptime or 20)
    names = ", ".join(f"{c.name}/{c.clock_rate}" for c in answer.codecs) or "none"
    raise NoCommonCodecError(f"the answer chose no codec we offered (answered: {names})")


def answer_direction(offered: Direction, *, hold: bool = False) -> Direction:
    """Our direction in an answer (RFC 3264 §6.1): the mirror of the offer's.

    `hold` (the offer's c=0.0.0.0, RFC 2543): the offerer receives nothing, so we
    only receive (recvonly), or nothing at all if it sends nothing either.
    """
    mirrored = {
        Direction.SENDRECV: Direction.SENDRECV,
        Direction.SENDONLY: Direction.RECVONLY,
        Direction.RECVONLY: Direction.SENDONLY,
        Direction.INACTIVE: Direction.INACTIVE,
    }[offered]
    if hold and mirrored.sends:
        return Direction.RECVONLY if mirrored.receives else Direction.INACTIVE
    return mirrored


def build_sdp(
    *,
    address: str,
    port: int,
    codecs: tuple[Codec, ...],
    direction: Direction = Direction.SENDRECV,
    session_id: int,
    version: int,
    ptime: int = 20,
) -> str:
    """An SDP with one RTP/AVP audio section (RFC 8866), CRLF line ends."""
    family = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=anruf {session_id} {version} IN {family} {address}",
        "s=anruf",
        f"c=IN {family} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(str(c.payload_type) for c in codecs)}",
    ]
    for codec in codecs:
        lines.append(codec.rtpmap())
        if codec.fmtp:
            lines.append(f"a=fmtp:{codec.payload_type} {codec.fmtp}")
    lines.append(f"a=ptime:{ptime}")
    lines.append(f"a={direction.value}")
    return "\r\n".join(lines) + "\r\n"
