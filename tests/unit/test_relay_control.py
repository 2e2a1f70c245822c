"""The relay control channel's wire format, without processes: framing, requests,
replies, events and errors (voice/relay/control.py)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from voice.relay import api
from voice.relay.api import (
    LegStats,
    MediaRelay,
    NoCommonCodecError,
    NoOpusError,
    RelayError,
    RelayUnavailable,
    RelayWorkerError,
    UnknownLegError,
)
from voice.relay.control import (
    MAX_FRAME,
    Correlator,
    DtmfReceived,
    Event,
    Failure,
    FrameDecoder,
    LegFailed,
    Ping,
    ProtocolError,
    Ready,
    Reply,
    Request,
    RequestError,
    Shutdown,
    StatsReport,
    decode_request,
    encode_error,
    encode_event,
    encode_message,
    encode_reply,
    encode_request,
    error_from_wire,
    error_to_wire,
    stats_from_wire,
    stats_to_wire,
)


def test_a_frame_is_a_length_then_json() -> None:
    frame = encode_message({"id": 1, "op": "offer", "args": ["c:a"]})
    (size,) = struct.unpack("!I", frame[:4])
    assert size == len(frame) - 4
    assert json.loads(frame[4:]) == {"id": 1, "op": "offer", "args": ["c:a"]}


def test_the_decoder_reassembles_frames_split_anywhere() -> None:
    messages = [{"id": n, "result": "x" * n} for n in range(1, 6)]
    stream = b"".join(encode_message(message) for message in messages)
    for chunk in (1, 3, 7, len(stream)):
        decoder = FrameDecoder()
        received = []
        for start in range(0, len(stream), chunk):
            received += decoder.feed(stream[start : start + chunk])
        assert received == messages


def test_the_decoder_refuses_garbage() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack("!I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack("!I", 3) + b"{{{")
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack("!I", 2) + b"[]")


def test_requests_are_numbered_and_replies_matched() -> None:
    correlator = Correlator()
    first, frame = correlator.request(api.Answer("c:a", "v=0", call_id="c"))
    second, _ = correlator.request(api.Offer("c:b", call_id="c"))
    assert first != second and correlator.pending == 2
    assert FrameDecoder().feed(frame) == [
        {"id": first, "op": "answer", "args": ["c:a", "v=0", "c"]}
    ]

    assert correlator.receive({"id": second, "result": "sdp"}) == Reply(second, "sdp")
    failure = correlator.receive({"id": first, "error": {"kind": "NoOpusError", "message": "no"}})
    assert isinstance(failure, Failure) and failure.id == first
    assert type(failure.error) is NoOpusError and str(failure.error) == "no"
    assert correlator.pending == 0
    # A second answer to the same id (or to an abandoned request) is dropped.
    assert correlator.receive({"id": second, "result": "again"}) is None


def test_results_arrive_as_the_operation_returns_them() -> None:
    correlator = Correlator()
    stats = LegStats(packets_received=7, rtt_ms=12.5)
    stats_id, _ = correlator.request(api.Stats("c:a"))
    close_id, _ = correlator.request(api.CloseLeg("c:a"))
    accept_id, _ = correlator.request(api.AcceptAnswer("c:a", "v=0"))
    wire = json.loads(json.dumps(encode_reply(stats_id, stats)))
    assert correlator.receive(wire) == Reply(stats_id, stats)
    assert correlator.receive({"id": close_id, "result": stats_to_wire(stats)}) == Reply(
        close_id, stats
    )
    assert correlator.receive({"id": accept_id, "result": None}) == Reply(accept_id, None)
    # A result that cannot be what the operation returns is the other side's fault.
    bad_id, _ = correlator.request(api.Stats("c:a"))
    failure = correlator.receive({"id": bad_id, "result": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]})
    assert isinstance(failure, Failure) and isinstance(failure.error, RelayWorkerError)


def test_abandoned_requests_ignore_late_replies() -> None:
    correlator = Correlator()
    request_id, _ = correlator.request(api.Offer("c:a"))
    correlator.abandon(request_id)
    assert correlator.receive({"id": request_id, "result": "late"}) is None
    ids = [correlator.request(Ping())[0] for _ in range(3)]
    assert correlator.abandon_all() == ids and correlator.pending == 0


def test_notifications_carry_no_id_and_events_pass_through() -> None:
    (message,) = FrameDecoder().feed(Correlator.notify(api.Bridge("c:a", "c:b")))
    assert message == {"op": "bridge", "args": ["c:a", "c:b"]}
    correlator = Correlator()
    event = correlator.receive({"event": "leg_failed", "args": ["c:a", "ice_failed"]})
    assert event == LegFailed("c:a", "ice_failed")
    assert correlator.receive({"event": "something_new", "args": []}) is None
    with pytest.raises(ProtocolError):
        correlator.receive({"op": "answer"})
    with pytest.raises(ProtocolError):
        correlator.receive({"id": "1", "result": None})


EVERY_REQUEST: list[Request] = [
    api.Answer("c:a", "v=0", "c"),
    api.Offer("c:b", "c"),
    api.OfferRtp("c:sip", "c"),
    api.AnswerRtp("c:sip", "v=0", "c"),
    api.AcceptAnswer("c:b", "v=0"),
    api.AcceptRtpAnswer("c:sip", "v=0"),
    api.UpdateRtp("c:sip", "v=0"),
    api.SendDtmf("c:sip", "12#"),
    api.StartRingback("c:a"),
    api.StopRingback("c:a"),
    api.PlayNotice("c:a"),
    api.Bridge("c:a", "c:b"),
    api.Stats("c:a"),
    api.CloseLeg("c:a"),
    Ping(),
    Shutdown(),
]


def test_an_operation_goes_by_its_relay_method_name() -> None:
    names = [json.loads(encode_request(None, request)[4:])["op"] for request in EVERY_REQUEST]
    assert names == [
        "answer",
        "offer",
        "offer_rtp",
        "answer_rtp",
        "accept_answer",
        "accept_rtp_answer",
        "update_rtp",
        "send_dtmf",
        "start_ringback",
        "stop_ringback",
        "play_notice",
        "bridge",
        "stats",
        "close_leg",
        "ping",
        "shutdown",
    ]
    for name in names[:-2]:
        assert callable(getattr(MediaRelay, name)), name


@pytest.mark.parametrize("request_", EVERY_REQUEST, ids=lambda r: type(r).__name__)
def test_every_request_reads_back_as_sent(request_: Request) -> None:
    for request_id in (7, None):
        (message,) = FrameDecoder().feed(encode_request(request_id, request_))
        assert decode_request(message) == (request_id, request_)


def test_a_new_leg_without_a_call_is_a_call_of_its_own() -> None:
    assert decode_request({"id": 1, "op": "offer", "args": ["x"]}) == (1, api.Offer("x", ""))
    assert decode_request({"op": "answer", "args": ["x", "v=0"]}) == (None, api.Answer("x", "v=0"))


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"id": 1, "op": "answer", "args": [5]}, "arguments"),
        ({"id": 1, "op": "answer", "args": [5, "v=0"]}, "string"),
        ({"id": 1, "op": "bridge", "args": ["a", "b", "c"]}, "arguments"),
        ({"id": 1, "op": "close_leg", "args": [""]}, "leg id"),
        ({"id": 1, "op": "explode", "args": []}, "unknown"),
    ],
)
def test_requests_that_are_not_understood_are_refused(message: dict[str, Any], reason: str) -> None:
    with pytest.raises(RequestError, match=reason) as caught:
        decode_request(message)
    assert caught.value.request_id == 1
    assert error_from_wire(encode_error(1, caught.value)["error"]).__class__ is ValueError


EVERY_EVENT: list[Event] = [
    Ready(4242, "uvloop"),
    LegFailed("c:a", "consent_expired"),
    DtmfReceived("c:sip", "5"),
    StatsReport({"c:a": LegStats(packets_sent=3), "c:b": LegStats()}, 5),
    StatsReport({}, None),
]


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: type(e).__name__)
def test_every_event_reads_back_as_sent(event: Event) -> None:
    (message,) = FrameDecoder().feed(encode_message(encode_event(event)))
    assert Correlator().receive(message) == event


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (NoOpusError("SDP has no Opus audio"), "NoOpusError"),
        (NoCommonCodecError("no common codec"), "NoCommonCodecError"),
        (UnknownLegError("unknown leg c:a"), "UnknownLegError"),
        (RelayUnavailable("no worker"), "RelayUnavailable"),
        (ValueError("leg c:a already exists"), "ValueError"),
    ],
)
def test_relay_errors_keep_type_and_message(error: Exception, kind: str) -> None:
    wire = error_to_wire(error)
    assert wire == {"kind": kind, "message": error.args[0]}
    back = error_from_wire(json.loads(json.dumps(wire)))
    assert type(back) is type(error)
    assert back.args == error.args


def test_an_outage_is_no_bad_request() -> None:
    # CallService: `except NoOpusError`, `except RelayUnavailable`, then `except ValueError`.
    unavailable = error_from_wire({"kind": "RelayUnavailable", "message": ""})
    assert isinstance(unavailable, RelayError) and not isinstance(unavailable, ValueError)
    for kind in ("NoOpusError", "NoCommonCodecError", "UnknownLegError"):
        bad_request = error_from_wire({"kind": kind, "message": ""})
        assert isinstance(bad_request, RelayError) and isinstance(bad_request, ValueError)
    assert isinstance(error_from_wire({"kind": "UnknownLegError", "message": ""}), KeyError)


def test_other_errors_arrive_as_relay_worker_errors() -> None:
    wire = error_to_wire(RuntimeError("boom"))
    assert wire == {"kind": "RelayWorkerError", "message": "RuntimeError: boom"}
    back = error_from_wire(wire)
    assert type(back) is RelayWorkerError and str(back) == "RuntimeError: boom"
    assert not isinstance(back, ValueError)
    assert isinstance(
        error_from_wire({"kind": "KeyboardInterrupt", "message": ""}), RelayWorkerError
    )
    assert isinstance(error_from_wire("nonsense"), RelayWorkerError)


def test_stats_cross_as_a_list() -> None:
    stats = LegStats(packets_received=5, packets_sent=4, bytes_received=300, jitter_ms=1.5)
    assert stats_from_wire(json.loads(json.dumps(stats_to_wire(stats)))) == stats
    assert stats_from_wire(stats.as_dict()) == stats
    assert stats_from_wire(None) == LegStats()
