"""The relay workers' control channel, without processes: framing, correlation, errors."""

from __future__ import annotations

import json
import struct

import pytest

from voice.relay.relay import LegStats, NoOpusError, UnknownLegError
from voice.relay.workers import (
    MAX_FRAME,
    Correlator,
    Event,
    Failure,
    FrameDecoder,
    ProtocolError,
    RelayUnavailable,
    RelayWorkerError,
    Reply,
    call_id_of,
    encode_message,
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
    first, frame = correlator.request("answer", "c:a", "v=0")
    second, _ = correlator.request("offer", "c:b")
    assert first != second and correlator.pending == 2
    assert FrameDecoder().feed(frame) == [{"id": first, "op": "answer", "args": ["c:a", "v=0"]}]

    assert correlator.receive({"id": second, "result": "sdp"}) == Reply(second, "sdp")
    failure = correlator.receive({"id": first, "error": {"kind": "NoOpusError", "message": "no"}})
    assert isinstance(failure, Failure) and failure.id == first
    assert type(failure.error) is NoOpusError and str(failure.error) == "no"
    assert correlator.pending == 0
    # A second answer to the same id (or to an abandoned request) is dropped.
    assert correlator.receive({"id": second, "result": "again"}) is None


def test_abandoned_requests_ignore_late_replies() -> None:
    correlator = Correlator()
    request_id, _ = correlator.request("offer", "c:a")
    correlator.abandon(request_id)
    assert correlator.receive({"id": request_id, "result": "late"}) is None
    ids = [correlator.request("ping")[0] for _ in range(3)]
    assert correlator.abandon_all() == ids and correlator.pending == 0


def test_notifications_carry_no_id_and_events_pass_through() -> None:
    (message,) = FrameDecoder().feed(Correlator.notify("bridge", "c:a", "c:b"))
    assert message == {"op": "bridge", "args": ["c:a", "c:b"]}
    correlator = Correlator()
    event = correlator.receive({"event": "leg_failed", "args": ["c:a", "ice_failed"]})
    assert event == Event("leg_failed", ["c:a", "ice_failed"])
    with pytest.raises(ProtocolError):
        correlator.receive({"op": "answer"})
    with pytest.raises(ProtocolError):
        correlator.receive({"id": "1", "result": None})


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (NoOpusError("SDP has no Opus audio"), "NoOpusError"),
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


def test_what_callservice_catches_is_still_caught() -> None:
    # CallService: `except NoOpusError`, then `except ValueError`.
    assert isinstance(error_from_wire({"kind": "NoOpusError", "message": ""}), ValueError)
    assert isinstance(error_from_wire({"kind": "UnknownLegError", "message": ""}), KeyError)
    assert isinstance(error_from_wire({"kind": "RelayUnavailable", "message": ""}), ValueError)


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


@pytest.mark.parametrize(
    ("leg_id", "call_id"),
    [("abc:dev1", "abc"), ("abc:dev:1", "abc"), ("solo", "solo"), (":x", "")],
)
def test_a_legs_call_is_its_id_up_to_the_first_colon(leg_id: str, call_id: str) -> None:
    assert call_id_of(leg_id) == call_id
