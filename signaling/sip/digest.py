"""HTTP digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760). Sans-I/O.

Both sides, ``qop=auth`` (and the RFC 2069 form without qop when a challenge
offers none), algorithms SHA-256, MD5 and their ``-sess`` variants:

- ``authorization(challenge, ...)`` computes the Authorization or
  Proxy-Authorization value answering a 401 or 407; ``choose_challenge`` picks the
  topmost challenge with an algorithm we support (RFC 8760 §2.4).
- ``DigestChallenger`` makes challenges and checks credentials. Its nonces carry
  their issue time and an HMAC over it, so checking needs no stored state; an
  expired nonce with a right response is ``Verdict.STALE`` (re-challenge with
  ``stale=true``). Nonce counts are not tracked: a captured Authorization can be
  replayed until its nonce expires (``nonce_lifetime``).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from signaling.sip.message import URI, ParseError, split_quoted

ALGORITHMS = ("SHA-256", "MD5", "SHA-256-sess", "MD5-sess")


class DigestError(ValueError):
    pass


def _hash(algorithm: str, data: str) -> str:
    base = algorithm.upper().removesuffix("-SESS")
    if base == "MD5":
        return hashlib.md5(data.encode(), usedforsecurity=False).hexdigest()
    if base == "SHA-256":
        return hashlib.sha256(data.encode()).hexdigest()
    raise DigestError(f"unsupported digest algorithm {algorithm!r}")


def supported(algorithm: str) -> bool:
    return algorithm.upper() in (a.upper() for a in ALGORITHMS)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a=b, c="d"`` into ("Digest", {"a": "b", "c": "d"}); names lower-cased."""
    scheme, _, rest = value.strip().partition(" ")
    if not scheme:
        raise DigestError("empty credentials or challenge")
    params: dict[str, str] = {}
    try:
        items = split_quoted(rest, ",")
    except ParseError as exc:
        raise DigestError(exc.reason) from None
    for item in items:
        if not item:
            continue
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        raw = raw.strip()
        if not sep or not name:
            raise DigestError(f"bad parameter {item!r}")
        if raw.startswith('"'):
            if len(raw) < 2 or not raw.endswith('"'):
                raise DigestError(f"bad quoted value in {item!r}")
            raw = raw[1:-1]
            out = []
            i = 0
            while i < len(raw):
                if raw[i] == "\\" and i + 1 < len(raw):
                    i += 1
                out.append(raw[i])
                i += 1
            raw = "".join(out)
        params[name] = raw
    return scheme, params


