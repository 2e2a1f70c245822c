"""Property-based tests of the media parsers and the jitter buffer: SDP of RTP legs
(voice/relay/avp.py, voice/relay/sdp.py), RFC 4733 telephone-events, RTP headers,
RTCP as an RTP leg reads it, reception statistics and the reordering buffer.

Derandomized and bounded (a few seconds in all).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import struct

from aiortc.rtp import RtcpPacket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voice.relay.avp import (
    OPUS,
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    AudioDescription,
    Codec,
    Direction,
    NoCommonCodecError,
    build_sdp,
    choose_codec,
    parse_audio,
)
from voice.relay.dtmf import DIGITS, DtmfReceiver, TelephoneEvent, dtmf_schedule
from voice.relay.jitter import JitterBuffer, Slot
from voice.relay.sdp import opus_payload_types
from voice.rtp.header import FIXED_HEADER, header_length, payload_end
from voice.rtp.stats import ReceptionStatistics

BOUNDED = settings(
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# SDP -------------------------------------------------------------------------------

SDP_LINES = st.sampled_from(
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "c=IN IP4 127.0.0.1",
        "c=IN IP6 ::1",
        "c=IN IP4 0.0.0.0",
        "c=IN",
        "c=IN IP4",
        "m=audio 40000 RTP/AVP 8 0 101",
        "m=audio 0 RTP/AVP 8",
        "m=audio x RTP/AVP 8",
        "m=audio 40000 RTP/AVP 99999999999999999999",
        "m=audio 40000 RTP/SAVP 8",
        "m=video 40002 RTP/AVP 96",
        "m=audio",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:96 opus/48000/x",
        "a=rtpmap:",
        "a=rtpmap:7",
        "a=rtpmap:x y/z",
        "a=fmtp:101 0-16",
        "a=fmtp:",
        "a=ptime:20",
        "a=ptime:",
        "a=ptime:1e400",
        "a=ptime:nan",
        "a=ptime:inf",
        "a=sendrecv",
        "a=sendonly",
        "a=inactive",
        "a=recvonly:x",
    ]
)
sdp_texts = (
    st.lists(SDP_LINES | st.text(max_size=30), max_size=16).map("\r\n".join)
    | st.lists(SDP_LINES, max_size=16).map(lambda lines: "\n".join(["v=0", *lines]))
    | st.text(max_size=200)
)


@BOUNDED
@given(sdp_texts)
def test_any_sdp_gives_an_audio_description_or_a_value_error(sdp: str) -> None:
    try:
        audio = parse_audio(sdp)
    except ValueError:
        pass
    else:
        assert isinstance(audio, AudioDescription)
        _ = audio.on_hold
        try:
            negotiated = choose_codec(audio)
        except NoCommonCodecError:
            pass
        else:
            assert negotiated.codec in audio.codecs
            assert negotiated.ptime > 0 or audio.ptime is not None
    try:
        types = opus_payload_types(sdp)
    except ValueError:
        pass
    else:
        assert types and all(isinstance(t, int) for t in types)


codec_sets = st.lists(
    st.sampled_from([OPUS, PCMA, PCMU, TELEPHONE_EVENT]), min_size=1, max_size=4, unique=True
)


@BOUNDED
@given(
    st.sampled_from(["127.0.0.1", "192.0.2.7", "::1", "2001:db8::5"]),
    st.integers(min_value=0, max_value=65535),
    codec_sets,
    st.sampled_from(list(Direction)),
    st.integers(min_value=10, max_value=120),
)
def test_built_sdp_parses_back(
    address: str, port: int, codecs: list[Codec], direction: Direction, ptime: int
) -> None:
    sdp = build_sdp(
        address=address,
        port=port,
        codecs=tuple(codecs),
        direction=direction,
        session_id=1,
        version=1,
        ptime=ptime,
    )
    audio = parse_audio(sdp)
    assert (audio.address, audio.port, audio.direction, audio.ptime) == (
        address,
        port,
        direction,
        ptime,
    )
    assert audio.codecs == tuple(codecs)


# RFC 4733 ------------------------------------------------------------------------------


@BOUNDED
@given(st.binary(max_size=12))
def test_any_telephone_event_payload_decodes_or_raises_a_value_error(payload: bytes) -> None:
    try:
        event = TelephoneEvent.decode(payload)
    except ValueError:
        assert len(payload) < 4
    else:
        assert TelephoneEvent.decode(event.encode()) == event


@BOUNDED
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=8)),
        max_size=60,
    )
)
def test_the_dtmf_receiver_takes_any_packets(packets: list[tuple[int, bytes]]) -> None:
    receiver = DtmfReceiver()
    for timestamp, payload in packets:
        digits = receiver.receive(timestamp, payload)
        assert len(digits) <= 2 and all(d in DIGITS for d in digits)
    assert len(receiver._reported) <= 8


@BOUNDED
@given(
    st.text(alphabet=DIGITS, min_size=1, max_size=12),
    st.randoms(use_true_random=False),
    st.floats(min_value=0.0, max_value=0.3),
)
def test_the_dtmf_receiver_hears_each_scheduled_digit_once(
    digits: str, rng: object, shuffle_fraction: float
) -> None:
    """Duplicated and locally reordered packets of a schedule still give its digits."""
    assert isinstance(rng, random.Random)
    packets = [(e.timestamp, e.payload) for e in dtmf_schedule(digits)]
    for i in range(len(packets) - 1):
        if rng.random() < shuffle_fraction and packets[i][0] == packets[i + 1][0]:
            packets[i], packets[i + 1] = packets[i + 1], packets[i]  # within one event
    received = ""
    receiver = DtmfReceiver()
    for timestamp, payload in packets + packets[-3:]:
        received += "".join(receiver.receive(timestamp, payload))
    assert received == digits


# RTP and RTCP --------------------------------------------------------------------------


@BOUNDED
@given(st.binary(max_size=80))
def test_rtp_header_bounds_of_any_datagram(packet: bytes) -> None:
    header = header_length(packet)
    if header < 0:
        return
    assert FIXED_HEADER <= header <= len(packet)
    end = payload_end(packet, header)
    assert end <= len(packet)


rtcp_like = st.binary(max_size=120) | st.builds(
    lambda first, kind, words, body: struct.pack("!BBH", 0x80 | first, kind, words) + body,
    st.integers(min_value=0, max_value=63),
    st.sampled_from([200, 201, 202, 203, 205, 206, 207]),
    st.integers(min_value=0, max_value=30),
    st.binary(max_size=120),
)


@BOUNDED
@given(rtcp_like)
def test_rtcp_as_an_rtp_leg_reads_it_raises_only_value_errors(data: bytes) -> None:
    """An RTP leg catches ValueError around RtcpPacket.parse: nothing else may escape."""
    with contextlib.suppress(ValueError):
        RtcpPacket.parse(data)


@BOUNDED
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=65535),
            st.integers(min_value=0, max_value=2**32 - 1),
            st.floats(min_value=0, max_value=1e6, allow_nan=False),
        ),
        max_size=80,
    )
)
def test_reception_statistics_take_any_stream(packets: list[tuple[int, int, float]]) -> None:
    stats = ReceptionStatistics(8000)
    for sequence_number, timestamp, arrival in packets:
        stats.receive(sequence_number, timestamp, arrival, 160)
        assert 0 <= stats.fraction_lost() <= 255
        assert stats.jitter >= 0
    assert stats.packets_received == len(packets)


def test_a_ptime_out_of_float_range_is_ignored() -> None:
    """Found by the SDP property: a=ptime:1e400 raised OverflowError out of parse_audio."""
    for value in ("1e400", "inf", "-inf", "nan"):
        sdp = f"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 8\r\na=ptime:{value}\r\n"
        assert parse_audio(sdp).ptime is None


# The jitter buffer ---------------------------------------------------------------------

arrivals = st.lists(
    st.tuples(
        st.integers(min_value=-3, max_value=5) | st.integers(min_value=-40_000, max_value=40_000),
        st.integers(min_value=0, max_value=2**32 - 1),
    ),
    max_size=150,
)


@BOUNDED
@given(
    st.integers(min_value=0, max_value=65535),
    arrivals,
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=1, max_value=20),
)
def test_the_jitter_buffer_stays_bounded_and_in_order(
    first: int, steps: list[tuple[int, int]], depth: int, spare: int
) -> None:
    capacity = depth + spare
    buffer = JitterBuffer(depth=depth, capacity=capacity)
    sequence = first
    released: list[Slot] = []
    for step, timestamp in steps:
        sequence = (sequence + step) % 65536
        released += buffer.push(sequence, timestamp, b"p%d" % sequence)
        assert len(buffer._held) <= capacity
    released += buffer.flush()
    assert not buffer._held
    # Released in sequence: each slot follows the one before, but where the sender
    # restarted its stream (a jump of more than 100), at most once per restart.
    jumps = sum(
        b.sequence_number != (a.sequence_number + 1) % 65536
        for a, b in itertools.pairwise(released)
    )
    assert jumps <= buffer.restarts
    for slot in released:
        assert slot.payload is None or slot.payload == b"p%d" % slot.sequence_number
    assert buffer.released <= buffer.received


def test_flushing_a_buffer_that_holds_nothing() -> None:
    """Found by the jitter property: flush() before the first packet failed an assert."""
    buffer = JitterBuffer()
    assert buffer.flush() == []
    buffer.push(7, 0, b"x")
    buffer.reset()
    assert buffer.flush() == []


@BOUNDED
@given(st.integers(min_value=0, max_value=65535), st.permutations(list(range(12))))
def test_the_jitter_buffer_restores_a_shuffle_within_its_depth(
    first: int, order: list[int]
) -> None:
    """Packets shuffled within runs of `depth` all come out, in order."""
    depth = 4
    # The first packet starts the stream: it comes first.
    shuffled = [0, *sorted(range(1, 12), key=lambda i: ((i - 1) // depth, order[i]))]
    buffer = JitterBuffer(depth=depth, capacity=16)
    out: list[Slot] = []
    for i in shuffled:
        out += buffer.push((first + i) % 65536, 160 * i, b"p%d" % i)
    out += buffer.flush()
    payloads = [slot.payload for slot in out if slot.payload is not None]
    assert payloads == [b"p%d" % i for i in range(12)]
    assert buffer.late == buffer.concealed == 0
