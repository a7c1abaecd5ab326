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

The scheduling rules live in `snapfaas.worker.backlog` (pure); this module does the I/O:
`EventStore` is the table (synchronous; every call is made from the queue's database threads,
never on the event loop), `EventQueue` the dispatcher task, which starts up to `capacity()`
attempts at once (the server's concurrency limit) and never waits on a single event: backoffs
are timestamps, not sleeping consumers. A database outage never stops the dispatcher: claims
back off and retry, the end of a finished event is written once the database is back, and
accepting an event answers 503 (``ServiceException``) meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy import (
    BigInteger, Column, Double, Index, Integer, LargeBinary, MetaData, Table, Text, bindparam, func, or_, select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from snapfaas.database import is_connection_failure, is_postgres_url, open_engine, unavailable
from snapfaas.worker import event_leases
from snapfaas.worker.backlog import Backlog, Decision, DropReason, Outcome, QueuedEvent, Verdict
from snapfaas.worker.event_leases import ApproximateCount, ClaimPacing, Holder, LeaseTerms

logger = logging.getLogger(__name__)
MIN_WAIT_S = 0.005  # floor of the dispatcher's sleep, so an inconsistency can never spin the loop
FULL_RECHECK_S = 1.0  # while every slot is taken, how often event ages are still checked
DB_THREADS = 4  # the queue's database threads (claims, renewals, counts and enqueues never wait on each other)
WRITE_RETRY_S = (0.5, 8.0)  # the end of a finished event during an outage: first delay, cap
RENEW_BATCH = 1000
CLAIM_ROUNDS = 3  # a claim whose candidates other nodes locked first looks for others this often
T = TypeVar("T")

metadata = MetaData()
events = Table(
    "events", metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", Text),
    Column("function", Text),
    Column("qualifier", Text),
    Column("payload", LargeBinary),
    # columns added after the first release (`EventStore` adds whichever an existing events.db lacks)
    Column("enqueued_at", Double),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("retries", Integer, nullable=False, server_default="0"),
    Column("next_at", Double, nullable=False, server_default="0"),
    Column("last_status", Integer),  # the last run that ended in a function error (for the failure record)
    Column("last_version", Text),
    Column("last_error", Text),
    Column("last_response", LargeBinary),
    Column("claimed_by", Text),  # the node holding the event (None: anyone may claim it)
    Column("lease_until", Double),  # database clock (epoch seconds); past it, the claim has lapsed
    Index("events_by_function", "function"),
    Index("events_by_claim", "claimed_by", "lease_until"),
    sqlite_autoincrement=True,
)
FIRST_COLUMNS = ("seq", "request_id", "function", "qualifier", "payload")
SCHEDULE = (events.c.seq, events.c.request_id, events.c.function, events.c.qualifier, events.c.enqueued_at,
            events.c.attempts, events.c.retries, events.c.next_at)
SCHEMA_LOCK_KEY = 0x736E_6170_6576  # PostgreSQL advisory lock: nodes starting together create the table once


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
    """The ``events`` table in SQLite (a `Path`) or PostgreSQL (a ``postgresql://`` URL).

    Every method is synchronous and may be called from any thread; connection failures
    surface as SQLAlchemy `DBAPIError` (see `snapfaas.database.is_connection_failure`).
    `node_id` names this node in claims; `shared` is True for PostgreSQL (other nodes may
    consume the same table). Opening creates the table, or upgrades an existing one in place.
    """

    def __init__(self, target: Path | str, node_id: str = "local", terms: LeaseTerms | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.shared = is_postgres_url(target)
        self.node_id = node_id
        self.terms = terms or LeaseTerms()
        self.engine = open_engine(target)
        self.statements = 0  # statements sent to the database (measurements, tests)
        sqlalchemy.event.listen(self.engine, "before_cursor_execute", self._counted)
        # SQLite has one writer: claims and inserts from several threads take turns here instead
        # of failing with "database is locked" when a read transaction upgrades to a write
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if self.shared else threading.Lock())
        self._db_now = (sqlalchemy.cast(func.extract("epoch", func.clock_timestamp()), Double) if self.shared
                        else sqlalchemy.literal_column("((julianday('now') - 2440587.5) * 86400.0)", Double))
        with unavailable("open the event queue"):
            self._create(clock())

    def _counted(self, *_args: Any) -> None:
        self.statements += 1

    def _create(self, now: float) -> None:
        with self.engine.begin() as conn:
            if self.shared:
                conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            metadata.create_all(conn)
            present = {c["name"] for c in sqlalchemy.inspect(conn).get_columns("events")}
            for column in events.columns:
                if column.name in present or column.name in FIRST_COLUMNS:
                    continue
                decl = column.type.compile(dialect=conn.dialect)
                if column.server_default is not None:
                    decl += f" NOT NULL DEFAULT {column.server_default.arg}"  # type: ignore[attr-defined]
                conn.execute(sqlalchemy.text(f"ALTER TABLE events ADD COLUMN {column.name} {decl}"))
            for index in events.indexes:
                index.create(conn, checkfirst=True)
            # rows from before enqueue times were stored: their age counts from now
            conn.execute(events.update().where(events.c.enqueued_at.is_(None)).values(enqueued_at=now))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # -- enqueue and claims ---------------------------------------------------------------------
    def insert(self, request_id: str, function: str, qualifier: str | None, payload: bytes, now: float,
               claim: bool = True) -> QueuedEvent:
        """Store a new event, claimed by this node if `claim` (else any node may claim it)."""
        values: dict[str, Any] = dict(request_id=request_id, function=function, qualifier=qualifier, payload=payload,
                                      enqueued_at=now, next_at=now)
        if claim:
            values.update(claimed_by=self.node_id, lease_until=self._db_now + self.terms.lease_s)
        with self._writing() as conn:
            seq = conn.execute(events.insert().values(**values)).inserted_primary_key[0]
        return QueuedEvent(int(seq), request_id, function, qualifier, now, next_at=now)

    def claim(self, limit: int | None, now: float | None) -> list[QueuedEvent]:
        """Claim up to `limit` (None: every) claimable event due at `now` (None: whenever due),
        functions taking turns (each one's oldest first), rows another claimant has locked
        skipped; a lapsed lease is taken over (`event_leases.claim`)."""
        if limit is not None and limit <= 0:
            return []
        lapsed = or_(events.c.claimed_by.is_(None), events.c.lease_until.is_(None), events.c.lease_until < self._db_now)
        turn = func.row_number().over(partition_by=events.c.function, order_by=events.c.seq).label("turn")
        skipped: list[int] = []
        claims: list[tuple[Any, event_leases.Claim]] = []
        seqs: list[int] = []
        with self._writing() as conn:
            for _ in range(CLAIM_ROUNDS):  # candidates another node has locked meanwhile are skipped: look again
                ranked = select(events.c.seq, turn).where(lapsed)
                if now is not None:
                    ranked = ranked.where(events.c.next_at <= now)
                if skipped:
                    ranked = ranked.where(events.c.seq.not_in(skipped))
                ranked_q = ranked.subquery()
                candidates = select(ranked_q.c.seq).order_by(ranked_q.c.turn, ranked_q.c.seq).limit(limit)
                seqs = list(conn.execute(candidates).scalars())
                if not seqs:
                    break
                db_now = float(conn.execute(select(self._db_now)).scalar_one())
                rows = conn.execute(
                    select(*SCHEDULE, events.c.claimed_by, events.c.lease_until)
                    .where(events.c.seq.in_(seqs)).with_for_update(skip_locked=True)
                ).all()
                for row in rows:
                    decided = event_leases.claim(Holder(row.seq, row.claimed_by, row.lease_until, row.retries),
                                                 self.terms, db_now)
                    if decided is not None:
                        claims.append((row, decided))
                if claims:
                    break
                skipped.extend(seqs)
            if claims:
                conn.execute(
                    events.update().where(events.c.seq == bindparam("b_seq"))
                    .values(claimed_by=self.node_id, lease_until=bindparam("b_until"), retries=bindparam("b_retries")),
                    [{"b_seq": c.seq, "b_until": c.lease_until, "b_retries": c.retries} for _, c in claims],
                )
        taken = [c for _, c in claims if c.taken_over]
        if taken:
            logger.info("event queue: took over %d event(s) whose claim had lapsed", len(taken))
        order = {seq: i for i, seq in enumerate(seqs)}
        claims.sort(key=lambda rc: order[rc[1].seq])
        return [QueuedEvent(r.seq, r.request_id, r.function, r.qualifier, r.enqueued_at, r.attempts, c.retries,
                            r.next_at) for r, c in claims]

    def recover(self) -> int:
        """At start-up: release the claims this node's previous run left (it was killed; with
        SQLite, where there is one node, every claim). Each counts as a lapsed lease (one
        retry). Returns how many."""
        held = events.c.claimed_by.is_not(None) if not self.shared else events.c.claimed_by == self.node_id
        with self._writing() as conn:
            result = conn.execute(events.update().where(held)
                                  .values(claimed_by=None, lease_until=None, retries=events.c.retries + 1))
        return int(result.rowcount or 0)

    def renew(self, seqs: Sequence[int]) -> set[int]:
        """Extend this node's leases of `seqs`; returns those it still holds (a missing one was
        finished, or taken over by another node after its lease lapsed)."""
        mine: set[int] = set()
        for i in range(0, len(seqs), RENEW_BATCH):
            chunk = list(seqs[i:i + RENEW_BATCH])
            with self._writing() as conn:
                mine.update(conn.execute(
                    events.update().where(events.c.seq.in_(chunk), events.c.claimed_by == self.node_id)
                    .values(lease_until=self._db_now + self.terms.lease_s).returning(events.c.seq)
                ).scalars())
        return mine

    def release(self, seqs: Sequence[int]) -> int:
        """Give up this node's claims of `seqs` (graceful shutdown): any node may claim them
        at once. Not counted as a retry."""
        released = 0
        for i in range(0, len(seqs), RENEW_BATCH):
            chunk = list(seqs[i:i + RENEW_BATCH])
            with self._writing() as conn:
                result = conn.execute(events.update().where(events.c.seq.in_(chunk), events.c.claimed_by == self.node_id)
                                      .values(claimed_by=None, lease_until=None))
                released += int(result.rowcount or 0)
        return released

    # -- reading and finishing ------------------------------------------------------------------
    def load(self) -> list[QueuedEvent]:
        """Every stored event, claimed or not (tools and tests; the dispatcher claims)."""
        with self.engine.connect() as conn:
            return [QueuedEvent(*row) for row in conn.execute(select(*SCHEDULE).order_by(events.c.seq))]

    def holder(self, seq: int) -> str | None:
        """The node holding event `seq` (None: unclaimed or not stored)."""
        with self.engine.connect() as conn:
            return conn.execute(select(events.c.claimed_by).where(events.c.seq == seq)).scalar_one_or_none()

    def payload(self, seq: int) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(events.c.payload).where(events.c.seq == seq)).first()
        return None if row is None else bytes(row[0] or b"")

    def last_run(self, seq: int) -> LastRun | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(events.c.last_status, events.c.last_version, events.c.last_error,
                                      events.c.last_response).where(events.c.seq == seq)).first()
        if row is None or row[0] is None:
            return None
        return LastRun(int(row[0]), row[1], row[2], bytes(row[3] or b""))

    def update(self, event: QueuedEvent, attempt: Attempt) -> bool:
        """Store the event's new counters (and the run's response if its code failed); the
        event stays claimed. False: this node no longer holds it (its lease lapsed and another
        node took it over), nothing was written."""
        values: dict[str, Any] = dict(attempts=event.attempts, retries=event.retries, next_at=event.next_at)
        if attempt.outcome is Outcome.FUNCTION_ERROR:
            values.update(last_status=200, last_version=attempt.executed_version, last_error=attempt.function_error,
                          last_response=attempt.response or b"")
        with self._writing() as conn:
            result = conn.execute(events.update()
                                  .where(events.c.seq == event.seq, events.c.claimed_by == self.node_id).values(**values))
        return bool(result.rowcount)

    def delete(self, seq: int) -> None:
        with self._writing() as conn:
            conn.execute(events.delete().where(events.c.seq == seq))

    def count(self, function: str | None = None) -> int:
        """Stored events (of `function`, if given): queued, claimed or running, on every node."""
        query = select(func.count()).select_from(events)
        if function is not None:
            query = query.where(events.c.function == function)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


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
