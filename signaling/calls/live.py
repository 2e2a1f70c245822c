"""Calls in progress on record: what a surviving node needs to end a dead node's calls.

A call that rings gets a live row (signaling/store/live_calls.py); the row is
updated when it is answered and deleted in the transaction that stores the call
record, with the operators' events (``LiveCallBook.save``): a call has a live
row or a record, never neither. When a node dies, another ends its calls on
record as failed/node_lost (``end_orphans``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from signaling.calls.machine import Call, EndReason
from signaling.calls.parties import Party
from signaling.calls.quota import Policy
from signaling.calls.records import CallFacts, CallRecord, facts_of
from wire.reasons import Detail

if TYPE_CHECKING:
    from signaling.carrier.policy import Admission

__all__ = ["NODE_LOST", "LiveCall", "LiveCallBook", "LiveStore", "RecordSink"]

logger = logging.getLogger("anruf.calls")

#: End detail of calls whose node died.
NODE_LOST = Detail.NODE_LOST


@dataclass(frozen=True)
class LiveCall(CallFacts):
    """A call in progress as the live_calls table keeps it."""

    node_id: str
    devices: tuple[str, ...]
    #: The operator policy's admission, enough to rate the call and tell the operators.
    rating: dict[str, Any]

    @classmethod
    def of(
        cls, call: Call, node_id: str, parties: tuple[Party, ...], rating: dict[str, Any]
    ) -> LiveCall:
        """The row of ``call`` held by ``node_id``, with the parties that have legs."""
        return cls(
            **facts_of(call),
            node_id=node_id,
            devices=tuple(sorted(party.device_id for party in parties)),
            rating=rating,
        )

    def record(self, ended_at: float, reason: str, detail: str) -> CallRecord:
        """The call's record, ended at ``ended_at`` by someone other than its node."""
        return CallRecord(
            **self.facts(),
            ended_at=max(ended_at, self.answered_at or self.invited_at),
            end_reason=reason,
            end_detail=detail,
            media={},
        )


class LiveStore(Protocol):
    """The live_calls rows (signaling.store.live_calls.LiveCalls)."""

    async def ringing(self, call: LiveCall) -> None: ...
    async def answered(self, call_id: str, device_id: str, answered_at: float) -> None: ...
    async def remove(self, conn: Any, call_id: str) -> None:
        """In the transaction that stores the call's record."""
        ...

    async def of_node(self, node_id: str) -> list[LiveCall]: ...


class RecordSink(Protocol):
    """Where call records go (signaling.store.cdrs.CallRecordStore)."""

    async def save(
        self, record: CallRecord, also: Callable[[Any], Awaitable[None]] | None = None
    ) -> None: ...


class LiveCallBook:
    def __init__(self, records: RecordSink, store: LiveStore | None, policy: Policy | None) -> None:
        self._records = records
        self._store = store
        self._policy = policy

    async def ringing(self, call: LiveCall) -> bool:
        """The call rings: from now on a crash of this node still ends it on record.
        True when the row was written."""
        if self._store is None:
            return False
        try:
            await self._store.ringing(call)
        except Exception:
            logger.exception("call %s: the live call could not be recorded", call.call_id)
            return False
        return True

    async def answered(self, call_id: str, device_id: str, answered_at: float) -> None:
        if self._store is not None:
            await self._store.answered(call_id, device_id, answered_at)

    async def save(self, record: CallRecord, admission: Admission | None, *, live: bool) -> None:
        """Store the call record, rated, with the operators' events and without the live row."""
        events = None
        if self._policy is not None:
            record = self._policy.rate(admission, record)
            events = self._policy.recorder(admission, record)
        store = self._store if live else None

        async def also(conn: Any) -> None:
            if events is not None:
                await events(conn)
            if store is not None:
                await store.remove(conn, record.call_id)

        try:
            await self._records.save(record, also)
        except Exception:
            logger.exception("call %s: the call record could not be written", record.call_id)
        else:
            if self._policy is not None and events is not None:
                self._policy.committed()

    async def end_orphans(self, node_id: str, last_seen: float) -> list[LiveCall]:
        """End the calls of a dead node on record as failed/node_lost; the calls ended."""
        if self._store is None:
            return []
        ended = []
        for live in await self._store.of_node(node_id):
            record = live.record(last_seen, EndReason.FAILED.value, NODE_LOST)
            admission = None
            if self._policy is not None and live.rating:
                admission = await self._policy.restore(
                    live.call_id, live.caller, live.callee, live.rating
                )
            await self.save(record, admission, live=True)
            ended.append(live)
        return ended
