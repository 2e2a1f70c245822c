"""GET /readyz: may a load balancer send new connections and calls here?"""

from __future__ import annotations

from aiohttp import web

from signaling.api.problems import problem
from signaling.keys import CALLS


async def readyz(request: web.Request) -> web.Response:
    """200 while this node takes calls; 503 once it drains (SIGTERM), so the load
    balancer stops sending it devices while its calls in progress go on."""
    calls = request.app.get(CALLS)
    if calls is None or calls.draining:
        return problem(
            503,
            "Service Unavailable",
            "this server is restarting",
            headers={"Retry-After": "1"},
        )
    return web.json_response({"status": "ready", "calls": calls.active_calls})


__all__ = ["readyz"]
