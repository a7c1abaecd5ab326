"""The SQL database behind the registry and the cluster's shared state, through SQLAlchemy Core.

Two engines, one code path:

* **SQLite** (the default, embedded): a file in the data dir. One process owns it.
* **PostgreSQL** (``--registry postgresql://user:password@host:port/db``): shared by every node
  of a cluster. Connections go through psycopg 3.

Contract:

* `open_engine(target)` takes a `Path` (SQLite file) or a ``postgresql://`` URL (``postgres://``
  and ``postgresql+psycopg://`` are accepted too) and returns an `Engine`. Nothing is connected
  yet: the first statement connects.
* A PostgreSQL server that is down or unreachable fails a statement within
  `CONNECT_TIMEOUT_S` (connect) or `STATEMENT_TIMEOUT_MS` (a statement): never a hang. The pool
  checks a connection before handing it out (``pool_pre_ping``), so after a server restart the
  next statement reconnects without the caller noticing.
* `unavailable(step)` turns the driver's connection-level failures into `ServiceUnavailable`
  (HTTP 503, retryable), naming the step; integrity and programming errors pass through.
* SQLite transactions are explicit: the engine's `begin` emits ``BEGIN``, or ``BEGIN IMMEDIATE``
  (the write lock up front, no upgrade deadlock) on a connection with the execution option
  ``sqlite_immediate=True``, or nothing with ``sqlite_autocommit=True`` (each statement its own
  transaction). PostgreSQL ignores both options.
* `CircuitBreaker`: callers on the event loop must not wait `CONNECT_TIMEOUT_S` per request
  while the server is down. After a connection failure the breaker is *open*: calls fail at
  once with `ServiceUnavailable` for `backoff_s`; then one call at a time probes the server
  (*probing*); a success closes the breaker, a failure opens it again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from snapfaas.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 15_000
POOL_SIZE = 8
POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
TABLES_LOCK = 0x736E_6170_7462  # pg_advisory_xact_lock key: nodes starting together create tables in turn


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def describe_target(target: str | Path) -> str:
    """`target` for logs: a SQLite path, or a PostgreSQL URL without its password."""
    if not is_postgres_url(target):
        return f"SQLite {target}"
    return "PostgreSQL " + sqlalchemy.engine.make_url(engine_url(target)).render_as_string(hide_password=True)


def engine_url(target: str | Path) -> str:
    """The SQLAlchemy URL for a `Path` (SQLite) or a PostgreSQL URL (psycopg 3 driver)."""
    if isinstance(target, Path):
        return f"sqlite:///{target}"
    for scheme in POSTGRES_SCHEMES:
        if target.startswith(scheme):
            return "postgresql+psycopg://" + target[len(scheme):]
    raise ValueError(f"not a database: {target!r} (a file path or a postgresql:// URL)")


def open_engine(target: str | Path) -> Engine:
    """An engine for `target` (see the module's contract)."""
    url = engine_url(target)
    if url.startswith("sqlite"):
        engine = sqlalchemy.create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sqlalchemy.create_engine(
        url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_SIZE, pool_timeout=CONNECT_TIMEOUT_S,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                      "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                      "application_name": "snapfaas"},
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_connection.isolation_level = None  # the driver's implicit BEGINs off: `_sqlite_begin` emits ours
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
    """Write transactions (``sqlite_immediate``) take the write lock up front; other
    connections get a deferred ``BEGIN`` unless ``sqlite_autocommit`` (single-statement reads:
    each SELECT is its own consistent snapshot, and skipping BEGIN/ROLLBACK halves a lookup)."""
    options = conn.get_execution_options()
    if options.get("sqlite_immediate"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif not options.get("sqlite_autocommit"):
        conn.exec_driver_sql("BEGIN")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that may read then write: on SQLite it takes the write lock up front
    (``BEGIN IMMEDIATE``), so two writers wait on ``busy_timeout`` instead of one failing at
    once with "database is locked" when both upgrade from reading; on PostgreSQL a plain one."""
    with engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
        yield conn


def create_tables(engine: Engine, metadata: sqlalchemy.MetaData) -> None:
    """Create `metadata`'s missing tables, safely against other processes doing the same: on
    PostgreSQL two nodes starting together would both find a table missing and the second
    ``CREATE TABLE`` would fail (duplicate table), so they take turns on an advisory lock; on
    SQLite the write transaction serializes them."""
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_xact_lock(TABLES_LOCK)))
        metadata.create_all(conn)


def is_connection_failure(exc: BaseException) -> bool:
    """True for failures of the connection (server down, restarted, unreachable, timed out),
    which a retry may cure; False for errors of the statement itself."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@contextmanager
def unavailable(step: str) -> Iterator[None]:
    """Run a database step; a connection failure becomes `ServiceUnavailable` naming `step`."""
    try:
        yield
    except DBAPIError as exc:
        if not is_connection_failure(exc):
            raise
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        # the driver's reason names the database host and port: the server log has it, callers do not
        logger.warning("database unavailable at step %r: %s", step, reason)
        raise ServiceUnavailable(f"the database is unavailable (failed at step {step!r}); retry later") from exc


# -- circuit breaker ---------------------------------------------------------------------------
CLOSED, OPEN, PROBING = "closed", "open", "probing"


@dataclasses.dataclass
class BreakerCounters:
    attempts: int = 0  # calls let through to the database
    failures: int = 0  # of those, connection failures
    rejected: int = 0  # calls failed at once, without touching the database
    opened: int = 0  # closed/probing -> open transitions


class CircuitBreaker:
    """Fail fast while the database is down (see the module's contract). Thread-safe; `clock`
    is injectable for tests."""

    def __init__(self, backoff_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff_s = backoff_s
        self.clock = clock
        self.state = CLOSED
        self.counters = BreakerCounters()
        self._opened_at = 0.0
        self._reason = ""
        self._lock = threading.Lock()

    def admit(self, step: str) -> None:
        """Let a call through, or raise `ServiceUnavailable` at once (open, or a probe is out)."""
        with self._lock:
            if self.state == OPEN and self.clock() - self._opened_at >= self.backoff_s:
                self.state = PROBING  # this call is the probe
            elif self.state != CLOSED:
                self.counters.rejected += 1
                raise ServiceUnavailable(f"the database is unavailable (failed at step {step!r}); the server retries "
                                         f"the connection every {self.backoff_s:g} s")
            self.counters.attempts += 1

    def succeeded(self) -> None:
        with self._lock:
            if self.state != CLOSED:
                logger.warning("database reachable again: circuit closed")
            self.state = CLOSED

    def failed(self, reason: str) -> None:
        with self._lock:
            self.counters.failures += 1
            if self.state != OPEN:
                self.counters.opened += 1
                logger.warning("database unavailable (%s): failing calls at once for %g s", reason, self.backoff_s)
            self.state, self._opened_at, self._reason = OPEN, self.clock(), reason

    @contextmanager
    def guard(self, step: str) -> Iterator[None]:
        """Run one database call through the breaker: a connection failure opens it and becomes
        `ServiceUnavailable` naming `step`; anything else (a success, a domain error, an
        integrity error) closes it."""
        self.admit(step)
        try:
            with unavailable(step):
                yield
        except ServiceUnavailable as exc:
            self.failed(exc.message.rpartition("): ")[2] or exc.message)
            raise
        except BaseException:
            self.succeeded()
            raise
        self.succeeded()
