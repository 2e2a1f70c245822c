"""Relay host registrations and the choice of a host for a call (no sockets)."""

from __future__ import annotations

import json

import pytest

from voice.relay.host import HostSettings
from voice.relay.registry import (
    Candidate,
    HostRecord,
    choose,
    encode_record,
    host_key,
    parse_address,
    parse_record,
)
from voice.relay.server import WorkerSettings

RECORD = HostRecord(
    id="relay-a",
    control="10.0.0.5:7400",
    media="203.0.113.7",
    legs=12,
    calls=6,
    cores=8,
    capacity=1000,
    state="draining",
    pid=4242,
    started=1764049200.5,
)


def test_a_registration_reads_back_as_written() -> None:
    assert parse_record(encode_record(RECORD)) == RECORD
    assert parse_record(encode_record(RECORD).encode()) == RECORD
    assert host_key("relay-a") == "anruf:relay:relay-a"
    assert RECORD.control_address == ("10.0.0.5", 7400)
    assert not RECORD.accepting  # draining


def test_a_minimal_registration_gets_defaults() -> None:
    record = parse_record('{"id": "b", "control": "[::1]:7401"}')
    assert record.control_address == ("::1", 7401)
    assert (record.legs, record.capacity, record.state, record.media) == (0, 0, "up", "")
    assert record.accepting


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ("{}", "'id'"),
        ('{"id": "", "control": "h:1"}', "'id'"),
        ('{"id": "a"}', "'control'"),
        ('{"id": "a", "control": "nohost"}', "HOST:PORT"),
        ('{"id": "a", "control": "h:70000"}', "out of range"),
        ('{"id": "a", "control": "h:1", "legs": -1}', "'legs'"),
        ('{"id": "a", "control": "h:1", "legs": "many"}', "'legs'"),
        ('{"id": "a", "control": "h:1", "capacity": true}', "'capacity'"),
        ('{"id": "a", "control": "h:1", "state": "gone"}', "state"),
        ('{"id": "a", "control": "h:1", "started": "today"}', "'started'"),
        ('{"id": "a", "control": "h:1", "media": 5}', "'media'"),
        (json.dumps({"id": "x" * 201, "control": "h:1"}), "longer"),
    ],
)
def test_a_malformed_registration_is_refused_with_its_reason(raw: str | bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_record(raw)


@pytest.mark.parametrize("text", ["", "7400", "host:", ":7400", "host:port", "host:0"])
def test_addresses_must_be_host_and_port(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_the_least_loaded_candidate_is_chosen() -> None:
    a = Candidate(key=("a", 1), load=4, capacity=100)
    b = Candidate(key=("b", 2), load=2, capacity=100)
    c = Candidate(key=("c", 3), load=3, capacity=100)
    assert choose([a, b, c]) is b
    assert choose([]) is None


def test_load_counts_relative_to_capacity() -> None:
    small = Candidate(key=("small", 1), load=5, capacity=10)  # half full
    big = Candidate(key=("big", 2), load=20, capacity=100)  # a fifth full
    assert choose([small, big]) is big


def test_full_and_draining_candidates_are_passed_over() -> None:
    full = Candidate(key=("full", 1), load=10, capacity=10)
    draining = Candidate(key=("draining", 2), load=0, capacity=10, accepting=False)
    assert choose([full, draining]) is None
    busy = Candidate(key=("busy", 3), load=9, capacity=10)
    assert choose([full, draining, busy]) is busy


def test_ties_go_to_the_smallest_key_and_no_capacity_means_no_limit() -> None:
    first = Candidate(key=("", 0), load=1000)
    second = Candidate(key=("", 1), load=1000)
    assert choose([second, first]) is first
    assert choose([Candidate(key=("", 0), load=10**6)]) is not None


def media(relay_mode: str = "forward") -> WorkerSettings:
    return WorkerSettings(
        bind_address="127.0.0.1",
        announce_address="",
        ice_servers=(),
        media_timeout=20.0,
        connect_timeout=10.0,
        relay_mode=relay_mode,
    )


def settings(**changes: object) -> HostSettings:
    values: dict[str, object] = {
        "host_id": "",
        "control_listen": "127.0.0.1:7400",
        "control_announce": "",
        "redis_url": "redis://127.0.0.1:6379/2",
        "media": media(),
        "secret": "test-relay-secret-0001",
    }
    values.update(changes)
    return HostSettings(**values)  # type: ignore[arg-type]


def test_relay_host_settings_are_checked() -> None:
    assert settings().capacity == 1000
    assert settings(control_listen="0.0.0.0:7400", control_announce="10.0.0.5:7400")
    with pytest.raises(ValueError, match="wildcard"):
        settings(control_listen="0.0.0.0:7400")
    with pytest.raises(ValueError, match="HOST:PORT"):
        settings(control_listen="7400")
    with pytest.raises(ValueError, match="relay_mode"):
        settings(media=media("mixing"))
    with pytest.raises(ValueError, match="TTL"):
        settings(heartbeat=1.0, ttl=1.0)
    with pytest.raises(ValueError, match="capacity"):
        settings(capacity=-1)
    with pytest.raises(ValueError, match="relay_secret"):
        settings(secret="")
