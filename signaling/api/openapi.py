"""The OpenAPI 3.1 document of the HTTP API, served at GET /openapi.json.

The operator API is described in full from its endpoint table
(signaling.api.operator.ENDPOINTS): request and response schemas are the
pydantic models' JSON Schema (2020-12, the dialect OpenAPI 3.1 uses). The
device API gets a brief description of each route.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from signaling.api import rest
from signaling.api.operator import ENDPOINTS, REPLAYED_HEADER, Endpoint
from signaling.api.problems import PROBLEM_CONTENT_TYPE

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"

_PROBLEMS = {
    400: ("BadRequest", "Malformed JSON, unknown fields, wrong types, values out of bounds"),
    401: ("Unauthorized", "No API key, or one that is unknown or revoked"),
    404: ("NotFound", "No such thing among yours (another operator's looks the same)"),
    409: ("Conflict", "The change conflicts with the current state"),
    422: ("IdempotencyKeyReused", "The Idempotency-Key was used for another request"),
}

_PATH_PARAMETERS = {
    "number": "the subscriber's number in E.164, e.g. +4917700000001",
    "bundle_id": "a bundle id",
    "key_id": "an API key id",
    "event_id": "an event id",
    "device_id": "a device id",
}


@dataclass(frozen=True)
class _DeviceRoute:
    method: str
    path: str
    summary: str
    status: int = 200
    body: type[BaseModel] | None = None
    auth: bool = True
    problems: tuple[int, ...] = ()


#: The routes of signaling.app besides the operator API, in brief.
DEVICE_ROUTES: tuple[_DeviceRoute, ...] = (
    _DeviceRoute(
        "POST",
        "/v1/verification",
        "Send a verification code to a number",
        202,
        rest.VerificationRequest,
        auth=False,
        problems=(400, 429),
    ),
    _DeviceRoute(
        "POST",
        "/v1/devices",
        "Verify the code and register a device (its token is shown once)",
        201,
        rest.DeviceRegistration,
        auth=False,
        problems=(400, 429),
    ),
    _DeviceRoute("GET", "/v1/devices", "The number's active devices"),
    _DeviceRoute("DELETE", "/v1/devices/{device_id}", "Revoke a device", 204, problems=(404,)),
    _DeviceRoute(
        "POST",
        "/v1/contacts/discover",
        "Which of these numbers use Anruf",
        body=rest.ContactDiscovery,
        problems=(400,),
    ),
    _DeviceRoute("GET", "/v1/calls", "Call history, newest first", problems=(400,)),
    _DeviceRoute("GET", "/v1/ws", "The device's WebSocket (see docs/protocol.md)", 101),
    _DeviceRoute("GET", "/healthz", "200 while the database answers", auth=False),
    _DeviceRoute("GET", "/metrics", "Prometheus metrics", auth=False),
    _DeviceRoute("GET", "/openapi.json", "This document", auth=False),
)


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "examples": ["urn:anruf:problem:bundle_not_found"]},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string", "description": "machine-readable; the end of type"},
            "errors": {
                "type": "array",
                "description": "per field, for invalid bodies",
                "items": {
                    "type": "object",
                    "properties": {
                        "field": {"type": "string"},
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            },
        },
        "additionalProperties": True,
    }


def _problem_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (name, description) in _PROBLEMS.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}},
        }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": 'Bearer realm="anruf-operator" (or "anruf" for devices)',
                    "schema": {"type": "string"},
                }
            }
        responses[name] = response
    return responses


def _problem_refs(statuses: tuple[int, ...]) -> dict[str, Any]:
    refs: dict[str, Any] = {}
    for status in sorted(set(statuses)):
        if status in _PROBLEMS:
            refs[str(status)] = {"$ref": f"#/components/responses/{_PROBLEMS[status][0]}"}
        else:
            refs[str(status)] = {
                "description": "see the problem document",
                "content": {
                    PROBLEM_CONTENT_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}
                },
            }
    return refs


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": _PATH_PARAMETERS.get(name, name),
            "schema": {"type": "string"},
        }
        for name in re.findall(r"{(\w+)}", path)
    ]


Refs = Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]]


def _operator_operation(endpoint: Endpoint, refs: Refs) -> dict[str, Any]:
    parameters = _path_parameters(endpoint.path)
    for query in endpoint.query:
        schema = {"type": "array", "items": query.schema} if query.repeated else query.schema
        parameter: dict[str, Any] = {
            "name": query.name,
            "in": "query",
            "required": False,
            "description": query.description,
            "schema": schema,
        }
        if query.repeated:
            parameter.update(style="form", explode=True)
        parameters.append(parameter)
    problems: tuple[int, ...] = (401, *endpoint.problems)
    if endpoint.query or endpoint.body is not None:
        problems += (400,)
    success: dict[str, Any] = {"description": endpoint.summary}
    if endpoint.response is not None:
        success["content"] = {
            "application/json": {"schema": refs[(endpoint.response, "serialization")]}
        }
    if endpoint.changes:
        problems += (400, 409, 422)
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "up to 255 characters; a retry with the same key and request "
                "gets the first response again (kept 24 h)",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
        success["headers"] = {
            REPLAYED_HEADER: {
                "description": "true when this is the stored response of an earlier request",
                "schema": {"type": "string", "enum": ["true"]},
            }
        }
    operation: dict[str, Any] = {
        "operationId": endpoint.handler.__name__,
        "summary": endpoint.summary,
        "tags": ["operator"],
        "security": [{"operatorKey": []}],
        "responses": {str(endpoint.status): success, **_problem_refs(problems)},
    }
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(endpoint.body, "validation")]}},
        }
    return operation


def _device_operation(route: _DeviceRoute, refs: Refs) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "tags": ["device"],
        "security": [{"deviceToken": []}] if route.auth else [],
        "responses": {
            str(route.status): {"description": route.summary},
            **_problem_refs((401, *route.problems) if route.auth else route.problems),
        },
    }
    parameters = _path_parameters(route.path)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    return operation


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for endpoint in ENDPOINTS:
        if endpoint.body is not None:
            wanted.append((endpoint.body, "validation"))
        if endpoint.response is not None:
            wanted.append((endpoint.response, "serialization"))
    wanted += [(route.body, "validation") for route in DEVICE_ROUTES if route.body is not None]
    refs, definitions = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF)
    schemas = {**definitions.get("$defs", {}), "Problem": _problem_schema()}

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operator_operation(
            endpoint, refs
        )
    for route in DEVICE_ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _device_operation(route, refs)

    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Anruf API",
            "version": "1",
            "description": "The operator API (/operator/v1, see docs/operator-api.md) "
            "and, briefly, the device API.",
        },
        "tags": [
            {"name": "operator", "description": "Provisioning by mobile operators"},
            {"name": "device", "description": "The app's API (see docs/protocol.md)"},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": _problem_responses(),
            "securitySchemes": {
                "operatorKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an operator API key: Authorization: Bearer ak_...",
                },
                "deviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a device token from POST /v1/devices",
                },
            },
        },
    }


@functools.cache
def _document_text() -> str:
    return json.dumps(document(), ensure_ascii=False)


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 document."""
    return web.Response(text=_document_text(), content_type="application/json")


__all__ = ["DEVICE_ROUTES", "OPENAPI_VERSION", "document", "openapi_json"]
