"""Asynchronous invokes from one PostgreSQL queue shared by three real ``snapfaas serve``
processes (issue 12 item 4): 1,000 events, one node SIGKILLed midway.

The nodes run on loopback (their own ports, data and sandbox dirs) with ``--registry`` naming
one PostgreSQL database (registry and queue), one store origin and secret, and ``--event-lease
3``. The function is created once, through node a. The handler reports every run to a `Counter`
in the suite's network peer as ``/run/<event id>``; which node ran what is in each node's own
function log (its REPORT lines).

Checks: every accepted event ran at least once and the shared queue empties; the events the
killed node held when it died ran on the other nodes after their lease lapsed (the survivors'
logs say they took them over); PostgreSQL stopped right after the kill: an Event invoke answers
503 ``ServiceException`` at once (no hang) and the survivors carry on once it is back; the
killed node, restarted, finds nothing left to do.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from snapfaas.worker.event_store import EventStore, events
from tests.conftest import ProcessFactory, ServerHandle, create, require_root, run_servers, shared_store_args
from tests.e2e.snapstart_support import Counter, wait_for

NODES = ("a", "b", "c")
EVENTS = 1000
LEASE_S = 3
APP = """
import os, time, urllib.request

def handler(event, context):
    urllib.request.urlopen(os.environ["COUNTER_URL"] + "/run/" + event["id"], timeout=10).read()
    time.sleep(0.1)  # long enough that events wait in the nodes' backlogs when b is killed
    return {"id": event["id"]}
"""


@pytest.fixture(scope="module")
def database(postgres) -> str:  # type: ignore[no-untyped-def]
    return postgres.create_database("events_cluster")


@pytest.fixture(scope="module")
def nodes(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory,
          database: str) -> Iterator[dict[str, ServerHandle]]:
    require_root()
    store = shared_store_args(tmp_path_factory)
    specs = {node: (tmp_path_factory.mktemp(f"cluster-{node}"),
                    ["--keep-alive", "60", "--max-environments", "2", "--event-retry-base", "0.05",
                     "--registry", database, "--node-id", f"node-{node}", "--event-lease", str(LEASE_S), *store])
             for node in NODES}
    yield from run_servers(processes, specs)  # the three nodes start (and stop) together


@pytest.fixture(scope="module")
def counter(netpeer) -> Iterator[Counter]:  # type: ignore[no-untyped-def]
    c = Counter(netpeer)
    yield c
    c.close()


def runs_on(handle: ServerHandle) -> int:
    """Invocations of the function this node ran (REPORT lines of its own function log)."""
    handle.flush_logs("tick")
    log = handle.data_dir / "logs" / "tick.log"
    return log.read_text(errors="replace").count("\tREPORT RequestId: ") if log.exists() else 0


def stored(database: str, **where: str) -> list[str]:
    store = EventStore(database, "test-reader")
    try:
        query = select(events.c.request_id)
        for column, value in where.items():
            query = query.where(events.c[column] == value)
        with store.engine.connect() as conn:
            return [row[0] for row in conn.execute(query)]
    finally:
        store.close()


def queued_event_ids(database: str) -> list[str]:
    """Event ids (from the payloads) still stored."""
    store = EventStore(database, "test-reader")
    try:
        with store.engine.connect() as conn:
            return [json.loads(row[0])["id"] for row in conn.execute(select(events.c.payload))]
    finally:
        store.close()


def held_by(database: str, node_id: str) -> list[str]:
    store = EventStore(database, "test-reader")
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(events.c.payload).where(events.c.claimed_by == node_id))
            return [json.loads(row[0])["id"] for row in rows]
    finally:
        store.close()


def test_a_thousand_events_on_three_nodes_with_one_killed_midway(
        nodes: dict[str, ServerHandle], counter: Counter, database: str, postgres) -> None:  # type: ignore[no-untyped-def]
    create(nodes["a"].client(), "tick", {"app.py": APP}, Runtime="python3.11", Timeout=30,
           Environment={"Variables": {"COUNTER_URL": counter.url}})  # one registry: every node sees it

    def send(caller: int) -> list[str]:
        """Callers spread the events over the three nodes, as a load balancer would."""
        clients = {node: handle.client() for node, handle in nodes.items()}
        sent = []
        for i in range(caller, EVENTS, 4):
            node = NODES[i % 3]
            event_id = f"e{i}"
            response = clients[node].invoke(FunctionName="tick", InvocationType="Event",
                                             Payload=json.dumps({"id": event_id}).encode())
            assert response["StatusCode"] == 202
            sent.append(event_id)
        return sent

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ids = [i for part in pool.map(send, range(4)) for i in part]
    assert len(set(ids)) == EVENTS

    def ran(event_id: str) -> int:
        return counter.count(f"/run/{event_id}")

    wait_for(lambda: sum(1 for i in ids if ran(i)) >= EVENTS // 4, 300, "a quarter of the events to run")
    killed = nodes["b"]
    killed.stop(signal.SIGKILL)
    orphans = held_by(database, "node-b")  # claimed by the dead node: nobody renews them any more
    runs_at_kill = {event_id: ran(event_id) for event_id in orphans}
    left = queued_event_ids(database)
    assert orphans, "test premise: the killed node held events when it died"
    assert len(left) > len(orphans), "test premise: events were still queued when the node died"

    postgres.stop("fast")  # and the database goes away for a moment too
    try:
        with pytest.raises(ClientError) as refused:
            nodes["a"].client().invoke(FunctionName="tick", InvocationType="Event", Payload=b'{"id": "outage"}')
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert refused.value.response["Error"]["Code"] == "ServiceException"
        # the registry (resolving the function) and the queue share the database: whichever step meets the outage first
        message = refused.value.response["Error"]["Message"]
        assert "failed at step 'enqueue the event'" in message or "the database is unavailable" in message, message
    finally:
        postgres.start()

    wait_for(lambda: all(ran(i) for i in ids), 600, "every accepted event to run")
    wait_for(lambda: not stored(database), 60, "the shared queue to empty")
    for event_id in orphans:  # b is dead: the runs since are the survivors'
        assert ran(event_id) > runs_at_kill[event_id], (event_id, runs_at_kill[event_id], ran(event_id))
    survivors_log = "".join(nodes[n].log_path.read_text(errors="replace") for n in ("a", "c"))
    assert "whose claim had lapsed" in survivors_log
    per_node = {n: runs_on(nodes[n]) for n in NODES}
    assert all(per_node.values()), per_node  # every node ran events (b before it died)
    repeated = sum(1 for i in ids if ran(i) > 1)
    # at least once: an event runs twice only when its lease lapsed and another node took it over.
    # Those are the dead node's (`orphans`), and on a loaded host also a live node's whose renewal
    # came late (seen in a full-suite run: node c's first event, held 3 s while c started its first
    # environments, was taken over by b and ran on both). Every takeover is logged with its count.
    logs = "".join(nodes[n].log_path.read_text(errors="replace") for n in NODES)
    taken_over = sum(int(n) for n in re.findall(r"took over (\d+) event\(s\) whose claim had lapsed", logs))
    assert repeated <= taken_over, (repeated, taken_over, len(orphans))
    print(f"runs per node: {per_node}; held by the killed node: {len(orphans)}; taken over: {taken_over}; "
          f"ran twice: {repeated}")

    killed.start()  # the same node id again: reaps its containers, has nothing left to recover
    assert "event(s) claimed by this node's previous run released" not in killed.log_path.read_text().split(
        "snapfaas listening")[-1]
    assert not stored(database)
