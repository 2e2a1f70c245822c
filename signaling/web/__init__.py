"""The web app: the page at ``/`` and its static files under ``/app/``.

Plain ES modules, a stylesheet and an icon, served from ``static/`` with a strict
Content-Security-Policy (scripts, styles and connections only to this origin; no
inline scripts). Only files that exist in ``static/`` at start-up are served.

The protocol's names (message types, end reasons, details, error codes) come from
the wire package as a JSON document at ``/v1/wire.json``; ``static/wire.js``
imports it, so the web app spells none of them by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from wire.document import document_json

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
}

#: A Host header we are willing to echo into the policy (host name or [v6] and a port).
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def _static_files() -> dict[str, Path]:
    return {
        path.name: path
        for path in sorted(STATIC_DIR.iterdir())
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


_FILES = _static_files()


def content_security_policy(host: str) -> str:
    """Everything from this origin only; WebSocket connections to the same host."""
    connect = "'self'"
    if _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "media-src 'self'",
            f"connect-src {connect}",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


#: The protocol document, made once from the wire package.
WIRE_JSON = document_json().encode()


def _respond(request: web.Request, path: Path) -> web.Response:
    return _response(request, path.read_bytes(), CONTENT_TYPES[path.suffix])


def _response(request: web.Request, body: bytes, content_type: str) -> web.Response:
    return web.Response(
        body=body,
        headers={
            "Content-Type": content_type,
            "Content-Security-Policy": content_security_policy(request.host),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
            "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
        },
    )


async def index(request: web.Request) -> web.Response:
    return _respond(request, _FILES["index.html"])


async def static_file(request: web.Request) -> web.Response:
    path = _FILES.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound()
    return _respond(request, path)


async def wire_document(request: web.Request) -> web.Response:
    """The protocol's names as JSON (wire.document), for the web app's wire.js."""
    return _response(request, WIRE_JSON, CONTENT_TYPES[".json"])


ROUTES = [
    web.get("/", index),
    web.get("/app/{name}", static_file),
    web.get("/v1/wire.json", wire_document),
]
