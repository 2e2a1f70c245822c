"""Operators of the carrier partnership: tenants, API keys, bundles, subscribers,
and the stored responses of idempotent requests.

Everything an operator owns is read and written with its ``operator_id`` in
the query, so another operator's bundle, subscriber or event looks exactly
like one that does not exist.

API keys (``ak_<random>``, 256 bits) are stored only as SHA-256, like device
tokens; an operator has at most two active keys, so it can rotate without a
gap. The webhook signing secret is kept in clear (it signs every event) and
is shown once, when it is made.

This module is the domain: the operators' types, errors, limits and credentials.
Their persistence is ``OperatorStore`` (signaling/store/operators.py).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from signaling.carrier.rating import MAX_PREFIXES, Bundle, Increment, check_prefix

API_KEY_PREFIX = "ak_"
SIGNING_SECRET_PREFIX = "whsec_"
#: Two active keys let an operator roll a new key out before revoking the old one.
MAX_ACTIVE_KEYS = 2
#: Anything much longer than our keys (46 characters) is not one.
MAX_API_KEY_LENGTH = 128
#: Stored responses of idempotent requests are kept this long.
IDEMPOTENCY_TTL = 24 * 3600.0
MAX_IDEMPOTENCY_KEY = 255

MAX_NAME = 64
MAX_URL = 512
MAX_MINUTES = 1_000_000
MAX_INCREMENT = 3600
MAX_PERIOD_SECONDS = 366 * 24 * 3600
#: Upper bound of a bundle's calls or minutes to phone numbers per hour.
MAX_PER_HOUR = 100_000
MAX_SUBSCRIBER_PAGE = 500

#: Per minute started: 60 s for any answered call, then every 60 s started.
DEFAULT_INCREMENT = Increment(60, 60)

ACTIVE = "active"
SUSPENDED = "suspended"


# -- errors -------------------------------------------------------------------


class OperatorError(Exception):
    """A failure the operator caused, mapped one-to-one to an HTTP problem."""

    status: int = 400
    code: str = "operator_error"
    title: str = "Operator request failed"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        #: Further machine-readable members for the problem document.
        self.extra = extra


class OperatorNotFound(OperatorError):
    status = 404
    code = "operator_not_found"
    title = "No such operator"


class KeyNotFound(OperatorError):
    status = 404
    code = "key_not_found"
    title = "No such API key"


class KeyLimitReached(OperatorError):
    status = 409
    code = "key_limit_reached"
    title = "Two API keys are active"


class LastKey(OperatorError):
    status = 409
    code = "last_key"
    title = "The last active API key cannot be revoked"


class NoPreviousSecret(OperatorError):
    status = 404
    code = "no_previous_signing_secret"
    title = "No previous signing secret"


class BundleNotFound(OperatorError):
    status = 404
    code = "bundle_not_found"
    title = "No such bundle"


class BundleRetired(OperatorError):
    status = 409
    code = "bundle_retired"
    title = "The bundle is retired"


class InvalidSubscriberNumber(OperatorError):
    status = 400
    code = "invalid_number"
    title = "Invalid phone number"


class SubscriberNotFound(OperatorError):
    status = 404
    code = "subscriber_not_found"
    title = "No such subscriber"


class SubscriberExists(OperatorError):
    status = 409
    code = "subscriber_exists"
    title = "The number is already your subscriber"


class NumberUnavailable(OperatorError):
    status = 409
    code = "number_unavailable"
    title = "The number is provisioned by another operator"


class EventNotFound(OperatorError):
    status = 404
    code = "event_not_found"
    title = "No such event"


class EventPending(OperatorError):
    status = 409
    code = "event_pending"
    title = "The event is still being delivered"


class IdempotencyKeyReused(OperatorError):
    status = 422
    code = "idempotency_key_reused"
    title = "Idempotency-Key used for another request"


# -- records --------------------------------------------------------------------


@dataclass(frozen=True)
class Operator:
    operator_id: str
    name: str
    webhook_url: str
    sms_url: str
    created_at: float
    #: Whether a previous signing secret still signs events beside the current one.
    has_previous_signing_secret: bool


@dataclass(frozen=True)
class NewOperator:
    """A new operator with the credentials shown to its admin once."""

    operator: Operator
    key_id: str
    api_key: str
    signing_secret: str


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    operator_id: str
    created_at: float


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    #: The secret itself: shown once, stored only as SHA-256.
    api_key: str


@dataclass(frozen=True)
class Caller:
    """Who an API key belongs to: the operator and the key it used."""

    operator: Operator
    key_id: str


@dataclass(frozen=True)
class BundleSpec:
    """The terms of a bundle as an operator states them (see rating.Bundle)."""

    name: str
    app_calls_included: bool
    #: Minutes to phone numbers per period.
    phone_minutes: int
    #: None: monthly from the subscriber's activation; else the period in seconds.
    period_seconds: int | None = None
    increment: Increment = DEFAULT_INCREMENT
    #: Minutes of all calls per period beyond which calls stop; None: no cap.
    fair_use_minutes: int | None = None
    #: E.164 prefixes calls to phone numbers may reach; empty: any destination.
    allowed_destinations: tuple[str, ...] = ()
    #: Calls and talk minutes to phone numbers per rolling hour; None: the
    #: deployment's default.
    max_phone_calls_per_hour: int | None = None
    max_phone_minutes_per_hour: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= MAX_NAME:
            raise ValueError(f"name must have 1 to {MAX_NAME} characters")
        if not 0 <= self.phone_minutes <= MAX_MINUTES:
            raise ValueError(f"phone_minutes must be from 0 to {MAX_MINUTES}")
        if self.period_seconds is not None and not 1 <= self.period_seconds <= MAX_PERIOD_SECONDS:
            raise ValueError(f"period_seconds must be from 1 to {MAX_PERIOD_SECONDS}")
        if not (
            1 <= self.increment.first <= MAX_INCREMENT and 1 <= self.increment.next <= MAX_INCREMENT
        ):
            raise ValueError(f"billing increments must be from 1 to {MAX_INCREMENT} seconds")
        if self.fair_use_minutes is not None and not 0 <= self.fair_use_minutes <= MAX_MINUTES:
            raise ValueError(f"fair_use_minutes must be from 0 to {MAX_MINUTES}")
        if len(self.allowed_destinations) > MAX_PREFIXES:
            raise ValueError(f"allowed_destinations holds at most {MAX_PREFIXES} prefixes")
        for prefix in self.allowed_destinations:
            check_prefix(prefix)
        for name in ("max_phone_calls_per_hour", "max_phone_minutes_per_hour"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_PER_HOUR:
                raise ValueError(f"{name} must be from 0 to {MAX_PER_HOUR}")


@dataclass(frozen=True)
class OperatorBundle:
    bundle_id: str
    operator_id: str
    spec: BundleSpec
    created_at: float
    updated_at: float
    retired_at: float | None

    @property
    def retired(self) -> bool:
        return self.retired_at is not None

    def rating(self) -> Bundle:
        """The bundle as the call policy rates it."""
        return Bundle(
            bundle_id=self.bundle_id,
            app_calls_included=self.spec.app_calls_included,
            phone_minutes=self.spec.phone_minutes,
            increment=self.spec.increment,
            period_seconds=self.spec.period_seconds,
            fair_use_minutes=self.spec.fair_use_minutes,
            allowed_destinations=self.spec.allowed_destinations,
            max_phone_calls_per_hour=self.spec.max_phone_calls_per_hour,
            max_phone_minutes_per_hour=self.spec.max_phone_minutes_per_hour,
        )


@dataclass(frozen=True)
class Subscriber:
    number: str
    operator_id: str
    bundle_id: str
    #: "active" or "suspended"; the call policy reads it at every call.
    status: str
    activated_at: float
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class StoredResponse:
    """A response kept for retries with the same Idempotency-Key."""

    status: int
    #: The JSON body as sent ("" for no content).
    body: str


# -- helpers ----------------------------------------------------------------------


def generate_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def generate_signing_secret() -> str:
    return SIGNING_SECRET_PREFIX + secrets.token_urlsafe(32)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(12)


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 of what makes a request the same request: method, path and body.

    A JSON body is compared by content, so a retry that re-serialises the same
    object (other key order or spacing) is still the same request.
    """
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (ValueError, RecursionError):
        canonical = body
    digest = hashlib.sha256()
    digest.update(f"{method.upper()} {path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def check_url(url: str) -> str:
    """``url`` if it is empty (none) or an absolute http(s) URL; ValueError otherwise."""
    if url == "":
        return url
    if len(url) > MAX_URL:
        raise ValueError(f"the URL is longer than {MAX_URL} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise ValueError("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("the URL is malformed") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the URL must be an absolute http or https URL")
    return url


__all__ = [
    "ACTIVE",
    "API_KEY_PREFIX",
    "DEFAULT_INCREMENT",
    "IDEMPOTENCY_TTL",
    "MAX_ACTIVE_KEYS",
    "MAX_IDEMPOTENCY_KEY",
    "SUSPENDED",
    "ApiKey",
    "BundleNotFound",
    "BundleRetired",
    "BundleSpec",
    "Caller",
    "EventNotFound",
    "EventPending",
    "IdempotencyKeyReused",
    "InvalidSubscriberNumber",
    "KeyLimitReached",
    "KeyNotFound",
    "LastKey",
    "NewApiKey",
    "NewOperator",
    "NoPreviousSecret",
    "NumberUnavailable",
    "Operator",
    "OperatorBundle",
    "OperatorError",
    "OperatorNotFound",
    "StoredResponse",
    "Subscriber",
    "SubscriberExists",
    "SubscriberNotFound",
    "check_url",
    "generate_api_key",
    "generate_signing_secret",
    "new_id",
    "request_fingerprint",
]
