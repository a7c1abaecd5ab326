"""Leases (claims) in the shared database: one holder at a time per (kind, key), by the DB clock.

Table ``claims(kind, key, holder, token, version, lease_until, note)``, created idempotently in
the registry's database (PostgreSQL in a cluster, the data dir's SQLite file on a single host).

Kinds used by snapfaas:

* ``publish`` / ``<function>:<version>``: the node creating a SnapStart snapshot (a first publish,
  or the re-creation of an Inactive or broken one). Only the holder works on the version; a node
  that dies stops renewing and, once the lease has expired, another node takes the claim over
  and redoes the publish from scratch.
* ``upload`` / ``<snapshot id>``: a snapshot being written to the store origin and not yet
  referenced by the registry. Garbage collection counts these as live (see
  `snapshot.manager` for the protocol with ``gc``).
* ``gc`` / ``origin``: the one collector of the store origin's garbage.

Contract:

* Time is the database's clock (`now`), never a node's: leases compare across hosts.
* `Leases.claim` returns a `Claim` if the caller now holds the lease (it was free, expired, or
  held by the same node id: a node restarted under the same id takes its own claims back), or
  None if another node holds a live lease. Every take bumps ``token`` (a fencing number): a
  holder whose lease was taken over learns it at its next `renew` (False).
* Writes are compare-and-set on the row's ``version``, so two nodes racing for one expired lease
  cannot both win, and a renewal racing a take-over makes exactly one of them fail.
* `renew` extends a lease the caller still holds (even past its expiry, as long as nobody took
  it); `release` deletes it if still held. Connection failures raise `ServiceUnavailable` naming
  the step (`database.unavailable`).
* The decisions (`decide_claim`, `is_live`) are pure functions of the row and the time.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from snapfaas.database import create_tables, unavailable, write_transaction
from snapfaas.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0  # a lease lasts this long unless renewed; renewed every third of it

metadata = sa.MetaData()
claims = sa.Table(
    "claims", metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("note", sa.String(512), nullable=True),
)


@dataclasses.dataclass(frozen=True)
class ClaimRow:
    """A row of ``claims`` as read."""

    kind: str
    key: str
    holder: str
    token: int
    version: int
    lease_until: float
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A lease the caller holds (as of its last successful claim or renew)."""

    kind: str
    key: str
    holder: str
    token: int


class Decision(enum.Enum):
    TAKE_NEW = "take-new"  # no row: insert one
    TAKE_OVER = "take-over"  # a row whose lease expired (or our own node's): replace it
    BUSY = "busy"  # another node holds a live lease


def is_live(row: ClaimRow, now: float) -> bool:
    return row.lease_until > now


def decide_claim(row: ClaimRow | None, me: str, now: float) -> Decision:
    """What a node `me` wanting the lease does, given its current row and the DB time."""
    if row is None:
        return Decision.TAKE_NEW
    if row.holder == me or not is_live(row, now):
        return Decision.TAKE_OVER
    return Decision.BUSY


def still_held(row: ClaimRow | None, claim: Claim) -> bool:
    """Whether `claim` is still its row's: nobody took it over (expiry alone does not lose it)."""
    return row is not None and row.holder == claim.holder and row.token == claim.token


def db_now(engine: Engine) -> sa.ColumnElement[float]:
    """The database clock in epoch seconds, as a SQL expression."""
    if engine.dialect.name == "postgresql":
        return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)
    return (sa.func.julianday("now") - 2440587.5) * 86400.0


