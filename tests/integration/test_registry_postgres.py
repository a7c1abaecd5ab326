"""The registry on the suite's real PostgreSQL server, as several nodes use it: concurrent
mutations from two `Registry` instances (threads), concurrent start-up migrations, cross-node
change notifications (and their recovery after a server restart), and failing fast through the
circuit breaker during an outage."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy

from snapfaas.errors import Conflict, ServiceUnavailable
from snapfaas.registry import schema
from snapfaas.registry.changes import ChangeListener
from snapfaas.registry.db import Registry
from snapfaas.registry.layers import LayerRegistry, LayerVersion
from snapfaas.registry.model import LATEST, State
from tests.unit.test_registry import PREFIX, draft

DEADLINE_S = 60.0  # generous: the machine is shared; tests poll conditions, never time


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def race(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(i)` for i in range(count) in threads released together; results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # collected for the assertions  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture
def nodes(postgres, request) -> Iterator[tuple[Registry, Registry]]:  # type: ignore[no-untyped-def]
    """Two registries (two nodes) on one fresh PostgreSQL database."""
    url = postgres.create_database("it_registry_" + request.node.name[:40].lower().replace("[", "_").replace("]", ""))
    first = Registry(url, PREFIX)
    second = Registry(url, PREFIX)
    yield first, second
    first.close()
    second.close()


def test_concurrent_creates_of_one_name_make_one_function(nodes: tuple[Registry, Registry]) -> None:
    results = race(8, lambda i: nodes[i % 2].create_function(draft("same", digest=f"d{i}")))
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert results.count(None) == 1 and len(conflicts) == 7, results
    assert {c.message for c in conflicts} == {"Function already exist: same"}
    assert [v.version for v in nodes[0].list_all_versions()] == [LATEST]
    assert nodes[1].id_slice("same") == 0 and nodes[0].released_slices() == []


def test_concurrent_creates_get_distinct_slices(nodes: tuple[Registry, Registry]) -> None:
    results = race(10, lambda i: nodes[i % 2].create_function(draft(f"f{i}", digest=f"d{i}")))
    assert results == [None] * 10
    assert sorted(nodes[0].id_slice(f"f{i}") for i in range(10)) == list(range(10))


def test_concurrent_publishes_never_share_a_number(nodes: tuple[Registry, Registry]) -> None:
    first, second = nodes
    first.create_function(draft("f"))
    first.set_state("f", LATEST, State.ACTIVE, None, None)

    def change_and_publish(i: int) -> tuple[str, bool]:
        reg = nodes[i % 2]
        reg.update_version("f", LATEST, lambda v: setattr(v, "memory_size", 128 + i))
        version, created = reg.publish("f", None, None, None)
        return version.version, created

    results = race(12, change_and_publish)
    assert not [r for r in results if isinstance(r, Exception)], results
    created = [number for number, new in results if new]
    assert len(created) == len(set(created))  # no number handed out twice
    numbers = [v.version for v in second.list_versions("f")]
    assert numbers == [LATEST] + [str(n) for n in range(1, len(numbers))]
    assert sorted(created, key=int) == numbers[1:]
    assert first.function_info("f").last_version == len(numbers) - 1


def test_concurrent_layer_publishes_get_consecutive_numbers(nodes: tuple[Registry, Registry]) -> None:
    layers = [LayerRegistry(reg) for reg in nodes]
    results = race(8, lambda i: layers[i % 2].publish(LayerVersion("lib", 0, f"d{i}", "sha", 1, 1)).version)
    assert sorted(results) == list(range(1, 9))


def test_concurrent_alias_creates_and_reserved_concurrency(nodes: tuple[Registry, Registry]) -> None:
    from snapfaas.registry.model import Alias

    nodes[0].create_function(draft("f"))
    results = race(6, lambda i: nodes[i % 2].create_alias(Alias("f", "live", LATEST, routing={})))
    assert sum(1 for r in results if isinstance(r, Alias)) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, Alias))


def test_three_nodes_start_at_once_on_an_empty_database(postgres) -> None:  # type: ignore[no-untyped-def]
    url = postgres.create_database("it_registry_migrations")
    opened = race(3, lambda i: Registry(url, PREFIX))
    try:
        assert all(isinstance(r, Registry) for r in opened), opened
        with opened[0].engine.connect() as conn:
            assert schema.current_version(conn) == schema.LATEST_SCHEMA
            assert conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(schema.schema_version)).scalar() == 1
        opened[0].create_function(draft("f"))
        assert opened[2].get_version("f", LATEST).name == "f"
    finally:
        for reg in opened:
            if isinstance(reg, Registry):
                reg.close()


class LoopThread:
    """An event loop in a thread (the server's loop, for the listener to dispatch onto)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.seen: list[tuple[str, str]] = []  # (function, thread name it was observed on)

    def observer(self, name: str) -> None:
        self.seen.append((name, threading.current_thread().name))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def test_a_change_on_one_node_reaches_the_others_observers_on_their_loop(nodes: tuple[Registry, Registry],
                                                                        postgres) -> None:  # type: ignore[no-untyped-def]
    writer, reader = nodes
    here = LoopThread()
    try:
        local: list[str] = []
        writer.observers.append(local.append)
        reader.observers.append(here.observer)
        remote_seen: list[str] = []

        class Remote:  # a remote observer holding state for a function the registry no longer has
            def __call__(self, name: str) -> None:
                remote_seen.append(name)

            def known(self) -> set[str]:
                return {"gone"}

        reader.remote_observers.append(Remote())
        reader.listen(here.loop)
        listener: ChangeListener = reader.listener
        assert listener.wait_listening(DEADLINE_S)
        writer.create_function(draft("f"))
        writer.create_function(draft("g", digest="d2"))
        writer.set_reserved_concurrency("f", 3)
        wait_for(lambda: ("f", here.thread.name) in here.seen, "the other node's observer")
        assert local == ["f"]  # the writer's own observers ran once, locally
        assert all(thread == here.thread.name for _, thread in here.seen)  # on the loop's thread
        assert reader.function_info("f").reserved_concurrency == 3
        # a change in a rolled-back transaction is never announced
        with pytest.raises(RuntimeError):
            writer.update_version("g", LATEST, lambda v: (_ for _ in ()).throw(RuntimeError("rolled back")))
        writer.delete_function("f")
        wait_for(lambda: here.seen.count(("f", here.thread.name)) == 2, "the deletion's notification")
        assert ("g", here.thread.name) not in here.seen
        # the reader's own changes are not announced back to itself (nor to its remote observers)
        reader.set_reserved_concurrency("g", 1)
        assert reader.listener.received == 2
        assert "g" not in remote_seen
        # after a server restart the listener reconnects and calls observers for every function
        postgres.stop("fast")
        postgres.start()
        wait_for(lambda: ("g", here.thread.name) in here.seen, "the observers of every function after reconnecting")
        wait_for(lambda: "gone" in remote_seen, "remote observers for the functions they hold state for")
        assert listener.connections >= 2
        assert "f" in remote_seen and "g" in remote_seen  # other nodes' changes, then every function
    finally:
        reader.close()  # stops the listener
        here.close()


def test_an_outage_fails_calls_at_once_then_recovers_without_reopening(postgres) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(postgres.create_database("it_registry_outage"), PREFIX)
    try:
        reg.create_function(draft("f"))
        breaker = reg.breaker
        assert breaker is not None
        breaker.backoff_s = 3600.0  # no probe during the outage: every call after the first is rejected
        before = breaker.counters.attempts
        postgres.stop("fast")
        try:
            for _ in range(20):
                with pytest.raises(ServiceUnavailable, match="the database is unavailable"):
                    reg.get_version("f", LATEST)
            assert breaker.counters.attempts == before + 1  # one connection tried, not 20 connect timeouts
            assert breaker.counters.rejected == 19
        finally:
            postgres.start()
        breaker.backoff_s = 0.0  # the next call probes
        assert reg.get_version("f", LATEST).name == "f"
        assert breaker.state == "closed"
    finally:
        reg.close()


def test_the_catalog_reads_live_snapshots_from_either_registry(postgres, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`snapfaas snapshot ls|inspect` and `store stats|gc` take the live snapshot ids from the
    server's registry: the data dir's state.db, or the ``--registry`` database."""
    from snapfaas.snapshot.catalog import Catalog

    url = postgres.create_database("it_registry_catalog")
    for target, registry_url in ((tmp_path / "state.db", None), (url, url)):
        reg = Registry(target, PREFIX)
        try:
            reg.create_function(draft("f"))
            reg.set_state("f", LATEST, State.ACTIVE, None, None)
            version, _ = reg.publish("f", None, None, None)
            reg.update_version("f", version.version, lambda v: setattr(v, "snapshot_id", "snap-1"))
        finally:
            reg.close()
        catalog = Catalog(None, tmp_path, tmp_path / "cache", False, registry_url)  # type: ignore[arg-type]
        assert catalog.versions() == {"snap-1": ("f", "1", "Pending")}
    empty = Catalog(None, tmp_path / "none", tmp_path / "cache", False,  # type: ignore[arg-type]
                    str(postgres.create_database("it_registry_catalog_empty")))
    assert empty.versions() == {}


def test_concurrent_configuration_updates_on_two_nodes_conflict(postgres, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two nodes' UpdateFunctionConfiguration at once: one is InProgress first, the other gets
    Lambda's ResourceConflictException (the guard is re-checked under the row lock)."""
    import sys

    from snapfaas.config import Limits
    from snapfaas.registry.artifacts import ArtifactStore
    from snapfaas.registry.service import ControlPlane
    from snapfaas.sandbox.interpreter import InterpreterRegistry
    from tests.unit.test_layer_control import create_body

    url = postgres.create_database("it_registry_updates")
    planes = [ControlPlane(Registry(url, PREFIX), ArtifactStore(tmp_path / f"code{i}", tmp_path / f"trees{i}", Limits()),
                           InterpreterRegistry({"python3.11": sys.executable})) for i in range(2)]
    try:
        asyncio.run(planes[0].create_function(create_body()))
        planes[0].registry.set_state("f", LATEST, State.ACTIVE, None, None)
        planes[0].registry.update_version("f", LATEST, lambda v: setattr(v, "last_update_status", "Successful"))

        def update(i: int) -> str:
            async def call() -> str:
                try:
                    return planes[i % 2].update_configuration("f", {"MemorySize": 256 + i}).last_update_status or ""
                finally:
                    await planes[i % 2].close()  # the settling task: not this test's subject
            return asyncio.run(call())

        results = race(6, update)
        assert results.count("InProgress") == 1, results
        conflicts = [r for r in results if isinstance(r, Conflict)]
        assert len(conflicts) == 5 and all("An update is in progress for resource" in c.message for c in conflicts)
    finally:
        for plane in planes:
            plane.registry.close()
