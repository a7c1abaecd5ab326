"""The registry (snapfaas.registry.db) on both backends: a temporary SQLite file and a fresh
PostgreSQL database (fixture `registry_target`, tests/unit/conftest.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from snapfaas.errors import Conflict, InvalidParameterValue, NotFound, PreconditionFailed, ServiceError
from snapfaas.registry.db import CLUSTER_SLICE_GRACE_S, Registry
from snapfaas.registry.model import LATEST, Alias, FunctionInfo, FunctionVersion, State

PREFIX = "arn:aws:lambda:us-east-1:000000000000:function:"


def draft(name: str = "f", digest: str = "d1", **kw: object) -> FunctionVersion:
    return FunctionVersion(name=name, version=LATEST, runtime="python3.12", handler="app.handler",
                           role="arn:aws:iam::000000000000:role/r", code_digest=digest,
                           code_sha256=f"sha-{digest}", code_size=10, **kw)  # type: ignore[arg-type]


@pytest.fixture
def db_path(registry_target: Path | str) -> Path | str:
    """The registry's location (a state.db path or a PostgreSQL URL): reopened by some tests."""
    return registry_target


def activate(reg: Registry, name: str = "f", version: str = LATEST) -> None:
    reg.set_state(name, version, State.ACTIVE, None, None)


def created(reg: Registry, name: str = "f", **kw: object) -> FunctionVersion:
    reg.create_function(draft(name, **kw))  # type: ignore[arg-type]
    activate(reg, name)
    return reg.get_version(name, LATEST)


def set_memory(reg: Registry, size: int, name: str = "f") -> None:
    reg.update_version(name, LATEST, lambda v: setattr(v, "memory_size", size))


# -- create / get / resolve ------------------------------------------------------------------
def test_create_and_get(reg: Registry) -> None:
    original = draft(environment={"A": "1"}, memory_size=256)
    reg.create_function(original)
    got = reg.get_version("f", LATEST)
    assert got == original
    assert got.state == State.PENDING
    assert reg.function_info("f") == FunctionInfo("f", None, 0)
    assert [v.name for v in reg.list_latest()] == ["f"]


def test_not_found_messages(reg: Registry) -> None:
    with pytest.raises(NotFound, match=r"^Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope$"):
        reg.get_version("nope", LATEST)
    with pytest.raises(NotFound, match="function:nope$"):
        reg.function_info("nope")
    created(reg)
    with pytest.raises(NotFound, match=r"^Function not found: arn:aws:lambda:us-east-1:000000000000:function:f:7$"):
        reg.get_version("f", "7")
    with pytest.raises(NotFound, match=r"^Alias not found: .*function:f:live$"):
        reg.get_alias("f", "live")
    with pytest.raises(NotFound, match="function:nope$"):  # unqualified not-found comes first
        reg.get_alias("nope", "live")


def test_create_duplicate_conflicts_and_leaves_state_intact(reg: Registry) -> None:
    first = created(reg, memory_size=512)
    with pytest.raises(Conflict, match="^Function already exist: f$"):
        reg.create_function(draft(memory_size=1024, digest="other"))
    assert reg.get_version("f", LATEST) == first
    assert [v.version for v in reg.list_versions("f")] == [LATEST]
    assert reg.referenced_digests() == {"d1"}


def test_create_rolls_back_when_the_version_cannot_be_stored(reg: Registry) -> None:
    bad = draft(environment={"A": object()})  # type: ignore[dict-item]  # not JSON-serializable
    with pytest.raises(TypeError):
        reg.create_function(bad)
    with pytest.raises(NotFound):  # the functions row written before the failure was rolled back
        reg.function_info("f")
    assert reg.list_latest() == []
    created(reg)  # and the name is free
    assert reg.function_info("f").name == "f"


