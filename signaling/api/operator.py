"""The operator API (/operator/v1): an operator's settings, API keys, bundles,
subscribers, usage and events.

Every request carries one of the operator's API keys as a bearer token and
sees only that operator's things: another operator's bundle, subscriber or
event is 404, exactly like one that does not exist.

Requests that change something run in one database transaction. With an
``Idempotency-Key`` header, the response of the first request is stored in
that same transaction and a retry with the same key, method, path and body
gets it again (``Idempotent-Replayed: true``); the key with another request
is refused (422). Only successful responses are stored: a failed request
changed nothing and may be retried as it is. Secrets (a new API key or
signing secret) are never stored: a replay shows them as null.

Each route is an :class:`Endpoint`: the handler together with what the
OpenAPI document (signaling.api.openapi) says about it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from signaling.api.auth import bearer_token
from signaling.api.problems import ProblemError
from signaling.api.rest import read_body
from signaling.carrier import events as outbox
from signaling.carrier.delivery import DEAD, DELIVERED, PENDING, REPLAY_ONLY
from signaling.carrier.events import EVENT_TYPES, StoredEvent
from signaling.carrier.operators import (
    MAX_IDEMPOTENCY_KEY,
    MAX_INCREMENT,
    MAX_MINUTES,
    MAX_NAME,
    MAX_PER_HOUR,
    MAX_PERIOD_SECONDS,
    MAX_SUBSCRIBER_PAGE,
    MAX_URL,
    BundleSpec,
    Caller,
    Operator,
    OperatorBundle,
    OperatorError,
    StoredResponse,
    Subscriber,
    SubscriberNotFound,
    check_url,
    request_fingerprint,
)
from signaling.carrier.rating import MAX_PREFIXES, Increment, check_prefix
from signaling.keys import OPERATORS, POLICY
from signaling.store.database import Connection, IntegrityError
from signaling.store.operators import OperatorStore

log = logging.getLogger("anruf.api.operator")

PREFIX = "/operator/v1"
MAX_EVENT_PAGE = 500
REPLAYED_HEADER = "Idempotent-Replayed"
EVENT_STATUSES = (PENDING, DELIVERED, DEAD, REPLAY_ONLY)

# -- request bodies -------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _unchanged() -> Any:
    """The default of a PATCH field: absent means unchanged (null is not allowed)."""
    return Field(default=None, json_schema_extra=_no_default)


def _increment_text(value: str) -> str:
    first, _, next_ = value.partition("/")
    if not (1 <= int(first) <= MAX_INCREMENT and 1 <= int(next_) <= MAX_INCREMENT):
        raise ValueError(f"both increments must be from 1 to {MAX_INCREMENT} seconds")
    return value


Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Url = Annotated[
    str,
    StringConstraints(max_length=MAX_URL),
    AfterValidator(check_url),
    Field(description="an absolute http or https URL; empty for none"),
]
Id = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Minutes = Annotated[int, Field(ge=0, le=MAX_MINUTES)]
Seconds = Annotated[int, Field(ge=1, le=MAX_INCREMENT)]
Period = Annotated[
    Literal["monthly"] | Annotated[int, Field(ge=1, le=MAX_PERIOD_SECONDS)],
    Field(
        description='"monthly": monthly from the subscriber\'s activation; '
        "or the period's length in seconds"
    ),
]
IncrementText = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]{1,4}/[0-9]{1,4}$"),
    AfterValidator(_increment_text),
    Field(description='"first/next" seconds, e.g. "60/1"'),
]
RawNumber = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Prefix = Annotated[
    str,
    StringConstraints(pattern=r"^\+[1-9][0-9]{0,14}$"),
    AfterValidator(check_prefix),
    Field(description='an E.164 prefix: "+" and 1 to 15 digits, e.g. "+49" or "+43676"'),
]
Destinations = Annotated[
    list[Prefix],
    Field(
        max_length=MAX_PREFIXES,
        description="E.164 prefixes that calls to phone numbers may reach; "
        "empty: any destination (calls between Anruf users are not affected)",
    ),
]
PerHour = Annotated[int, Field(ge=0, le=MAX_PER_HOUR)]
Region = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]


class IncrementBody(_Body):
    """Billing increment: ``first`` seconds for any answered call, then per ``next`` seconds."""

    first: Seconds
    next: Seconds


class OperatorUpdate(_Body):
    name: Name = _unchanged()
    webhook_url: Url = _unchanged()
    sms_url: Url = _unchanged()


class BundleCreate(_Body):
    name: Name
    app_calls_included: bool = Field(
        description="calls between Anruf users do not count against phone_minutes"
    )
    phone_minutes: Minutes = Field(description="minutes to phone numbers per period")
    period: Period = "monthly"
    increment: IncrementBody | IncrementText = IncrementBody(first=60, next=60)
    fair_use_minutes: Minutes | None = Field(
        default=None, description="minutes of all calls per period; null: no cap"
    )
    allowed_destinations: Destinations = []
    max_phone_calls_per_hour: PerHour | None = Field(
        default=None,
        description="calls to phone numbers per rolling hour; null: the deployment's default",
    )
    max_phone_minutes_per_hour: PerHour | None = Field(
        default=None,
        description="talk minutes to phone numbers per rolling hour; "
        "null: the deployment's default",
    )


class BundleUpdate(_Body):
    name: Name = _unchanged()
    app_calls_included: bool = _unchanged()
    phone_minutes: Minutes = _unchanged()
    period: Period = _unchanged()
    increment: IncrementBody | IncrementText = _unchanged()
    fair_use_minutes: Minutes | None = _unchanged()
    allowed_destinations: Destinations = _unchanged()
    max_phone_calls_per_hour: PerHour | None = _unchanged()
    max_phone_minutes_per_hour: PerHour | None = _unchanged()


class SubscriberCreate(_Body):
    number: RawNumber = Field(description="E.164, or national format read in region")
    bundle_id: Id
    region: Region | None = None


class SubscriberUpdate(_Body):
    bundle_id: Id


# -- response bodies ------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class OperatorOut(_Out):
    operator_id: str
    name: str
    webhook_url: str
    sms_url: str
    created_at: float
    previous_signing_secret_active: bool


class SigningSecretOut(_Out):
    signing_secret: str | None = Field(description="shown once; null in a replayed response")
    previous_signing_secret_active: bool


class KeyOut(_Out):
    key_id: str
    created_at: float
    current: bool = Field(description="the key this request was made with")


class KeyListOut(_Out):
    keys: list[KeyOut]


class NewKeyOut(_Out):
    key_id: str
    created_at: float
    api_key: str | None = Field(description="shown once; null in a replayed response")


class IncrementOut(_Out):
    first: int
    next: int


class BundleOut(_Out):
    bundle_id: str
    name: str
    status: Literal["active", "retired"]
    app_calls_included: bool
    phone_minutes: int
    period: Literal["monthly"] | int
    increment: IncrementOut
    fair_use_minutes: int | None
    allowed_destinations: list[str] = Field(description="empty: any destination")
    max_phone_calls_per_hour: int | None = Field(description="null: the deployment's default")
    max_phone_minutes_per_hour: int | None = Field(description="null: the deployment's default")
    created_at: float
    updated_at: float
    retired_at: float | None


class BundleListOut(_Out):
    bundles: list[BundleOut]


class SubscriberOut(_Out):
    number: str
    bundle_id: str
    status: Literal["active", "suspended"]
    activated_at: float
    created_at: float
    updated_at: float


class SubscriberPageOut(_Out):
    subscribers: list[SubscriberOut]
    next_cursor: str | None = Field(description="pass as after for the next page; null: no more")


class UsageOut(_Out):
    """The current period's usage (signaling.carrier.policy.UsageReport)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    number: str
    bundle_id: str
    period_start: float
    period_end: float
    minutes_included: int
    minutes_used: float
    minutes_left: float
    seconds_used: int
    seconds_left: int
    talk_seconds_all_calls: int
    fair_use_minutes: int | None
    calls: int