class Leases:
    """Claims of one node (`node_id`) in the database of `engine` (see the module contract)."""

    def __init__(self, engine: Engine, node_id: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        if not node_id:
            raise ValueError("a node id is required")
        self.engine = engine
        self.node_id = node_id
        self.ttl_s = ttl_s
        self._now = db_now(engine)
        # SQLite (one host): serialize this process's read-then-write steps; the CAS does the rest
        self._local = threading.Lock()
        with unavailable("create claims table"):
            create_tables(engine, metadata)

    @contextmanager
    def _tx(self, step: str) -> Iterator[Connection]:
        with unavailable(step), self._local, write_transaction(self.engine) as conn:
            yield conn

    def now(self) -> float:
        with self._tx("read database clock") as conn:
            return float(conn.execute(sa.select(self._now)).scalar_one())

    def _read(self, conn: Connection, kind: str, key: str) -> tuple[ClaimRow | None, float]:
        row = conn.execute(sa.select(claims, self._now.label("now"))
                           .where(claims.c.kind == kind, claims.c.key == key)).first()
        if row is None:
            return None, float(conn.execute(sa.select(self._now)).scalar_one())
        return _row(row), float(row.now)

    def claim(self, kind: str, key: str, note: str | None = None) -> Claim | None:
        """Take the lease (kind, key) for this node, or None if another node holds it."""
        with self._tx(f"claim {kind} {key}") as conn:
            row, now = self._read(conn, kind, key)
            decision = decide_claim(row, self.node_id, now)
            if decision == Decision.BUSY:
                return None
            until = now + self.ttl_s
            if decision == Decision.TAKE_NEW:
                try:
                    with conn.begin_nested():
                        conn.execute(claims.insert().values(kind=kind, key=key, holder=self.node_id, token=1, version=1,
                                                            lease_until=until, note=note))
                except IntegrityError:
                    return None  # another node inserted it first
                return Claim(kind, key, self.node_id, 1)
            assert row is not None
            taken = conn.execute(claims.update()
                                 .where(claims.c.kind == kind, claims.c.key == key, claims.c.version == row.version)
                                 .values(holder=self.node_id, token=row.token + 1, version=row.version + 1,
                                         lease_until=until, note=note)).rowcount
            if taken != 1:
                return None  # renewed or taken by another node meanwhile
            if row.holder != self.node_id:
                logger.info("lease %s %s taken over from node %s (expired %.1f s ago)",
                            kind, key, row.holder, now - row.lease_until)
            return Claim(kind, key, self.node_id, row.token + 1)

    def renew(self, claim: Claim) -> bool:
        """Extend `claim` by the TTL; False if another node took it over (or it was released)."""
        with self._tx(f"renew {claim.kind} {claim.key}") as conn:
            row, now = self._read(conn, claim.kind, claim.key)
            if not still_held(row, claim):
                return False
            assert row is not None
            return conn.execute(claims.update()
                                .where(claims.c.kind == claim.kind, claims.c.key == claim.key,
                                       claims.c.version == row.version)
                                .values(version=row.version + 1, lease_until=now + self.ttl_s)).rowcount == 1

    def release(self, claim: Claim) -> None:
        """Give the lease up (nothing happens if it is no longer ours)."""
        with self._tx(f"release {claim.kind} {claim.key}") as conn:
            conn.execute(claims.delete().where(claims.c.kind == claim.kind, claims.c.key == claim.key,
                                               claims.c.holder == claim.holder, claims.c.token == claim.token))

    def holder(self, kind: str, key: str) -> ClaimRow | None:
        """The live lease on (kind, key), or None if it is free or expired."""
        with self._tx(f"read {kind} {key}") as conn:
            row, now = self._read(conn, kind, key)
        return row if row is not None and is_live(row, now) else None

    def live(self, kind: str) -> dict[str, ClaimRow]:
        """Every live lease of `kind`, by key."""
        with self._tx(f"list {kind}") as conn:
            rows = conn.execute(sa.select(claims).where(claims.c.kind == kind, claims.c.lease_until > self._now)).all()
        return {row.key: _row(row) for row in rows}

    def held(self, claim: Claim) -> bool:
        with self._tx(f"check {claim.kind} {claim.key}") as conn:
            row, _ = self._read(conn, claim.kind, claim.key)
        return still_held(row, claim)


def _row(row: sa.Row) -> ClaimRow:  # type: ignore[type-arg]
    return ClaimRow(row.kind, row.key, row.holder, int(row.token), int(row.version), float(row.lease_until), row.note)


class Keeper:
    """Renews a set of claims from a thread every third of the TTL while work goes on.

    `lost` is set (and `on_lost` called, from the thread) once a renewal answers that a claim
    was taken over; a failing database is logged and retried (the lease may then expire, and
    another node take it over: the holder learns it at the next successful renewal).
    Use as a context manager; leaving it stops renewing (claims are not released)."""

    def __init__(self, leases: Leases, claims_: list[Claim] | None = None,
                 on_lost: Callable[[Claim], None] | None = None) -> None:
        self.leases = leases
        self._claims = list(claims_ or [])
        self._lock = threading.Lock()
        self.on_lost = on_lost
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, claim: Claim) -> None:
        with self._lock:
            self._claims.append(claim)

    def discard(self, claim: Claim) -> None:
        with self._lock:
            if claim in self._claims:
                self._claims.remove(claim)

    def __enter__(self) -> Keeper:
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop renewing. Does not wait for a renewal in flight (the event loop calls this; a
        slow database must not block it): one that lands after a release finds no row."""
        self._stop.set()

    def _run(self) -> None:
        interval = max(0.05, self.leases.ttl_s / 3)
        while not self._stop.wait(interval):  # a periodic timer
            with self._lock:
                current = list(self._claims)
            for claim in current:
                try:
                    kept = self.leases.renew(claim)
                except Exception:  # the database may be restarting: keep trying until the work ends
                    logger.warning("lease %s %s: renewal failed; retrying", claim.kind, claim.key, exc_info=True)
                    continue
                if not kept:
                    if self._stop.is_set():
                        return  # released while this renewal ran: not a take-over
                    logger.warning("lease %s %s was taken over by another node", claim.kind, claim.key)
                    self.lost.set()
                    self.discard(claim)
                    if self.on_lost is not None:
                        self.on_lost(claim)


# -- the lease protocol between publishes and the store origin's garbage collection -------------
UPLOAD, GC, GC_KEY = "upload", "gc", "origin"
GC_POLL_S = 0.2  # how often an upload waiting for a collection looks again


@dataclasses.dataclass
class Collection:
    """A collection this node may run (it holds the ``gc`` lease): `uploads` are the snapshots
    being written anywhere (read after the lease was taken; read the registry *after* this)."""

    claim: Claim
    uploads: set[str]
    keeper: Keeper

    def still_held(self) -> bool:
        return not self.keeper.lost.is_set()


class OriginLeases:
    """Publishes and garbage collection of one store origin, across nodes.

    * `begin_upload(snapshot_id)` (before a snapshot's chunks are looked up or uploaded): take
      the ``upload`` lease of the snapshot, then wait until no ``gc`` lease is live anywhere.
      The caller renews the lease (a `Keeper`) and calls `end_upload` once the registry
      references the snapshot, or it was dropped.
    * `collection()`: take the ``gc`` lease (None if another node holds it), renewed while the
      block runs, released after; yields the live upload leases, read after the gc lease was
      taken. The collector must then read the registry, count `uploads` as referenced, and delete
      no chunk while one of them has no manifest yet (`ChunkStore.collect(pending=...)`).

    Why that is enough: an upload either committed its lease before the collector read the
    leases (then the collector sees it), or it committed after, and so read the gc lease after
    the collector had taken it and waits until the collection ends. A snapshot seen as an upload
    but without a manifest may already have found chunks to deduplicate against, so no chunk goes.
    An upload seen *with* its manifest has every chunk named in it. Each step is its own
    committed statement: "write mine, then read the other's" on both sides."""

    def __init__(self, leases: Leases, poll_s: float = GC_POLL_S) -> None:
        self.leases = leases
        self.poll_s = poll_s

    def begin_upload(self, snapshot_id: str, keeper: Keeper | None = None) -> Claim:
        """Blocking (run it in a thread)."""
        claim = self.leases.claim(UPLOAD, snapshot_id)
        if claim is None:
            raise RuntimeError(f"snapshot {snapshot_id} failed at step 'claim upload': another node holds its id")
        if keeper is not None:
            keeper.add(claim)
        try:
            while self.leases.holder(GC, GC_KEY) is not None:
                time.sleep(self.poll_s)  # a collection runs: chunks we might deduplicate against could go
        except BaseException:
            self.end_upload(claim, keeper)
            raise
        return claim

    def end_upload(self, claim: Claim, keeper: Keeper | None = None) -> None:
        if keeper is not None:
            keeper.discard(claim)
        self.leases.release(claim)

    def open_collection(self) -> Collection | None:
        """Take the gc lease and start renewing it; None if another node holds it. Blocking."""
        claim = self.leases.claim(GC, GC_KEY)
        if claim is None:
            return None
        keeper = Keeper(self.leases, [claim]).__enter__()
        try:
            return Collection(claim, set(self.leases.live(UPLOAD)), keeper)
        except BaseException:
            self.close_collection(Collection(claim, set(), keeper))
            raise

    def close_collection(self, collection: Collection) -> None:
        """Stop renewing and release the gc lease. Blocking."""
        collection.keeper.__exit__(None, None, None)
        try:
            self.leases.release(collection.claim)
        except ServiceUnavailable as exc:  # it expires after its TTL
            logger.warning("gc lease not released (it expires by itself): %s", exc.message)

    @contextmanager
    def collection(self) -> Iterator[Collection | None]:
        """`open_collection` ... `close_collection` as a block."""
        collection = self.open_collection()
        try:
            yield collection
        finally:
            if collection is not None:
                self.close_collection(collection)
