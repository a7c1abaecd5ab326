"""The registry's tables (SQLAlchemy Core) and their versioned migrations.

One `METADATA` holds every registry table; the same definitions run on SQLite (the embedded
``<data-dir>/state.db``) and on PostgreSQL (``--registry postgresql://...``). Records are JSON
text in ``data``-like columns; keyed columns are for lookups::

    functions(name PK, seq, reserved_concurrency, last_version)
    versions(function, version, ordinal, data)   PK(function, version)
    aliases(function, name, data)                PK(function, name)
    event_invoke_configs(function, qualifier, data) PK(function, qualifier)
    policies(function, qualifier, revision_id, statements)  PK(function, qualifier)
    id_slices(slice PK, function UNIQUE, released_at)  a function's host id slice (sandbox/ids.py);
                                                 function NULL: released by a deleted function
                                                 at released_at (NULL: before version 2)
    layers(name PK, last_version)                a layer's version counter (never reused)
    layer_versions(layer, version, data)         PK(layer, version)
    function_tags(function PK, tags)             a function's tags
    schema_version(version)                      one row: the applied migration

Rows of versions, aliases, configs, policies and tags go with their function (ON DELETE CASCADE;
SQLite enforces it with ``PRAGMA foreign_keys=ON``, set by `snapfaas.database`).

Migrations: `MIGRATIONS` is an ordered list of ``(version, step)``; a step is a plain function
on a `Connection` inside the migration transaction. `migrate(engine)` applies the missing ones
under an exclusive lock (PostgreSQL: a transaction-scoped advisory lock, so nodes starting at
once on an empty database queue up; SQLite: ``BEGIN IMMEDIATE``), and is a cheap read when
the schema is current. A state.db from before migrations (tables, no ``schema_version``) is
version 1's schema: step 1 creates only what is missing, then the database is stamped.

Step 1 creates missing tables from the *current* definitions, so later steps check before they
add (a table step 1 just created already has the column step N adds).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy
from sqlalchemy import Column, Float, ForeignKey, Integer, MetaData, Table, Text
from sqlalchemy.engine import Connection, Engine

from snapfaas.database import write_transaction

METADATA = MetaData()
# Names sort and compare bytewise on both engines (PostgreSQL's default collation would not:
# pagination orders and name lookups must be the same as SQLite's).
Key = Text().with_variant(Text(collation="C"), "postgresql")

functions = Table(
    "functions", METADATA,
    Column("name", Key, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("reserved_concurrency", Integer),
    Column("last_version", Integer, nullable=False, server_default="0"),
)
versions = Table(
    "versions", METADATA,
    Column("function", Key, ForeignKey("functions.name", ondelete="CASCADE"), primary_key=True),
    Column("version", Key, primary_key=True),
    Column("ordinal", Integer, nullable=False),
    Column("data", Text, nullable=False),
)
aliases = Table(
    "aliases", METADATA,
    Column("function", Key, ForeignKey("functions.name", ondelete="CASCADE"), primary_key=True),
    Column("name", Key, primary_key=True),
    Column("data", Text, nullable=False),
)
event_invoke_configs = Table(
    "event_invoke_configs", METADATA,
    Column("function", Key, ForeignKey("functions.name", ondelete="CASCADE"), primary_key=True),
    Column("qualifier", Key, primary_key=True),
    Column("data", Text, nullable=False),
)
policies = Table(
    "policies", METADATA,
    Column("function", Key, ForeignKey("functions.name", ondelete="CASCADE"), primary_key=True),
    Column("qualifier", Key, primary_key=True),
    Column("revision_id", Text, nullable=False),
    Column("statements", Text, nullable=False),
)
id_slices = Table(
    "id_slices", METADATA,
    Column("slice", Integer, primary_key=True, autoincrement=False),
    Column("function", Key, unique=True),
    Column("released_at", Float),  # (version 2) when its function was deleted (epoch seconds)
)
layers = Table(
    "layers", METADATA,
    Column("name", Key, primary_key=True),
    Column("last_version", Integer, nullable=False, server_default="0"),
)
layer_versions = Table(
    "layer_versions", METADATA,
    Column("layer", Key, primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("data", Text, nullable=False),
)
function_tags = Table(
    "function_tags", METADATA,
    Column("function", Key, ForeignKey("functions.name", ondelete="CASCADE"), primary_key=True),
    Column("tags", Text, nullable=False),
)
schema_version = Table(
    "schema_version", METADATA,
    Column("version", Integer, nullable=False),
)

VERSION_1_TABLES = (functions, versions, aliases, event_invoke_configs, policies, id_slices, layers,
                    layer_versions, function_tags)
# pg_advisory_xact_lock key of the registry's migrations (any constant unique to snapfaas)
MIGRATION_LOCK = 0x5F_A5_0001


def _version_1(conn: Connection) -> None:
    """The schema of state.db as of the first migration (creates only missing tables)."""
    METADATA.create_all(conn, tables=list(VERSION_1_TABLES), checkfirst=True)


def _version_2(conn: Connection) -> None:
    """id_slices.released_at: when a slice was released (a cluster reclaims it only after a grace)."""
    if "released_at" not in {c["name"] for c in sqlalchemy.inspect(conn).get_columns("id_slices")}:
        kind = Float().compile(dialect=conn.dialect)
        conn.execute(sqlalchemy.text(f"ALTER TABLE id_slices ADD COLUMN released_at {kind}"))


Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[int, Migration]] = [
    (1, _version_1),
    (2, _version_2),
]
LATEST_SCHEMA = MIGRATIONS[-1][0]


class SchemaError(RuntimeError):
    """The database's schema is newer than this code knows (a newer snapfaas wrote it)."""


def current_version(conn: Connection) -> int | None:
    """The applied schema version; None if the database has none recorded."""
    if not sqlalchemy.inspect(conn).has_table("schema_version"):
        return None
    row = conn.execute(sqlalchemy.select(schema_version.c.version)).first()
    return None if row is None else int(row[0])


def migrate(engine: Engine, migrations: list[tuple[int, Migration]] | None = None) -> int:
    """Bring the database to the newest schema; returns the version it is at. Safe to run from
    several processes at once (see the module's contract)."""
    steps = MIGRATIONS if migrations is None else migrations
    newest = steps[-1][0]
    with engine.connect() as conn:  # the fast path: nothing to do
        at = current_version(conn)
        conn.rollback()
    if at is not None and at >= newest:
        if at > newest:
            raise SchemaError(f"registry open failed at step 'migrate': the database's schema is version {at}, "
                              f"newer than this snapfaas knows ({newest})")
        return at
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        schema_version.create(conn, checkfirst=True)
        at = current_version(conn) or 0  # a pre-migration state.db: step 1 only adds what is missing
        for version, step in steps:
            if version > at:
                step(conn)
                at = version
        conn.execute(schema_version.delete())
        conn.execute(schema_version.insert().values(version=at))
    return at
