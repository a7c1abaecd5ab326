"""The ``events`` table of asynchronous (``Event``) invocations, and this node's claims on it.

One table, in SQLite (``<data-dir>/events.db``, the embedded default) or in the cluster's
PostgreSQL database (``--registry postgresql://...``), through SQLAlchemy Core. A row is an
accepted event: its payload, enqueue time, counters, next-attempt time, the last failed run
(for the failure record) and its claim (``claimed_by``, ``lease_until`` on the database's
clock; the decisions are `snapfaas.worker.event_leases`). Claims use
``SELECT ... FOR UPDATE SKIP LOCKED``, so nodes never claim the same row at once.

`EventStore` is synchronous: the dispatcher (`snapfaas.worker.events.EventQueue`) calls it from
its own database threads, never on the event loop. An events.db written by an earlier release
is upgraded in place (missing columns added), its pending events kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import (
    BigInteger, Column, Double, Index, Integer, LargeBinary, MetaData, Table, Text, bindparam, func, or_, select,
)
from sqlalchemy.engine import Connection

from snapfaas.database import is_postgres_url, open_engine, unavailable, write_transaction
from snapfaas.worker import event_leases
from snapfaas.worker.backlog import Outcome, QueuedEvent
from snapfaas.worker.event_leases import Holder, LeaseTerms

logger = logging.getLogger(__name__)
RENEW_BATCH = 1000
CLAIM_ROUNDS = 3  # a claim whose candidates other nodes locked first looks for others this often

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
        # a write transaction from the start: on SQLite a deferred BEGIN that reads the schema and
        # then writes fails at once with "database is locked" if another writer got in between
        with self._write_lock, write_transaction(self.engine) as conn:
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
        with self._write_lock, write_transaction(self.engine) as conn:
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
