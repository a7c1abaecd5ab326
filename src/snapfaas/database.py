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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from snapfaas.errors import ServiceUnavailable

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 15_000
POOL_SIZE = 8
POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


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
        return engine
    return sqlalchemy.create_engine(
        url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_SIZE, pool_timeout=CONNECT_TIMEOUT_S,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                      "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                      "application_name": "snapfaas"},
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


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
        raise ServiceUnavailable(f"the database is unavailable (failed at step {step!r}): {reason}") from exc
