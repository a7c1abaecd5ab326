"""Leases in a real database (snapfaas.cluster.leases): PostgreSQL shared by several nodes, and the
embedded SQLite file. Exclusive claims, take-over after expiry by the DB clock, fencing of a
holder that lost its lease, and racing claimants."""

from __future__ import annotations

import threading
import time

import pytest

from snapfaas.cluster.leases import Keeper, Leases
from snapfaas.database import open_engine


@pytest.fixture(scope="module")
def pg_url(postgres) -> str:  # type: ignore[no-untyped-def]
    return postgres.create_database("leases_db")


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request, pg_url, tmp_path):  # type: ignore[no-untyped-def]
    eng = open_engine(pg_url if request.param == "postgresql" else tmp_path / "state.db")
    yield eng
    eng.dispose()


def wait_until(condition, deadline_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not reached before the deadline"
        time.sleep(0.05)


def test_one_holder_at_a_time(engine) -> None:  # type: ignore[no-untyped-def]
    a, b = Leases(engine, "node-a", ttl_s=30), Leases(engine, "node-b", ttl_s=30)
    claim = a.claim("publish", "one:1")
    assert claim is not None and claim.holder == "node-a"
    assert b.claim("publish", "one:1") is None
    assert b.holder("publish", "one:1").holder == "node-a"  # type: ignore[union-attr]
    assert set(b.live("publish")) >= {"one:1"}
    a.release(claim)
    assert b.holder("publish", "one:1") is None
    taken = b.claim("publish", "one:1")
    assert taken is not None and taken.holder == "node-b"
    b.release(taken)


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(engine) -> None:  # type: ignore[no-untyped-def]
    a, b = Leases(engine, "node-a", ttl_s=0.5), Leases(engine, "node-b", ttl_s=30)
    old = a.claim("publish", "two:1")
    assert old is not None
    assert b.claim("publish", "two:1") is None
    taken: list = []
    wait_until(lambda: bool(taken.append(b.claim("publish", "two:1")) or taken[-1]))
    new = taken[-1]
    assert new.token == old.token + 1
    assert not a.renew(old)  # the dead holder's late renewal fails
    assert not a.held(old) and b.held(new)
    a.release(old)  # a late release does not free the new holder's lease
    assert b.holder("publish", "two:1").holder == "node-b"  # type: ignore[union-attr]
    assert b.renew(new)
    b.release(new)


def test_renewal_keeps_a_lease_past_its_ttl(engine) -> None:  # type: ignore[no-untyped-def]
    a, b = Leases(engine, "node-a", ttl_s=0.6), Leases(engine, "node-b", ttl_s=30)
    claim = a.claim("gc", "origin")
    assert claim is not None
    with Keeper(a, [claim]) as keeper:
        start = a.now()
        while a.now() - start < 2.0:  # more than three TTLs, by the DB clock
            assert b.claim("gc", "origin") is None
            time.sleep(0.1)
        assert not keeper.lost.is_set()
    a.release(claim)


def test_a_keeper_notices_a_take_over(engine) -> None:  # type: ignore[no-untyped-def]
    a, b = Leases(engine, "node-a", ttl_s=0.6), Leases(engine, "node-b", ttl_s=30)
    claim = a.claim("publish", "three:1")
    assert claim is not None
    # node b steals it (as after a long pause of node a: simulated by rewriting the lease's expiry)
    from snapfaas.cluster.leases import claims
    with engine.begin() as conn:
        conn.execute(claims.update().where(claims.c.key == "three:1").values(lease_until=0.0))
    stolen = b.claim("publish", "three:1")
    assert stolen is not None
    lost: list = []
    with Keeper(a, [claim], on_lost=lost.append) as keeper:
        wait_until(keeper.lost.is_set)
    assert lost == [claim]
    b.release(stolen)


def test_racing_claimants_get_exactly_one_winner(engine, pg_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Eight nodes (own engines, as separate hosts) race for each of 20 leases."""
    target = pg_url if engine.dialect.name == "postgresql" else tmp_path / "state.db"
    nodes = [Leases(open_engine(target), f"racer-{i}", ttl_s=30) for i in range(8)]
    winners: dict[str, list[str]] = {f"race:{k}": [] for k in range(20)}
    lock = threading.Lock()
    barrier = threading.Barrier(len(nodes))
    errors: list[BaseException] = []

    def run(node: Leases) -> None:
        barrier.wait()
        try:
            for key in winners:
                if node.claim("publish", key) is not None:
                    with lock:
                        winners[key].append(node.node_id)
        except Exception as exc:  # a racer that fails (e.g. "database is locked") fails the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(len(w) == 1 for w in winners.values()), winners
    for node in nodes:
        node.engine.dispose()