def test_resolve(reg: Registry) -> None:
    created(reg)
    v1, _ = reg.publish("f", None, None, None)
    alias = reg.create_alias(Alias("f", "live", "1"))
    assert reg.resolve("f", None) == (reg.get_version("f", LATEST), None)
    assert reg.resolve("f", LATEST)[0].version == LATEST
    assert reg.resolve("f", "1") == (v1, None)
    version, got_alias = reg.resolve("f", "live")
    assert version == v1
    assert got_alias == alias
    with pytest.raises(NotFound, match="function:f:2$"):
        reg.resolve("f", "2")
    with pytest.raises(NotFound, match="^Alias not found"):
        reg.resolve("f", "dead")
    with pytest.raises(NotFound, match="function:g$"):
        reg.resolve("g", "live")


# -- publish ---------------------------------------------------------------------------------
def test_publish_requires_settled_latest(reg: Registry) -> None:
    reg.create_function(draft())
    with pytest.raises(Conflict, match="An update is in progress"):
        reg.publish("f", None, None, None)
    assert reg.function_info("f").last_version == 0
    version, created_ = reg.publish("f", None, None, None, allow_unsettled=True)
    assert (version.version, created_) == ("1", True)
    activate(reg)
    reg.update_version("f", LATEST, lambda v: setattr(v, "last_update_status", "InProgress"))
    with pytest.raises(Conflict):
        reg.publish("f", None, None, None)


def test_publish_numbering_and_unchanged_rule(reg: Registry) -> None:
    latest = created(reg)
    v1, new = reg.publish("f", None, None, None)
    assert (v1.version, new) == ("1", True)
    assert v1.state == State.PENDING and v1.state_reason_code == "Creating"
    assert v1.last_update_status == "Successful"
    assert v1.revision_id != latest.revision_id
    assert v1.code_sha256 == latest.code_sha256
    # nothing changed: the last version comes back, not a new one
    again, new = reg.publish("f", None, None, None)
    assert (again.version, new) == ("1", False)
    assert again == reg.get_version("f", "1")
    # a revision bump alone (e.g. a no-op update) is not a change
    reg.update_version("f", LATEST, lambda v: setattr(v, "revision_id", "new-rev"))
    assert reg.publish("f", None, None, None)[1] is False
    set_memory(reg, 256)
    v2, new = reg.publish("f", None, None, None)
    assert (v2.version, new, v2.memory_size) == ("2", True, 256)
    assert reg.get_version("f", "1").memory_size == 128
    assert reg.function_info("f").last_version == 2
    # a change back to an older configuration is still a change relative to the last version
    set_memory(reg, 128)
    assert reg.publish("f", None, None, None)[0].version == "3"


@pytest.mark.parametrize(
    "change",
    [
        lambda v: setattr(v, "code_sha256", "other"),
        lambda v: setattr(v, "handler", "other.handler"),
        lambda v: setattr(v, "environment", {"X": "1"}),
        lambda v: setattr(v, "timeout", 30),
        lambda v: setattr(v, "description", "new"),
        lambda v: setattr(v, "snap_start", "PublishedVersions"),
        lambda v: setattr(v, "ephemeral_storage", 1024),
        lambda v: setattr(v, "runtime", "python3.13"),
        lambda v: setattr(v, "role", "arn:aws:iam::000000000000:role/other"),
        lambda v: setattr(v, "architectures", ["arm64"]),
        lambda v: setattr(v, "layers", [{"arn": "arn:aws:lambda:us-east-1:000000000000:layer:l:1", "digest": "l1",
                                         "size": 1, "unzipped": 1}]),
    ],
)
def test_publish_detects_each_change(reg: Registry, change) -> None:  # type: ignore[no-untyped-def]
    created(reg)
    reg.publish("f", None, None, None)
    reg.update_version("f", LATEST, change)
    version, new = reg.publish("f", None, None, None)
    assert (version.version, new) == ("2", True)


def test_publish_description_override_does_not_count_as_change(reg: Registry) -> None:
    created(reg, description="latest desc")
    v1, _ = reg.publish("f", None, None, "version one")
    assert v1.description == "version one"
    assert reg.get_version("f", LATEST).description == "latest desc"
    again, new = reg.publish("f", None, None, None)
    assert (again.version, new) == ("1", False)
    again, new = reg.publish("f", None, None, "another description")
    assert (again.version, new) == ("1", False)


