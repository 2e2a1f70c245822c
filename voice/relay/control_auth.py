"""Mutual authentication of a relay host's control connection (sans-I/O).

A relay host's control port carries requests that open, bridge and close media
legs, so only signaling nodes that know the relay secret (`relay_secret`, the same
on the nodes and the relay hosts) may use it, and a node talks only to a host that
knows it too. Challenge and response, in control frames, before anything else:

1. host → node  ``{"event": "challenge", "args": [host_nonce]}``
2. node → host  ``{"op": "auth", "args": [node_nonce, proof("node", ...)]}``
3. host → node  ``{"event": "authenticated", "args": [proof("host", ...)]}``,
   then the usual ``ready``; or the host closes the connection.

A proof is HMAC-SHA256 under the secret over the role and both nonces, so a
proof is good for one connection and one direction only: it cannot be replayed
on another connection (fresh nonces) or reflected back (the role differs). The
secret itself never crosses the wire. Nonces are 32 random bytes in hex.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = [
    "AUTH_TIMEOUT",
    "AuthError",
    "auth_request",
    "authenticated",
    "challenge",
    "check_auth_request",
    "check_authenticated",
    "check_relay_secret",
    "new_nonce",
    "proof",
]

#: Seconds a host waits for a new connection's ``auth`` before it closes it.
AUTH_TIMEOUT = 5.0
#: A secret shorter than this is refused: it could be guessed.
MIN_SECRET_LENGTH = 16
_NONCE = re.compile(r"[0-9a-f]{64}")
_LABEL = b"anruf relay control v1"


class AuthError(Exception):
    """The other side did not prove it knows the relay secret (or spoke out of turn)."""


def check_relay_secret(secret: str) -> None:
    """ValueError unless ``secret`` is long enough to be the relay secret."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            "relay hosts and the nodes that use them need relay_secret, "
            f"the same on all, at least {MIN_SECRET_LENGTH} characters"
        )


def new_nonce() -> str:
    return secrets.token_hex(32)


def proof(secret: str, role: str, host_nonce: str, node_nonce: str) -> str:
    message = b"\n".join((_LABEL, role.encode(), host_nonce.encode(), node_nonce.encode()))
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def challenge(host_nonce: str) -> dict[str, object]:
    """The host's first frame."""
    return {"event": "challenge", "args": [host_nonce]}


def auth_request(secret: str, message: dict[str, object]) -> tuple[str, str, dict[str, object]]:
    """The node's answer to the host's first frame: (the host's nonce, its own, the frame)."""
    if message.get("event") != "challenge":
        raise AuthError("the relay host did not send a challenge")
    host_nonce = _nonce(message.get("args"), 1)
    node_nonce = new_nonce()
    return (
        host_nonce,
        node_nonce,
        {
            "op": "auth",
            "args": [node_nonce, proof(secret, "node", host_nonce, node_nonce)],
        },
    )


def check_auth_request(secret: str, host_nonce: str, message: dict[str, object]) -> str:
    """The host's check of the node's frame; returns the node's nonce."""
    args = message.get("args")
    if message.get("op") != "auth" or not isinstance(args, list) or len(args) != 2:
        raise AuthError("the first request was not auth")
    node_nonce = _nonce(args, 2)
    given = args[1]
    expected = proof(secret, "node", host_nonce, node_nonce)
    if not isinstance(given, str) or not hmac.compare_digest(given, expected):
        raise AuthError("wrong relay secret")
    return node_nonce


def authenticated(secret: str, host_nonce: str, node_nonce: str) -> dict[str, object]:
    """The host's answer to a good ``auth``: its own proof."""
    return {"event": "authenticated", "args": [proof(secret, "host", host_nonce, node_nonce)]}


def check_authenticated(
    secret: str, host_nonce: str, node_nonce: str, message: dict[str, object]
) -> None:
    """The node's check of the host's answer."""
    args = message.get("args")
    if message.get("event") != "authenticated" or not isinstance(args, list) or len(args) != 1:
        raise AuthError("the relay host refused the relay secret")
    given = args[0]
    expected = proof(secret, "host", host_nonce, node_nonce)
    if not isinstance(given, str) or not hmac.compare_digest(given, expected):
        raise AuthError("the relay host does not know the relay secret")


def _nonce(args: object, count: int) -> str:
    """The first of ``count`` arguments, which must be a nonce."""
    if not isinstance(args, list) or len(args) != count:
        raise AuthError("malformed authentication frame")
    nonce = args[0]
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise AuthError("malformed nonce")
    return nonce
