"""Digest authentication: RFC test vectors, both sides, stale nonces."""

from __future__ import annotations

import pytest

from signaling.sip.digest import (
    Challenge,
    Credentials,
    DigestChallenger,
    DigestError,
    Verdict,
    authorization,
    choose_challenge,
    digest_response,
)
from signaling.sip.message import URI

# RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
RFC7616 = {
    "username": "Mufasa",
    "password": "Circle of Life",
    "realm": "http-auth@example.org",
    "method": "GET",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "qop": "auth",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
}


def test_rfc7616_md5_vector() -> None:
    assert digest_response(algorithm="MD5", **RFC7616) == "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc7616_sha256_vector() -> None:
    assert digest_response(algorithm="SHA-256", **RFC7616) == (
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )


def test_rfc2617_md5_vector() -> None:
    assert (
        digest_response(
            algorithm="MD5",
            username="Mufasa",
            password="Circle Of Life",
            realm="testrealm@host.com",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def test_challenge_and_credentials_syntax() -> None:
    header = (
        'Digest realm="sbc.operator.example", nonce="abc\\"def", algorithm=SHA-256, '
        'qop="auth,auth-int", opaque="xyz", stale=TRUE'
    )
    challenge = Challenge.parse(header)
    assert challenge.nonce == 'abc"def'
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.stale and challenge.opaque == "xyz"
    assert Challenge.parse(str(challenge)) == challenge
    creds = authorization(
        challenge,
        method="INVITE",
        uri="sip:+4930555000100@192.0.2.1",
        username="anruf",
        password="secret",
        cnonce="c0ffee",
        nc=2,
    )
    assert (creds.qop, creds.nc, creds.opaque) == ("auth", "00000002", "xyz")
    assert Credentials.parse(str(creds)) == creds
    with pytest.raises(DigestError):
        Challenge.parse("Basic realm=x")
    with pytest.raises(DigestError):
        Credentials.parse('Digest username="x"')


def test_choose_challenge_takes_the_topmost_supported() -> None:
    values = [
        'Digest realm="r", nonce="1", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="2", algorithm=SHA-256, qop="auth"',
        'Digest realm="r", nonce="3", algorithm=MD5, qop="auth"',
    ]
    chosen = choose_challenge(values)
    assert chosen is not None and chosen.nonce == "2"
    assert choose_challenge(['Digest realm="r", nonce="4", qop="auth-int"']) is None
    # RFC 2069 style: no qop at all.
    legacy = choose_challenge(['Digest realm="r", nonce="5"'])
    assert legacy is not None
    creds = authorization(
        legacy, method="INVITE", uri="sip:x@y", username="u", password="p", cnonce="c"
    )
    assert creds.qop is None and creds.cnonce is None


REQUEST_URI = URI.parse("sip:+4930555000100@127.0.0.1:5060;user=phone")


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_challenge_and_verify_round_trip(algorithm: str) -> None:
    server = DigestChallenger("anruf.invalid", b"k" * 32, nonce_lifetime=300.0)
    challenges = server.challenges(1000.0)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]  # preferred first
    (challenge,) = [c for c in challenges if c.algorithm == algorithm]
    creds = authorization(
        challenge,
        method="INVITE",
        uri=str(REQUEST_URI),
        username="operator",
        password="trunk-secret",
        cnonce="8d1e",
    )

    def verify(
        value: str, now: float, password: str = "trunk-secret", method: str = "INVITE"
    ) -> Verdict:
        return server.verify(
            value,
            method=method,
            request_uri=REQUEST_URI,
            username="operator",
            password=password,
            now=now,
        )

    assert verify(str(creds), 1010.0) is Verdict.OK
    assert verify(str(creds), 1010.0, password="wrong") is Verdict.INVALID
    assert verify(str(creds), 1301.0) is Verdict.STALE  # right answer, expired nonce
    assert verify(str(creds), 1301.0, password="wrong") is Verdict.INVALID
    assert verify(str(creds), 1010.0, method="BYE") is Verdict.INVALID  # for another request
    # A nonce we did not make (another secret) is never accepted.
    other = DigestChallenger("anruf.invalid", b"x" * 32)
    forged_challenge = other.challenges(1000.0)[0]
    forged = authorization(
        forged_challenge,
        method="INVITE",
        uri=str(REQUEST_URI),
        username="operator",
        password="trunk-secret",
        cnonce="1",
    )
    assert verify(str(forged), 1001.0) is Verdict.INVALID
    # Credentials for another Request-URI are refused.
    moved = authorization(
        challenge, method="INVITE", uri="sip:+4930555000199@127.0.0.1", username="operator",
        password="trunk-secret", cnonce="2",
    )  # fmt: skip
    assert verify(str(moved), 1001.0) is Verdict.INVALID
    assert verify("Digest garbage", 1001.0) is Verdict.INVALID


def test_stale_challenge_is_marked() -> None:
    server = DigestChallenger("anruf.invalid", b"k" * 32, algorithms=("MD5",))
    (challenge,) = server.challenges(5.0, stale=True)
    assert "stale=true" in str(challenge)
    assert server.nonce_age(challenge.nonce, 7.5) == pytest.approx(2.5)
    assert server.nonce_age("not-a-nonce", 7.5) is None
