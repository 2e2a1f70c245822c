"""Verification codes and device tokens: generation, hashing, comparison.

Pure helpers with no I/O. Secrets come from :mod:`secrets`; comparisons are
constant-time (:func:`hmac.compare_digest`) so response timing does not leak
how much of a guess was right.

Codes are short (6 digits), so each stored hash is salted: equal codes for
two numbers do not give equal hashes. A salted hash of a 6-digit code can
still be brute-forced offline by someone who holds the database, which is
why codes also expire within minutes and are deleted once used.

Device tokens carry 256 bits of entropy, so a plain SHA-256 is enough: no
dictionary or brute force can invert it, and it allows an indexed lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CODE_DIGITS = 6
#: Bytes of randomness in a device token (256 bits).
TOKEN_BYTES = 32
_SALT_BYTES = 16
_SCHEME = "s256"


def generate_code(digits: int = CODE_DIGITS) -> str:
    """A uniformly random decimal code, zero-padded (``"004217"``)."""
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def hash_code(code: str, salt: bytes | None = None) -> str:
    """``s256$<salt hex>$<sha256(salt + code) hex>`` for storage."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.sha256(salt + code.encode()).hexdigest()
    return f"{_SCHEME}${salt.hex()}${digest}"


def verify_code(code: str, stored: str) -> bool:
    """True if ``code`` is the one hashed into ``stored``; constant-time."""
    try:
        scheme, salt_hex, digest = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != _SCHEME:
        return False
    candidate = hashlib.sha256(salt + code.encode()).hexdigest()
    return hmac.compare_digest(candidate.encode(), digest.encode())


def codes_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two plain codes (used for test numbers)."""
    return hmac.compare_digest(a.encode(), b.encode())


def generate_token() -> str:
    """A new device credential, URL-safe base64 of 256 random bits."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a device token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_device_id() -> str:
    """A public, non-secret device identifier (96 random bits)."""
    return "dev_" + secrets.token_urlsafe(12)


__all__ = [
    "CODE_DIGITS",
    "TOKEN_BYTES",
    "codes_equal",
    "generate_code",
    "generate_device_id",
    "generate_token",
    "hash_code",
    "hash_token",
    "verify_code",
]