def test_publish_checks_code_sha_and_revision(reg: Registry) -> None:
    latest = created(reg)
    with pytest.raises(InvalidParameterValue, match=r"CodeSHA256 \(wrong\) is different"):
        reg.publish("f", "wrong", None, None)
    with pytest.raises(PreconditionFailed):
        reg.publish("f", None, "wrong-revision", None)
    assert reg.function_info("f").last_version == 0
    assert [v.version for v in reg.list_versions("f")] == [LATEST]
    version, _ = reg.publish("f", latest.code_sha256, latest.revision_id, None)
    assert version.version == "1"


def test_version_numbers_are_never_reused(reg: Registry) -> None:
    created(reg)
    reg.publish("f", None, None, None)
    set_memory(reg, 256)
    reg.publish("f", None, None, None)
    reg.delete_version("f", "2")
    assert [v.version for v in reg.list_versions("f")] == [LATEST, "1"]
    set_memory(reg, 512)
    assert reg.publish("f", None, None, None)[0].version == "3"


def test_list_versions_in_numeric_order(reg: Registry) -> None:
    created(reg)
    for size in range(129, 140):
        set_memory(reg, size)
        reg.publish("f", None, None, None)
    assert [v.version for v in reg.list_versions("f")] == [LATEST, *map(str, range(1, 12))]


def test_publish_unknown_function(reg: Registry) -> None:
    with pytest.raises(NotFound):
        reg.publish("nope", None, None, None)


# -- updates and transactions ----------------------------------------------------------------
def test_update_version_revision_check(reg: Registry) -> None:
    latest = created(reg)
    with pytest.raises(PreconditionFailed):
        reg.update_version("f", LATEST, lambda v: setattr(v, "timeout", 9), revision_id="stale")
    assert reg.get_version("f", LATEST).timeout == 3
    updated = reg.update_version("f", LATEST, lambda v: setattr(v, "timeout", 9), revision_id=latest.revision_id)
    assert updated.timeout == 9 == reg.get_version("f", LATEST).timeout


def test_update_version_rolls_back_on_error(reg: Registry) -> None:
    before = created(reg)

    def explode(v: FunctionVersion) -> None:
        v.timeout = 99
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        reg.update_version("f", LATEST, explode)
    with pytest.raises(TypeError):  # fails while writing, after the change was applied
        reg.update_version("f", LATEST, lambda v: setattr(v, "environment", {"A": object()}))
    with pytest.raises(ServiceError, match="illegal state move"):
        reg.update_version("f", LATEST, lambda v: v.move_to(State.INACTIVE) or v.move_to(State.INACTIVE))
    assert reg.get_version("f", LATEST) == before
    # the connection is usable again (no transaction left open)
    set_memory(reg, 256)
    assert reg.get_version("f", LATEST).memory_size == 256


def test_set_state_ignores_deleted_function(reg: Registry) -> None:
    reg.set_state("ghost", LATEST, State.ACTIVE, None, None)  # no error
    created(reg)
    reg.set_state("f", LATEST, State.FAILED, "broken", "InternalError")
    v = reg.get_version("f", LATEST)
    assert (v.state, v.state_reason, v.state_reason_code) == (State.FAILED, "broken", "InternalError")


# -- aliases and deletion --------------------------------------------------------------------
def publish_two(reg: Registry) -> None:
    created(reg)
    reg.publish("f", None, None, None)
    set_memory(reg, 256)
    reg.publish("f", None, None, None)


def test_alias_crud(reg: Registry) -> None:
    publish_two(reg)
    alias = reg.create_alias(Alias("f", "live", "1", description="d"))
    with pytest.raises(Conflict, match="Alias already exists"):
        reg.create_alias(Alias("f", "live", "2"))
    assert reg.get_alias("f", "live") == alias
    with pytest.raises(NotFound):
        reg.create_alias(Alias("f", "bad", "9"))
    with pytest.raises(NotFound):
        reg.create_alias(Alias("f", "bad", "1", routing={"9": 0.5}))
    assert [a.name for a in reg.list_aliases("f")] == ["live"]
    updated = reg.update_alias("f", "live", lambda a: setattr(a, "version", "2"), alias.revision_id)
    assert updated.version == "2" and updated.revision_id != alias.revision_id
    with pytest.raises(PreconditionFailed):
        reg.update_alias("f", "live", lambda a: setattr(a, "version", "1"), alias.revision_id)
    with pytest.raises(NotFound):  # bad target: rolled back
        reg.update_alias("f", "live", lambda a: setattr(a, "version", "9"), None)
    assert reg.get_alias("f", "live") == updated
    reg.delete_alias("f", "live")
    assert reg.list_aliases("f") == []
    with pytest.raises(NotFound):
        reg.delete_alias("nope", "live")