class DeliveryOut(_Out):
    status: str = Field(
        description="pending, delivered, dead (gave up), or replay_only (no URL to send it to)",
        examples=list(EVENT_STATUSES),
    )
    attempts: int
    delivered_at: float | None
    last_error: str


class EventOut(_Out):
    """The event's envelope exactly as it is signed and sent, with its delivery state."""

    model_config = ConfigDict(frozen=True, extra="allow")
    id: str
    type: str
    created: float
    data: dict[str, Any]
    delivery: DeliveryOut
    cursor: int = Field(description="this event's position; pass as after to read on")


class EventPageOut(_Out):
    events: list[EventOut]
    next_cursor: int = Field(description="pass as after for the next page (or to poll)")
    has_more: bool


# -- the plumbing ---------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Context:
    """One authenticated request: its connection (a transaction for changes)
    and its validated body."""

    request: web.Request
    caller: Caller
    conn: Connection
    body: BaseModel | None

    @property
    def store(self) -> OperatorStore:
        return self.request.app[OPERATORS]

    @property
    def operator_id(self) -> str:
        return self.caller.operator.operator_id

    def parsed(self, model: type[M]) -> M:
        assert isinstance(self.body, model), f"the endpoint declares no {model.__name__} body"
        return self.body

    def path(self, name: str) -> str:
        return self.request.match_info[name]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: BaseModel | None = None
    #: Stored for replays instead of ``body``, which holds a secret.
    replay_body: BaseModel | None = None

    def response(self) -> web.Response:
        headers = {"Cache-Control": "no-store"} if self.replay_body is not None else {}
        if self.body is None:
            return web.Response(status=self.status, headers=headers)
        return web.Response(
            status=self.status,
            text=self.body.model_dump_json(),
            content_type="application/json",
            headers=headers,
        )

    def stored(self) -> StoredResponse:
        kept = self.body if self.replay_body is None else self.replay_body
        return StoredResponse(self.status, "" if kept is None else kept.model_dump_json())


