"""Webhook signatures as an operator checks them, and the snippet in docs/webhooks.md."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest

from signaling.carrier.signing import (
    MalformedSignature,
    NoMatchingSignature,
    StaleTimestamp,
    parse,
    sign,
    verify,
)

BODY = b'{"data":{"call_id":"c1"},"id":"evt_1","type":"call.ended"}'
SECRET = "whsec_current"
OLD_SECRET = "whsec_previous"
NOW = 1_795_000_000.4


def test_a_signed_body_verifies_and_the_header_is_stripe_like() -> None:
    header = sign(BODY, SECRET, NOW)
    expected = hmac.new(SECRET.encode(), b"1795000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1795000000,v1={expected}"
    assert verify(BODY, header, SECRET, now=NOW + 10) == 1_795_000_000


def test_a_tampered_body_or_a_wrong_secret_fails() -> None:
    header = sign(BODY, SECRET, NOW)
    with pytest.raises(NoMatchingSignature):
        verify(BODY.replace(b"c1", b"c2"), header, SECRET, now=NOW)
    with pytest.raises(NoMatchingSignature):
        verify(BODY, header, "whsec_other", now=NOW)
    # The timestamp is signed too: moving it breaks the signature.
    moved = header.replace("t=1795000000", "t=1795000001")
    with pytest.raises(NoMatchingSignature):
        verify(BODY, moved, SECRET, now=NOW)


def test_a_stale_or_future_timestamp_fails() -> None:
    header = sign(BODY, SECRET, NOW)
    assert verify(BODY, header, SECRET, now=NOW + 299)
    with pytest.raises(StaleTimestamp):
        verify(BODY, header, SECRET, now=NOW + 301)
    with pytest.raises(StaleTimestamp):
        verify(BODY, header, SECRET, now=NOW - 301)
    with pytest.raises(StaleTimestamp):
        verify(BODY, header, SECRET, now=NOW + 31, tolerance=30)


def test_during_rotation_either_secret_verifies() -> None:
    header = sign(BODY, [SECRET, OLD_SECRET], NOW)
    timestamp, signatures = parse(header)
    assert timestamp == 1_795_000_000 and len(signatures) == 2
    assert verify(BODY, header, SECRET, now=NOW)
    assert verify(BODY, header, OLD_SECRET, now=NOW)
    with pytest.raises(NoMatchingSignature):
        verify(BODY, header, "whsec_retired", now=NOW)


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "t=abc,v1=00", "v1=00", "t=1795000000", "t=1,t=2,v1=00", "t=-5,v1=00"],
)
def test_malformed_headers_are_named(header: str) -> None:
    with pytest.raises(MalformedSignature):
        verify(BODY, header, SECRET, now=NOW)


def test_unknown_schemes_are_ignored() -> None:
    header = sign(BODY, SECRET, NOW) + ",v0=deadbeef"
    assert verify(BODY, header, SECRET, now=NOW)


def test_empty_secrets_are_refused() -> None:
    with pytest.raises(ValueError):
        sign(BODY, "", NOW)
    with pytest.raises(ValueError):
        sign(BODY, [], NOW)


def _docs_snippet() -> dict[str, Any]:
    text = (Path(__file__).parents[2] / "docs" / "webhooks.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "docs/webhooks.md must hold exactly one python block"
    namespace: dict[str, Any] = {"__name__": "webhooks_snippet"}
    exec(compile(blocks[0], "docs/webhooks.md", "exec"), namespace)
    return namespace


def test_the_verification_snippet_in_the_docs_works() -> None:
    snippet = _docs_snippet()
    verify_signature = snippet["verify_signature"]
    error = snippet["SignatureError"]
    header = sign(BODY, [SECRET, OLD_SECRET], NOW)
    assert verify_signature(BODY, header, SECRET, now=NOW + 5) is None
    assert verify_signature(BODY, header, OLD_SECRET, now=NOW + 5) is None
    with pytest.raises(error, match="signature"):
        verify_signature(BODY + b" ", header, SECRET, now=NOW)
    with pytest.raises(error, match="timestamp"):
        verify_signature(BODY, header, SECRET, now=NOW + 3600)
    with pytest.raises(error):
        verify_signature(BODY, "nonsense", SECRET, now=NOW)
