"""Persistence for functions, versions and aliases, on SQLAlchemy Core (registry/schema.py).

The same code runs on SQLite (the embedded default, ``<data-dir>/state.db``) and on PostgreSQL
(``--registry postgresql://...``, shared by the nodes of a cluster).

Every mutating method is one transaction: a crash mid-request leaves either the old state or the
new one, never half a function. Methods are synchronous and short. Concurrency: on SQLite a
write transaction takes the database's write lock up front (``BEGIN IMMEDIATE``); on PostgreSQL
several nodes may run the same mutation at once, so every mutation of a function first locks its
``functions`` row (``SELECT ... FOR UPDATE``), slice allocation takes a transaction-scoped
advisory lock, and unique constraints back the existence checks (an `IntegrityError` from a lost
race becomes the Lambda error the check would have raised). Reads inside a transaction (on the
same thread) see the transaction.

A version's layers are kept by content (their zips' digests in the version's record): deleting a
layer version removes its record, not the package a function version still uses.

`observers` are called with a function's name after every committed change to it (state,
concurrency, deletion, event invoke config), so in-memory schedulers can re-read it. On
PostgreSQL the change is also announced to the other nodes (``NOTIFY snapfaas_changes`` in the
same transaction); `listen(loop)` starts this node's listener (registry/changes.py), which calls
the observers on `loop` for changes other nodes commit.

A policy is the resource-based policy (AddPermission statements) of the unqualified function
(``qualifier`` = '') or of one version or alias; it goes with what it is attached to.

A state.db from before id slices gets its table on open and a slice for every function; one from
before versioned migrations is stamped version 1 (registry/schema.py).

While a PostgreSQL registry is unreachable, calls fail at once with `ServiceUnavailable` (503)
through a `CircuitBreaker` instead of each waiting for the connect timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from snapfaas.database import CircuitBreaker, is_postgres_url, open_engine, write_transaction
from snapfaas.errors import Conflict, InvalidParameterValue, NotFound, PreconditionFailed, ServiceError
from snapfaas.registry import schema
from snapfaas.registry.changes import CHANNEL, ChangeListener
from snapfaas.registry.model import (
    LATEST, Alias, EventInvokeConfig, FunctionInfo, FunctionVersion, State, new_revision, now_iso,
)
from snapfaas.registry.schema import (
    aliases, event_invoke_configs, function_tags, functions, id_slices, layer_versions, policies, versions,
)
from snapfaas.sandbox.ids import DEFAULT_SLICES

logger = logging.getLogger(__name__)

SLICE_LOCK = 0x5F_A5_0002  # pg_advisory_xact_lock key serializing id slice allocation
# A shared (PostgreSQL) registry reuses a deleted function's id slice only this long after the
# deletion: other nodes retire its idle environments when they hear of it, and a busy one ends
# within Lambda's longest timeout (900 s). This node's own files and processes are checked too.
CLUSTER_SLICE_GRACE_S = 900.0 + 60.0
REVISION_MISMATCH = ("The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias "
                     "API to retrieve the latest Revision Id")


# Statements built once (bound parameters): building and caching a Core statement per call costs
# more than SQLite's whole lookup, and the hot path (every invoke) runs these.
P = sqlalchemy.bindparam
FUNCTION_INFO = select(functions.c.name, functions.c.reserved_concurrency, functions.c.last_version).where(
    functions.c.name == P("name"))
FUNCTION_EXISTS = select(functions.c.name).where(functions.c.name == P("name"))
LOCK_FUNCTION = FUNCTION_EXISTS.with_for_update()
VERSION = select(versions.c.data).where(versions.c.function == P("name"), versions.c.version == P("version"))
VERSIONS_OF = select(versions.c.data).where(versions.c.function == P("name")).order_by(versions.c.ordinal)
ALIAS = select(aliases.c.data).where(aliases.c.function == P("name"), aliases.c.name == P("alias"))
ALIASES_OF = select(aliases.c.data).where(aliases.c.function == P("name")).order_by(aliases.c.name)
SLICE_OF = select(id_slices.c.slice).where(id_slices.c.function == P("name"))
POLICY = select(policies.c.revision_id, policies.c.statements).where(
    policies.c.function == P("name"), policies.c.qualifier == P("qualifier"))
EVENT_CONFIG = select(event_invoke_configs.c.data).where(
    event_invoke_configs.c.function == P("name"), event_invoke_configs.c.qualifier == P("qualifier"))
EVENT_CONFIGS_OF = select(event_invoke_configs.c.data).where(event_invoke_configs.c.function == P("name"))


@dataclasses.dataclass(frozen=True)
class Policy:
    revision_id: str
    statements: list[dict[str, Any]]


def upsert(conn: Connection, table: sqlalchemy.Table, values: dict[str, Any], keys: tuple[str, ...]) -> None:
    """INSERT, or UPDATE the row with the same `keys` (SQLite's INSERT OR REPLACE, portably)."""
    dialect = pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect
    statement = dialect.insert(table).values(**values)
    rest = {k: v for k, v in values.items() if k not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=rest))


