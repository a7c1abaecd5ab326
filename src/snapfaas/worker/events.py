"""Durable queue for asynchronous (``Event``) invocations, and the dispatcher that runs it.

An accepted event is written to the ``events`` table before the caller gets 202 and removed
only when it is finished: succeeded, or dropped for good (retries exhausted, too old, function
deleted). The table lives in SQLite (``<data-dir>/events.db``, the embedded default) or in the
cluster's PostgreSQL database (``--registry postgresql://...``), through SQLAlchemy Core.

**Claims.** A node schedules only events it has claimed (``claimed_by`` = its node id,
``lease_until`` = the database clock plus the lease; decisions in
`snapfaas.worker.event_leases`). Embedded, the one node claims every stored event at start and
every event it accepts, and nothing else changes: a daemon crash loses nothing, stored events
are loaded at the next start with their enqueue time, counters and next-attempt time, and run
again (at least once: an attempt that was running when the daemon died runs again). Shared
(PostgreSQL), a node claims events it accepts while it has room, and claims more with
``SELECT ... FOR UPDATE SKIP LOCKED`` (functions taking turns) when it runs short; it renews
the leases of the events it holds every third of the lease, and a node that dies leaves its
events to whoever claims them after the lease. A graceful shutdown releases its claims.

The scheduling rules live in `snapfaas.worker.backlog` (pure), the lease decisions in
`snapfaas.worker.event_leases` (pure), the table in `snapfaas.worker.event_store` (synchronous;
every call is made from the queue's database threads, never on the event loop); this module is
the dispatcher: `EventQueue`, a task which starts up to `capacity()`
attempts at once (the server's concurrency limit) and never waits on a single event: backoffs
are timestamps, not sleeping consumers. A database outage never stops the dispatcher: claims
back off and retry, the end of a finished event is written once the database is back, and
accepting an event answers 503 (``ServiceException``) meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError

from snapfaas.database import is_connection_failure, unavailable
from snapfaas.worker import event_leases
from snapfaas.worker.backlog import Backlog, Decision, DropReason, Outcome, QueuedEvent, Verdict
from snapfaas.worker.event_leases import ApproximateCount, ClaimPacing
from snapfaas.worker.event_store import Attempt, EventStore, LastRun

__all__ = ["Attempt", "EventQueue", "EventStore", "Finished", "LastRun"]

logger = logging.getLogger(__name__)
MIN_WAIT_S = 0.005  # floor of the dispatcher's sleep, so an inconsistency can never spin the loop
FULL_RECHECK_S = 1.0  # while every slot is taken, how often event ages are still checked
DB_THREADS = 4  # the queue's database threads (claims, renewals, counts and enqueues never wait on each other)
WRITE_RETRY_S = (0.5, 8.0)  # the end of a finished event during an outage: first delay, cap
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Finished:
    """An event that left the queue, handed to the invoker for logs and destinations."""

    event: QueuedEvent
    decision: Decision
    attempt: Attempt | None  # None: dropped without a new attempt (too old, deleted)
    age_s: float


Runner = Callable[[QueuedEvent], Awaitable[Attempt]]
Concluder = Callable[[Finished], Awaitable[None]]


class EventQueue:
    """Accepts events, stores them, and runs them through `run` under `backlog`'s rules.

    `run(event)` makes one attempt and classifies it (it must not raise); `conclude(finished)`
    does the logging and destination delivery of a finished event; `capacity()` bounds the
    attempts running at once. Every call into `store` runs on the queue's own database
    threads. `len(queue)` is the number of stored events: exact embedded, approximate when
    shared (`event_leases.ApproximateCount`).
    """

    def __init__(self, store: EventStore, backlog: Backlog, run: Runner, conclude: Concluder,
                 capacity: Callable[[], int], clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.backlog = backlog
        self._run = run
        self._conclude = conclude
        self._capacity = capacity
        self._clock = clock
        self._monotonic = monotonic
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._keepers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: dict[int, QueuedEvent] = {}  # claimed by this node: queued in the backlog or running
        self._claiming = False
        self.count = ApproximateCount()
        self.pacing = ClaimPacing()
        self._threads = concurrent.futures.ThreadPoolExecutor(DB_THREADS, thread_name_prefix="events-db")

    def __len__(self) -> int:
        return self.count.value

    @property
    def held(self) -> int:
        """Events this node holds (claimed: queued here or running)."""
        return len(self._held)

    async def _db(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, call, *args)

    async def start(self) -> None:
        """Recover this node's claims of a previous run, take the events it may run, start the
        dispatcher (and, shared, the lease renewal and the count refresh)."""
        recovered = await self._db(self.store.recover)
        if recovered:
            logger.info("event queue: %d event(s) claimed by this node's previous run released", recovered)
        if not self.store.shared:
            for event in await self._db(self.store.claim, None, None):
                self._hold(event)
            if self._held:
                logger.info("event queue: %d stored event(s) loaded", len(self._held))
        self.count.refreshed(await self._db(self.store.count), 0, self._monotonic())
        self._dispatcher = asyncio.create_task(self._dispatch(), name="event-dispatcher")
        if self.store.shared:
            self._keepers = [asyncio.create_task(self._renew_leases(), name="event-leases"),
                             asyncio.create_task(self._refresh_count(), name="event-count")]

    async def close(self) -> None:
        """Stop dispatching and cancel running attempts (their events stay stored); release
        this node's claims so that other nodes take its events at once."""
        tasks = [t for t in (self._dispatcher, *self._keepers, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._held:
            try:
                released = await self._db(self.store.release, list(self._held))
                logger.info("event queue: released %d claimed event(s) at shutdown", released)
            except DBAPIError as exc:
                if not is_connection_failure(exc):
                    raise
                logger.warning("event queue: releasing %d claim(s) failed at step 'release' (the database is "
                               "unavailable); they lapse after the lease", len(self._held))
        await self._db(self.store.close)
        self._threads.shutdown(wait=True)

    async def put(self, request_id: str, function: str, qualifier: str | None, payload: bytes) -> QueuedEvent:
        """Store an event (durably, before returning). Embedded, or while this node has room,
        it is claimed by this node at once; otherwise any node claims it. A database outage
        raises `ServiceUnavailable` (503)."""
        claim = not self.store.shared or event_leases.claim_size(len(self._held), self._capacity(), False) > 0
        self.count.added()  # before the write: concurrent accepts see each other (the cap stays exact embedded)
        stored = False
        try:
            with unavailable("enqueue the event"):
                event = await self._db(self.store.insert, request_id, function, qualifier, payload, self._clock(),
                                       claim)
            stored = True
        finally:
            if not stored:
                self.count.removed()
        if claim:
            self._hold(event)
        self._wake.set()
        return event

    async def payload(self, seq: int) -> bytes | None:
        with unavailable("read the event's payload"):
            return await self._db(self.store.payload, seq)

    async def last_run(self, seq: int) -> LastRun | None:
        with unavailable("read the event's last run"):
            return await self._db(self.store.last_run, seq)

    def changed(self, function: str, exists: Callable[[str], bool]) -> list[QueuedEvent]:
        """`function` changed in the registry: refresh its policies and gates; queued events
        whose qualifier no longer resolves (`exists` is False) are dropped as deleted."""
        self.backlog.refresh(function)
        gone = self.backlog.remove_lanes(function, exists)
        now = self._clock()
        for event in gone:
            self._spawn(self._finish(event, Decision(Verdict.DROP, DropReason.FUNCTION_DELETED), None, now))
        self._wake.set()
        return gone

    def _hold(self, event: QueuedEvent) -> None:
        self._held[event.seq] = event
        self.backlog.add(event)

    # -- the dispatcher -----------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            for event in self.backlog.expired(now):
                self._spawn(self._finish(event, Decision(Verdict.DROP, DropReason.EVENT_AGE_EXCEEDED), None, now))
            capacity = self._capacity()
            while len(self.backlog.inflight) < capacity:
                event = self.backlog.take(now)
                if event is None:
                    break
                self._spawn(self._attempt(event))
            free = len(self.backlog.inflight) < capacity
            # stuck: slots are free but every event held here waits (a backoff, a gate, a reserved concurrency)
            stuck = free and len(self.backlog) > len(self.backlog.inflight)
            if free:
                wake_at = self.backlog.next_wakeup(now)
                timeout: float | None = None if wake_at is None else max(MIN_WAIT_S, wake_at - now)
            else:
                timeout = FULL_RECHECK_S  # a finished attempt wakes us; ages still run out
            if self.store.shared and not self._claiming:
                mono = self._monotonic()
                want = event_leases.claim_size(len(self._held), capacity, stuck)
                if want > 0:
                    if self.pacing.due(mono):
                        self._claiming = True
                        self._spawn(self._claim(want))
                    else:
                        until = max(MIN_WAIT_S, self.pacing.next_at - mono)
                        timeout = until if timeout is None else min(timeout, until)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass  # a backoff, an event age or the claim pacing ran out: look again

    async def _claim(self, want: int) -> None:
        try:
            claimed = await self._db(self.store.claim, want, self._clock())
        except DBAPIError as exc:
            if not is_connection_failure(exc):
                logger.exception("event queue: failed at step 'claim'")
            delay = self.pacing.failed(self._monotonic())
            if self.pacing.failures == 1 or not is_connection_failure(exc):
                logger.warning("event queue: failed at step 'claim' (%s); retrying every %.1f s or less", _reason(exc),
                               delay)
            return
        finally:
            self._claiming = False
            self._wake.set()
        if self.pacing.failures:
            logger.info("event queue: claims work again")
        self.pacing.claimed(want, len(claimed), self._monotonic())
        for event in claimed:
            if event.seq not in self._held:
                self._hold(event)

    async def _renew_leases(self) -> None:
        """Every third of the lease: extend the leases of every held event (one batch UPDATE
        on a database thread); queued events another node has taken over are let go."""
        while True:
            await asyncio.sleep(self.store.terms.renew_every_s)  # a period, not a synchronization
            seqs = list(self._held)
            if not seqs:
                continue
            try:
                mine = await self._db(self.store.renew, seqs)
            except DBAPIError as exc:
                if not is_connection_failure(exc):
                    logger.exception("event queue: failed at step 'renew leases'")
                else:
                    logger.warning("event queue: failed at step 'renew leases' (%s)", _reason(exc))
                continue
            for seq in seqs:
                event = self._held.get(seq)
                if seq in mine or event is None or seq in self.backlog.inflight:
                    continue  # still ours, finished meanwhile, or running (its end finds out)
                if self.backlog.withdraw(event):
                    del self._held[seq]
                    logger.warning("event %s for %s: its lease lapsed and another node holds it now",
                                   event.request_id, event.function)

    async def _refresh_count(self) -> None:
        """Keep the cluster-wide count behind the queue cap fresh (`event_leases.COUNT_REFRESH_S`)."""
        while True:
            await asyncio.sleep(self.count.refresh_s)  # a period, not a synchronization
            delta = self.count.delta
            try:
                stored = await self._db(self.store.count)
            except DBAPIError as exc:
                if not is_connection_failure(exc):
                    logger.exception("event queue: failed at step 'count'")
                continue
            self.count.refreshed(stored, delta, self._monotonic())

    async def _attempt(self, event: QueuedEvent) -> None:
        try:
            attempt = await self._run(event)
        except asyncio.CancelledError:
            self.backlog.abandon(event)
            raise
        except Exception as exc:  # the runner classifies its failures; anything else is ours: retry it
            logger.exception("event %s for %s: attempt failed at step 'run'", event.request_id, event.function)
            attempt = Attempt(Outcome.PLATFORM_FAULT, f"{type(exc).__name__}: {exc}")
        now = self._clock()
        decision = self.backlog.settle(event, attempt.outcome, now)
        self._wake.set()
        await self._finish(event, decision, attempt, now)

    async def _finish(self, event: QueuedEvent, decision: Decision, attempt: Attempt | None, now: float) -> None:
        if decision.verdict is Verdict.RETRY:
            assert attempt is not None
            if not await self._write("update", self.store.update, event, attempt):
                # the lease lapsed (e.g. a long database outage) and another node took the event over
                self.backlog.withdraw(event)
                self._held.pop(event.seq, None)
                logger.warning("event %s for %s: its lease lapsed and another node holds it now", event.request_id,
                               event.function)
            return
        finished = Finished(event, decision, attempt, max(0.0, now - event.enqueued_at))
        try:
            await self._conclude(finished)
        except Exception:  # delivery/logging must never keep a finished event stored forever
            logger.exception("event %s for %s: failed at step 'conclude' (%s)", event.request_id, event.function,
                             decision.reason.value if decision.reason else "Success")
        await self._write("delete", self.store.delete, event.seq)
        self._held.pop(event.seq, None)
        self.count.removed()

    async def _write(self, step: str, call: Callable[..., T], *args: Any) -> T:
        """A write that must happen: retried through a database outage (until the queue is
        closed; then the event stays stored and runs again, at least once)."""
        first, cap = WRITE_RETRY_S
        failures = 0
        while True:
            try:
                return await self._db(call, *args)
            except DBAPIError as exc:
                if not is_connection_failure(exc):
                    raise
                if failures == 0:
                    logger.warning("event queue: failed at step %r (%s); retrying until the database is back", step,
                                   _reason(exc))
                delay = min(cap, first * 2 ** failures)
                failures += 1
            await asyncio.sleep(delay)  # backoff while the database is unavailable


def _reason(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None and str(exc.orig).strip() else type(exc).__name__