EndpointHandler = Callable[[Context], Awaitable[Reply]]


@dataclass(frozen=True)
class Query:
    """A query parameter, for validation messages and the OpenAPI document."""

    name: str
    schema: dict[str, Any]
    description: str
    repeated: bool = False


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: EndpointHandler
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    query: tuple[Query, ...] = ()
    #: Problem statuses beyond 401 (no key), 400 (bad input), and for changes
    #: 409 (a concurrent change) and 422 (idempotency).
    problems: tuple[int, ...] = ()

    @property
    def changes(self) -> bool:
        return self.method != "GET"


def _problem(error: OperatorError) -> ProblemError:
    return ProblemError(error.status, error.code, error.title, error.detail, **error.extra)


def _unauthorized(detail: str, error: str) -> ProblemError:
    challenge = 'Bearer realm="anruf-operator"' + (f', error="{error}"' if error else "")
    return ProblemError(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": challenge}
    )


async def _authenticate(request: web.Request) -> Caller:
    token = bearer_token(request)
    if token is None:
        # RFC 6750 section 3.1: no error code when credentials are absent.
        raise _unauthorized("send an API key as 'Authorization: Bearer ak_...'", "")
    caller = await request.app[OPERATORS].authenticate(token)
    if caller is None:
        raise _unauthorized("the API key is unknown or has been revoked", "invalid_token")
    return caller


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not (1 <= len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable()):
        raise ProblemError(
            400,
            "invalid_idempotency_key",
            "Invalid Idempotency-Key",
            f"the Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
        )
    return key


def _replay(stored: StoredResponse) -> web.Response:
    headers = {REPLAYED_HEADER: "true"}
    if not stored.body:
        return web.Response(status=stored.status, headers=headers)
    return web.Response(
        status=stored.status, text=stored.body, content_type="application/json", headers=headers
    )


def _concurrent_change() -> ProblemError:
    return ProblemError(
        409,
        "concurrent_change",
        "Conflicting concurrent request",
        "another request changed the same thing at the same time; read it and retry",
    )