def test_delete_version_referenced_by_alias_conflicts(reg: Registry) -> None:
    publish_two(reg)
    reg.create_alias(Alias("f", "live", "1"))
    reg.create_alias(Alias("f", "canary", "2", routing={"1": 0.1}))
    with pytest.raises(Conflict, match=r"aliases reference it: \[canary, live\]"):
        reg.delete_version("f", "1")
    assert [v.version for v in reg.list_versions("f")] == [LATEST, "1", "2"]
    reg.delete_alias("f", "live")
    with pytest.raises(Conflict, match=r"\[canary\]"):  # still routed to
        reg.delete_version("f", "1")
    reg.update_alias("f", "canary", lambda a: setattr(a, "routing", {}), None)
    deleted = reg.delete_version("f", "1")
    assert deleted.version == "1"
    assert [v.version for v in reg.list_versions("f")] == [LATEST, "2"]
    with pytest.raises(NotFound):
        reg.delete_version("f", "1")


def test_delete_function_cascades(reg: Registry) -> None:
    publish_two(reg)
    reg.create_alias(Alias("f", "live", "1"))
    created(reg, name="g", digest="d2")
    deleted = reg.delete_function("f")
    assert [v.version for v in deleted] == [LATEST, "1", "2"]
    with pytest.raises(NotFound):
        reg.function_info("f")
    assert [v.name for v in reg.list_all_versions()] == ["g"]
    assert reg.referenced_digests() == {"d2"}
    # a new function with the same name starts from scratch
    created(reg)
    assert reg.list_aliases("f") == []
    assert reg.function_info("f").last_version == 0
    assert reg.publish("f", None, None, None)[0].version == "1"
    with pytest.raises(NotFound):
        reg.delete_function("nope")


def test_reserved_concurrency(reg: Registry) -> None:
    created(reg)
    reg.set_reserved_concurrency("f", 5)
    assert reg.function_info("f").reserved_concurrency == 5
    reg.set_reserved_concurrency("f", None)
    assert reg.function_info("f").reserved_concurrency is None
    with pytest.raises(NotFound):
        reg.set_reserved_concurrency("nope", 1)


# -- persistence -----------------------------------------------------------------------------
def test_state_survives_reopening(db_path: Path | str) -> None:
    first = Registry(db_path, PREFIX)
    created(first)
    first.publish("f", None, None, "v1")
    first.create_alias(Alias("f", "live", "1", routing={}))
    first.set_reserved_concurrency("f", 3)
    latest = first.get_version("f", LATEST)
    v1 = first.get_version("f", "1")
    first.close()

    second = Registry(db_path, PREFIX)
    try:
        assert second.get_version("f", LATEST) == latest
        assert second.get_version("f", "1") == v1
        assert second.get_alias("f", "live").version == "1"
        assert second.function_info("f") == FunctionInfo("f", 3, 1)
        # numbering and the unchanged rule carry over
        assert second.publish("f", None, None, None) == (v1, False)
        set_memory(second, 1024)
        assert second.publish("f", None, None, None)[0].version == "2"
    finally:
        second.close()