def insert_missing(conn: Connection, table: sqlalchemy.Table, values: dict[str, Any]) -> None:
    """INSERT unless a row with the same key exists (SQLite's INSERT OR IGNORE, portably)."""
    dialect = pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect
    conn.execute(dialect.insert(table).values(**values).on_conflict_do_nothing())


class Registry:
    def __init__(self, target: Path | str, arn_prefix: str, id_slices: int = DEFAULT_SLICES,
                 clock: Callable[[], float] = time.time) -> None:
        """`target`: a state.db path (SQLite) or a ``postgresql://`` URL. `id_slices`: how many
        host id slices exist (``--id-range-slices``). Raises `ServiceError` if a function holds a
        slice beyond it (the range was shrunk); `ServiceUnavailable` if PostgreSQL is unreachable.
        `clock` (epoch seconds) stamps slice releases."""
        self.arn_prefix = arn_prefix  # arn:aws:lambda:<region>:<account>:function:
        self.id_slices = id_slices
        self.clock = clock
        self.postgres = is_postgres_url(target)
        # how long a released slice waits before `reclaim_slices` may free it (see CLUSTER_SLICE_GRACE_S)
        self.slice_grace_s = CLUSTER_SLICE_GRACE_S if self.postgres else 0.0
        self.engine: Engine = open_engine(target)
        self._reader = self.engine.execution_options(sqlite_autocommit=True)  # one-statement reads
        self.breaker: CircuitBreaker | None = CircuitBreaker() if self.postgres else None
        self.observers: list[Callable[[str], None]] = []
        # called (on the loop, after `observers`) only for changes other nodes committed: caches
        # this node keeps of registry data that its own control plane updates directly
        self.remote_observers: list[Callable[[str], None]] = []
        self.listener: ChangeListener | None = None  # once `listen` ran (PostgreSQL)
        self.listener_token = new_revision()  # tags this registry's notifications: its listener skips them
        self._local = threading.local()
        self._compiled: dict[int, tuple[Any, str, tuple[str, ...]]] = {}  # id(statement) -> (statement, SQL, names)
        try:
            with self._guard("migrate"):
                schema.migrate(self.engine)
            self._check_slices()
        except BaseException:
            self.engine.dispose()
            raise

    # -- connections and transactions --------------------------------------------------------
    @contextmanager
    def _guard(self, step: str) -> Iterator[None]:
        if self.breaker is None:
            yield
        else:
            with self.breaker.guard(step):
                yield

    @contextmanager
    def _tx(self, step: str = "write") -> Iterator[Connection]:
        """The current transaction (on this thread), or a new write transaction; observers of the
        functions noted with `_note` run after the outermost one commits."""
        current: Connection | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        noted: list[str] = []
        with self._guard(step), write_transaction(self.engine) as conn:
            self._local.conn, self._local.noted = conn, noted
            try:
                yield conn
            finally:
                self._local.conn = self._local.noted = None
        for name in dict.fromkeys(noted):
            self._changed(name)

    @contextmanager
    def _read(self, step: str = "read") -> Iterator[Connection]:
        """The current transaction's connection, or a short read-only one."""
        current: Connection | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self._guard(step), self._reader.connect() as conn:
            yield conn
            conn.rollback()

    def _rows(self, statement: Any, params: dict[str, Any] | None = None, step: str = "read") -> list[Any]:
        if params is not None and not self.postgres and getattr(self._local, "conn", None) is None:
            return self._sqlite_rows(statement, params)
        with self._read(step) as conn:
            return list(conn.execute(statement, params).all())

    def _sqlite_rows(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        """The embedded hot path (every invoke's lookups): a statement built once (module
        constant, bound parameters) is compiled once and run on the pooled driver connection,
        a single autocommit SELECT. SQLAlchemy's per-call execution machinery costs ~5x the
        lookup itself on SQLite; the SQL is still Core's, compiled for this dialect."""
        compiled = self._compiled.get(id(statement))
        if compiled is None:
            done = statement.compile(dialect=self.engine.dialect)
            compiled = self._compiled[id(statement)] = (statement, str(done), tuple(done.positiontup or ()))
        _, sql, order = compiled
        with self._reader.connect() as conn:
            return conn.connection.dbapi_connection.execute(sql, [params[k] for k in order]).fetchall()

    def _note(self, conn: Connection, name: str) -> None:
        """Record a change of function `name` in the current transaction: its observers here run
        after the commit, other nodes hear of it when it commits (NOTIFY is transactional)."""
        self._local.noted.append(name)
        if self.postgres:
            payload = f"{self.listener_token}:{name}"
            conn.execute(select(func.pg_notify(CHANNEL, payload)))

    def _changed_all(self, names: list[str]) -> None:
        """After missed notifications (on the loop): remote observers for every function in the
        registry and every one a remote observer holds state for (deleted ones included)."""
        known: set[str] = set(names)
        for observer in self.remote_observers:
            known.update(getattr(observer, "known", lambda: ())())
        for name in sorted(known):
            self._changed(name, remote=True)

    def _changed(self, name: str, remote: bool = False) -> None:
        for observer in self.observers + (self.remote_observers if remote else []):
            try:
                observer(name)
            except Exception:  # an observer's bug must not fail a committed change
                logger.exception("registry observer failed at step 'notify' for function %s", name)

    def _lock(self, conn: Connection, name: str) -> bool:
        """Lock function `name`'s row until the transaction ends (PostgreSQL; SQLite's write
        lock is already held). False if there is no such function."""
        return conn.execute(LOCK_FUNCTION, {"name": name}).first() is not None

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hear other nodes' changes (PostgreSQL only): observers run on `loop`, and for every
        function after the listener reconnects (changes may have been missed meanwhile)."""
        if not self.postgres or self.listener is not None:
            return
        self.listener = ChangeListener(self, loop)
        self.listener.start()

    def function_names(self) -> list[str]:
        return [r[0] for r in self._rows(select(functions.c.name).order_by(functions.c.name))]

    def _check_slices(self) -> None:
        """Give every function without a slice one (a state.db from before slices), and refuse
        slices beyond `id_slices`."""
        with self._tx("check id slices") as db:
            beyond = db.execute(select(id_slices.c.function, id_slices.c.slice)
                                .where(id_slices.c.slice >= self.id_slices).order_by(id_slices.c.slice)).all()
            if beyond:
                held = ", ".join(f"{f or '(released)'}: {s}" for f, s in beyond)
                raise ServiceError(f"registry open failed at step 'check id slices': slices beyond --id-range-slices "
                                   f"{self.id_slices} are held ({held}); raise --id-range-slices")
            holders = select(id_slices.c.function).where(id_slices.c.function.is_not(None))
            missing = db.execute(select(functions.c.name).where(functions.c.name.not_in(holders))
                                 .order_by(functions.c.seq)).all()
            for (name,) in missing:
                self._allocate_slice(db, name)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        self.engine.dispose()

    def transaction(self, function: str | None = None) -> Any:
        """One write transaction for the registry's satellite stores (layers, tags, policies),
        used as ``with registry.transaction() as conn:``; with `function`, its row is locked
        first (a read-modify-write of its data is then atomic across nodes). Registry methods
        called inside run in it."""
        @contextmanager
        def scope() -> Iterator[Connection]:
            with self._tx() as conn:
                if function is not None:
                    self._lock(conn, function)
                yield conn
        return scope()

    def rows(self, statement: Any) -> list[Any]:
        """Rows of a read-only Core statement (for the satellite stores)."""
        return self._rows(statement)

    # -- ARNs and errors -------------------------------------------------------------------
    def function_arn(self, name: str, qualifier: str | None = None) -> str:
        return self.arn_prefix + name + (f":{qualifier}" if qualifier else "")

    def _not_found(self, name: str, qualifier: str | None = None) -> NotFound:
        return NotFound(f"Function not found: {self.function_arn(name, qualifier)}")

    # -- functions -------------------------------------------------------------------------
    def function_info(self, name: str) -> FunctionInfo:
        rows = self._rows(FUNCTION_INFO, {"name": name})
        if not rows:
            raise self._not_found(name)
        return FunctionInfo(*rows[0])

    def create_function(self, latest: FunctionVersion, tags: dict[str, str] | None = None) -> None:
        exists = Conflict(f"Function already exist: {latest.name}")
        with self._tx("create function") as db:
            if db.execute(FUNCTION_EXISTS, {"name": latest.name}).first():
                raise exists
            seq = db.execute(select(func.coalesce(func.max(functions.c.seq), 0) + 1)).scalar_one()
            try:
                db.execute(functions.insert().values(name=latest.name, seq=seq))
            except IntegrityError as exc:  # another node created it since the check
                raise exists from exc
            self._allocate_slice(db, latest.name)
            self._put(db, latest)
            if tags:
                db.execute(function_tags.insert().values(function=latest.name, tags=json.dumps(tags)))

    # -- host id slices --------------------------------------------------------------------
    def _allocate_slice(self, db: Connection, name: str) -> int:
        """The lowest slice no function holds and none is draining from; raises ServiceError
        when all `id_slices` are taken. Allocations are serialized across nodes."""
        if self.postgres:
            db.execute(select(func.pg_advisory_xact_lock(SLICE_LOCK)))
        index = 0
        for (taken,) in db.execute(select(id_slices.c.slice).order_by(id_slices.c.slice)):
            if taken != index:
                break
            index += 1
        if index >= self.id_slices:
            raise ServiceError(f"CreateFunction failed at step 'allocate id slice': all {self.id_slices} host id slices "
                               "are in use (raise --id-range-slices)")
        db.execute(id_slices.insert().values(slice=index, function=name))
        return index

    def id_slice(self, name: str) -> int:
        """The host id slice of function `name`; NotFound if there is no such function."""
        rows = self._rows(SLICE_OF, {"name": name})
        if not rows:
            raise self._not_found(name)
        return int(rows[0][0])

    def released_slices(self) -> list[int]:
        """Slices of deleted functions not reclaimed yet."""
        return [int(r[0]) for r in self._rows(select(id_slices.c.slice).where(id_slices.c.function.is_(None))
                                              .order_by(id_slices.c.slice))]

    def reclaim_slices(self, in_use: Callable[[int], bool]) -> list[int]:
        """Make released slices reusable, except those for which `in_use(slice)` (files or
        processes of the deleted function still exist here) and, on a shared registry, those
        released less than `slice_grace_s` ago (other nodes' environments may still run in
        them); returns the reclaimed ones."""
        cutoff = self.clock() - self.slice_grace_s
        settled = {int(r[0]) for r in self._rows(
            select(id_slices.c.slice).where(id_slices.c.function.is_(None),
                                            sqlalchemy.or_(id_slices.c.released_at.is_(None),
                                                           id_slices.c.released_at <= cutoff)))}
        free = [s for s in self.released_slices() if s in settled and not in_use(s)]
        with self._tx("reclaim id slices") as db:
            for index in free:
                db.execute(delete(id_slices).where(and_(id_slices.c.slice == index, id_slices.c.function.is_(None))))
        return free

    def referenced_trees(self) -> set[tuple[int, str]]:
        """(slice, tree name) of every version's code, layers and merged /opt tree: the trees in use."""
        rows = self._rows(select(id_slices.c.slice, versions.c.data)
                          .join(id_slices, id_slices.c.function == versions.c.function))
        out: set[tuple[int, str]] = set()
        for index, data in rows:
            version = FunctionVersion.from_json(json.loads(data))
            out.update((int(index), name) for name in version.tree_names())
        return out

    def _put(self, db: Connection, version: FunctionVersion) -> None:
        ordinal = 0 if version.is_latest else int(version.version)
        upsert(db, versions, {"function": version.name, "version": version.version, "ordinal": ordinal,
                              "data": json.dumps(version.to_json())}, ("function", "version"))

    def get_version(self, name: str, version: str) -> FunctionVersion:
        rows = self._rows(VERSION, {"name": name, "version": version})
        if not rows:
            self.function_info(name)  # raises the unqualified not-found first
            raise self._not_found(name, version)
        return FunctionVersion.from_json(json.loads(rows[0][0]))

    def resolve(self, name: str, qualifier: str | None) -> tuple[FunctionVersion, Alias | None]:
        """Map a qualifier ($LATEST, version number, alias name or None) to a version."""
        if qualifier is None or qualifier == LATEST or qualifier.isdigit():
            return self.get_version(name, qualifier or LATEST), None
        alias = self.get_alias(name, qualifier)
        return self.get_version(name, alias.version), alias

    def update_version(
        self, name: str, version: str, change: Callable[[FunctionVersion], None], revision_id: str | None = None
    ) -> FunctionVersion:
        """Apply `change` to a version inside one transaction, enforcing RevisionId if given."""
        with self._tx("update version") as db:
            self._lock(db, name)
            current = self.get_version(name, version)
            if revision_id is not None and revision_id != current.revision_id:
                raise PreconditionFailed(REVISION_MISMATCH)
            change(current)
            self._put(db, current)
            self._note(db, name)
        return current

    def set_state(self, name: str, version: str, state: State, reason: str | None, code: str | None) -> None:
        """Best-effort state move for background work; a deleted function is silently ignored."""
        try:
            self.update_version(name, version, lambda v: v.move_to(state, reason, code))
        except NotFound:
            pass

    def list_latest(self) -> list[FunctionVersion]:
        rows = self._rows(select(versions.c.data).join(functions, functions.c.name == versions.c.function)
                          .where(versions.c.version == LATEST).order_by(functions.c.name))
        return [FunctionVersion.from_json(json.loads(r[0])) for r in rows]

    def list_all_versions(self) -> list[FunctionVersion]:
        rows = self._rows(select(versions.c.data).order_by(versions.c.function, versions.c.ordinal))
        return [FunctionVersion.from_json(json.loads(r[0])) for r in rows]

    def list_versions(self, name: str) -> list[FunctionVersion]:
        self.function_info(name)
        rows = self._rows(VERSIONS_OF, {"name": name})
        return [FunctionVersion.from_json(json.loads(r[0])) for r in rows]

    def publish(
        self,
        name: str,
        code_sha256: str | None,
        revision_id: str | None,
        description: str | None,
        allow_unsettled: bool = False,
    ) -> tuple[FunctionVersion, bool]:
        """Publish $LATEST as a new version. Returns ``(version, created)``.

        If nothing changed since the last published version, that version is returned with
        ``created=False``, as Lambda does. `allow_unsettled` publishes a $LATEST that is still
        being created or updated (CreateFunction/UpdateFunctionCode with ``Publish``). Two
        publishes at once (two nodes) are serialized by the function's row lock: numbers are
        never reused nor given twice.
        """
        with self._tx("publish version") as db:
            self._lock(db, name)
            latest = self.get_version(name, LATEST)
            if not allow_unsettled and (latest.state == State.PENDING or latest.last_update_status == "InProgress"):
                raise Conflict(
                    "The operation cannot be performed at this time. An update is in progress for resource: "
                    + self.function_arn(name)
                )
            if code_sha256 is not None and code_sha256 != latest.code_sha256:
                raise InvalidParameterValue(
                    f"CodeSHA256 ({code_sha256}) is different from current CodeSHA256 in $LATEST ({latest.code_sha256}). Please try again with the CodeSHA256 in $LATEST."
                )
            if revision_id is not None and revision_id != latest.revision_id:
                raise PreconditionFailed(REVISION_MISMATCH)
            info = self.function_info(name)
            if info.last_version:
                try:
                    previous = self.get_version(name, str(info.last_version))
                except NotFound:
                    previous = None
                if previous is not None and previous.config_fingerprint() == latest.config_fingerprint():
                    return previous, False
            number = info.last_version + 1
            version = dataclasses.replace(
                latest,
                version=str(number),
                revision_id=new_revision(),
                last_modified=now_iso(),
                description=latest.description if description is None else description,
                source_description=latest.description,
                last_update_status="Successful",
                last_update_status_reason=None,
                last_update_status_reason_code=None,
            )
            version.state, version.state_reason, version.state_reason_code = State.PENDING, "The function is being created.", "Creating"
            db.execute(update(functions).where(functions.c.name == name).values(last_version=number))
            self._put(db, version)
            return version, True

    def delete_function(self, name: str) -> list[FunctionVersion]:
        """Delete a function with all versions and aliases; returns what was deleted."""
        with self._tx("delete function") as db:
            self._lock(db, name)
            deleted = self.list_versions(name)
            db.execute(delete(functions).where(functions.c.name == name))
            db.execute(update(id_slices).where(id_slices.c.function == name).values(function=None,
                                                                                      released_at=self.clock()))
            self._note(db, name)
        return deleted

    def delete_version(self, name: str, version: str) -> FunctionVersion:
        with self._tx("delete version") as db:
            self._lock(db, name)
            record = self.get_version(name, version)
            used_by = [a.name for a in self.list_aliases(name) if a.version == version or version in a.routing]
            if used_by:
                raise Conflict(
                    f"Unable to delete version because the following aliases reference it: [{', '.join(used_by)}]"
                )
            db.execute(delete(versions).where(and_(versions.c.function == name, versions.c.version == version)))
            self._delete_attached(db, name, version)
            self._note(db, name)
        return record

    @staticmethod
    def _delete_attached(db: Connection, function: str, qualifier: str) -> None:
        """The event invoke config and policy of one version or alias (they go with it)."""
        for table in (event_invoke_configs, policies):
            db.execute(delete(table).where(and_(table.c.function == function, table.c.qualifier == qualifier)))

    # -- aliases ---------------------------------------------------------------------------
    @staticmethod
    def _put_alias(db: Connection, alias: Alias) -> None:
        upsert(db, aliases, {"function": alias.function, "name": alias.name,
                             "data": json.dumps(dataclasses.asdict(alias))}, ("function", "name"))

    def get_alias(self, function: str, name: str) -> Alias:
        rows = self._rows(ALIAS, {"name": function, "alias": name})
        if not rows:
            self.function_info(function)
            raise NotFound(f"Alias not found: {self.function_arn(function, name)}")
        return Alias(**json.loads(rows[0][0]))

    def list_aliases(self, function: str) -> list[Alias]:
        self.function_info(function)
        rows = self._rows(ALIASES_OF, {"name": function})
        return [Alias(**json.loads(r[0])) for r in rows]

    def _check_alias_target(self, alias: Alias) -> None:
        for version in (alias.version, *alias.routing):
            self.get_version(alias.function, version)

    def create_alias(self, alias: Alias) -> Alias:
        exists = Conflict(f"Alias already exists: {self.function_arn(alias.function, alias.name)}")
        with self._tx("create alias") as db:
            self._lock(db, alias.function)
            self._check_alias_target(alias)
            if db.execute(select(aliases.c.name).where(
                    and_(aliases.c.function == alias.function, aliases.c.name == alias.name))).first():
                raise exists
            try:
                db.execute(aliases.insert().values(function=alias.function, name=alias.name,
                                                   data=json.dumps(dataclasses.asdict(alias))))
            except IntegrityError as exc:  # not reachable with the row lock; kept as the constraint's meaning
                raise exists from exc
            return alias

    def update_alias(self, function: str, name: str, change: Callable[[Alias], None], revision_id: str | None) -> Alias:
        with self._tx("update alias") as db:
            self._lock(db, function)
            alias = self.get_alias(function, name)
            if revision_id is not None and revision_id != alias.revision_id:
                raise PreconditionFailed(REVISION_MISMATCH)
            change(alias)
            alias.revision_id = new_revision()
            self._check_alias_target(alias)
            self._put_alias(db, alias)
            self._note(db, function)
        return alias

    def delete_alias(self, function: str, name: str) -> None:
        with self._tx("delete alias") as db:
            self._lock(db, function)
            self.function_info(function)
            db.execute(delete(aliases).where(and_(aliases.c.function == function, aliases.c.name == name)))
            self._delete_attached(db, function, name)
            self._note(db, function)

    # -- resource-based policies ---------------------------------------------------------------
    def policy(self, function: str, qualifier: str) -> Policy | None:
        """The policy of `function` at `qualifier` ('' = unqualified), or None if it has none."""
        rows = self._rows(POLICY, {"name": function, "qualifier": qualifier})
        return None if not rows else Policy(rows[0][0], json.loads(rows[0][1]))

    def save_policy(self, function: str, qualifier: str, statements: list[dict[str, Any]]) -> str | None:
        """Replace the policy's statements (deleting it when none are left); returns the new
        revision id (None once deleted). The function must exist."""
        with self._tx("save policy") as db:
            self._lock(db, function)
            self.function_info(function)
            if not statements:
                db.execute(delete(policies).where(and_(policies.c.function == function, policies.c.qualifier == qualifier)))
                return None
            revision = new_revision()
            upsert(db, policies, {"function": function, "qualifier": qualifier, "revision_id": revision,
                                  "statements": json.dumps(statements)}, ("function", "qualifier"))
            return revision

    # -- concurrency -----------------------------------------------------------------------
    def set_reserved_concurrency(self, name: str, value: int | None) -> None:
        with self._tx("set reserved concurrency") as db:
            self._lock(db, name)
            self.function_info(name)
            db.execute(update(functions).where(functions.c.name == name).values(reserved_concurrency=value))
            self._note(db, name)

    # -- event invoke configs ----------------------------------------------------------------
    def get_event_config(self, function: str, qualifier: str) -> EventInvokeConfig | None:
        rows = self._rows(EVENT_CONFIG, {"name": function, "qualifier": qualifier})
        return None if not rows else EventInvokeConfig(**json.loads(rows[0][0]))

    def list_event_configs(self, function: str) -> list[EventInvokeConfig]:
        self.function_info(function)
        rows = self._rows(EVENT_CONFIGS_OF, {"name": function})
        configs = [EventInvokeConfig(**json.loads(r[0])) for r in rows]
        # $LATEST, then versions by number, then aliases by name
        return sorted(configs, key=lambda c: (c.qualifier != LATEST, not c.qualifier.isdigit(),
                                              int(c.qualifier) if c.qualifier.isdigit() else 0, c.qualifier))

    def put_event_config(self, config: EventInvokeConfig) -> EventInvokeConfig:
        """Store `config` if its function and qualifier (still) exist, in one transaction."""
        with self._tx("put event invoke config") as db:
            self._lock(db, config.function)
            self.resolve(config.function, config.qualifier)
            upsert(db, event_invoke_configs, {"function": config.function, "qualifier": config.qualifier,
                                              "data": json.dumps(dataclasses.asdict(config))}, ("function", "qualifier"))
            self._note(db, config.function)
        return config

    def delete_event_config(self, function: str, qualifier: str) -> bool:
        with self._tx("delete event invoke config") as db:
            self._lock(db, function)
            result = db.execute(delete(event_invoke_configs).where(
                and_(event_invoke_configs.c.function == function, event_invoke_configs.c.qualifier == qualifier)))
            self._note(db, function)
        return result.rowcount > 0

    def referenced_digests(self) -> set[str]:
        """Packages in use: every version's code and layers, and every layer version's."""
        out = {digest for v in self.list_all_versions() for digest in (v.code_digest, *v.layer_digests)}
        out.update(json.loads(data)["digest"] for (data,) in self._rows(select(layer_versions.c.data)))
        return out
