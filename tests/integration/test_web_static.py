"""The web app's page and modules as the server serves them (no browser)."""

from __future__ import annotations

import json
import re

import aiohttp

from signaling.web import STATIC_DIR
from tests.conftest import Server
from wire.document import document


async def _get(url: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, dict(response.headers), await response.text()


def _module_imports(source: str) -> list[str]:
    return re.findall(r"""^import\s[^;]*?from\s+["'](\./[\w-]+\.js)["']""", source, re.M)


async def test_index_page(server: Server) -> None:
    status, headers, html = await _get(server.url + "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="/app/main.js"></script>' in html
    assert 'href="/app/style.css"' in html


async def test_content_security_policy(server: Server) -> None:
    _, headers, _ = await _get(server.url + "/")
    policy = {
        name: value
        for name, _, value in (
            part.partition(" ") for part in headers["Content-Security-Policy"].split("; ")
        )
    }
    host = server.url.removeprefix("http://")
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == f"'self' ws://{host} wss://{host}"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert "unsafe-eval" not in headers["Content-Security-Policy"]


async def test_a_forged_host_is_not_echoed_into_the_policy(server: Server) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.url + "/", headers={"Host": "evil; script-src *"}) as response,
    ):
        policy = response.headers["Content-Security-Policy"]
    assert "connect-src 'self';" in policy
    assert "evil" not in policy


async def test_no_inline_scripts_styles_or_handlers() -> None:
    for path in STATIC_DIR.glob("*.html"):
        html = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag, f"inline script in {path.name}"
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), f"inline script in {path.name}"
        assert not re.search(r"\son[a-z]+\s*=", html), f"inline handler in {path.name}"
        assert " style=" not in html and "<style" not in html
        assert "http://" not in html.replace("http://www.w3.org", "")
        assert "https://" not in html


async def test_every_module_and_its_imports_load(server: Server) -> None:
    seen: set[str] = set()
    queue = ["./main.js"]
    while queue:
        name = queue.pop().removeprefix("./")
        if name in seen:
            continue
        seen.add(name)
        status, headers, source = await _get(f"{server.url}/app/{name}")
        assert status == 200, name
        assert headers["Content-Type"] == "text/javascript; charset=utf-8", name
        assert "Content-Security-Policy" in headers
        assert "https://" not in source and "http://" not in source, name
        queue.extend(_module_imports(source))
    on_disk = {path.name for path in STATIC_DIR.glob("*.js")}
    assert seen == on_disk, "every module is imported and every import exists"


async def test_the_wire_document_is_served_as_the_registry_defines_it(server: Server) -> None:
    """The web app's wire.js imports it: the protocol's names come from one place."""
    status, headers, text = await _get(server.url + "/v1/wire.json")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" in headers
    assert json.loads(text) == document()


async def test_stylesheet_and_icon(server: Server) -> None:
    status, headers, css = await _get(server.url + "/app/style.css")
    assert status == 200 and headers["Content-Type"] == "text/css; charset=utf-8"
    assert "@media" in css
    status, headers, _ = await _get(server.url + "/app/icon.svg")
    assert status == 200 and headers["Content-Type"] == "image/svg+xml"


async def test_unknown_and_traversing_paths_are_not_found(server: Server) -> None:
    for path in ("/app/nope.js", "/app/..%2F__init__.py", "/app/__init__.py", "/app/"):
        status, _, _ = await _get(server.url + path)
        assert status == 404, path


async def test_dom_contract_ids_present() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    js = "".join(path.read_text() for path in STATIC_DIR.glob("*.js"))
    static = [
        "number", "request-code", "code", "verify", "signin-error",
        "my-number", "connection-status", "dial-number", "call-button", "sign-out",
        "devices", "contact-number", "add-contact", "contacts", "history",
        "call-panel", "call-state", "call-peer", "call-timer", "call-end-reason",
        "hangup", "mute", "microphone", "level-meter", "quality", "quota-warning",
        "incoming", "incoming-from", "accept", "decline",
        *(f"dtmf-{key}" for key in [*"0123456789", "star", "hash"]),
    ]  # fmt: skip
    for testid in static:
        assert f'data-testid="{testid}"' in html, testid
    for testid in ("device-item", "sign-out-device", "contact-item", "history-item"):
        assert f'"data-testid": "{testid}"' in js, testid
    assert "window.anrufDebug" in js
    assert "iceServers: []" in js
