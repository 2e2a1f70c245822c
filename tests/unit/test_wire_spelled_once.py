"""Message names and end details are written once, in wire/: the server, the media
plane and bench/ build messages from the wire package's classes and end calls with
the registry's constants (wire/reasons.py), never with a string of their own.

Read statically (ast, nothing imported but wire): outside wire/, a string constant
equal to a device message's type is an error unless it is a docstring or one of the
names another protocol happens to share (listed below, with the protocol); one equal
to an end detail or a relay's media failure is an error unless it is a docstring.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wire
from wire.reasons import Detail, MediaFailure

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("signaling", "voice", "bench")

MESSAGE_TYPES = frozenset(cls.type for cls in (*wire.CLIENT_MESSAGES, *wire.SERVER_MESSAGES))
DETAILS: frozenset[str] = frozenset({*Detail, *MediaFailure})

_OPERATOR_EVENTS = frozenset({"call.ringing", "call.quota_warning", "call.ended"})

#: module -> names it uses for something other than a device message.
OTHER_PROTOCOLS: dict[str, frozenset[str]] = {
    # The operator's webhook events (signaling/carrier/events.py): some share a name.
    "signaling.calls.quota": _OPERATOR_EVENTS,
    "signaling.carrier.events": _OPERATOR_EVENTS,
    "signaling.carrier.policy": _OPERATOR_EVENTS,
    "bench.call_events": _OPERATOR_EVENTS,
    "bench.webhooks": _OPERATOR_EVENTS,
    # SIP digest's quality of protection (RFC 7616 section 3.3).
    "signaling.sip.digest": frozenset({"auth"}),
    # The relay control channel's own operations and reply fields.
    "voice.relay.control": frozenset({"ping", "error"}),
    "voice.relay.control_auth": frozenset({"auth"}),
    # Fields of a load test's or a benchmark's results; a benchmark's worker commands.
    "voice.loadtest.line": frozenset({"error"}),
    "voice.loadtest.report": frozenset({"error"}),
    "voice.loadtest.runner": frozenset({"error"}),
    "bench.cluster_calls": frozenset({"error"}),
    "bench.idle_devices": frozenset({"ping", "pong"}),
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (of a module, class or function,
    and the attribute docstrings that follow an assignment)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found.add(id(node.value))
    return found


def constants_in(path: Path, values: frozenset[str]) -> list[tuple[int, str]]:
    """(line, value) of each string constant in the file, docstrings aside, in ``values``."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstrings(tree)
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in values
        and id(node) not in docstrings
    )


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> list[Path]:
    return [path for package in SCANNED for path in sorted((ROOT / package).rglob("*.py"))]


def test_no_message_type_is_written_by_hand_outside_wire() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name!r}"
        for path in _sources()
        for line, name in constants_in(path, MESSAGE_TYPES)
        if name not in OTHER_PROTOCOLS.get(_module(path), frozenset())
    ]
    assert found == []


def test_no_detail_is_written_by_hand_outside_wire() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {detail!r}"
        for path in _sources()
        for line, detail in constants_in(path, DETAILS)
    ]
    assert found == []


def test_the_scan_finds_what_is_written_by_hand(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        '"""Sends call.ended."""\n'
        "import wire\n"
        "def f():\n"
        '    """call.ended"""\n'
        '    return wire.encode("call.ended", call_id="c1")\n'
        'KIND = "call.accepted"\n'
        '"""call.accepted: an attribute docstring."""\n'
    )
    assert constants_in(source, MESSAGE_TYPES) == [(5, "call.ended"), (6, "call.accepted")]
    source.write_text('"""ice_failed"""\nfailure = "ice_failed"\n')
    assert constants_in(source, DETAILS) == [(2, "ice_failed")]


def test_the_operators_names_are_operator_event_types() -> None:
    from signaling.carrier.events import EVENT_TYPES

    assert set(EVENT_TYPES) >= _OPERATOR_EVENTS
