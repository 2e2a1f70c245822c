"""Bearer-token authentication of devices (RFC 6750 section 2.1).

The token travels only in the ``Authorization`` header, never in a URL,
where proxies and logs would keep it.
"""

from __future__ import annotations

from aiohttp import web

from signaling.api.problems import ProblemError
from signaling.identity.service import Device
from signaling.keys import IDENTITY

#: Where require_device leaves the device for later middleware and handlers.
DEVICE_KEY: web.RequestKey[Device] = web.RequestKey("device", Device)


def _unauthorized(detail: str, error: str = "invalid_token") -> ProblemError:
    challenge = 'Bearer realm="anruf"'
    if error:
        challenge += f', error="{error}"'
    return ProblemError(
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": challenge},
    )


def bearer_token(request: web.Request) -> str | None:
    """The token from ``Authorization: Bearer <token>``, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


async def require_device(request: web.Request) -> Device:
    """The authenticated device; raises a 401 problem otherwise."""
    token = bearer_token(request)
    if token is None:
        # RFC 6750 section 3.1: no error code when credentials are absent.
        raise _unauthorized("send the device token as 'Authorization: Bearer <token>'", "")
    device = await request.app[IDENTITY].authenticate(token)
    if device is None:
        raise _unauthorized("the device token is unknown or has been revoked")
    request[DEVICE_KEY] = device
    return device


__all__ = ["DEVICE_KEY", "bearer_token", "require_device"]
