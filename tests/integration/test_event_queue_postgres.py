"""The event queue on the suite's PostgreSQL: several stores and dispatchers consume one table.

* concurrent claims (``FOR UPDATE SKIP LOCKED``) never hand one event to two nodes;
* a lease that is not renewed lapses (database clock) and another node takes the event over,
  counting one retry; the old holder's writes are refused;
* three dispatchers drain one queue while PostgreSQL is restarted under them: every event runs,
  none is lost, enqueueing during the outage answers 503 at once (no hang);
* an idle dispatcher makes few queries (claim polls at the idle interval, count refreshes).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time

import pytest

from snapfaas.errors import ServiceUnavailable
from snapfaas.worker.backlog import Backlog, EventTiming, Outcome, QueuedEvent, RetryPolicy
from snapfaas.worker.event_leases import LeaseTerms
from snapfaas.worker.events import Attempt, EventQueue, EventStore, Finished


@pytest.fixture(scope="module")
def database(postgres) -> str:  # type: ignore[no-untyped-def]
    return postgres.create_database("event_queue")


def empty(url: str) -> None:
    store = EventStore(url, "cleaner")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM events")
    store.close()


def test_concurrent_claims_never_hand_an_event_to_two_nodes(database: str) -> None:
    empty(database)
    stores = [EventStore(database, f"n{i}") for i in range(3)]
    for i in range(300):
        stores[0].insert(f"r{i}", f"f{i % 5}", None, b"{}", time.time(), claim=False)

    both_started = threading.Barrier(3)

    def consume(store: EventStore) -> list[int]:
        """The three claim their first batch at the same moment (the barrier), then drain."""
        got: list[int] = []
        both_started.wait(30)
        got.extend(e.seq for e in store.claim(7, time.time()))
        both_started.wait(30)
        while batch := store.claim(7, time.time()):
            got.extend(e.seq for e in batch)
        return got

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        claimed = list(pool.map(consume, stores))
    everything = [seq for part in claimed for seq in part]
    assert len(everything) == 300 and len(set(everything)) == 300
    assert sum(1 for part in claimed if part) >= 2, "test premise: the nodes claimed concurrently"
    for store, part in zip(stores, claimed):
        assert all(store.holder(seq) == store.node_id for seq in part[:20])
        store.close()


def test_a_lapsed_lease_is_taken_over_and_counted_as_a_retry(database: str) -> None:
    empty(database)
    a = EventStore(database, "a", LeaseTerms(0.5))
    b = EventStore(database, "b", LeaseTerms(30.0))
    event = a.insert("r1", "f", None, b"{}", time.time())  # claimed by a at enqueue
    assert b.claim(10, time.time()) == []
    assert a.renew([event.seq]) == {event.seq}
    deadline = time.monotonic() + 30
    while not (taken := b.claim(10, time.time())):  # a stops renewing: its lease lapses (database clock)
        assert time.monotonic() < deadline, "the lapsed lease was never taken over"
    [moved] = taken
    assert moved.seq == event.seq and moved.retries == 1 and moved.attempts == 0
    assert a.holder(event.seq) == "b"
    assert a.renew([event.seq]) == set()  # a finds out it lost it
    moved.attempts = 1
    assert not a.update(moved, Attempt(Outcome.FUNCTION_ERROR, "x"))  # and cannot write over b's claim
    assert b.update(moved, Attempt(Outcome.FUNCTION_ERROR, "x", "1", "Unhandled", b"{}"))
    assert b.release([event.seq]) == 1 and b.holder(event.seq) is None
    a.close()
    b.close()


def make_queue(url: str, node: str, ran: collections.Counter[str], finished: list[Finished],
               lease_s: float = 3.0, by_node: collections.Counter[str] | None = None,
               gate: asyncio.Event | None = None) -> EventQueue:
    """A queue whose "function" counts each run (`ran`, and `by_node` per node), then waits for
    `gate` (if given) and runs for 10 ms."""
    queue: EventQueue

    async def run(event: QueuedEvent) -> Attempt:
        try:
            payload = await queue.payload(event.seq)
        except ServiceUnavailable as exc:  # as the server's runner classifies it
            return Attempt(Outcome.PLATFORM_FAULT, exc.message)
        assert payload is not None
        ran[event.request_id] += 1
        if by_node is not None:
            by_node[node] += 1
        if gate is not None:
            await gate.wait()
        await asyncio.sleep(0.01)  # the "function" runs for a moment
        return Attempt(Outcome.SUCCESS, "", "$LATEST", None, b"{}")

    async def conclude(done: Finished) -> None:
        finished.append(done)

    store = EventStore(url, node, LeaseTerms(lease_s))
    queue = EventQueue(store, Backlog(EventTiming(0.01), lambda f, q: RetryPolicy()), run, conclude,
                       capacity=lambda: 4)
    return queue


async def wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)  # polling the dispatchers' state


def test_three_dispatchers_drain_one_queue_through_a_postgres_restart(database: str, postgres) -> None:  # type: ignore[no-untyped-def]
    empty(database)

    async def scenario() -> None:
        ran: collections.Counter[str] = collections.Counter()
        finished: list[Finished] = []
        by_node: collections.Counter[str] = collections.Counter()
        gate = asyncio.Event()  # the runs wait until every node has claimed some: node0 alone
        # (4 at a time, 10 ms each) can keep up with the inserts on a slow host and leave the
        # other two nothing to claim, and three nodes draining one queue is the premise here
        queues = [make_queue(database, f"node{i}", ran, finished, by_node=by_node, gate=gate) for i in range(3)]
        for queue in queues:
            await queue.start()
        ids = [f"e{i}" for i in range(600)]
        for i, request_id in enumerate(ids):  # all accepted on node0: it claims what it has room for
            await queues[0].put(request_id, f"fn{i % 3}", None, b'{"x": 1}')
        await wait_until(lambda: len(by_node) == 3, 60, "every node to claim and start an event")
        gate.set()
        await wait_until(lambda: len(ran) >= 150, 120, "a quarter of the events to run")
        await asyncio.to_thread(postgres.stop, "fast")
        try:
            with pytest.raises(ServiceUnavailable, match="failed at step 'enqueue the event'"):
                await queues[1].put("during-outage", "fn0", None, b"{}")
            await wait_until(lambda: any(q.pacing.failures for q in queues), 60, "a claim to fail during the outage")
        finally:
            await asyncio.to_thread(postgres.start)
        await wait_until(lambda: all(ran[i] >= 1 for i in ids), 180, "every event to run after the restart")
        await wait_until(lambda: sum(q.held for q in queues) == 0, 60, "every node to finish its events")
        assert queues[0].store.count() == 0
        # at least once: an event whose lease lapsed during the outage may have run on two nodes
        assert {f.event.request_id for f in finished} == set(ids)
        assert len(by_node) == 3, by_node  # accepted on node0, run by all three
        for queue in queues:
            await queue.close()
        assert set(ran) == set(ids)

    asyncio.run(scenario())


def test_an_idle_dispatcher_makes_few_queries(database: str) -> None:
    empty(database)

    async def scenario() -> None:
        queue = make_queue(database, "idle", collections.Counter(), [])
        await queue.start()
        before, started = queue.store.statements, time.monotonic()
        await asyncio.sleep(3.0)  # measuring an idle node: nothing to wait for
        made, elapsed = queue.store.statements - before, time.monotonic() - started
        await queue.close()
        # claim polls every 0.25 s (one statement when nothing is claimable), a count every 1 s, no renewals
        assert made <= (elapsed / 0.25 + elapsed / 1.0 + 4), (made, elapsed)
        print(f"idle dispatcher: {made} statements in {elapsed:.1f} s ({made / elapsed:.1f}/s)")

    asyncio.run(scenario())


def test_a_node_lets_go_of_queued_events_another_node_took_over(database: str) -> None:
    empty(database)

    async def scenario() -> None:
        ran: collections.Counter[str] = collections.Counter()
        queue = make_queue(database, "slow-node", ran, [], lease_s=0.6)
        queue._capacity = lambda: 0  # this node runs nothing: what it claims stays queued here  # noqa: SLF001
        await queue.start()
        for i in range(5):
            await queue.put(f"q{i}", "f", None, b"{}")
        assert queue.held == 5 and len(queue.backlog) == 5
        with queue.store.engine.begin() as conn:  # as if its leases had lapsed and another node claimed them
            conn.exec_driver_sql("UPDATE events SET claimed_by = 'other-node' WHERE request_id IN ('q0', 'q3')")
        await wait_until(lambda: queue.held == 3, 30, "the renewal to notice the lost claims")
        assert len(queue.backlog) == 3 and not ran
        await queue.close()  # releases what it still holds, not what it lost
        holders = {e.request_id: queue.store.holder(e.seq) for e in queue.store.load()}
        assert holders == {"q0": "other-node", "q1": None, "q2": None, "q3": "other-node", "q4": None}

    asyncio.run(scenario())
