"""The relay control handshake: only both sides knowing the secret get through."""

from __future__ import annotations

import pytest

from voice.relay.control_auth import (
    AuthError,
    auth_request,
    authenticated,
    challenge,
    check_auth_request,
    check_authenticated,
    check_relay_secret,
    new_nonce,
    proof,
)

SECRET = "test-relay-secret-0001"


def handshake(node_secret: str, host_secret: str) -> None:
    """Both sides' steps, each with its own secret; AuthError where one fails."""
    host_nonce = new_nonce()
    seen_host_nonce, node_nonce, request = auth_request(node_secret, challenge(host_nonce))
    assert seen_host_nonce == host_nonce
    assert check_auth_request(host_secret, host_nonce, request) == node_nonce
    answer = authenticated(host_secret, host_nonce, node_nonce)
    check_authenticated(node_secret, host_nonce, node_nonce, answer)


def test_the_same_secret_on_both_sides_gets_through() -> None:
    handshake(SECRET, SECRET)


def test_a_node_with_another_secret_is_refused_by_the_host() -> None:
    with pytest.raises(AuthError, match="wrong relay secret"):
        handshake("another-relay-secret", SECRET)


def test_a_host_with_another_secret_is_refused_by_the_node() -> None:
    host_nonce = new_nonce()
    _, node_nonce, _ = auth_request(SECRET, challenge(host_nonce))
    answer = authenticated("another-relay-secret", host_nonce, node_nonce)
    with pytest.raises(AuthError, match="does not know"):
        check_authenticated(SECRET, host_nonce, node_nonce, answer)


def test_a_proof_does_not_serve_another_connection_or_the_other_direction() -> None:
    host_nonce = new_nonce()
    _, node_nonce, request = auth_request(SECRET, challenge(host_nonce))
    # Replayed to a connection with another challenge.
    with pytest.raises(AuthError):
        check_auth_request(SECRET, new_nonce(), request)
    # The host's proof sent back as the node's (reflection).
    reflected = {"op": "auth", "args": [node_nonce, proof(SECRET, "host", host_nonce, node_nonce)]}
    with pytest.raises(AuthError):
        check_auth_request(SECRET, host_nonce, reflected)
    # The node's proof sent back as the host's.
    node_proof = request["args"][1]  # type: ignore[index]
    with pytest.raises(AuthError):
        check_authenticated(
            SECRET, host_nonce, node_nonce, {"event": "authenticated", "args": [node_proof]}
        )


@pytest.mark.parametrize(
    "frame",
    [
        {"op": "answer", "args": ["x:1", "v=0"]},
        {"op": "auth"},
        {"op": "auth", "args": "nonce"},
        {"op": "auth", "args": ["short", "0" * 64]},
        {"op": "auth", "args": ["0" * 64, 5]},
        {"op": "auth", "args": ["0" * 64]},
        {"op": "auth", "args": ["g" * 64, "0" * 64]},
    ],
)
def test_malformed_auth_frames_are_refused(frame: dict[str, object]) -> None:
    with pytest.raises(AuthError):
        check_auth_request(SECRET, new_nonce(), frame)


@pytest.mark.parametrize(
    "frame",
    [
        {"event": "ready", "args": [1, "uvloop"]},
        {"event": "challenge", "args": []},
        {"event": "challenge", "args": ["0" * 63]},
        {"event": "challenge", "args": [7]},
    ],
)
def test_a_host_that_does_not_challenge_is_refused(frame: dict[str, object]) -> None:
    with pytest.raises(AuthError):
        auth_request(SECRET, frame)


def test_a_secret_must_be_long_enough() -> None:
    check_relay_secret("x" * 16)
    for short in ("", "short-secret"):
        with pytest.raises(ValueError, match="relay_secret"):
            check_relay_secret(short)
