"""REST endpoints: registration, devices, contact discovery, call history.

Bodies are JSON objects validated by pydantic models (unknown fields are
rejected, strings bounded); the body size itself is bounded by the app's
``client_max_size``. Errors are problem documents (signaling.api.problems).
Everything but registration and /healthz needs a device bearer token.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from signaling.api.auth import require_device
from signaling.api.problems import ProblemError, problem
from signaling.identity.service import Device
from signaling.keys import CDRS, DATABASE, IDENTITY
from signaling.store.cdrs import MAX_HISTORY_LIMIT

log = logging.getLogger("anruf.api")

Region = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]
RawNumber = Annotated[str, StringConstraints(min_length=1, max_length=64)]
#: Discovery ignores entries that are not numbers, but bounds their size.
ContactEntry = Annotated[str, StringConstraints(max_length=128)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class VerificationRequest(_Body):
    number: RawNumber
    region: Region | None = None


class DeviceRegistration(_Body):
    number: RawNumber
    code: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    name: Annotated[str, StringConstraints(max_length=64)] = ""
    region: Region | None = None


class ContactDiscovery(_Body):
    # The count (at most 1,000) is checked by the service, which answers
    # with its own problem code; the body size limit bounds it first.
    numbers: list[ContactEntry] = Field(default_factory=list)
    region: Region | None = None


M = TypeVar("M", bound=BaseModel)


async def read_body(request: web.Request, model: type[M]) -> M:
    """Parse and validate the JSON body; 400 problems for anything malformed."""
    raw = await request.read()  # 413 beyond client_max_size
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProblemError(
            400, "malformed_json", "Malformed JSON", "the request body is not valid JSON"
        ) from None
    if not isinstance(data, dict):
        raise ProblemError(
            400, "invalid_body", "Invalid request body", "the body must be a JSON object"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(part) for part in error["loc"]),
                "message": error["msg"],
                "type": error["type"],
            }
            for error in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors[:5])
        raise ProblemError(
            400, "invalid_body", "Invalid request body", summary, errors=errors[:20]
        ) from None


def _device_json(device: Device, current: Device) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "name": device.name,
        "created_at": device.created_at,
        "last_seen_at": device.last_seen_at,
        "current": device.device_id == current.device_id,
    }


async def request_code(request: web.Request) -> web.Response:
    """POST /v1/verification: send a verification code to a number."""
    body = await read_body(request, VerificationRequest)
    number, expires_in = await request.app[IDENTITY].request_code(body.number, body.region)
    return web.json_response({"number": number, "expires_in": expires_in}, status=202)


async def register_device(request: web.Request) -> web.Response:
    """POST /v1/devices: verify the code and register a device; the token is shown once."""
    body = await read_body(request, DeviceRegistration)
    device, token = await request.app[IDENTITY].verify(
        body.number, body.code, body.name, body.region
    )
    return web.json_response(
        {"device_id": device.device_id, "token": token, "number": device.number},
        status=201,
        headers={"Cache-Control": "no-store"},  # the response carries a credential
    )


async def list_devices(request: web.Request) -> web.Response:
    """GET /v1/devices: the caller's number's active devices."""
    current = await require_device(request)
    found = await request.app[IDENTITY].list_devices(current.number)
    return web.json_response({"devices": [_device_json(d, current) for d in found]})


async def revoke_device(request: web.Request) -> web.Response:
    """DELETE /v1/devices/{device_id}: revoke one of the number's devices (or this one)."""
    current = await require_device(request)
    device_id = request.match_info["device_id"]
    await request.app[IDENTITY].revoke(current.number, device_id)
    return web.Response(status=204)


async def discover_contacts(request: web.Request) -> web.Response:
    """POST /v1/contacts/discover: which of these numbers use Anruf."""
    await require_device(request)
    body = await read_body(request, ContactDiscovery)
    registered = await request.app[IDENTITY].discover(body.numbers, body.region)
    return web.json_response({"registered": registered})


def _query_number(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ProblemError(
            400, "invalid_query", "Invalid query parameter", f"{name} must be a number"
        )
    return value


async def call_history(request: web.Request) -> web.Response:
    """GET /v1/calls?limit=&before=: the number's calls, newest first, incl. missed."""
    current = await require_device(request)
    limit_value = _query_number(request, "limit")
    if limit_value is None:
        limit = 50
    elif limit_value.is_integer() and 1 <= limit_value <= MAX_HISTORY_LIMIT:
        limit = int(limit_value)
    else:
        raise ProblemError(
            400,
            "invalid_query",
            "Invalid query parameter",
            f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}",
        )
    before = _query_number(request, "before")
    history = await request.app[CDRS].history(current.number, limit=limit, before=before)
    return web.json_response({"calls": history})


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: 200 while the database answers."""
    try:
        await request.app[DATABASE].ping()
    except Exception:
        log.exception("health check: database unavailable")
        return problem(503, "Service Unavailable", "the database is not reachable")
    return web.json_response({"status": "ok"})


__all__ = [
    "call_history",
    "discover_contacts",
    "healthz",
    "list_devices",
    "read_body",
    "register_device",
    "request_code",
    "revoke_device",
]
