"""Webhook signatures: HMAC-SHA256 over the timestamp and the exact body bytes.

Sans-I/O: no clock, no network; the time is always an argument.

Every request to an operator carries one header::

    Anruf-Signature: t=1795000000,v1=<64 lowercase hex digits>

``t`` is the Unix time (whole seconds) of the attempt, ``v1`` the lowercase hex
HMAC-SHA256 of ``b"<t>." + body`` under the operator's signing secret. While a
secret is being rotated, the header carries one ``v1`` per secret (the current
one first): a receiver holding either secret verifies the request. Receivers
reject timestamps further than a tolerance (300 s) from their clock, so a
recorded request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = [
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "MalformedSignature",
    "NoMatchingSignature",
    "SignatureError",
    "StaleTimestamp",
    "parse",
    "sign",
    "signature",
    "verify",
]

SIGNATURE_HEADER = "Anruf-Signature"
#: Seconds a signed timestamp may differ from the receiver's clock.
DEFAULT_TOLERANCE = 300
_SCHEME = "v1"
#: A header longer than this is not ours (a handful of signatures at most).
_MAX_HEADER = 1024


class SignatureError(ValueError):
    """The request is not signed by the expected sender; see the subclasses."""


class MalformedSignature(SignatureError):
    """The header is missing, unparsable, or carries no v1 signature."""


class NoMatchingSignature(SignatureError):
    """No v1 signature in the header matches the body under the secret."""


class StaleTimestamp(SignatureError):
    """The signed timestamp is outside the tolerance around the receiver's clock."""


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("a signing secret must not be empty")
    return key


def signature(body: bytes, secret: str | bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``b"<timestamp>." + body`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secrets: str | bytes | Iterable[str | bytes], timestamp: float) -> str:
    """The ``Anruf-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds).

    ``secrets`` is one secret or several (current first, then the previous one
    during a rotation); each gives one ``v1`` entry. Fractions of a second are
    dropped from the timestamp.
    """
    keys = [secrets] if isinstance(secrets, str | bytes) else list(secrets)
    if not keys:
        raise ValueError("at least one signing secret is needed")
    t = int(timestamp)
    return ",".join([f"t={t}", *(f"{_SCHEME}={signature(body, key, t)}" for key in keys)])


def parse(header: str) -> tuple[int, list[str]]:
    """The timestamp and the v1 signatures of a header; MalformedSignature if unusable.

    Entries of other schemes are ignored, so a future scheme can be added beside v1.
    """
    if not header or len(header) > _MAX_HEADER:
        raise MalformedSignature("the signature header is missing or too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise MalformedSignature(f"the signature header has an entry without '=': {item!r}")
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise MalformedSignature("the signature header needs one t=<unix seconds>")
            timestamp = int(value)
        elif name == _SCHEME:
            signatures.append(value)
    if timestamp is None:
        raise MalformedSignature("the signature header has no timestamp (t=...)")
    if not signatures:
        raise MalformedSignature("the signature header has no v1 signature")
    return timestamp, signatures


def verify(
    body: bytes,
    header: str,
    secret: str | bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """Check ``header`` against ``body`` and ``secret`` at time ``now``; returns its timestamp.

    Raises MalformedSignature, NoMatchingSignature or StaleTimestamp (all
    SignatureError). The signature is checked before the time, so a forged
    request is reported as such whatever its timestamp.
    """
    timestamp, signatures = parse(header)
    expected = signature(body, secret, timestamp)
    # Compare against every entry, without stopping early.
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise NoMatchingSignature("no v1 signature matches the body under this secret")
    if abs(now - timestamp) > tolerance:
        raise StaleTimestamp(
            f"the signature timestamp {timestamp} is more than {tolerance:g} s from now ({now:.0f})"
        )
    return timestamp
