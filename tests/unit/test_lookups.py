"""`InvokeLookups`: an invoke's registry reads kept in memory, and every change that must be
seen by the next invoke (update, publish, alias change, deletion, concurrency), on both
backends; on PostgreSQL, other nodes' changes and listener reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.errors import NotFound
from snapfaas.registry.db import Registry
from snapfaas.registry.lookups import InvokeLookups
from snapfaas.registry.model import LATEST, Alias, State

from tests.unit.conftest import FUNCTION_ARN_PREFIX
from tests.unit.test_registry import activate, created, set_memory


@pytest.fixture
def lookups(reg: Registry) -> Iterator[InvokeLookups]:
    """Lookups over `reg`; on PostgreSQL with the change listener listening (the cache is
    bypassed otherwise). Local changes call observers synchronously: no loop needs to run."""
    loop = asyncio.new_event_loop()
    if reg.postgres:
        reg.listen(loop)
        assert reg.listener is not None and reg.listener.wait_listening(10)
    cache = InvokeLookups(reg)
    cache.attach()
    yield cache
    cache.detach()
    reg.close()
    loop.close()


def test_second_lookup_is_a_hit(reg: Registry, lookups: InvokeLookups) -> None:
    created(reg)
    first = lookups.resolve("f", None)
    assert lookups.resolve("f", LATEST) == first
    assert lookups.reserved_concurrency("f") is None
    assert lookups.reserved_concurrency("f") is None
    assert (lookups.hits, lookups.misses) == (2, 2)


def test_update_is_seen_by_the_next_lookup(reg: Registry, lookups: InvokeLookups) -> None:
    created(reg)
    assert lookups.version("f", LATEST).memory_size == 128
    set_memory(reg, 512)
    assert lookups.version("f", LATEST).memory_size == 512


def test_publish_alias_changes_and_deletion_are_seen(reg: Registry, lookups: InvokeLookups) -> None:
    created(reg)
    with pytest.raises(NotFound):
        lookups.version("f", "1")
    reg.publish("f", None, None, None)
    with pytest.raises(NotFound):  # not-found was not kept
        lookups.resolve("f", "live")
    activate(reg, "f", "1")
    assert lookups.version("f", "1").state == State.ACTIVE
    set_memory(reg, 256)
    reg.publish("f", None, None, None)
    activate(reg, "f", "2")
    reg.create_alias(Alias(function="f", name="live", version="1"))
    assert lookups.resolve("f", "live")[0].version == "1"
    reg.update_alias("f", "live", lambda a: setattr(a, "version", "2"), None)
    version, alias = lookups.resolve("f", "live")
    assert (version.version, version.memory_size, alias is not None and alias.version) == ("2", 256, "2")
    reg.delete_alias("f", "live")
    with pytest.raises(NotFound):
        lookups.resolve("f", "live")
    reg.delete_function("f")
    with pytest.raises(NotFound):
        lookups.resolve("f", None)
    with pytest.raises(NotFound):
        lookups.reserved_concurrency("f")


def test_reserved_concurrency_is_seen(reg: Registry, lookups: InvokeLookups) -> None:
    created(reg)
    assert lookups.reserved_concurrency("f") is None
    reg.set_reserved_concurrency("f", 3)
    assert lookups.reserved_concurrency("f") == 3
    reg.set_reserved_concurrency("f", None)
    assert lookups.reserved_concurrency("f") is None


def test_a_read_overtaken_by_a_change_is_not_kept(reg: Registry, lookups: InvokeLookups,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    created(reg)
    real = reg.get_version
    changes = [1024]

    def raced(name: str, version: str):  # type: ignore[no-untyped-def]
        answer = real(name, version)  # read before the change...
        if changes:  # ...which commits (and calls the observers) before the answer is kept
            set_memory(reg, changes.pop())
        return answer

    monkeypatch.setattr(reg, "get_version", raced)
    assert lookups.version("f", LATEST).memory_size == 128  # the overtaken answer is returned once...
    monkeypatch.setattr(reg, "get_version", real)
    assert lookups.version("f", LATEST).memory_size == 1024  # ...but not kept


def test_other_functions_stay_cached(reg: Registry, lookups: InvokeLookups) -> None:
    created(reg, "f")
    created(reg, "g")
    lookups.version("f", LATEST)
    lookups.version("g", LATEST)
    set_memory(reg, 256, "g")
    lookups.version("f", LATEST)
    assert lookups.hits == 1


# -- PostgreSQL: other nodes --------------------------------------------------------------------
@pytest.fixture
def pg_url(postgres) -> str:  # type: ignore[no-untyped-def]
    return str(postgres.create_database("unit_lookups_nodes"))


def test_postgres_without_listener_reads_every_time(pg_url: str) -> None:
    here, there = Registry(pg_url, FUNCTION_ARN_PREFIX), Registry(pg_url, FUNCTION_ARN_PREFIX)
    try:
        lookups = InvokeLookups(here)
        lookups.attach()
        created(there)
        assert lookups.version("f", LATEST).memory_size == 128
        set_memory(there, 256)  # another node, and no listener here: nothing may be kept
        assert lookups.version("f", LATEST).memory_size == 256
        assert lookups.hits == 0
    finally:
        here.close()
        there.close()


def test_postgres_other_nodes_change_and_listener_reconnect(pg_url: str) -> None:
    here, there = Registry(pg_url, FUNCTION_ARN_PREFIX), Registry(pg_url, FUNCTION_ARN_PREFIX)

    async def scenario() -> None:
        here.listen(asyncio.get_running_loop())
        assert here.listener is not None
        assert await asyncio.to_thread(here.listener.wait_listening, 10)
        lookups = InvokeLookups(here)
        lookups.attach()
        heard = asyncio.Event()
        here.observers.append(lambda name: heard.set())
        created(there)
        await asyncio.wait_for(heard.wait(), 10)
        assert lookups.version("f", LATEST).memory_size == 128
        assert lookups.version("f", LATEST).memory_size == 128
        assert lookups.hits == 1
        heard.clear()
        set_memory(there, 256)
        await asyncio.wait_for(heard.wait(), 10)  # the NOTIFY reached this node's observers
        assert lookups.version("f", LATEST).memory_size == 256
        # a reconnect (notifications may have been missed): everything kept is dropped
        here.observers.clear()  # as if the next change's notification were lost
        set_memory(there, 512)
        here.listener.connections += 1
        assert lookups.version("f", LATEST).memory_size == 512

    try:
        asyncio.run(scenario())
    finally:
        here.close()
        there.close()
