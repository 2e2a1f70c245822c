"""HTTP problem details (RFC 9457) for every error the REST API returns.

Each error body is ``application/problem+json`` with ``type``, ``title``,
``status`` and ``detail``; Anruf's own problems also carry a ``code`` and use
``type`` = ``urn:anruf:problem:<code>``. Plain HTTP errors (404, 405, 413)
use ``about:blank`` with the status phrase as title (RFC 9457 section 4.2.1).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from signaling.identity.service import IdentityError
from signaling.store.database import database_unreachable

log = logging.getLogger("anruf.api")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:anruf:problem:"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Headers of an aiohttp HTTPException that describe its own body, not ours.
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


class ProblemError(Exception):
    """Raise from a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> web.Response:
        return problem(
            self.status,
            self.title,
            self.detail,
            type_=PROBLEM_TYPE_PREFIX + self.code,
            headers=self.headers,
            code=self.code,
            **self.extra,
        )


def problem(
    status: int,
    title: str,
    detail: str = "",
    *,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A complete problem response; ``extra`` become further members."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    for key, value in extra.items():
        body.setdefault(key, value)
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=dict(headers or {}),
    )


def retry_after_header(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds, rounded up (RFC 9110 section 10.2.3)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def identity_problem(error: IdentityError) -> web.Response:
    headers = {} if error.retry_after is None else retry_after_header(error.retry_after)
    extra = dict(error.extra)
    if error.retry_after is not None:
        extra["retry_after"] = max(1, math.ceil(error.retry_after))
    return problem(
        error.status,
        error.title,
        error.detail,
        type_=PROBLEM_TYPE_PREFIX + error.code,
        headers=headers,
        code=error.code,
        **extra,
    )


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


#: Retry-After (seconds) while the database is unreachable.
DATABASE_RETRY_AFTER = 1


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a problem document; never leak internals."""
    try:
        return await handler(request)
    except ProblemError as exc:
        return exc.response()
    except IdentityError as exc:
        return identity_problem(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are not problems
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        detail = "" if exc.text in (None, f"{exc.status}: {exc.reason}") else exc.text or ""
        return problem(exc.status, _status_phrase(exc.status), detail, headers=headers)
    except Exception as exc:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            # The socket may already be upgraded; a JSON body cannot follow.
            raise
        if database_unreachable(exc):
            log.warning("%s %s: the database is unreachable: %s", request.method, request.path, exc)
            return ProblemError(
                503,
                "database_unavailable",
                "Service Unavailable",
                "the server cannot reach its database; try again shortly",
                headers=retry_after_header(DATABASE_RETRY_AFTER),
                retry_after=DATABASE_RETRY_AFTER,
            ).response()
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "the server could not complete the request")


__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPE_PREFIX",
    "ProblemError",
    "identity_problem",
    "problem",
    "problem_middleware",
    "retry_after_header",
]
