"""The web app spells no protocol name by hand: it reads them from the wire document.

static/wire.js imports /v1/wire.json (wire/document.py) and exposes its names as
SEND.X, RECEIVE.X, REASON.X, DETAIL.X and ERROR.X; these tests parse the modules
and fail when they name something the registry lacks, or write a protocol string
themselves.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import wire
from signaling.web import STATIC_DIR
from wire.document import document, document_json

TABLES = {
    "SEND": ("client_messages",),
    "RECEIVE": ("server_messages",),
    "REASON": ("reasons", "device_reasons"),
    "DETAIL": ("details",),
    "ERROR": ("errors",),
}

#: String literals that equal a protocol name but mean something else.
NOT_PROTOCOL = {
    ("call.js", "failed"): "RTCPeerConnection.iceConnectionState",
    ("signaling.js", "error"): "the WebSocket's error event",
    ("reasons.js", "invalid_number"): "a REST problem code (sign-in)",
    ("reasons.js", "rate_limited"): "a REST problem code (sign-in)",
    ("reasons.js", "overloaded"): "a REST problem code (sign-in)",
}

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r""""((?:[^"\\\n]|\\.)*)"|'((?:[^'\\\n]|\\.)*)'""")
_REFERENCE = re.compile(r"\b(SEND|RECEIVE|REASON|DETAIL|ERROR)\.([A-Z][A-Z0-9_]*)\b")


def _modules() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(STATIC_DIR.glob("*.js"))}


def _names(doc: dict[str, Any], table: str) -> dict[str, str]:
    """NAME -> wire value of one constant table of wire.js."""
    return {entry["name"]: value for part in TABLES[table] for value, entry in doc[part].items()}


def _without_comments(source: str) -> str:
    # Strings first, so that "//" inside one is no comment.
    kept: list[str] = []
    position = 0
    for match in re.finditer(rf"{_STRING.pattern}|{_COMMENT.pattern}", source, re.S):
        kept.append(source[position : match.start()])
        if not match.group(0).startswith("/"):
            kept.append(match.group(0))
        position = match.end()
    kept.append(source[position:])
    return "".join(kept)


def test_the_document_is_json_and_names_are_unique() -> None:
    doc = json.loads(document_json())
    assert doc == document()
    assert doc["protocol"] == wire.PROTOCOL_VERSION
    for table in TABLES:
        names = [entry["name"] for part in TABLES[table] for entry in doc[part].values()]
        assert len(names) == len(set(names)), table
    assert set(doc["client_messages"]) == {cls.type for cls in wire.CLIENT_MESSAGES}
    assert set(doc["server_messages"]) == {cls.type for cls in wire.SERVER_MESSAGES}
    assert set(doc["reasons"]) == set(wire.EndReason)
    assert set(doc["details"]) == set(wire.Detail)
    assert doc["reasons"]["failed"]["patterns"] == {
        wire.TRUNK_STATUS_PATTERN: "another final response from the network"
    }


def test_every_name_the_web_app_uses_is_in_the_registry() -> None:
    doc = document()
    used = 0
    for module, source in _modules().items():
        for table, name in _REFERENCE.findall(_without_comments(source)):
            assert name in _names(doc, table), f"{module}: {table}.{name} is not in the protocol"
            used += 1
    assert used >= 60  # the modules do use the document


def test_the_web_app_writes_no_protocol_string_by_hand() -> None:
    doc = document()
    protocol = {value for table in TABLES for value in _names(doc, table).values()}
    found: set[tuple[str, str]] = set()
    for module, source in _modules().items():
        for match in _STRING.finditer(_without_comments(source)):
            literal = match.group(1) if match.group(1) is not None else match.group(2)
            if literal in protocol:
                found.add((module, literal))
    assert found == set(NOT_PROTOCOL), "use wire.js's SEND/RECEIVE/REASON/DETAIL/ERROR"


def test_the_web_app_has_words_for_every_reason_and_detail() -> None:
    source = _without_comments((STATIC_DIR / "reasons.js").read_text())
    doc = document()
    for table in ("REASON", "DETAIL"):
        keys = set(re.findall(rf"\[{table}\.([A-Z0-9_]+)\]:", source))
        assert keys == set(_names(doc, table)), table


def test_docs_protocol_names_everything_in_the_registry() -> None:
    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    doc = document()
    for part in ("client_messages", "server_messages", "reasons", "details", "errors"):
        missing = [name for name in doc[part] if f"`{name}`" not in text]
        assert not missing, f"docs/protocol.md lacks {part}: {missing}"


def test_wire_js_imports_the_served_document() -> None:
    source = (STATIC_DIR / "wire.js").read_text()
    assert 'import WIRE from "/v1/wire.json" with { type: "json" };' in source


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_web_apps_reason_words_run_against_the_document(tmp_path: Path) -> None:
    """reasons.js and wire.js run in Node with the document as the server makes it."""
    for name, source in _modules().items():
        (tmp_path / name).write_text(source.replace('"/v1/wire.json"', '"./wire.json"'))
    (tmp_path / "wire.json").write_text(document_json())
    (tmp_path / "check.mjs").write_text(
        """
import { endReasonText } from "./reasons.js";
import { DETAIL, SEND } from "./wire.js";
const out = {
  invite: SEND.CALL_INVITE,
  trunk: endReasonText("failed", "trunk_503"),
  timeout: endReasonText("failed", DETAIL.MEDIA_TIMEOUT),
  error: endReasonText("error", "self_call"),
};
try { SEND.CALL_TELEPORT; } catch (error) { out.unknown = error.message; }
console.log(JSON.stringify(out));
"""
    )
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run(
        [node, "check.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    if "import attributes" in result.stderr or "Unexpected identifier 'with'" in result.stderr:
        pytest.skip(f"this Node cannot import JSON modules: {result.stderr[:200]}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "invite": "call.invite",
        "trunk": "The phone network refused the call (503)",
        "timeout": "The audio stopped",
        "error": "You can't call yourself",
        "unknown": "not in the protocol: CALL_TELEPORT",
    }
