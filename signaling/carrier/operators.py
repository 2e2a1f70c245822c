"""Operators of the carrier partnership: tenants, API keys, bundles, subscribers,
and the stored responses of idempotent requests.

Everything an operator owns is read and written with its ``operator_id`` in
the query, so another operator's bundle, subscriber or event looks exactly
like one that does not exist.

API keys (``ak_<random>``, 256 bits) are stored only as SHA-256, like device
tokens; an operator has at most two active keys, so it can rotate without a
gap. The webhook signing secret is kept in clear (it signs every event) and
is shown once, when it is made.

Every method that writes takes an optional ``conn``: given, the change joins
that transaction (the operator API stores the idempotent response in the
same one); otherwise the method commits its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from signaling.carrier.events import StoredEvent
from signaling.carrier.policy import bundle_from_row
from signaling.carrier.rating import MAX_PREFIXES, Bundle, Increment, check_prefix
from signaling.identity.codes import hash_token
from signaling.identity.numbers import InvalidNumber, normalise
from signaling.store.database import Database
from signaling.store.schema import (
    bundles,
    events,
    idempotency_keys,
    operator_keys,
    operators,
    subscribers,
)

log = logging.getLogger("anruf.operators")

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


def _new_id(prefix: str) -> str:
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


def _operator(row: Any) -> Operator:
    m = row._mapping
    return Operator(
        operator_id=m["operator_id"],
        name=m["name"],
        webhook_url=m["webhook_url"],
        sms_url=m["sms_url"],
        created_at=m["created_at"],
        has_previous_signing_secret=m["previous_signing_secret"] is not None,
    )


def _bundle(row: Any) -> OperatorBundle:
    m = row._mapping
    terms = bundle_from_row(m)
    return OperatorBundle(
        bundle_id=m["bundle_id"],
        operator_id=m["operator_id"],
        spec=BundleSpec(
            name=m["name"],
            app_calls_included=terms.app_calls_included,
            phone_minutes=terms.phone_minutes,
            period_seconds=terms.period_seconds,
            increment=terms.increment,
            fair_use_minutes=terms.fair_use_minutes,
            allowed_destinations=terms.allowed_destinations,
            max_phone_calls_per_hour=terms.max_phone_calls_per_hour,
            max_phone_minutes_per_hour=terms.max_phone_minutes_per_hour,
        ),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        retired_at=m["retired_at"],
    )


def _subscriber(row: Any) -> Subscriber:
    m = row._mapping
    return Subscriber(
        number=m["number"],
        operator_id=m["operator_id"],
        bundle_id=m["bundle_id"],
        status=m["status"],
        activated_at=m["activated_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _spec_values(spec: BundleSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "app_calls_included": spec.app_calls_included,
        "phone_minutes": spec.phone_minutes,
        "period_seconds": spec.period_seconds,
        "increment_first": spec.increment.first,
        "increment_next": spec.increment.next,
        "fair_use_minutes": spec.fair_use_minutes,
        "allowed_destinations": ",".join(spec.allowed_destinations),
        "max_phone_calls_per_hour": spec.max_phone_calls_per_hour,
        "max_phone_minutes_per_hour": spec.max_phone_minutes_per_hour,
    }


# -- the store ---------------------------------------------------------------------


class OperatorStore:
    def __init__(
        self,
        db: Database,
        *,
        default_region: str = "DE",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self._default_region = default_region
        self._clock = clock

    @contextlib.asynccontextmanager
    async def _writing(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
        else:
            async with self.db.transaction() as own:
                yield own

    @contextlib.asynccontextmanager
    async def _reading(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
        else:
            async with self.db.read() as own:
                yield own

    # -- operators (an admin's actions) -----------------------------------------------

    async def create_operator(
        self, name: str, webhook_url: str = "", sms_url: str = ""
    ) -> NewOperator:
        """A new operator with its first API key and its webhook signing secret."""
        if not 1 <= len(name) <= MAX_NAME:
            raise ValueError(f"name must have 1 to {MAX_NAME} characters")
        for url in (webhook_url, sms_url):
            check_url(url)
        now = self._clock()
        operator_id = _new_id("op_")
        signing_secret = generate_signing_secret()
        async with self.db.transaction() as conn:
            await conn.execute(
                operators.insert().values(
                    operator_id=operator_id,
                    name=name,
                    webhook_url=webhook_url,
                    sms_url=sms_url,
                    signing_secret=signing_secret,
                    previous_signing_secret=None,
                    created_at=now,
                )
            )
            first = await self._insert_key(conn, operator_id, now)
        log.info("operator %s (%s) created", operator_id, name)
        return NewOperator(
            operator=Operator(operator_id, name, webhook_url, sms_url, now, False),
            key_id=first.key.key_id,
            api_key=first.api_key,
            signing_secret=signing_secret,
        )

    async def list_operators(self) -> list[Operator]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                sa.select(operators).order_by(operators.c.created_at, operators.c.operator_id)
            )
            return [_operator(row) for row in rows]

    async def get_operator(self, operator_id: str, conn: AsyncConnection | None = None) -> Operator:
        async with self._reading(conn) as c:
            row = (
                await c.execute(sa.select(operators).where(operators.c.operator_id == operator_id))
            ).first()
        if row is None:
            raise OperatorNotFound(f"no operator {operator_id!r}")
        return _operator(row)

    async def update_operator(
        self,
        operator_id: str,
        changes: Mapping[str, str],
        conn: AsyncConnection | None = None,
    ) -> Operator:
        """Change the operator's ``name``, ``webhook_url`` or ``sms_url``."""
        unknown = set(changes) - {"name", "webhook_url", "sms_url"}
        if unknown:
            raise ValueError(f"unknown operator settings: {sorted(unknown)}")
        if "name" in changes and not 1 <= len(changes["name"]) <= MAX_NAME:
            raise ValueError(f"name must have 1 to {MAX_NAME} characters")
        for key in ("webhook_url", "sms_url"):
            if key in changes:
                check_url(changes[key])
        async with self._writing(conn) as c:
            if changes:
                await c.execute(
                    operators.update()
                    .where(operators.c.operator_id == operator_id)
                    .values(**changes)
                )
            return await self.get_operator(operator_id, c)

    async def rotate_signing_secret(
        self, operator_id: str, conn: AsyncConnection | None = None
    ) -> str:
        """A new signing secret; the current one becomes the previous one
        (events carry signatures with both until the operator retires it)."""
        secret = generate_signing_secret()
        async with self._writing(conn) as c:
            result = await c.execute(
                operators.update()
                .where(operators.c.operator_id == operator_id)
                .values(previous_signing_secret=operators.c.signing_secret, signing_secret=secret)
            )
            if result.rowcount != 1:
                raise OperatorNotFound(f"no operator {operator_id!r}")
        log.info("operator %s rotated its signing secret", operator_id)
        return secret

    async def retire_previous_signing_secret(
        self, operator_id: str, conn: AsyncConnection | None = None
    ) -> None:
        async with self._writing(conn) as c:
            result = await c.execute(
                operators.update()
                .where(
                    operators.c.operator_id == operator_id,
                    operators.c.previous_signing_secret.is_not(None),
                )
                .values(previous_signing_secret=None)
            )
            if result.rowcount != 1:
                raise NoPreviousSecret("there is no previous signing secret to retire")

    # -- API keys -------------------------------------------------------------------------

    async def authenticate(self, api_key: str) -> Caller | None:
        """The operator holding ``api_key``; None if unknown or revoked."""
        if not api_key.startswith(API_KEY_PREFIX) or len(api_key) > MAX_API_KEY_LENGTH:
            return None
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(operators, operator_keys.c.key_id)
                    .join(operator_keys, operator_keys.c.operator_id == operators.c.operator_id)
                    .where(
                        operator_keys.c.key_hash == hash_token(api_key),
                        operator_keys.c.revoked_at.is_(None),
                    )
                )
            ).first()
        if row is None:
            return None
        return Caller(_operator(row), row.key_id)

    async def _insert_key(self, conn: AsyncConnection, operator_id: str, now: float) -> NewApiKey:
        secret = generate_api_key()
        key = ApiKey(_new_id("key_"), operator_id, now)
        await conn.execute(
            operator_keys.insert().values(
                key_id=key.key_id,
                operator_id=operator_id,
                key_hash=hash_token(secret),
                created_at=now,
                revoked_at=None,
            )
        )
        return NewApiKey(key, secret)

    async def _lock_operator(self, conn: AsyncConnection, operator_id: str) -> None:
        """Serialise key changes of one operator (FOR UPDATE on PostgreSQL;
        SQLite has one writer anyway)."""
        found = await conn.scalar(
            sa.select(operators.c.operator_id)
            .where(operators.c.operator_id == operator_id)
            .with_for_update()
        )
        if found is None:
            raise OperatorNotFound(f"no operator {operator_id!r}")

    async def create_key(self, operator_id: str, conn: AsyncConnection | None = None) -> NewApiKey:
        """A new API key, unless two are active already."""
        async with self._writing(conn) as c:
            await self._lock_operator(c, operator_id)
            active = await self.list_keys(operator_id, c)
            if len(active) >= MAX_ACTIVE_KEYS:
                raise KeyLimitReached(
                    f"at most {MAX_ACTIVE_KEYS} API keys can be active; revoke one first",
                    active_keys=[key.key_id for key in active],
                )
            new = await self._insert_key(c, operator_id, self._clock())
        log.info("operator %s created API key %s", operator_id, new.key.key_id)
        return new

    async def list_keys(
        self, operator_id: str, conn: AsyncConnection | None = None
    ) -> list[ApiKey]:
        """The operator's active keys, oldest first."""
        async with self._reading(conn) as c:
            rows = await c.execute(
                sa.select(operator_keys)
                .where(
                    operator_keys.c.operator_id == operator_id,
                    operator_keys.c.revoked_at.is_(None),
                )
                .order_by(operator_keys.c.created_at, operator_keys.c.key_id)
            )
            return [ApiKey(row.key_id, row.operator_id, row.created_at) for row in rows]

    async def revoke_key(
        self, operator_id: str, key_id: str, conn: AsyncConnection | None = None
    ) -> None:
        """Revoke one of the operator's keys at once; never the last active one."""
        async with self._writing(conn) as c:
            await self._lock_operator(c, operator_id)
            active = await self.list_keys(operator_id, c)
            if key_id not in {key.key_id for key in active}:
                raise KeyNotFound(f"no active API key {key_id!r}")
            if len(active) == 1:
                raise LastKey("create a new key before revoking the last active one")
            await c.execute(
                operator_keys.update()
                .where(operator_keys.c.key_id == key_id)
                .values(revoked_at=self._clock())
            )
        log.info("operator %s revoked API key %s", operator_id, key_id)

    # -- bundles ----------------------------------------------------------------------------

    async def create_bundle(
        self, operator_id: str, spec: BundleSpec, conn: AsyncConnection | None = None
    ) -> OperatorBundle:
        now = self._clock()
        bundle = OperatorBundle(_new_id("bun_"), operator_id, spec, now, now, None)
        async with self._writing(conn) as c:
            await c.execute(
                bundles.insert().values(
                    bundle_id=bundle.bundle_id,
                    operator_id=operator_id,
                    created_at=now,
                    updated_at=now,
                    retired_at=None,
                    **_spec_values(spec),
                )
            )
        return bundle

    async def list_bundles(
        self, operator_id: str, conn: AsyncConnection | None = None
    ) -> list[OperatorBundle]:
        """All the operator's bundles, retired ones too, oldest first."""
        async with self._reading(conn) as c:
            rows = await c.execute(
                sa.select(bundles)
                .where(bundles.c.operator_id == operator_id)
                .order_by(bundles.c.created_at, bundles.c.bundle_id)
            )
            return [_bundle(row) for row in rows]

    async def get_bundle(
        self, operator_id: str, bundle_id: str, conn: AsyncConnection | None = None
    ) -> OperatorBundle:
        async with self._reading(conn) as c:
            row = (
                await c.execute(
                    sa.select(bundles).where(
                        bundles.c.bundle_id == bundle_id, bundles.c.operator_id == operator_id
                    )
                )
            ).first()
        if row is None:
            raise BundleNotFound(f"no bundle {bundle_id!r}")
        return _bundle(row)

    async def update_bundle(
        self,
        operator_id: str,
        bundle_id: str,
        changes: Mapping[str, Any],
        conn: AsyncConnection | None = None,
    ) -> OperatorBundle:
        """Change some of a bundle's terms (BundleSpec field names); every
        subscriber on it has the new terms from the next call on."""
        async with self._writing(conn) as c:
            current = await self.get_bundle(operator_id, bundle_id, c)
            if current.retired:
                raise BundleRetired(f"bundle {bundle_id!r} is retired and cannot be changed")
            spec = dataclasses.replace(current.spec, **changes)
            now = self._clock()
            await c.execute(
                bundles.update()
                .where(bundles.c.bundle_id == bundle_id)
                .values(updated_at=now, **_spec_values(spec))
            )
        return dataclasses.replace(current, spec=spec, updated_at=now)

    async def retire_bundle(
        self, operator_id: str, bundle_id: str, conn: AsyncConnection | None = None
    ) -> OperatorBundle:
        """No new subscribers on it, no more changes; its subscribers keep it.
        Retiring a retired bundle changes nothing."""
        async with self._writing(conn) as c:
            current = await self.get_bundle(operator_id, bundle_id, c)
            if current.retired:
                return current
            now = self._clock()
            await c.execute(
                bundles.update()
                .where(bundles.c.bundle_id == bundle_id)
                .values(retired_at=now, updated_at=now)
            )
        return dataclasses.replace(current, retired_at=now, updated_at=now)

    async def _open_bundle(
        self, conn: AsyncConnection, operator_id: str, bundle_id: str
    ) -> OperatorBundle:
        bundle = await self.get_bundle(operator_id, bundle_id, conn)
        if bundle.retired:
            raise BundleRetired(f"bundle {bundle_id!r} is retired and takes no subscribers")
        return bundle

    # -- subscribers --------------------------------------------------------------------------

    def normalise(self, raw: str, region: str | None = None) -> str:
        """``raw`` as E.164, national formats read in ``region`` or the default."""
        try:
            return normalise(raw, region or self._default_region)
        except InvalidNumber as exc:
            raise InvalidSubscriberNumber(exc.message, reason=exc.reason) from exc

    async def add_subscriber(
        self,
        operator_id: str,
        number: str,
        bundle_id: str,
        *,
        region: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> Subscriber:
        """Provision ``number`` on one of the operator's bundles, active from now."""
        e164 = self.normalise(number, region)
        async with self._writing(conn) as c:
            await self._open_bundle(c, operator_id, bundle_id)
            holder = await c.scalar(
                sa.select(subscribers.c.operator_id).where(subscribers.c.number == e164)
            )
            if holder == operator_id:
                raise SubscriberExists(f"{e164} is already your subscriber", number=e164)
            if holder is not None:
                raise NumberUnavailable(f"{e164} is provisioned by another operator", number=e164)
            now = self._clock()
            subscriber = Subscriber(e164, operator_id, bundle_id, ACTIVE, now, now, now)
            await c.execute(subscribers.insert().values(**dataclasses.asdict(subscriber)))
        log.info("operator %s provisioned %s on %s", operator_id, e164, bundle_id)
        return subscriber

    async def list_subscribers(
        self,
        operator_id: str,
        *,
        after: str = "",
        limit: int = 100,
        bundle_id: str | None = None,
        status: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> list[Subscriber]:
        """One page of the operator's subscribers in number order, after ``after``."""
        query = (
            sa.select(subscribers)
            .where(subscribers.c.operator_id == operator_id, subscribers.c.number > after)
            .order_by(subscribers.c.number)
            .limit(max(1, min(limit, MAX_SUBSCRIBER_PAGE)))
        )
        if bundle_id is not None:
            query = query.where(subscribers.c.bundle_id == bundle_id)
        if status is not None:
            query = query.where(subscribers.c.status == status)
        async with self._reading(conn) as c:
            return [_subscriber(row) for row in await c.execute(query)]

    async def get_subscriber(
        self, operator_id: str, number: str, conn: AsyncConnection | None = None
    ) -> Subscriber:
        try:
            e164 = self.normalise(number)
        except InvalidSubscriberNumber:
            raise SubscriberNotFound(f"no subscriber {number!r}") from None
        async with self._reading(conn) as c:
            row = (
                await c.execute(
                    sa.select(subscribers).where(
                        subscribers.c.number == e164, subscribers.c.operator_id == operator_id
                    )
                )
            ).first()
        if row is None:
            raise SubscriberNotFound(f"no subscriber {e164}")
        return _subscriber(row)

    async def _set_subscriber(
        self,
        operator_id: str,
        number: str,
        conn: AsyncConnection | None,
        *,
        bundle_id: str | None = None,
        status: str | None = None,
    ) -> Subscriber:
        async with self._writing(conn) as c:
            current = await self.get_subscriber(operator_id, number, c)
            if bundle_id is not None and bundle_id != current.bundle_id:
                await self._open_bundle(c, operator_id, bundle_id)
            changed = dataclasses.replace(
                current,
                bundle_id=bundle_id or current.bundle_id,
                status=status or current.status,
            )
            if changed == current:
                return current
            changed = dataclasses.replace(changed, updated_at=self._clock())
            await c.execute(
                subscribers.update()
                .where(subscribers.c.number == current.number)
                .values(
                    bundle_id=changed.bundle_id,
                    status=changed.status,
                    updated_at=changed.updated_at,
                )
            )
        return changed

    async def change_bundle(
        self,
        operator_id: str,
        number: str,
        bundle_id: str,
        conn: AsyncConnection | None = None,
    ) -> Subscriber:
        """Move a subscriber to another (not retired) bundle; its period keeps running."""
        return await self._set_subscriber(operator_id, number, conn, bundle_id=bundle_id)

    async def suspend(
        self, operator_id: str, number: str, conn: AsyncConnection | None = None
    ) -> Subscriber:
        """No more calls from the number, from its next call on."""
        return await self._set_subscriber(operator_id, number, conn, status=SUSPENDED)

    async def resume(
        self, operator_id: str, number: str, conn: AsyncConnection | None = None
    ) -> Subscriber:
        return await self._set_subscriber(operator_id, number, conn, status=ACTIVE)

    async def remove_subscriber(
        self, operator_id: str, number: str, conn: AsyncConnection | None = None
    ) -> None:
        """The number is no longer the operator's; its call records stay."""
        async with self._writing(conn) as c:
            current = await self.get_subscriber(operator_id, number, c)
            await c.execute(subscribers.delete().where(subscribers.c.number == current.number))
        log.info("operator %s removed %s", operator_id, current.number)

    # -- events ---------------------------------------------------------------------------------

    async def get_event(
        self, operator_id: str, event_id: str, conn: AsyncConnection | None = None
    ) -> StoredEvent:
        async with self._reading(conn) as c:
            row = (
                await c.execute(
                    sa.select(events).where(
                        events.c.event_id == event_id, events.c.operator_id == operator_id
                    )
                )
            ).first()
        if row is None:
            raise EventNotFound(f"no event {event_id!r}")
        return StoredEvent.from_row(row)

    async def redeliver(
        self, operator_id: str, event_id: str, conn: AsyncConnection | None = None
    ) -> StoredEvent:
        """Send an event again, as if it were new: any that is not pending
        (delivered, dead, or kept for replay only when there was no URL)."""
        async with self._writing(conn) as c:
            event = await self.get_event(operator_id, event_id, c)
            if event.status == "pending":
                raise EventPending(f"event {event_id!r} is pending delivery already")
            now = self._clock()
            # A fresh retry window (max age counts from created_at); the body,
            # its id and its place in the cursor order stay as they were.
            await c.execute(
                events.update()
                .where(events.c.event_id == event_id)
                .values(
                    status="pending",
                    attempts=0,
                    created_at=now,
                    next_attempt_at=now,
                    locked_until=None,
                    delivered_at=None,
                    last_error="",
                )
            )
        return dataclasses.replace(
            event, status="pending", attempts=0, created_at=now, delivered_at=None, last_error=""
        )

    # -- idempotent requests ---------------------------------------------------------------------

    async def stored_response(
        self, conn: AsyncConnection, operator_id: str, key: str, fingerprint: str
    ) -> StoredResponse | None:
        """The response kept for ``key``, if this request was made before.

        Raises IdempotencyKeyReused when the key was used for another request.
        Records older than IDEMPOTENCY_TTL are pruned here first.
        """
        await conn.execute(
            idempotency_keys.delete().where(
                idempotency_keys.c.operator_id == operator_id,
                idempotency_keys.c.created_at < self._clock() - IDEMPOTENCY_TTL,
            )
        )
        row = (
            await conn.execute(
                sa.select(idempotency_keys).where(
                    idempotency_keys.c.operator_id == operator_id, idempotency_keys.c.key == key
                )
            )
        ).first()
        if row is None:
            return None
        if row.request_hash != fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used for a request with another method, path or body"
            )
        return StoredResponse(row.status, row.response)

    async def store_response(
        self,
        conn: AsyncConnection,
        operator_id: str,
        key: str,
        fingerprint: str,
        response: StoredResponse,
    ) -> None:
        """Keep ``response`` for retries; in the transaction of the change it reports."""
        await conn.execute(
            idempotency_keys.insert().values(
                operator_id=operator_id,
                key=key,
                request_hash=fingerprint,
                status=response.status,
                response=response.body,
                created_at=self._clock(),
            )
        )


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
    "OperatorStore",
    "StoredResponse",
    "Subscriber",
    "SubscriberExists",
    "SubscriberNotFound",
    "check_url",
    "generate_api_key",
    "generate_signing_secret",
    "request_fingerprint",
]