async def _change(endpoint: Endpoint, request: web.Request, caller: Caller) -> web.Response:
    """Run a changing endpoint in one transaction, with the idempotency record in it."""
    store = request.app[OPERATORS]
    operator_id = caller.operator.operator_id
    key = _idempotency_key(request)
    raw = await request.read()  # before the transaction: a slow client holds no lock
    body = await read_body(request, endpoint.body) if endpoint.body is not None else None
    fingerprint = request_fingerprint(request.method, request.raw_path, raw)
    stored: StoredResponse | None = None
    try:
        async with store.db.transaction() as conn:
            if key is not None:
                stored = await store.stored_response(conn, operator_id, key, fingerprint)
            if stored is None:
                reply = await endpoint.handler(Context(request, caller, conn, body))
                if key is not None:
                    await store.store_response(conn, operator_id, key, fingerprint, reply.stored())
    except IntegrityError:
        # A concurrent request won a race: one with the same key, or one that
        # took the same number.
        if key is None:
            raise _concurrent_change() from None
        async with store.db.transaction() as conn:
            stored = await store.stored_response(conn, operator_id, key, fingerprint)
        if stored is None:
            raise _concurrent_change() from None
    if stored is not None:
        return _replay(stored)
    return reply.response()


def _serve(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        caller = await _authenticate(request)
        try:
            if endpoint.changes:
                return await _change(endpoint, request, caller)
            async with request.app[OPERATORS].db.read() as conn:
                reply = await endpoint.handler(Context(request, caller, conn, None))
            return reply.response()
        except OperatorError as exc:
            raise _problem(exc) from None

    handle.__name__ = endpoint.handler.__name__
    handle.__doc__ = f"{endpoint.method} {endpoint.path}: {endpoint.summary}"
    return handle


def _invalid_query(detail: str) -> ProblemError:
    return ProblemError(400, "invalid_query", "Invalid query parameter", detail)


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,18}", raw) or not low <= int(raw) <= high:
        raise _invalid_query(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _number_cursor(raw: str) -> str:
    """A number cursor; an unencoded "+" in a query string arrives as a space."""
    digits = raw.strip().lstrip("+")
    return "+" + digits if digits else ""


def _query_choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query.get(name, "")
    if raw == "":
        return None
    if raw not in choices:
        raise _invalid_query(f"{name} must be one of {', '.join(choices)}")
    return raw


# -- JSON of records --------------------------------------------------------------------


def _operator_out(ctx: Context, operator: Operator | None = None) -> OperatorOut:
    op = operator or ctx.caller.operator
    return OperatorOut(
        operator_id=op.operator_id,
        name=op.name,
        webhook_url=op.webhook_url,
        sms_url=op.sms_url,
        created_at=op.created_at,
        previous_signing_secret_active=op.has_previous_signing_secret,
    )


def _bundle_out(bundle: OperatorBundle) -> BundleOut:
    spec = bundle.spec
    return BundleOut(
        bundle_id=bundle.bundle_id,
        name=spec.name,
        status="retired" if bundle.retired else "active",
        app_calls_included=spec.app_calls_included,
        phone_minutes=spec.phone_minutes,
        period="monthly" if spec.period_seconds is None else spec.period_seconds,
        increment=IncrementOut(first=spec.increment.first, next=spec.increment.next),
        fair_use_minutes=spec.fair_use_minutes,
        allowed_destinations=list(spec.allowed_destinations),
        max_phone_calls_per_hour=spec.max_phone_calls_per_hour,
        max_phone_minutes_per_hour=spec.max_phone_minutes_per_hour,
        created_at=bundle.created_at,
        updated_at=bundle.updated_at,
        retired_at=bundle.retired_at,
    )


def _subscriber_out(subscriber: Subscriber) -> SubscriberOut:
    return SubscriberOut.model_validate(
        {
            "number": subscriber.number,
            "bundle_id": subscriber.bundle_id,
            "status": subscriber.status,
            "activated_at": subscriber.activated_at,
            "created_at": subscriber.created_at,
            "updated_at": subscriber.updated_at,
        }
    )


def _event_out(event: StoredEvent) -> EventOut:
    return EventOut.model_validate(
        {
            **event.envelope(),
            "delivery": {
                "status": event.status,
                "attempts": event.attempts,
                "delivered_at": event.delivered_at,
                "last_error": event.last_error,
            },
            "cursor": event.seq,
        }
    )


def _increment(value: IncrementBody | str) -> Increment:
    if isinstance(value, IncrementBody):
        return Increment(value.first, value.next)
    first, _, next_ = value.partition("/")
    return Increment(int(first), int(next_))


def _spec_fields(body: BundleCreate | BundleUpdate, fields: Iterable[str]) -> dict[str, Any]:
    """Those of the request's ``fields`` as BundleSpec fields."""
    changes: dict[str, Any] = {}
    for field in fields:
        value = getattr(body, field)
        if field == "period":
            changes["period_seconds"] = None if value == "monthly" else value
        elif field == "increment":
            changes["increment"] = _increment(value)
        elif field == "allowed_destinations":
            changes[field] = tuple(dict.fromkeys(value))  # in order, each once
        else:
            changes[field] = value
    return changes


# -- the operator --------------------------------------------------------------------------


async def get_operator(ctx: Context) -> Reply:
    return Reply(body=_operator_out(ctx))


async def update_operator(ctx: Context) -> Reply:
    body = ctx.parsed(OperatorUpdate)
    changes = {field: getattr(body, field) for field in body.model_fields_set}
    operator = await ctx.store.update_operator(ctx.operator_id, changes, ctx.conn)
    return Reply(body=_operator_out(ctx, operator))


async def rotate_signing_secret(ctx: Context) -> Reply:
    secret = await ctx.store.rotate_signing_secret(ctx.operator_id, ctx.conn)
    return Reply(
        body=SigningSecretOut(signing_secret=secret, previous_signing_secret_active=True),
        replay_body=SigningSecretOut(signing_secret=None, previous_signing_secret_active=True),
    )


async def retire_previous_signing_secret(ctx: Context) -> Reply:
    await ctx.store.retire_previous_signing_secret(ctx.operator_id, ctx.conn)
    return Reply(status=204)


# -- API keys -------------------------------------------------------------------------------


async def create_key(ctx: Context) -> Reply:
    new = await ctx.store.create_key(ctx.operator_id, ctx.conn)
    shown = NewKeyOut(key_id=new.key.key_id, created_at=new.key.created_at, api_key=new.api_key)
    return Reply(201, shown, replay_body=shown.model_copy(update={"api_key": None}))


async def list_keys(ctx: Context) -> Reply:
    keys = await ctx.store.list_keys(ctx.operator_id, ctx.conn)
    return Reply(
        body=KeyListOut(
            keys=[
                KeyOut(
                    key_id=k.key_id, created_at=k.created_at, current=k.key_id == ctx.caller.key_id
                )
                for k in keys
            ]
        )
    )


async def revoke_key(ctx: Context) -> Reply:
    await ctx.store.revoke_key(ctx.operator_id, ctx.path("key_id"), ctx.conn)
    return Reply(status=204)


# -- bundles --------------------------------------------------------------------------------


async def create_bundle(ctx: Context) -> Reply:
    body = ctx.parsed(BundleCreate)
    spec = BundleSpec(**_spec_fields(body, BundleCreate.model_fields))
    bundle = await ctx.store.create_bundle(ctx.operator_id, spec, ctx.conn)
    return Reply(201, _bundle_out(bundle))


async def list_bundles(ctx: Context) -> Reply:
    found = await ctx.store.list_bundles(ctx.operator_id, ctx.conn)
    return Reply(body=BundleListOut(bundles=[_bundle_out(b) for b in found]))


async def get_bundle(ctx: Context) -> Reply:
    bundle = await ctx.store.get_bundle(ctx.operator_id, ctx.path("bundle_id"), ctx.conn)
    return Reply(body=_bundle_out(bundle))


async def update_bundle(ctx: Context) -> Reply:
    body = ctx.parsed(BundleUpdate)
    changes = _spec_fields(body, body.model_fields_set)
    bundle = await ctx.store.update_bundle(
        ctx.operator_id, ctx.path("bundle_id"), changes, ctx.conn
    )
    return Reply(body=_bundle_out(bundle))


async def retire_bundle(ctx: Context) -> Reply:
    bundle = await ctx.store.retire_bundle(ctx.operator_id, ctx.path("bundle_id"), ctx.conn)
    return Reply(body=_bundle_out(bundle))


# -- subscribers ----------------------------------------------------------------------------


async def add_subscriber(ctx: Context) -> Reply:
    body = ctx.parsed(SubscriberCreate)
    subscriber = await ctx.store.add_subscriber(
        ctx.operator_id, body.number, body.bundle_id, region=body.region, conn=ctx.conn
    )
    return Reply(201, _subscriber_out(subscriber))


async def list_subscribers(ctx: Context) -> Reply:
    request = ctx.request
    limit = _query_int(request, "limit", 100, 1, MAX_SUBSCRIBER_PAGE)
    status = _query_choice(request, "status", ("active", "suspended"))
    page = await ctx.store.list_subscribers(
        ctx.operator_id,
        after=_number_cursor(request.query.get("after", "")),
        limit=limit,
        bundle_id=request.query.get("bundle_id") or None,
        status=status,
        conn=ctx.conn,
    )
    return Reply(
        body=SubscriberPageOut(
            subscribers=[_subscriber_out(s) for s in page],
            next_cursor=page[-1].number if len(page) == limit else None,
        )
    )


async def get_subscriber(ctx: Context) -> Reply:
    found = await ctx.store.get_subscriber(ctx.operator_id, ctx.path("number"), ctx.conn)
    return Reply(body=_subscriber_out(found))


async def change_bundle(ctx: Context) -> Reply:
    body = ctx.parsed(SubscriberUpdate)
    changed = await ctx.store.change_bundle(
        ctx.operator_id, ctx.path("number"), body.bundle_id, ctx.conn
    )
    return Reply(body=_subscriber_out(changed))


async def suspend_subscriber(ctx: Context) -> Reply:
    changed = await ctx.store.suspend(ctx.operator_id, ctx.path("number"), ctx.conn)
    return Reply(body=_subscriber_out(changed))


async def resume_subscriber(ctx: Context) -> Reply:
    changed = await ctx.store.resume(ctx.operator_id, ctx.path("number"), ctx.conn)
    return Reply(body=_subscriber_out(changed))


async def remove_subscriber(ctx: Context) -> Reply:
    await ctx.store.remove_subscriber(ctx.operator_id, ctx.path("number"), ctx.conn)
    return Reply(status=204)


async def subscriber_usage(ctx: Context) -> Reply:
    found = await ctx.store.get_subscriber(ctx.operator_id, ctx.path("number"), ctx.conn)
    policy = ctx.request.app[POLICY]
    subscription = await policy.subscription(found.number, ctx.conn)
    if subscription is None or subscription.operator_id != ctx.operator_id:
        raise SubscriberNotFound(f"no subscriber {found.number}")
    report = await policy.usage(subscription, conn=ctx.conn)
    return Reply(body=UsageOut.model_validate(report.as_dict()))


# -- events ---------------------------------------------------------------------------------


async def list_events(ctx: Context) -> Reply:
    request = ctx.request
    after = _query_int(request, "after", 0, 0, 2**62)
    limit = _query_int(request, "limit", 100, 1, MAX_EVENT_PAGE)
    types = tuple(request.query.getall("type", []))
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise _invalid_query(f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}")
    status = _query_choice(request, "status", EVENT_STATUSES)
    found = await outbox.list_events(
        ctx.conn, ctx.operator_id, after=after, limit=limit, types=types, status=status
    )
    return Reply(
        body=EventPageOut(
            events=[_event_out(e) for e in found],
            next_cursor=found[-1].seq if found else after,
            has_more=len(found) == limit,
        )
    )


async def get_event(ctx: Context) -> Reply:
    event = await ctx.store.get_event(ctx.operator_id, ctx.path("event_id"), ctx.conn)
    return Reply(body=_event_out(event))


async def redeliver_event(ctx: Context) -> Reply:
    event = await ctx.store.redeliver(ctx.operator_id, ctx.path("event_id"), ctx.conn)
    return Reply(202, _event_out(event))


# -- the routes -----------------------------------------------------------------------------

_AFTER_NUMBER = Query("after", {"type": "string"}, "the last number of the previous page")
_PAGE = Query(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_SUBSCRIBER_PAGE, "default": 100},
    "page size",
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", f"{PREFIX}/operator", get_operator, "Your settings", response=OperatorOut),
    Endpoint(
        "PATCH",
        f"{PREFIX}/operator",
        update_operator,
        "Change your name, webhook URL or SMS URL",
        body=OperatorUpdate,
        response=OperatorOut,
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/signing-secret",
        rotate_signing_secret,
        "New webhook signing secret (shown once); the old one becomes the previous one",
        response=SigningSecretOut,
    ),
    Endpoint(
        "DELETE",
        f"{PREFIX}/signing-secret/previous",
        retire_previous_signing_secret,
        "Stop signing with the previous secret",
        status=204,
        problems=(404,),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/keys",
        create_key,
        "New API key (shown once); at most two are active",
        response=NewKeyOut,
        status=201,
        problems=(409,),
    ),
    Endpoint("GET", f"{PREFIX}/keys", list_keys, "Your active API keys", response=KeyListOut),
    Endpoint(
        "DELETE",
        f"{PREFIX}/keys/{{key_id}}",
        revoke_key,
        "Revoke an API key at once (never the last active one)",
        status=204,
        problems=(404, 409),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/bundles",
        create_bundle,
        "New bundle",
        body=BundleCreate,
        response=BundleOut,
        status=201,
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/bundles",
        list_bundles,
        "Your bundles, retired ones too",
        response=BundleListOut,
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/bundles/{{bundle_id}}",
        get_bundle,
        "One bundle",
        response=BundleOut,
        problems=(404,),
    ),
    Endpoint(
        "PATCH",
        f"{PREFIX}/bundles/{{bundle_id}}",
        update_bundle,
        "Change a bundle's terms (its subscribers have them from their next call)",
        body=BundleUpdate,
        response=BundleOut,
        problems=(404, 409),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/bundles/{{bundle_id}}/retire",
        retire_bundle,
        "Retire a bundle: no new subscribers, no changes; its subscribers keep it",
        response=BundleOut,
        problems=(404,),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/subscribers",
        add_subscriber,
        "Provision a number on a bundle",
        body=SubscriberCreate,
        response=SubscriberOut,
        status=201,
        problems=(404, 409),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/subscribers",
        list_subscribers,
        "Your subscribers in number order, a page at a time",
        response=SubscriberPageOut,
        query=(
            _AFTER_NUMBER,
            _PAGE,
            Query("bundle_id", {"type": "string"}, "only this bundle's subscribers"),
            Query("status", {"enum": ["active", "suspended"]}, "only these"),
        ),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/subscribers/{{number}}",
        get_subscriber,
        "One subscriber",
        response=SubscriberOut,
        problems=(404,),
    ),
    Endpoint(
        "PATCH",
        f"{PREFIX}/subscribers/{{number}}",
        change_bundle,
        "Move a subscriber to another bundle",
        body=SubscriberUpdate,
        response=SubscriberOut,
        problems=(404, 409),
    ),
    Endpoint(
        "DELETE",
        f"{PREFIX}/subscribers/{{number}}",
        remove_subscriber,
        "Remove a subscriber",
        status=204,
        problems=(404,),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/subscribers/{{number}}/suspend",
        suspend_subscriber,
        "Suspend: no calls from the next call on",
        response=SubscriberOut,
        problems=(404,),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/subscribers/{{number}}/resume",
        resume_subscriber,
        "Resume a suspended subscriber",
        response=SubscriberOut,
        problems=(404,),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/subscribers/{{number}}/usage",
        subscriber_usage,
        "Usage in the current period",
        response=UsageOut,
        problems=(404,),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/events",
        list_events,
        "Your events after a cursor, oldest first (replay)",
        response=EventPageOut,
        query=(
            Query(
                "after",
                {"type": "integer", "minimum": 0, "default": 0},
                "the cursor: the next_cursor of the previous page",
            ),
            Query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_EVENT_PAGE, "default": 100},
                "page size",
            ),
            Query("type", {"enum": list(EVENT_TYPES)}, "only these types", repeated=True),
            Query("status", {"enum": list(EVENT_STATUSES)}, "only these"),
        ),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/events/{{event_id}}",
        get_event,
        "One event",
        response=EventOut,
        problems=(404,),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/events/{{event_id}}/redeliver",
        redeliver_event,
        "Deliver an event again (any that is not pending)",
        response=EventOut,
        status=202,
        problems=(404, 409),
    ),
)

ROUTES = [web.route(e.method, e.path, _serve(e)) for e in ENDPOINTS]

__all__ = ["ENDPOINTS", "PREFIX", "REPLAYED_HEADER", "ROUTES", "Endpoint", "Query"]