@dataclass(frozen=True)
class Challenge:
    """A WWW-Authenticate or Proxy-Authenticate value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> Challenge:
        scheme, p = parse_auth_params(value)
        if scheme.lower() != "digest":
            raise DigestError(f"not a digest challenge: {scheme!r}")
        if "realm" not in p or "nonce" not in p:
            raise DigestError("challenge without realm or nonce")
        qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
        return cls(
            realm=p["realm"],
            nonce=p["nonce"],
            algorithm=p.get("algorithm", "MD5"),
            qop=qop,
            opaque=p.get("opaque"),
            stale=p.get("stale", "").lower() == "true",
        )

    def __str__(self) -> str:
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        return "Digest " + ", ".join(parts)


@dataclass(frozen=True)
class Credentials:
    """An Authorization or Proxy-Authorization value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> Credentials:
        scheme, p = parse_auth_params(value)
        if scheme.lower() != "digest":
            raise DigestError(f"not digest credentials: {scheme!r}")
        missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
        if missing:
            raise DigestError(f"credentials without {', '.join(missing)}")
        return cls(
            username=p["username"],
            realm=p["realm"],
            nonce=p["nonce"],
            uri=p["uri"],
            response=p["response"].lower(),
            algorithm=p.get("algorithm", "MD5"),
            qop=p.get("qop"),
            nc=p.get("nc"),
            cnonce=p.get("cnonce"),
            opaque=p.get("opaque"),
        )

    def __str__(self) -> str:
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop is not None:
            parts += [f"qop={self.qop}", f"nc={self.nc}", f"cnonce={_quote(self.cnonce or '')}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        return "Digest " + ", ".join(parts)


def digest_response(
    *,
    algorithm: str,
    username: str,
    password: str,
    realm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1; RFC 2069 form when qop is None)."""
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop is None:
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    if qop != "auth":
        raise DigestError(f"unsupported qop {qop!r}")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def choose_challenge(values: Sequence[str]) -> Challenge | None:
    """The topmost digest challenge with an algorithm and qop we support."""
    for value in values:
        try:
            challenge = Challenge.parse(value)
        except DigestError:
            continue
        if supported(challenge.algorithm) and (not challenge.qop or "auth" in challenge.qop):
            return challenge
    return None


def authorization(
    challenge: Challenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int = 1,
) -> Credentials:
    """Credentials answering ``challenge`` for a request (its method and Request-URI)."""
    if not supported(challenge.algorithm):
        raise DigestError(f"unsupported digest algorithm {challenge.algorithm!r}")
    qop: str | None = None
    if challenge.qop:
        if "auth" not in challenge.qop:
            raise DigestError(f"unsupported qop {','.join(challenge.qop)!r}")
        qop = "auth"
    nc_text = f"{nc:08x}" if qop else None
    response = digest_response(
        algorithm=challenge.algorithm,
        username=username,
        password=password,
        realm=challenge.realm,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce if qop else None,
    )
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce if qop else None,
        opaque=challenge.opaque,
    )


class Verdict(enum.Enum):
    OK = "ok"
    #: Right response for a nonce of ours that has expired: challenge again, stale=true.
    STALE = "stale"
    #: Anything else: not ours, wrong user or password, bad syntax, unsupported.
    INVALID = "invalid"


class DigestChallenger:
    """Challenges and checks for requests we receive; no per-nonce state.

    nonce = base64url(issue time in ms, 8 bytes || HMAC-SHA256(secret, time || realm)[:16])
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        nonce_lifetime: float = 300.0,
    ) -> None:
        for algorithm in algorithms:
            if not supported(algorithm):
                raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        if not algorithms:
            raise ValueError("no digest algorithm")
        self.realm = realm
        self._secret = secret
        self.algorithms = tuple(algorithms)
        self.nonce_lifetime = nonce_lifetime

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.new(self._secret, stamp + self.realm.encode(), hashlib.sha256).digest()[:16]

    def nonce(self, now: float) -> str:
        stamp = struct.pack(">q", int(now * 1000))
        return base64.urlsafe_b64encode(stamp + self._mac(stamp)).rstrip(b"=").decode()

    def nonce_age(self, nonce: str, now: float) -> float | None:
        """Seconds since we issued ``nonce``, None if it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return None
        if len(raw) != 24 or not hmac.compare_digest(raw[8:], self._mac(raw[:8])):
            return None
        millis: int = struct.unpack(">q", raw[:8])[0]
        return now - millis / 1000

    def challenges(self, now: float, *, stale: bool = False) -> list[Challenge]:
        """One challenge per algorithm, the preferred (SHA-256) first (RFC 8760 §2.4)."""
        nonce = self.nonce(now)
        return [
            Challenge(self.realm, nonce, algorithm, ("auth",), None, stale)
            for algorithm in self.algorithms
        ]

    def verify(
        self,
        value: str,
        *,
        method: str,
        request_uri: URI,
        username: str,
        password: str,
        now: float,
    ) -> Verdict:
        try:
            creds = Credentials.parse(value)
        except DigestError:
            return Verdict.INVALID
        if (
            creds.realm != self.realm
            or creds.username != username
            or creds.algorithm.upper() not in (a.upper() for a in self.algorithms)
            or creds.qop != "auth"
            or not creds.cnonce
            or not creds.nc
        ):
            return Verdict.INVALID
        try:
            if URI.parse(creds.uri) != request_uri:
                return Verdict.INVALID
        except ParseError:
            return Verdict.INVALID
        age = self.nonce_age(creds.nonce, now)
        if age is None or age < -1.0:
            return Verdict.INVALID
        expected = digest_response(
            algorithm=creds.algorithm,
            username=username,
            password=password,
            realm=self.realm,
            method=method,
            uri=creds.uri,
            nonce=creds.nonce,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        if not hmac.compare_digest(expected, creds.response):
            return Verdict.INVALID
        if age > self.nonce_lifetime:
            return Verdict.STALE
        return Verdict.OK


__all__ = [
    "ALGORITHMS",
    "Challenge",
    "Credentials",
    "DigestChallenger",
    "DigestError",
    "Verdict",
    "authorization",
    "choose_challenge",
    "digest_response",
    "parse_auth_params",
    "supported",
]