def test_failed_transaction_is_not_persisted(db_path: Path | str) -> None:
    first = Registry(db_path, PREFIX)
    created(first)
    with pytest.raises(RuntimeError):
        first.update_version("f", LATEST, lambda v: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(Conflict):
        first.create_function(draft())
    first.close()
    second = Registry(db_path, PREFIX)
    try:
        assert [v.version for v in second.list_all_versions()] == [LATEST]
        assert second.get_version("f", LATEST).memory_size == 128
    finally:
        second.close()


def test_json_round_trip_of_records() -> None:
    v = draft(environment={"K": "v"}, architectures=["arm64"])
    v.move_to(State.ACTIVE)
    assert FunctionVersion.from_json(v.to_json()) == v
    assert dataclasses.asdict(v)["state"] == State.ACTIVE
    assert v.to_json()["state"] == "Active"


# -- host id slices --------------------------------------------------------------------------
def test_each_function_gets_its_own_id_slice(reg: Registry) -> None:
    for name in ("a", "b", "c"):
        created(reg, name, digest=f"d-{name}")
    assert [reg.id_slice(n) for n in ("a", "b", "c")] == [0, 1, 2]
    with pytest.raises(NotFound):
        reg.id_slice("nope")
    reg.publish("a", None, None, None)
    assert reg.referenced_trees() == {(0, "d-a"), (1, "d-b"), (2, "d-c")}


def test_slice_of_a_deleted_function_is_reused_only_after_reclaim(reg: Registry) -> None:
    reg.slice_grace_s = 0.0  # a shared registry's grace: test_a_shared_registry_reclaims_after_a_grace
    created(reg, "a")
    created(reg, "b")
    reg.delete_function("a")
    assert reg.released_slices() == [0]
    created(reg, "c")
    assert reg.id_slice("c") == 2  # slice 0 is still draining
    created(reg, "a")  # the same name does not get its old slice back either
    assert reg.id_slice("a") == 3
    asked: list[int] = []
    assert reg.reclaim_slices(lambda index: asked.append(index) or True) == []
    assert asked == [0] and reg.released_slices() == [0]
    assert reg.reclaim_slices(lambda index: False) == [0]
    assert reg.released_slices() == []
    created(reg, "d")
    assert reg.id_slice("d") == 0


def test_a_shared_registry_reclaims_after_a_grace(db_path: Path | str) -> None:
    """On PostgreSQL other nodes may still run a deleted function's environments in its slice:
    it is reused only `slice_grace_s` after the deletion. SQLite (one node) has no grace."""
    now = [1000.0]
    reg = Registry(db_path, PREFIX, clock=lambda: now[0])
    try:
        assert reg.slice_grace_s == (CLUSTER_SLICE_GRACE_S if isinstance(db_path, str) else 0.0)
        reg.slice_grace_s = 100.0
        created(reg, "a")
        reg.delete_function("a")
        now[0] += 99.0
        assert reg.reclaim_slices(lambda index: False) == [] and reg.released_slices() == [0]
        now[0] += 1.0
        assert reg.reclaim_slices(lambda index: True) == []  # still in use here
        assert reg.reclaim_slices(lambda index: False) == [0]
    finally:
        reg.close()


def test_slices_exhausted(db_path: Path | str) -> None:
    reg = Registry(db_path, PREFIX, id_slices=2)
    try:
        created(reg, "a")
        created(reg, "b")
        with pytest.raises(ServiceError, match="all 2 host id slices are in use"):
            reg.create_function(draft("c"))
        with pytest.raises(NotFound):
            reg.get_version("c", LATEST)  # nothing of the refused function was written
    finally:
        reg.close()


def test_state_db_from_before_slices_gets_one_per_function(db_path: Path | str) -> None:
    first = Registry(db_path, PREFIX)
    for name in ("a", "b"):
        created(first, name)
    with first.engine.begin() as conn:  # the schema before id slices (and before versioned migrations)
        conn.execute(sqlalchemy.text("DROP TABLE id_slices"))
        conn.execute(sqlalchemy.text("DROP TABLE schema_version"))
    first.close()
    second = Registry(db_path, PREFIX)
    try:
        assert sorted(second.id_slice(n) for n in ("a", "b")) == [0, 1]
    finally:
        second.close()


def test_slices_beyond_a_shrunk_range_refuse_to_open(db_path: Path | str) -> None:
    first = Registry(db_path, PREFIX)
    for name in ("a", "b", "c"):
        created(first, name)
    first.close()
    with pytest.raises(ServiceError, match="slices beyond --id-range-slices 2 are held \\(c: 2\\)"):
        Registry(db_path, PREFIX, id_slices=2)
