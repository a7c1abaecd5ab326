"""Versioned migrations of the registry (registry/schema.py) and a state.db written by the raw
sqlite3 registry that came before them: it opens without loss, is stamped version 1 and then
migrated (version 2: id_slices.released_at)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import sqlalchemy

from snapfaas.registry import schema
from snapfaas.registry.db import Registry
from snapfaas.registry.layers import LayerRegistry
from snapfaas.registry.model import LATEST, Alias, FunctionInfo, State
from snapfaas.registry.permissions import Permissions
from snapfaas.registry.tags import FunctionTags
from tests.unit.test_registry import PREFIX, draft

# The schema exactly as the pre-migration registry created it (snapfaas before issue 12).
LEGACY_SCHEMA = """
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


def legacy_state_db(path: Path) -> None:
    """A state.db as the old registry left it: a function with a published version, an alias,
    reserved concurrency, a policy, tags, a layer with a deleted version, a released slice."""
    latest = draft("old", memory_size=256)
    v1 = draft("old", memory_size=256)
    v1.version = "1"
    for record in (latest, v1):
        record.move_to(State.ACTIVE)
    db = sqlite3.connect(path)
    db.executescript(LEGACY_SCHEMA)
    db.execute("INSERT INTO functions(name, seq, reserved_concurrency, last_version) VALUES ('old', 1, 4, 1)")
    db.execute("INSERT INTO versions VALUES ('old', '$LATEST', 0, ?)", (json.dumps(latest.to_json()),))
    db.execute("INSERT INTO versions VALUES ('old', '1', 1, ?)", (json.dumps(v1.to_json()),))
    db.execute("INSERT INTO aliases VALUES ('old', 'live', ?)",
               (json.dumps({"function": "old", "name": "live", "version": "1", "description": "",
                            "revision_id": "rev-a", "routing": {}}),))
    db.execute("INSERT INTO policies VALUES ('old', '', 'rev-p', ?)",
               (json.dumps([{"Sid": "s1", "Effect": "Allow", "Principal": "*", "Action": "lambda:InvokeFunction",
                             "Resource": PREFIX + "old"}]),))
    db.execute("INSERT INTO function_tags VALUES ('old', ?)", (json.dumps({"team": "a"}),))
    db.execute("INSERT INTO id_slices VALUES (0, NULL)")  # a deleted function's, draining
    db.execute("INSERT INTO id_slices VALUES (1, 'old')")
    db.execute("INSERT INTO layers VALUES ('lib', 2)")  # version 2 was deleted
    db.execute("INSERT INTO layer_versions VALUES ('lib', 1, ?)",
               (json.dumps({"layer": "lib", "version": 1, "digest": "ld", "sha256": "s", "size": 1, "unzipped": 1}),))
    db.commit()
    db.close()


def test_a_state_db_from_before_migrations_opens_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    legacy_state_db(path)
    reg = Registry(path, PREFIX)
    try:
        with reg.engine.connect() as conn:
            assert schema.current_version(conn) == schema.LATEST_SCHEMA  # stamped 1, then migrated
        assert reg.function_info("old") == FunctionInfo("old", 4, 1)
        assert reg.get_version("old", LATEST).memory_size == 256
        assert [v.version for v in reg.list_versions("old")] == [LATEST, "1"]
        assert reg.get_alias("old", "live").version == "1"
        assert Permissions(reg).get("old", None)[1] == "rev-p"
        assert FunctionTags(reg).get("old") == {"team": "a"}
        assert reg.id_slice("old") == 1 and reg.released_slices() == [0]
        layers = LayerRegistry(reg)
        assert layers.get("lib", 1).digest == "ld"
        assert layers.publish(layers.get("lib", 1)).version == 3  # the counter carried over: 2 is not reused
        assert reg.publish("old", None, None, None)[1] is False  # unchanged since version 1
        reg.update_version("old", LATEST, lambda v: setattr(v, "memory_size", 512))
        assert reg.publish("old", None, None, None)[0].version == "2"
        reg.create_alias(Alias("old", "next", "2", routing={}))
        reg.delete_function("old")  # the legacy foreign keys still cascade
        with reg.engine.connect() as conn:
            for table in (schema.versions, schema.aliases, schema.policies, schema.function_tags):
                assert conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(table)).scalar() == 0
    finally:
        reg.close()
    reopened = Registry(path, PREFIX)  # stamped: the second open takes the fast path
    try:
        assert reopened.released_slices() == [0, 1]
        assert reopened.reclaim_slices(lambda index: False) == [0, 1]  # a legacy release has no time: free
    finally:
        reopened.close()


def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    ran: list[int] = []
    steps = [(1, lambda conn: ran.append(1)), (2, lambda conn: ran.append(2))]
    assert schema.migrate(engine, steps) == 2
    assert schema.migrate(engine, steps) == 2
    assert ran == [1, 2]
    steps.append((3, lambda conn: ran.append(3)))
    assert schema.migrate(engine, steps) == 3
    assert ran == [1, 2, 3]
    engine.dispose()


def test_version_2_adds_released_at_to_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    legacy_state_db(path)
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    assert schema.migrate(engine, schema.MIGRATIONS[:1]) == 1
    assert "released_at" not in {c["name"] for c in sqlalchemy.inspect(engine).get_columns("id_slices")}
    assert schema.migrate(engine) == 2
    assert "released_at" in {c["name"] for c in sqlalchemy.inspect(engine).get_columns("id_slices")}
    engine.dispose()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    import pytest

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    schema.migrate(engine, [(1, lambda conn: None), (2, lambda conn: None)])
    with pytest.raises(schema.SchemaError, match="schema is version 2, newer than this snapfaas knows \\(1\\)"):
        schema.migrate(engine, [(1, lambda conn: None)])
    engine.dispose()
