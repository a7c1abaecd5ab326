"""Membership on the suite's real PostgreSQL: heartbeats, the live set, leaving, the cluster
secrets, and a database outage (`snapfaas.cluster.membership`)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy

from snapfaas.cluster import schema
from snapfaas.cluster.membership import Membership, StoreSecretMismatch, store_fingerprint
from snapfaas.cluster.nodes import LIVE_WINDOW_S, SUSPECT_S, NodeLoad
from snapfaas.database import open_engine
from snapfaas.errors import ServiceUnavailable

SECRET = b"s" * 32


@pytest.fixture(scope="module")
def url(postgres) -> str:  # type: ignore[no-untyped-def]
    return postgres.create_database("cluster_membership")


def wait_for(condition, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)  # polling the view until the condition holds
    raise AssertionError("condition not met in time")


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def test_joined_nodes_agree_on_the_key_and_see_each_other(url: str) -> None:
    a, b = Membership(open_engine(url), "a", "http://a"), Membership(open_engine(url), "b", "http://b")
    a.join(SECRET)
    b.join(SECRET)
    assert a.cluster_key == b.cluster_key and len(a.cluster_key) == 32
    assert a.live_nodes() == []  # joined, but live only from the first heartbeat
    a.beat(NodeLoad(busy=1, idle=2, capacity=8, inflight=1, cached_bytes=123))
    b.beat(NodeLoad(capacity=8))
    a.refresh()
    views = {v.node_id: v for v in a.live_nodes()}
    assert set(views) == {"a", "b"} and views["a"].load == NodeLoad(1, 2, 8, 1, 123) and views["b"].url == "http://b"
    assert all(v.age_s < LIVE_WINDOW_S for v in views.values())
    with open_engine(url).connect() as conn:  # stamped with the database's clock
        db_now, beat = conn.execute(sqlalchemy.select(sqlalchemy.func.now(), schema.nodes.c.heartbeat_at)
                                    .where(schema.nodes.c.node_id == "a")).one()
    assert abs((db_now - beat).total_seconds()) < 60
    b.leave()
    a.leave()


def test_a_node_that_stops_beating_is_out_after_the_window(url: str) -> None:
    watcher, quiet = Membership(open_engine(url), "w", "http://w"), Membership(open_engine(url), "q", "http://q")
    for m in (watcher, quiet):
        m.join(SECRET)
        m.beat(NodeLoad())
    watcher.refresh()
    assert watcher.is_live("q")

    def out() -> bool:
        watcher.beat(NodeLoad())
        return {v.node_id: v.state for v in watcher.nodes()}.get("q") == "out"

    wait_for(out, timeout=LIVE_WINDOW_S + 10)
    assert watcher.is_live("w")
    quiet.beat(NodeLoad())  # back: live again
    watcher.refresh()
    assert watcher.is_live("q")
    quiet.leave()
    watcher.refresh()
    assert "q" not in {v.node_id for v in watcher.nodes()}
    watcher.leave()


def test_suspicion_routes_around_a_node_until_it_expires(url: str) -> None:
    clock = Clock()
    m = Membership(open_engine(url), "s1", "http://s1", clock=clock)
    other = Membership(open_engine(url), "s2", "http://s2")
    for x in (m, other):
        x.join(SECRET)
        x.beat(NodeLoad())
    m.refresh()
    m.suspect("s2")
    m.suspect("s1")  # never itself
    assert {v.node_id: v.state for v in m.nodes()} == {"s1": "live", "s2": "suspect"}
    clock.now += SUSPECT_S + 0.1
    other.beat(NodeLoad())
    m.refresh()
    assert m.is_live("s2")
    m.leave()
    other.leave()


def test_another_store_secret_is_refused_naming_both_fingerprints(url: str) -> None:
    Membership(open_engine(url), "x", "http://x").join(SECRET)
    with pytest.raises(StoreSecretMismatch) as refused:
        Membership(open_engine(url), "y", "http://y").join(b"t" * 32)
    assert store_fingerprint(SECRET) in refused.value.message and store_fingerprint(b"t" * 32) in refused.value.message


def test_database_outage_fails_beats_with_503_and_ages_the_view(url: str, postgres) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    m = Membership(open_engine(url), "o", "http://o", clock=clock)
    m.join(SECRET)
    m.beat(NodeLoad())
    assert m.is_live("o")
    postgres.stop()
    try:
        with pytest.raises(ServiceUnavailable, match="step 'heartbeat'"):
            m.beat(NodeLoad())
        clock.now += LIVE_WINDOW_S + 1  # no fresh view: the last one ages with the local clock
        assert not m.is_live("o")
    finally:
        postgres.start()
    m.beat(NodeLoad())  # reconnects
    assert m.is_live("o")
    m.leave()
