import pytest

from voice.ice import ice_configuration, rewrite_candidate_addresses
from voice.relay import NoOpusError
from voice.relay.sdp import check_dtls_fingerprint, opus_payload_types

OPUS_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
        "c=IN IP4 127.0.0.1",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:0 PCMU/8000",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
        "",
    ]
)


def test_opus_payload_type_found() -> None:
    assert opus_payload_types(OPUS_OFFER) == [111]


def test_sdp_without_opus_raises_no_opus_error() -> None:
    pcmu_only = OPUS_OFFER.replace("a=rtpmap:111 opus/48000/2\r\n", "")
    with pytest.raises(NoOpusError):
        opus_payload_types(pcmu_only)
    video_opus = OPUS_OFFER.replace("m=audio", "m=video")
    with pytest.raises(NoOpusError):
        opus_payload_types(video_opus)


@pytest.mark.parametrize("sdp", ["", "hello", "v=0\r\ns=-\r\n"])
def test_unusable_sdp_is_a_value_error(sdp: str) -> None:
    with pytest.raises(ValueError) as info:
        opus_payload_types(sdp)
    assert not isinstance(info.value, NoOpusError)


def test_candidates_carry_the_announced_address() -> None:
    rewritten = rewrite_candidate_addresses(OPUS_OFFER, "127.0.0.1", "192.0.2.10")
    assert "a=candidate:1 1 udp 2130706431 192.0.2.10 50000 typ host" in rewritten
    assert "c=IN IP4 192.0.2.10" in rewritten
    assert rewrite_candidate_addresses(OPUS_OFFER, "127.0.0.1", "") == OPUS_OFFER


def test_ice_configuration_never_uses_defaults() -> None:
    assert ice_configuration([]).iceServers == []
    servers = ice_configuration(["stun:127.0.0.1:3478", "turn:alice:secret@127.0.0.1:3478"])
    assert servers.iceServers is not None
    assert [s.urls for s in servers.iceServers] == ["stun:127.0.0.1:3478", "turn:127.0.0.1:3478"]
    assert servers.iceServers[1].username == "alice"
    with pytest.raises(ValueError):
        ice_configuration(["http://example"])


FINGERPRINT = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)


@pytest.mark.parametrize(
    "sdp",
    [
        OPUS_OFFER.replace("t=0 0\r\n", f"t=0 0\r\n{FINGERPRINT}\r\n"),  # the session's
        OPUS_OFFER.replace("c=IN IP4", f"{FINGERPRINT}\r\nc=IN IP4"),  # the section's own
    ],
)
def test_a_dtls_fingerprint_for_the_media_is_enough(sdp: str) -> None:
    check_dtls_fingerprint(sdp)


@pytest.mark.parametrize(
    "sdp",
    [
        OPUS_OFFER,  # none at all
        OPUS_OFFER.replace("c=IN IP4", "a=fingerprint:sha-256\r\nc=IN IP4"),  # no value
        # the first section has one, the second none
        OPUS_OFFER.replace("c=IN IP4", f"{FINGERPRINT}\r\nc=IN IP4")
        + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
        "v=0\r\n" + FINGERPRINT + "\r\n",  # no media
    ],
)
def test_media_without_a_dtls_fingerprint_is_refused(sdp: str) -> None:
    with pytest.raises(ValueError, match="DTLS fingerprint"):
        check_dtls_fingerprint(sdp)
