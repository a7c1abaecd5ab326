"""SQLite persistence for functions, versions and aliases.

Every mutating method is one SQLite transaction: a crash mid-request leaves either the old
state or the new one, never half a function. Methods are synchronous and short; the daemon
calls them from its event loop thread only (one connection, no locking needed).

Schema (all records are JSON in `data`, keyed columns are for lookups)::

    functions(name PK, seq, reserved_concurrency, last_version)
    versions(function, version, ordinal, data)   PK(function, version)
    aliases(function, name, data)                PK(function, name)
    event_invoke_configs(function, qualifier, data) PK(function, qualifier)
    policies(function, qualifier, revision_id, statements)  PK(function, qualifier)
    id_slices(slice PK, function UNIQUE)         a function's host id slice (sandbox/ids.py);
                                                 function NULL: released by a deleted function,
                                                 reusable once `reclaim_slices` frees it
    layers(name PK, last_version)                a layer's version counter (never reused)
    layer_versions(layer, version, data)         PK(layer, version); registry/layers.py
    function_tags(function PK, tags)             a function's tags (registry/tags.py)

A version's layers are kept by content (their zips' digests in the version's record): deleting a
layer version removes its record, not the package a function version still uses.

`observers` are called with a function's name after every committed change to it (state,
concurrency, deletion, event invoke config), so in-memory schedulers can re-read it.

A policy is the resource-based policy (AddPermission statements) of the unqualified function
(``qualifier`` = '') or of one version or alias; it goes with what it is attached to.

A state.db from before id slices gets its table on open and a slice for every function.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from snapfaas.errors import Conflict, InvalidParameterValue, NotFound, PreconditionFailed, ServiceError
from snapfaas.registry.model import (
    LATEST, Alias, EventInvokeConfig, FunctionInfo, FunctionVersion, State, new_revision, now_iso,
)
from snapfaas.sandbox.ids import DEFAULT_SLICES

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    reserved_concurrency INTEGER,
    last_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    version TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (function, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (function, name)
);
CREATE TABLE IF NOT EXISTS event_invoke_configs (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    qualifier TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE IF NOT EXISTS policies (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    qualifier TEXT NOT NULL,
    revision_id TEXT NOT NULL,
    statements TEXT NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE IF NOT EXISTS id_slices (
    slice INTEGER PRIMARY KEY,
    function TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS layers (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS layer_versions (
    layer TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (layer, version)
);
CREATE TABLE IF NOT EXISTS function_tags (
    function TEXT PRIMARY KEY REFERENCES functions(name) ON DELETE CASCADE,
    tags TEXT NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class Policy:
    revision_id: str
    statements: list[dict[str, Any]]


class Registry:
    def __init__(self, path: Path, arn_prefix: str, id_slices: int = DEFAULT_SLICES) -> None:
        """`id_slices`: how many host id slices exist (``--id-range-slices``). Raises
        `ServiceError` if a function holds a slice beyond it (the range was shrunk)."""
        self.arn_prefix = arn_prefix  # arn:aws:lambda:<region>:<account>:function:
        self.id_slices = id_slices
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self.observers: list[Callable[[str], None]] = []
        try:
            self._check_slices()
        except ServiceError:
            self._db.close()
            raise

    def _changed(self, name: str) -> None:
        for observer in self.observers:
            try:
                observer(name)
            except Exception:  # an observer's bug must not fail a committed change
                logger.exception("registry observer failed at step 'notify' for function %s", name)

    def _check_slices(self) -> None:
        """Give every function without a slice one (a state.db from before slices), and refuse
        slices beyond `id_slices`."""
        with self._tx() as db:
            beyond = db.execute("SELECT function, slice FROM id_slices WHERE slice >= ? ORDER BY slice", (self.id_slices,)).fetchall()
            if beyond:
                held = ", ".join(f"{f or '(released)'}: {s}" for f, s in beyond)
                raise ServiceError(f"registry open failed at step 'check id slices': slices beyond --id-range-slices "
                                   f"{self.id_slices} are held ({held}); raise --id-range-slices")
            missing = db.execute(
                "SELECT name FROM functions WHERE name NOT IN (SELECT function FROM id_slices WHERE function IS NOT NULL) ORDER BY seq"
            ).fetchall()
            for (name,) in missing:
                self._allocate_slice(db, name)

    def close(self) -> None:
        self._db.close()

    def transaction(self) -> Any:
        """One write transaction for the registry's satellite stores (layers, tags), used as
        ``with registry.transaction() as db:``."""
        return self._tx()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement (for the satellite stores)."""
        return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- ARNs and errors -------------------------------------------------------------------
    def function_arn(self, name: str, qualifier: str | None = None) -> str:
        return self.arn_prefix + name + (f":{qualifier}" if qualifier else "")

    def _not_found(self, name: str, qualifier: str | None = None) -> NotFound:
        return NotFound(f"Function not found: {self.function_arn(name, qualifier)}")

    # -- functions -------------------------------------------------------------------------
    def function_info(self, name: str) -> FunctionInfo:
        row = self._db.execute(
            "SELECT name, reserved_concurrency, last_version FROM functions WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            raise self._not_found(name)
        return FunctionInfo(*row)

    def create_function(self, latest: FunctionVersion, tags: dict[str, str] | None = None) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM functions WHERE name=?", (latest.name,)).fetchone():
                raise Conflict(f"Function already exist: {latest.name}")
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM functions").fetchone()[0]
            db.execute("INSERT INTO functions(name, seq) VALUES (?, ?)", (latest.name, seq))
            self._allocate_slice(db, latest.name)
            self._put(db, latest)
            if tags:
                db.execute("INSERT INTO function_tags(function, tags) VALUES (?, ?)", (latest.name, json.dumps(tags)))

    # -- host id slices --------------------------------------------------------------------
    def _allocate_slice(self, db: sqlite3.Connection, name: str) -> int:
        """The lowest slice no function holds and none is draining from; raises ServiceError
        when all `id_slices` are taken."""
        index = 0
        for (taken,) in db.execute("SELECT slice FROM id_slices ORDER BY slice"):
            if taken != index:
                break
            index += 1
        if index >= self.id_slices:
            raise ServiceError(f"CreateFunction failed at step 'allocate id slice': all {self.id_slices} host id slices "
                               "are in use (raise --id-range-slices)")
        db.execute("INSERT INTO id_slices(slice, function) VALUES (?, ?)", (index, name))
        return index

    def id_slice(self, name: str) -> int:
        """The host id slice of function `name`; NotFound if there is no such function."""
        row = self._db.execute("SELECT slice FROM id_slices WHERE function=?", (name,)).fetchone()
        if row is None:
            raise self._not_found(name)
        return int(row[0])

    def released_slices(self) -> list[int]:
        """Slices of deleted functions not reclaimed yet."""
        return [int(r[0]) for r in self._db.execute("SELECT slice FROM id_slices WHERE function IS NULL ORDER BY slice")]

    def reclaim_slices(self, in_use: Callable[[int], bool]) -> list[int]:
        """Make released slices reusable, except those for which `in_use(slice)` (files or
        processes of the deleted function still exist); returns the reclaimed ones."""
        free = [s for s in self.released_slices() if not in_use(s)]
        with self._tx() as db:
            for index in free:
                db.execute("DELETE FROM id_slices WHERE slice=? AND function IS NULL", (index,))
        return free

    def referenced_trees(self) -> set[tuple[int, str]]:
        """(slice, tree name) of every version's code, layers and merged /opt tree: the trees in use."""
        rows = self._db.execute(
            "SELECT s.slice, v.data FROM versions v JOIN id_slices s ON s.function=v.function"
        ).fetchall()
        out: set[tuple[int, str]] = set()
        for index, data in rows:
            version = FunctionVersion.from_json(json.loads(data))
            out.update((int(index), name) for name in version.tree_names())
        return out

    def _put(self, db: sqlite3.Connection, version: FunctionVersion) -> None:
        ordinal = 0 if version.is_latest else int(version.version)
        db.execute(
            "INSERT OR REPLACE INTO versions(function, version, ordinal, data) VALUES (?, ?, ?, ?)",
            (version.name, version.version, ordinal, json.dumps(version.to_json())),
        )

    def get_version(self, name: str, version: str) -> FunctionVersion:
        row = self._db.execute(
            "SELECT data FROM versions WHERE function=? AND version=?", (name, version)
        ).fetchone()
        if row is None:
            self.function_info(name)  # raises the unqualified not-found first
            raise self._not_found(name, version)
        return FunctionVersion.from_json(json.loads(row[0]))

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
        with self._tx() as db:
            current = self.get_version(name, version)
            if revision_id is not None and revision_id != current.revision_id:
                raise PreconditionFailed(
                    "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
                )
            change(current)
            self._put(db, current)
        self._changed(name)
        return current

    def set_state(self, name: str, version: str, state: State, reason: str | None, code: str | None) -> None:
        """Best-effort state move for background work; a deleted function is silently ignored."""
        try:
            self.update_version(name, version, lambda v: v.move_to(state, reason, code))
        except NotFound:
            pass

    def list_latest(self) -> list[FunctionVersion]:
        rows = self._db.execute(
            "SELECT v.data FROM versions v JOIN functions f ON f.name=v.function WHERE v.version=? ORDER BY f.name",
            (LATEST,),
        ).fetchall()
        return [FunctionVersion.from_json(json.loads(r[0])) for r in rows]

    def list_all_versions(self) -> list[FunctionVersion]:
        rows = self._db.execute("SELECT data FROM versions ORDER BY function, ordinal").fetchall()
        return [FunctionVersion.from_json(json.loads(r[0])) for r in rows]

    def list_versions(self, name: str) -> list[FunctionVersion]:
        self.function_info(name)
        rows = self._db.execute(
            "SELECT data FROM versions WHERE function=? ORDER BY ordinal", (name,)
        ).fetchall()
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
        being created or updated (CreateFunction/UpdateFunctionCode with ``Publish``).
        """
        with self._tx() as db:
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
                raise PreconditionFailed(
                    "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
                )
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
            db.execute("UPDATE functions SET last_version=? WHERE name=?", (number, name))
            self._put(db, version)
            return version, True

    def delete_function(self, name: str) -> list[FunctionVersion]:
        """Delete a function with all versions and aliases; returns what was deleted."""
        with self._tx() as db:
            versions = self.list_versions(name)
            db.execute("DELETE FROM functions WHERE name=?", (name,))
            db.execute("UPDATE id_slices SET function=NULL WHERE function=?", (name,))
        self._changed(name)
        return versions

    def delete_version(self, name: str, version: str) -> FunctionVersion:
        with self._tx() as db:
            record = self.get_version(name, version)
            used_by = [a.name for a in self.list_aliases(name) if a.version == version or version in a.routing]
            if used_by:
                raise Conflict(
                    f"Unable to delete version because the following aliases reference it: [{', '.join(used_by)}]"
                )
            db.execute("DELETE FROM versions WHERE function=? AND version=?", (name, version))
            db.execute("DELETE FROM event_invoke_configs WHERE function=? AND qualifier=?", (name, version))
            db.execute("DELETE FROM policies WHERE function=? AND qualifier=?", (name, version))
        self._changed(name)
        return record

    # -- aliases ---------------------------------------------------------------------------
    def _put_alias(self, db: sqlite3.Connection, alias: Alias) -> None:
        db.execute(
            "INSERT OR REPLACE INTO aliases(function, name, data) VALUES (?, ?, ?)",
            (alias.function, alias.name, json.dumps(dataclasses.asdict(alias))),
        )

    def get_alias(self, function: str, name: str) -> Alias:
        row = self._db.execute("SELECT data FROM aliases WHERE function=? AND name=?", (function, name)).fetchone()
        if row is None:
            self.function_info(function)
            raise NotFound(f"Alias not found: {self.function_arn(function, name)}")
        return Alias(**json.loads(row[0]))

    def list_aliases(self, function: str) -> list[Alias]:
        self.function_info(function)
        rows = self._db.execute("SELECT data FROM aliases WHERE function=? ORDER BY name", (function,)).fetchall()
        return [Alias(**json.loads(r[0])) for r in rows]

    def _check_alias_target(self, alias: Alias) -> None:
        for version in (alias.version, *alias.routing):
            self.get_version(alias.function, version)

    def create_alias(self, alias: Alias) -> Alias:
        with self._tx() as db:
            self._check_alias_target(alias)
            if db.execute(
                "SELECT 1 FROM aliases WHERE function=? AND name=?", (alias.function, alias.name)
            ).fetchone():
                raise Conflict(f"Alias already exists: {self.function_arn(alias.function, alias.name)}")
            self._put_alias(db, alias)
            return alias

    def update_alias(self, function: str, name: str, change: Callable[[Alias], None], revision_id: str | None) -> Alias:
        with self._tx() as db:
            alias = self.get_alias(function, name)
            if revision_id is not None and revision_id != alias.revision_id:
                raise PreconditionFailed(
                    "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
                )
            change(alias)
            alias.revision_id = new_revision()
            self._check_alias_target(alias)
            self._put_alias(db, alias)
        self._changed(function)
        return alias

    def delete_alias(self, function: str, name: str) -> None:
        with self._tx() as db:
            self.function_info(function)
            db.execute("DELETE FROM aliases WHERE function=? AND name=?", (function, name))
            db.execute("DELETE FROM event_invoke_configs WHERE function=? AND qualifier=?", (function, name))
            db.execute("DELETE FROM policies WHERE function=? AND qualifier=?", (function, name))
        self._changed(function)

    # -- resource-based policies ---------------------------------------------------------------
    def policy(self, function: str, qualifier: str) -> Policy | None:
        """The policy of `function` at `qualifier` ('' = unqualified), or None if it has none."""
        row = self._db.execute(
            "SELECT revision_id, statements FROM policies WHERE function=? AND qualifier=?", (function, qualifier)
        ).fetchone()
        return None if row is None else Policy(row[0], json.loads(row[1]))

    def save_policy(self, function: str, qualifier: str, statements: list[dict[str, Any]]) -> str | None:
        """Replace the policy's statements (deleting it when none are left); returns the new
        revision id (None once deleted). The function must exist."""
        with self._tx() as db:
            self.function_info(function)
            if not statements:
                db.execute("DELETE FROM policies WHERE function=? AND qualifier=?", (function, qualifier))
                return None
            revision = new_revision()
            db.execute(
                "INSERT OR REPLACE INTO policies(function, qualifier, revision_id, statements) VALUES (?, ?, ?, ?)",
                (function, qualifier, revision, json.dumps(statements)),
            )
            return revision

    # -- concurrency -----------------------------------------------------------------------
    def set_reserved_concurrency(self, name: str, value: int | None) -> None:
        with self._tx() as db:
            self.function_info(name)
            db.execute("UPDATE functions SET reserved_concurrency=? WHERE name=?", (value, name))
        self._changed(name)

    # -- event invoke configs ----------------------------------------------------------------
    def get_event_config(self, function: str, qualifier: str) -> EventInvokeConfig | None:
        row = self._db.execute(
            "SELECT data FROM event_invoke_configs WHERE function=? AND qualifier=?", (function, qualifier)
        ).fetchone()
        return None if row is None else EventInvokeConfig(**json.loads(row[0]))

    def list_event_configs(self, function: str) -> list[EventInvokeConfig]:
        self.function_info(function)
        rows = self._db.execute("SELECT data FROM event_invoke_configs WHERE function=?", (function,)).fetchall()
        configs = [EventInvokeConfig(**json.loads(r[0])) for r in rows]
        # $LATEST, then versions by number, then aliases by name
        return sorted(configs, key=lambda c: (c.qualifier != LATEST, not c.qualifier.isdigit(),
                                              int(c.qualifier) if c.qualifier.isdigit() else 0, c.qualifier))

    def put_event_config(self, config: EventInvokeConfig) -> EventInvokeConfig:
        """Store `config` if its function and qualifier (still) exist, in one transaction."""
        with self._tx() as db:
            self.resolve(config.function, config.qualifier)
            db.execute(
                "INSERT OR REPLACE INTO event_invoke_configs(function, qualifier, data) VALUES (?, ?, ?)",
                (config.function, config.qualifier, json.dumps(dataclasses.asdict(config))),
            )
        self._changed(config.function)
        return config

    def delete_event_config(self, function: str, qualifier: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM event_invoke_configs WHERE function=? AND qualifier=?", (function, qualifier))
        self._changed(function)
        return cur.rowcount > 0

    def referenced_digests(self) -> set[str]:
        """Packages in use: every version's code and layers, and every layer version's."""
        out = {digest for v in self.list_all_versions() for digest in (v.code_digest, *v.layer_digests)}
        out.update(json.loads(data)["digest"] for (data,) in self._db.execute("SELECT data FROM layer_versions"))
        return out
