"""Durable queue for asynchronous (``Event``) invocations, and the dispatcher that runs it.

An accepted event is written to SQLite (``<data-dir>/events.db``) before the caller gets 202
and removed only when it is finished: succeeded, or dropped for good (retries exhausted, too
old, function deleted). A daemon crash therefore loses nothing: stored events are loaded at the
next start, with their enqueue time, attempt and retry counts and next-attempt time, and run
again (at least once: an attempt that was running when the daemon died runs again).

The scheduling rules live in `snapfaas.worker.backlog` (pure); this module does the I/O:
`EventStore` is the SQLite table, `EventQueue` the dispatcher task, which starts up to
`capacity()` attempts at once (the server's concurrency limit) and never waits on a single
event: backoffs are timestamps, not sleeping consumers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from snapfaas.worker.backlog import Backlog, Decision, DropReason, Outcome, QueuedEvent, Verdict

logger = logging.getLogger(__name__)
MIN_WAIT_S = 0.005  # floor of the dispatcher's sleep, so an inconsistency can never spin the loop
FULL_RECHECK_S = 1.0  # while every slot is taken, how often event ages are still checked

BASE_SCHEMA = ("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT, "
               "function TEXT, qualifier TEXT, payload BLOB)")
# Columns added after the first release; `EventStore` adds whichever an existing events.db lacks.
ADDED_COLUMNS = {
    "enqueued_at": "REAL",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "retries": "INTEGER NOT NULL DEFAULT 0",
    "next_at": "REAL NOT NULL DEFAULT 0",
    "last_status": "INTEGER",  # the last run that ended in a function error (for the failure record)
    "last_version": "TEXT",
    "last_error": "TEXT",
    "last_response": "BLOB",
}


@dataclasses.dataclass(frozen=True)
class Attempt:
    """What one attempt to run an event produced (response fields only when the code ran)."""

    outcome: Outcome
    detail: str = ""
    executed_version: str | None = None
    function_error: str | None = None
    response: bytes | None = None


@dataclasses.dataclass(frozen=True)
class LastRun:
    """The last run of an event that ended in a function error, as stored."""

    status: int
    executed_version: str | None
    function_error: str | None
    response: bytes


class EventStore:
    """The ``events`` table. One SQLite connection, used from the event loop thread only."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(BASE_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        for column, decl in ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE events ADD COLUMN {column} {decl}")
        # rows from before enqueue times were stored: their age counts from now
        self._db.execute("UPDATE events SET enqueued_at=? WHERE enqueued_at IS NULL", (clock(),))
        self._db.execute("CREATE INDEX IF NOT EXISTS events_by_function ON events(function)")

    def close(self) -> None:
        self._db.close()

    def insert(self, request_id: str, function: str, qualifier: str | None, payload: bytes, now: float) -> QueuedEvent:
        cur = self._db.execute(
            "INSERT INTO events(request_id, function, qualifier, payload, enqueued_at, next_at) VALUES (?, ?, ?, ?, ?, ?)",
            (request_id, function, qualifier, payload, now, now),
        )
        return QueuedEvent(int(cur.lastrowid or 0), request_id, function, qualifier, now, next_at=now)

    def load(self) -> list[QueuedEvent]:
        rows = self._db.execute(
            "SELECT seq, request_id, function, qualifier, enqueued_at, attempts, retries, next_at FROM events ORDER BY seq"
        )
        return [QueuedEvent(*row) for row in rows]

    def payload(self, seq: int) -> bytes | None:
        row = self._db.execute("SELECT payload FROM events WHERE seq=?", (seq,)).fetchone()
        return None if row is None else bytes(row[0] or b"")

    def last_run(self, seq: int) -> LastRun | None:
        row = self._db.execute(
            "SELECT last_status, last_version, last_error, last_response FROM events WHERE seq=?", (seq,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return LastRun(int(row[0]), row[1], row[2], bytes(row[3] or b""))

    def update(self, event: QueuedEvent, attempt: Attempt) -> None:
        """Store the event's new counters (and the run's response if its code failed)."""
        if attempt.outcome is Outcome.FUNCTION_ERROR:
            self._db.execute(
                "UPDATE events SET attempts=?, retries=?, next_at=?, last_status=200, last_version=?, last_error=?, "
                "last_response=? WHERE seq=?",
                (event.attempts, event.retries, event.next_at, attempt.executed_version, attempt.function_error,
                 attempt.response or b"", event.seq),
            )
        else:
            self._db.execute("UPDATE events SET attempts=?, retries=?, next_at=? WHERE seq=?",
                             (event.attempts, event.retries, event.next_at, event.seq))

    def delete(self, seq: int) -> None:
        self._db.execute("DELETE FROM events WHERE seq=?", (seq,))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


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
    attempts running at once.
    """

    def __init__(self, store: EventStore, backlog: Backlog, run: Runner, conclude: Concluder,
                 capacity: Callable[[], int], clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.backlog = backlog
        self._run = run
        self._conclude = conclude
        self._capacity = capacity
        self._clock = clock
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.backlog)

    def start(self) -> None:
        for event in self.store.load():
            self.backlog.add(event)
        if len(self.backlog):
            logger.info("event queue: %d stored event(s) loaded", len(self.backlog))
        self._dispatcher = asyncio.create_task(self._dispatch(), name="event-dispatcher")

    async def close(self) -> None:
        """Stop dispatching and cancel running attempts (their events stay stored)."""
        tasks = [t for t in (self._dispatcher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.store.close()

    def put(self, request_id: str, function: str, qualifier: str | None, payload: bytes) -> QueuedEvent:
        event = self.store.insert(request_id, function, qualifier, payload, self._clock())
        self.backlog.add(event)
        self._wake.set()
        return event

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
            while len(self.backlog.inflight) < self._capacity():
                event = self.backlog.take(now)
                if event is None:
                    break
                self._spawn(self._attempt(event))
            if len(self.backlog.inflight) >= self._capacity():
                timeout: float | None = FULL_RECHECK_S  # a finished attempt wakes us; ages still run out
            else:
                wake_at = self.backlog.next_wakeup(now)
                timeout = None if wake_at is None else max(MIN_WAIT_S, wake_at - now)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass  # a backoff or an event age ran out: look again

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
            self.store.update(event, attempt)
            return
        finished = Finished(event, decision, attempt, max(0.0, now - event.enqueued_at))
        try:
            await self._conclude(finished)
        except Exception:  # delivery/logging must never keep a finished event stored forever
            logger.exception("event %s for %s: failed at step 'conclude' (%s)", event.request_id, event.function,
                             decision.reason.value if decision.reason else "Success")
        self.store.delete(event.seq)
