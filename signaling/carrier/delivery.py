"""Delivery of the event outbox to operators: signed POSTs, at least once, in order per key.

EventDelivery is one asyncio worker per node. Every node sharing a database
runs one; they coordinate only through the ``events`` rows:

- **Claim.** An event is *due* when it is ``pending``, its ``next_attempt_at``
  has come, its lease (``locked_until``) is free or lapsed, and no earlier event
  of its key (same operator and ``ordering_key``, lower ``sequence``) is still
  ``pending``. A worker takes a due event with a conditional UPDATE that sets
  the lease and re-checks all of that; only the worker whose UPDATE changed the
  row sends it, so two workers never send one event at the same time.
- **Order.** Only the head of a key is ever due, so no other worker can start
  on a key while one holds its head. With the head, a worker leases the events
  behind it (a *run*, up to RUN in all) and sends them one after another, each
  only after its predecessor was answered 2xx. Up to ``webhook_concurrency``
  keys are delivered at the same time, each by one task (a slot); when its run
  is done the slot continues with the key's next run, or another key's.
- **Attempt.** The stored body bytes are POSTed unchanged (the signature, over a
  fresh timestamp, is the only thing that differs between attempts) to the
  operator's ``sms_url`` for ``sms.send`` and its ``webhook_url`` for everything
  else. Any 2xx is ``delivered``. Anything else (another status, a redirect, a
  timeout after ``webhook_timeout``, a connection error) counts an attempt and
  schedules the next one after an exponential backoff with jitter
  (``webhook_backoff_base`` doubling up to ``webhook_backoff_max``); the key waits.
  An event still failing ``webhook_max_age`` seconds after it was created is
  ``dead``: logged, counted, and no longer blocking its key. An ``sms.send``
  dies after ``code_ttl`` already: its code has expired by then.
- **No endpoint.** An event whose operator has no URL for it (or no longer
  exists) becomes ``replay_only``: it is not sent and not retried, and stays in
  the outbox for the operator's event list (replay).
- **Crash.** A worker that dies mid-delivery leaves its rows ``pending`` under
  its lease (twice ``webhook_timeout``); when the lease lapses another worker, or
  the restarted node, sends them again with the same ids and bodies. No attempt
  starts unless at least 1.5 x ``webhook_timeout`` of its lease is left, so a
  lease never lapses under a request in flight.

Everything a worker writes goes through one group commit: a transaction records
every outcome that arrived while the previous one was being written, hands back
unsent leases, and claims the runs its slots asked for. A slot does not wait for
its outcomes before sending the next event of its run (it waits at the end of
the run), so after a crash an event answered just before it may be sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from signaling.carrier import signing
from signaling.config import Config
from signaling.metrics import Metrics
from signaling.store import outbox
from signaling.store.database import Connection, Database
from signaling.store.outbox import DEAD, DELIVERED, PENDING, REPLAY_ONLY

__all__ = [
    "DEAD",
    "DELIVERED",
    "PENDING",
    "REPLAY_ONLY",
    "USER_AGENT",
    "EventDelivery",
    "backoff",
]

log = logging.getLogger("anruf.webhooks")

_FAILED = "failed"
#: The lease lapsed before a failure was written and another worker has the event.
_SUPERSEDED = "superseded"

USER_AGENT = "Anruf-Webhooks/1"
#: Bytes of a failed response's body kept in last_error.
_ERROR_PEEK = 200
#: Bytes of a response body read (and discarded) so its connection can be reused.
_DRAIN_LIMIT = 64 * 1024
_MAX_ERROR = 512
#: Events of one key leased (and sent back to back) per claim.
RUN = 16


def backoff(attempts: int, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 = the first).

    ``base * 2 ** (attempts - 1)``, capped at ``cap``, then scaled by a factor
    between 0.5 and 1 drawn from ``jitter`` (0 <= jitter < 1), so retries of
    many events after one outage spread out instead of arriving together.
    """
    nominal = min(cap, base * 2.0 ** min(max(attempts, 1) - 1, 60))
    return nominal * (0.5 + jitter / 2)


@dataclass(frozen=True)
class _Claimed:
    """An event this worker holds the lease on, with where and how to send it."""

    seq: int
    event_id: str
    operator_id: str
    type: str
    ordering_key: str
    created_at: float
    body: bytes
    attempts: int
    #: The locked_until this worker wrote: its proof of holding the lease.
    lease: float
    #: Empty: the operator has no endpoint for this event (see no_url).
    url: str
    secrets: tuple[str, ...]
    no_url: str


