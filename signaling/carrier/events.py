"""The event outbox: what operators are told, written with the change it reports.

`append` runs inside the caller's write transaction, so an event exists if
and only if the state change that caused it was committed (a CDR and its
call.ended, a registration and its subscriber.verified). Delivery
(signaling.carrier.delivery) sends each row at least once, in `sequence`
order per ordering key, with the same id and the same body bytes every time.

The body is the envelope an operator receives and can also list (replay):

    {"id": "evt_…", "type": "call.ended", "created": 1795000000.123,
     "operator_id": "op_…", "ordering_key": "<call id>", "sequence": 4,
     "data": {…}}
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from signaling.store import outbox
from signaling.store.database import Connection

__all__ = [
    "EVENT_TYPES",
    "StoredEvent",
    "append",
    "list_events",
]

#: Every event type an operator can receive.
EVENT_TYPES: tuple[str, ...] = (
    "subscriber.verified",
    "call.started",
    "call.ringing",
    "call.answered",
    "call.quota_warning",
    "call.ended",
    "usage.threshold",
    "fraud.alert",
    "sms.send",
)


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event_id: str
    operator_id: str
    type: str
    ordering_key: str
    sequence: int
    created_at: float
    body: str
    status: str
    attempts: int
    delivered_at: float | None
    last_error: str

    def envelope(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @classmethod
    def from_row(cls, row: Any) -> StoredEvent:
        m = row._mapping
        return cls(
            seq=m["seq"],
            event_id=m["event_id"],
            operator_id=m["operator_id"],
            type=m["type"],
            ordering_key=m["ordering_key"],
            sequence=m["sequence"],
            created_at=m["created_at"],
            body=m["body"],
            status=m["status"],
            attempts=m["attempts"],
            delivered_at=m["delivered_at"],
            last_error=m["last_error"],
        )


async def append(
    conn: Connection,
    *,
    operator_id: str,
    type: str,
    data: dict[str, Any],
    ordering_key: str,
    now: float,
    sequence: int | None = None,
) -> str:
    """Add an event to the outbox in ``conn``'s transaction; returns its id.

    Without ``sequence`` the event goes after the key's last one.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    if sequence is None:
        sequence = await outbox.last_sequence(conn, operator_id, ordering_key) + 1
    event_id = "evt_" + uuid.uuid4().hex
    body = json.dumps(
        {
            "id": event_id,
            "type": type,
            "created": round(now, 3),
            "operator_id": operator_id,
            "ordering_key": ordering_key,
            "sequence": sequence,
            "data": data,
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    await outbox.insert(
        conn,
        event_id=event_id,
        operator_id=operator_id,
        type=type,
        ordering_key=ordering_key,
        sequence=sequence,
        now=now,
        body=body,
    )
    return event_id


async def list_events(
    conn: Connection,
    operator_id: str,
    *,
    after: int = 0,
    limit: int = 100,
    types: tuple[str, ...] = (),
    status: str | None = None,
) -> list[StoredEvent]:
    """One operator's events after the cursor ``after`` (a seq), oldest first."""
    rows = await outbox.select(
        conn, operator_id, after=after, limit=limit, types=types, status=status
    )
    return [StoredEvent.from_row(row) for row in rows]
