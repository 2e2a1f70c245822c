"""SDP offer/answer for plain-RTP legs (RTP/AVP)."""

from __future__ import annotations

import pytest

from voice.relay.avp import (
    OPUS,
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    Direction,
    NoCommonCodecError,
    answer_direction,
    build_sdp,
    choose_codec,
    match_answer,
    parse_audio,
)

OPERATOR_OFFER = (
    "v=0\r\n"
    "o=sbc 1001 1 IN IP4 192.0.2.10\r\n"
    "s=-\r\n"
    "c=IN IP4 192.0.2.10\r\n"
    "t=0 0\r\n"
    "m=audio 30000 RTP/AVP 0 8 96\r\n"
    "a=rtpmap:96 telephone-event/8000\r\n"
    "a=fmtp:96 0-15\r\n"
    "a=ptime:20\r\n"
)


def test_parse_operator_offer() -> None:
    offer = parse_audio(OPERATOR_OFFER)
    assert (offer.address, offer.port, offer.ptime) == ("192.0.2.10", 30000, 20)
    assert [c.name for c in offer.codecs] == ["PCMU", "PCMA", "telephone-event"]
    assert offer.direction is Direction.SENDRECV and not offer.on_hold


def test_choice_prefers_pcma_then_pcmu() -> None:
    chosen = choose_codec(parse_audio(OPERATOR_OFFER))
    assert chosen.codec == PCMA and chosen.transcoded
    assert chosen.telephone_event is not None and chosen.telephone_event.payload_type == 96
    only_pcmu = OPERATOR_OFFER.replace("RTP/AVP 0 8 96", "RTP/AVP 0")
    chosen = choose_codec(parse_audio(only_pcmu))
    assert chosen.codec == PCMU and chosen.telephone_event is None


def test_choice_prefers_opus_with_its_own_payload_type() -> None:
    offer = OPERATOR_OFFER.replace("RTP/AVP 0 8 96", "RTP/AVP 8 107 96").replace(
        "a=ptime:20", "a=rtpmap:107 opus/48000/2\r\na=rtpmap:97 telephone-event/48000"
    )
    chosen = choose_codec(parse_audio(offer))
    assert chosen.codec.key == OPUS.key and chosen.codec.payload_type == 107
    assert not chosen.transcoded
    # Only telephone-event/8000 is in the m-line (97 has no m-line entry): take it.
    assert chosen.telephone_event is not None and chosen.telephone_event.clock_rate == 8000


def test_nothing_usable() -> None:
    offer = OPERATOR_OFFER.replace("RTP/AVP 0 8 96", "RTP/AVP 18 96").replace(
        "a=ptime:20", "a=rtpmap:18 G729/8000"
    )
    with pytest.raises(NoCommonCodecError) as raised:
        choose_codec(parse_audio(offer))
    assert isinstance(raised.value, ValueError)
    with pytest.raises(NoCommonCodecError):
        choose_codec(parse_audio(OPERATOR_OFFER.replace("RTP/AVP", "RTP/SAVP")))
    with pytest.raises(ValueError):
        parse_audio("v=0\r\ns=-\r\n")


def test_offer_round_trip_and_answer_matching() -> None:
    offered = (OPUS, PCMA, PCMU, TELEPHONE_EVENT)
    sdp = build_sdp(address="127.0.0.1", port=40000, codecs=offered, session_id=7, version=2)
    assert "m=audio 40000 RTP/AVP 111 8 0 101\r\n" in sdp
    assert "a=rtpmap:101 telephone-event/8000\r\n" in sdp
    assert parse_audio(sdp).codecs == offered
    answer = OPERATOR_OFFER.replace("RTP/AVP 0 8 96", "RTP/AVP 8 101").replace(
        "a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15", "a=rtpmap:101 telephone-event/8000"
    )
    chosen = match_answer(offered, parse_audio(answer))
    assert chosen.codec == PCMA and chosen.telephone_event == TELEPHONE_EVENT.with_payload_type(
        101
    ).__class__("telephone-event", 101, 8000)
    with pytest.raises(NoCommonCodecError):
        match_answer((PCMU,), parse_audio(answer))


def test_hold_directions() -> None:
    assert answer_direction(Direction.SENDRECV) is Direction.SENDRECV
    assert answer_direction(Direction.SENDONLY) is Direction.RECVONLY
    assert answer_direction(Direction.INACTIVE) is Direction.INACTIVE
    assert answer_direction(Direction.RECVONLY) is Direction.SENDONLY
    # RFC 2543 hold: c=0.0.0.0 with sendrecv means "do not send to me".
    assert answer_direction(Direction.SENDRECV, hold=True) is Direction.RECVONLY
    held = parse_audio(OPERATOR_OFFER + "a=sendonly\r\n")
    assert held.direction is Direction.SENDONLY and held.on_hold
    inactive = parse_audio(OPERATOR_OFFER.replace("t=0 0", "t=0 0\r\na=inactive"))
    assert inactive.direction is Direction.INACTIVE and inactive.on_hold  # session-level
    zero = parse_audio(OPERATOR_OFFER.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0"))
    assert zero.on_hold and zero.direction is Direction.SENDRECV


def test_media_level_connection_overrides_session() -> None:
    sdp = OPERATOR_OFFER.replace("a=ptime:20", "c=IN IP4 198.51.100.7\r\na=ptime:30")
    offer = parse_audio(sdp)
    assert offer.address == "198.51.100.7" and offer.ptime == 30