@dataclass(frozen=True)
class _Outcome:
    event: _Claimed
    result: str  # DELIVERED, REPLAY_ONLY or _FAILED
    at: float
    error: str = ""


@dataclass
class _Record:
    """Work for the next group commit."""

    outcome: _Outcome | None = None
    #: Claimed events handed back unsent (their leases are cleared).
    release: list[_Claimed] = field(default_factory=list)
    #: Claim this key's next run in the same transaction.
    follow: tuple[str, str] | None = None
    #: Then claim runs of up to this many other keys whose heads are due.
    claim: int = 0
    #: Set once committed, with the runs claimed; None: nobody waits.
    future: asyncio.Future[list[list[_Claimed]]] | None = None


class EventDelivery:
    """Sends the outbox to operators. ``start()``, ``notify()`` after commits, ``stop()``."""

    def __init__(
        self,
        database: Database,
        config: Config,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = database
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._concurrency = max(1, config.webhook_concurrency)
        self._lease_seconds = 2 * config.webhook_timeout
        self._wake = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        #: One task per slot: it delivers one key at a time, run after run.
        self._slots: set[asyncio.Task[None]] = set()
        #: Leases this worker holds (seq -> locked_until), released on stop.
        self._leases: dict[int, float] = {}
        self._batch: list[_Record] = []
        self._flusher: asyncio.Task[None] | None = None
        self._random = random.Random()

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("EventDelivery already started")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency),
            timeout=aiohttp.ClientTimeout(total=self._config.webhook_timeout),
            headers={"User-Agent": USER_AGENT},
        )
        self._runner = asyncio.create_task(self._run(), name="event-delivery")

    def notify(self) -> None:
        """Look for due events now (call after committing new events)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming, let POSTs in flight finish (up to webhook_timeout), release leases."""
        if self._runner is None or self._stopping:
            return
        self._stopping = True
        self._wake.set()
        await self._runner
        if self._slots:
            _, unfinished = await asyncio.wait(self._slots, timeout=self._config.webhook_timeout)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        await self._release_leases()
        if self._session is not None:
            await self._session.close()

    # -- the dispatcher ------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self._concurrency - len(self._slots)
            if free > 0:
                try:
                    runs = await self._claim(free)
                except Exception:
                    log.exception("claiming events failed; trying again")
                    runs = []
                for run in runs:
                    if self._stopping:
                        break  # its leases are released by stop()
                    task = asyncio.create_task(self._slot(run), name=f"deliver-{run[0].seq}")
                    self._slots.add(task)
                    task.add_done_callback(self._slot_done)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.webhook_poll_interval)

    def _slot_done(self, task: asyncio.Task[None]) -> None:
        self._slots.discard(task)
        self._wake.set()  # a slot is free, and the key's next event may be due
        if not task.cancelled() and task.exception() is not None:
            log.error("delivering events failed", exc_info=task.exception())

    async def _slot(self, run: list[_Claimed]) -> None:
        """Deliver runs, this key's and then others', until nothing is due."""
        while run:
            run = await self._deliver_run(run)

    async def _deliver_run(self, run: list[_Claimed]) -> list[_Claimed]:
        """Send a run of one key in order; returns the next run for this slot.

        Each event is sent only after its predecessor was answered 2xx; the
        outcomes are committed in the background. At the end of the run, in
        one transaction, they are committed and the next run is claimed: the
        same key's if it has more, else another key's. A failure ends the run
        (the rest is released): the key waits for its retry.
        """
        key = (run[0].operator_id, run[0].ordering_key)
        budget = 1.5 * self._config.webhook_timeout
        for index, event in enumerate(run):
            if self._stopping or self._clock() + budget > event.lease:
                # Do not start a POST the lease might not outlast.
                return await self._commit(release=run[index:], follow=key)
            outcome = await self._attempt(event)
            if outcome.result == _FAILED:
                return await self._commit(outcome, release=run[index + 1 :])
            self._enqueue(_Record(outcome))
        return await self._commit(follow=key)

    # -- claiming ------------------------------------------------------------

    async def _claim(self, limit: int) -> list[list[_Claimed]]:
        """Claim runs of up to ``limit`` keys whose heads are due, earliest due first."""
        now = self._clock()
        async with self._db.read() as conn:  # without the write lock when idle
            seqs = await outbox.due(conn, now, 1)
        if not seqs:
            return []
        # Claimed in the group commit, with the outcomes being written.
        future: asyncio.Future[list[list[_Claimed]]] = asyncio.get_running_loop().create_future()
        self._enqueue(_Record(claim=limit, future=future))
        return await future

    async def _take(
        self,
        conn: Connection,
        now: float,
        *,
        seqs: list[int] | None = None,
        keys: list[tuple[str, str]] | None = None,
    ) -> list[list[_Claimed]]:
        """Lease the due heads among ``seqs`` or ``keys`` and, behind each, the next
        events of its key (up to RUN in all, ``outbox.lease``); returns the runs
        this worker won, in order."""
        lease = now + self._lease_seconds
        rows = await outbox.lease(conn, now, lease, RUN, seqs=seqs or (), keys=keys or ())
        runs: dict[tuple[str, str], list[_Claimed]] = {}
        for row in rows:
            event = _claimed(row, lease)
            runs.setdefault((event.operator_id, event.ordering_key), []).append(event)
        return sorted(runs.values(), key=lambda run: run[0].seq)

    # -- one attempt ---------------------------------------------------------

    async def _attempt(self, event: _Claimed) -> _Outcome:
        if not event.url:
            return _Outcome(event, REPLAY_ONLY, self._clock(), event.no_url)
        assert self._session is not None
        error = ""
        try:
            headers = {
                "Content-Type": "application/json",
                signing.SIGNATURE_HEADER: signing.sign(event.body, event.secrets, self._clock()),
                "Anruf-Event-Id": event.event_id,
                "Anruf-Event-Type": event.type,
            }
            async with self._session.post(
                event.url, data=event.body, headers=headers, allow_redirects=False
            ) as response:
                peek = await _drain(response)
                if 200 <= response.status < 300:
                    return _Outcome(event, DELIVERED, self._clock())
                text = peek.decode("utf-8", "replace")
                error = f"HTTP {response.status}: {text}".strip()
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            error = f"no answer within {self._config.webhook_timeout:g} s"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        return _Outcome(event, _FAILED, self._clock(), error[:_MAX_ERROR])

    # -- recording (group commit) ----------------------------------------------

    def _enqueue(self, record: _Record) -> None:
        self._batch.append(record)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="event-delivery-flush")

    async def _commit(
        self,
        outcome: _Outcome | None = None,
        release: list[_Claimed] | None = None,
        follow: tuple[str, str] | None = None,
    ) -> list[_Claimed]:
        """Record, and wait until everything queued so far is committed; returns
        the next run for this slot: ``follow``'s if it has one due, else another
        key's (empty if nothing is due, or when stopping)."""
        if self._stopping:
            follow = None
        future: asyncio.Future[list[list[_Claimed]]] = asyncio.get_running_loop().create_future()
        claim = 0 if self._stopping else 1
        self._enqueue(_Record(outcome, release or [], follow, claim, future))
        runs = await future
        return runs[0] if runs else []

    async def _flush(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            try:
                async with self._db.transaction() as conn:
                    results, answers = await self._apply(conn, batch)
            except Exception as exc:
                # The events stay pending under their leases and are sent again.
                log.exception("recording %d delivery outcome(s) failed", len(batch))
                for record in batch:
                    if record.future is not None and not record.future.done():
                        record.future.set_exception(exc)
                continue
            for outcome, result in results:
                self._leases.pop(outcome.event.seq, None)
                self._count(outcome, result)
            for record in batch:
                for event in record.release:
                    self._leases.pop(event.seq, None)
            for record, runs in zip(batch, answers, strict=True):
                for run in runs:
                    for event in run:
                        self._leases[event.seq] = event.lease
                if record.future is not None and not record.future.done():
                    record.future.set_result(runs)
            self._wake.set()  # what was blocked behind these events may be due now

    async def _apply(
        self, conn: Connection, batch: list[_Record]
    ) -> tuple[list[tuple[_Outcome, str]], list[list[list[_Claimed]]]]:
        """Write a batch: outcomes, released leases, then the claims.

        Returns each outcome with the event's new status, and for each record
        the runs claimed for it.
        """
        outcomes = [r.outcome for r in batch if r.outcome is not None]
        delivered = [o for o in outcomes if o.result == DELIVERED]
        if delivered:
            # Delivered is the truth whoever holds the lease now. One statement
            # for the batch: delivered_at is the last answer among them.
            await outbox.mark_delivered(
                conn, [o.event.seq for o in delivered], max(o.at for o in delivered)
            )
        results = [
            (o, DELIVERED if o.result == DELIVERED else await self._write_failure(conn, o))
            for o in outcomes
        ]
        await outbox.release(conn, [(e.seq, e.lease) for r in batch for e in r.release])
        now = self._clock()
        answers: list[list[list[_Claimed]]] = [[] for _ in batch]
        following = {r.follow: i for i, r in enumerate(batch) if r.follow is not None}
        if following:
            for run in await self._take(conn, now, keys=list(following)):
                answers[following[(run[0].operator_id, run[0].ordering_key)]].append(run)
        wanted = [max(0, r.claim - len(answers[i])) for i, r in enumerate(batch)]
        if sum(wanted):
            seqs = await outbox.due(conn, now, sum(wanted))
            runs = await self._take(conn, now, seqs=seqs) if seqs else []
            for i, count in enumerate(wanted):
                answers[i] += runs[:count]
                runs = runs[count:]
        return results, answers

    async def _write_failure(self, conn: Connection, outcome: _Outcome) -> str:
        """Record an attempt that did not deliver; returns the event's new status."""
        event = outcome.event
        result = outcome.result
        status: str | None = None
        next_attempt_at: float | None = None
        if result == REPLAY_ONLY:
            status = REPLAY_ONLY
        else:
            deadline = event.created_at + self._max_age(event)
            if outcome.at >= deadline:
                result = status = DEAD
            else:
                delay = backoff(
                    event.attempts + 1,
                    self._config.webhook_backoff_base,
                    self._config.webhook_backoff_max,
                    self._random.random(),
                )
                next_attempt_at = min(outcome.at + delay, deadline)
        written = await outbox.mark_failed(
            conn,
            event.seq,
            event.lease,
            error=outcome.error,
            status=status,
            attempted=result != REPLAY_ONLY,
            next_attempt_at=next_attempt_at,
        )
        return result if written else _SUPERSEDED

    def _max_age(self, event: _Claimed) -> float:
        """How long an event is retried: an SMS only while its code is valid."""
        if event.type == "sms.send":
            return min(self._config.code_ttl, self._config.webhook_max_age)
        return self._config.webhook_max_age

    def _count(self, outcome: _Outcome, result: str) -> None:
        """Log and count an outcome once its transaction committed."""
        event = outcome.event
        if result == _SUPERSEDED:
            return
        if result == DEAD:
            log.warning(
                "event %s (%s for %s) is dead after %d attempts: %s",
                event.event_id,
                event.type,
                event.operator_id,
                event.attempts + 1,
                outcome.error,
            )
        elif result == _FAILED:
            log.info(
                "event %s (%s for %s) attempt %d failed: %s",
                event.event_id,
                event.type,
                event.operator_id,
                event.attempts + 1,
                outcome.error,
            )
        elif result == REPLAY_ONLY:
            log.info("event %s kept for replay only: %s", event.event_id, outcome.error)
        if self._metrics is None:
            return
        self._metrics.webhook_deliveries.labels(result).inc()
        if result == DEAD:
            self._metrics.webhook_dead_letters.inc()
        elif result == DELIVERED:
            self._metrics.webhook_latency.observe(max(0.0, outcome.at - event.created_at))

    async def _release_leases(self) -> None:
        """Hand the events this worker still holds back to any worker, at once."""
        if not self._leases:
            return
        leases, self._leases = self._leases, {}
        try:
            async with self._db.transaction() as conn:
                await outbox.release(conn, leases.items())
        except Exception:
            log.exception("releasing %d lease(s) failed; they lapse on their own", len(leases))


def _claimed(m: Any, lease: float) -> _Claimed:
    kind = "sms_url" if m["type"] == "sms.send" else "webhook_url"
    if m["operator_known"] is None:
        url, no_url = "", f"no operator {m['operator_id']!r}"
    else:
        url = m[kind] or ""
        no_url = "" if url else f"the operator has no {kind}"
    secrets = tuple(s for s in (m["signing_secret"], m["previous_signing_secret"]) if s)
    return _Claimed(
        seq=m["seq"],
        event_id=m["event_id"],
        operator_id=m["operator_id"],
        type=m["type"],
        ordering_key=m["ordering_key"],
        created_at=m["created_at"],
        body=m["body"].encode(),
        attempts=m["attempts"],
        lease=lease,
        url=url,
        secrets=secrets,
        no_url=no_url,
    )


async def _drain(response: aiohttp.ClientResponse) -> bytes:
    """Read the response body (bounded, so the connection can be reused); its start."""
    length = response.content_length
    if length is not None and length <= _DRAIN_LIMIT:
        return (await response.read())[:_ERROR_PEEK]
    start = b""
    read = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        if len(start) < _ERROR_PEEK:
            start += chunk[: _ERROR_PEEK - len(start)]
        read += len(chunk)
        if read >= _DRAIN_LIMIT:
            break
    return start
