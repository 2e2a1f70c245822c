"""The protocol as one JSON document, for clients that cannot import Python (the web app).

The server serves it (GET /v1/wire.json); the web app's modules read message
types, end reasons, details and error codes from it instead of spelling them.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from wire.call import Phase
from wire.messages import (
    CLIENT_MESSAGES,
    ERROR_CODES,
    PROTOCOL_VERSION,
    SERVER_MESSAGES,
    ErrorCode,
    Message,
    ServerMessage,
)
from wire.reasons import DEVICE_ERROR, END_REASONS, Detail


def constant_name(wire_name: str) -> str:
    """``call.quota_warning`` -> ``CALL_QUOTA_WARNING`` (``:`` becomes ``_`` too)."""
    return wire_name.upper().replace(".", "_").replace(":", "_")


def _fields(cls: type[Message] | type[ServerMessage]) -> dict[str, str]:
    hints = typing.get_type_hints(cls)
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if f.name in ("id", "ref"):
            continue
        hint = hints[f.name]
        options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
        optional = len(options) < len(typing.get_args(hint)) or (
            f.default is not dataclasses.MISSING
        )
        out[f.name.rstrip("_")] = options[0].__name__ + ("?" if optional else "")
    return out


def _messages(classes: tuple[type[Message], ...] | tuple[type[ServerMessage], ...]) -> Any:
    return {
        cls.type: {"name": constant_name(cls.type), "class": cls.__name__, "fields": _fields(cls)}
        for cls in classes
    }


def document() -> dict[str, Any]:
    """The protocol's names as plain JSON data."""
    codes = {value: key for key, value in vars(ErrorCode).items() if key.isupper()}
    return {
        "protocol": PROTOCOL_VERSION,
        "client_messages": _messages(CLIENT_MESSAGES),
        "server_messages": _messages(SERVER_MESSAGES),
        "reasons": {
            reason.value: {
                "name": reason.name,
                "description": spec.description,
                "details": [str(detail) for detail in spec.details],
                "bare": spec.bare,
                "patterns": dict(spec.patterns),
            }
            for reason, spec in END_REASONS.items()
        },
        "details": {
            detail.value: {
                "name": detail.name,
                "description": next(
                    spec.details[detail] for spec in END_REASONS.values() if detail in spec.details
                ),
            }
            for detail in Detail
        },
        "device_reasons": {
            DEVICE_ERROR: {
                "name": constant_name(DEVICE_ERROR),
                "description": "the server "
                "refused this device's request; the detail is the error code",
            },
        },
        "errors": {
            code: {"name": codes[code], "description": description}
            for code, description in ERROR_CODES.items()
        },
        "call_phases": [phase.value for phase in Phase],
    }


def document_json() -> str:
    return json.dumps(document(), indent=1, sort_keys=False) + "\n"
