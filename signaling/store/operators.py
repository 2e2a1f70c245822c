"""OperatorStore: the operators' tables (``operators``, ``operator_keys``,
``bundles``, ``subscribers``, ``idempotency_keys``) and their events, for the
operator API and `anruf operator`.

Everything an operator owns is read and written with its ``operator_id`` in
the query, so another operator's bundle, subscriber or event looks exactly
like one that does not exist. The types, errors and limits are the carrier's
(signaling/carrier/operators.py).

Every method that writes takes an optional ``conn``: given, the change joins
that transaction (the operator API stores the idempotent response in the
same one); otherwise the method commits its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from signaling.carrier.events import StoredEvent
from signaling.carrier.operators import (
    ACTIVE,
    API_KEY_PREFIX,
    IDEMPOTENCY_TTL,
    MAX_ACTIVE_KEYS,
    MAX_API_KEY_LENGTH,
    MAX_NAME,
    MAX_SUBSCRIBER_PAGE,
    SUSPENDED,
    ApiKey,
    BundleNotFound,
    BundleRetired,
    BundleSpec,
    Caller,
    EventNotFound,
    EventPending,
    IdempotencyKeyReused,
    InvalidSubscriberNumber,
    KeyLimitReached,
    KeyNotFound,
    LastKey,
    NewApiKey,
    NewOperator,
    NoPreviousSecret,
    NumberUnavailable,
    Operator,
    OperatorBundle,
    OperatorNotFound,
    StoredResponse,
    Subscriber,
    SubscriberExists,
    SubscriberNotFound,
    check_url,
    generate_api_key,
    generate_signing_secret,
    new_id,
)
from signaling.carrier.policy import bundle_from_row
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

    async def _first(self, conn: AsyncConnection | None, query: sa.Select[Any]) -> Any:
        """The first row ``query`` finds (None: none), read in ``conn`` or a read of its own."""
        async with self._reading(conn) as c:
            return (await c.execute(query)).first()

    async def _owned(
        self,
        conn: AsyncConnection | None,
        table: sa.Table,
        key: sa.ColumnElement[bool],
        operator_id: str,
    ) -> Any:
        """The row of ``table`` that ``key`` picks if ``operator_id`` owns it (None: no
        such row, or another operator's)."""
        return await self._first(
            conn, sa.select(table).where(key, table.c.operator_id == operator_id)
        )

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
        operator_id = new_id("op_")
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
        row = await self._first(
            conn, sa.select(operators).where(operators.c.operator_id == operator_id)
        )
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
        row = await self._first(
            None,
            sa.select(operators, operator_keys.c.key_id)
            .join(operator_keys, operator_keys.c.operator_id == operators.c.operator_id)
            .where(
                operator_keys.c.key_hash == hash_token(api_key),
                operator_keys.c.revoked_at.is_(None),
            ),
        )
        if row is None:
            return None
        return Caller(_operator(row), row.key_id)

    async def _insert_key(self, conn: AsyncConnection, operator_id: str, now: float) -> NewApiKey:
        secret = generate_api_key()
        key = ApiKey(new_id("key_"), operator_id, now)
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
        bundle = OperatorBundle(new_id("bun_"), operator_id, spec, now, now, None)
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
        row = await self._owned(conn, bundles, bundles.c.bundle_id == bundle_id, operator_id)
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
        row = await self._owned(conn, subscribers, subscribers.c.number == e164, operator_id)
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
        row = await self._owned(conn, events, events.c.event_id == event_id, operator_id)
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
        row = await self._owned(conn, idempotency_keys, idempotency_keys.c.key == key, operator_id)
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


__all__ = ["OperatorStore"]
