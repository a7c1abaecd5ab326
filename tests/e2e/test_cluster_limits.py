"""Concurrency limits that hold across nodes (cluster/usage.py): two real servers on loopback
sharing one PostgreSQL database (`--registry`), each exchanging its in-use counts every 0.5 s.

The registry is shared: functions are created once. Invokes are routed (cluster/routing.py):
an invoke of a version received by the node that does not prefer it is forwarded, so the
reserved-concurrency tests check the limit wherever the invokes end up (the preferred node, or
both when bounded load spills them over), and the account-limit test uses two functions each
preferred by one node, so both nodes run invokes at once.

Precision (documented in cluster/usage.py and docs/cluster-leases.md): a node admits against its own exact
counts plus the other nodes' counts as last read; over-admission is bounded by what the other
nodes admitted within about two refresh intervals, never more than the limit on each node.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError

from snapfaas.cluster import routing
from tests.cluster import wait_for
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_servers, shared_store_args
from tests.e2e.snapstart_support import Gate

STAMPED = """
import os, time, urllib.request
def handler(event, context):
    start = time.time()
    if "gate" in event:  # in flight until the test releases the gate
        urllib.request.urlopen(os.environ["GATE_URL"] + "/" + event["gate"], timeout=120).read()
    time.sleep(event.get("sleep", 0))
    return {"start": start, "end": time.time()}
"""
RESERVED = 2
ACCOUNT = 3



FREE = {"node-a": routing.name_preferring("free-a", "$LATEST", "node-a", "node-b"),
        "node-b": routing.name_preferring("free-b", "$LATEST", "node-b", "node-a")}  # so both nodes run invokes


@pytest.fixture(scope="module")
def database(postgres) -> str:  # type: ignore[no-untyped-def]
    return postgres.create_database("cluster_limits")


@pytest.fixture(scope="module")
def gate(netpeer) -> Iterator[Gate]:  # type: ignore[no-untyped-def]
    g = Gate(netpeer)
    yield g
    g.close()


@pytest.fixture(scope="module")
def nodes(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory, database: str,
          gate: Gate) -> Iterator[dict[str, ServerHandle]]:
    require_root()
    store = shared_store_args(tmp_path_factory)
    specs = {name: (tmp_path_factory.mktemp(f"limits-{name}"),
                    ["--registry", database, "--node-id", f"node-{name}", "--admission-wait", "0",
                     "--account-concurrency", str(ACCOUNT), "--keep-alive", "60", *store]) for name in ("a", "b")}
    with contextlib.closing(run_servers(processes, specs)) as servers:  # both nodes start (and stop) together
        handles = next(servers)
        lam = handles["a"].client()  # one registry: both nodes see the functions
        variables = {"Variables": {"GATE_URL": gate.url}}
        create(lam, "capped", {"app.py": STAMPED}, Timeout=60, Environment=variables)
        lam.put_function_concurrency(FunctionName="capped", ReservedConcurrentExecutions=RESERVED)
        for node in ("node-a", "node-b"):
            create(lam, FREE[node], {"app.py": STAMPED}, Timeout=60, Environment=variables)
        yield handles


def usage_row(database: str, node: str, function: str) -> tuple[int, float]:
    """(in use, lease_until) that `node` last published for `function` ('' = its total); (0, 0)
    if it has no live row."""
    engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT inflight, lease_until FROM node_usage WHERE node_id = :n AND function = :f "
                "AND lease_until > extract(epoch from clock_timestamp())"), {"n": node, "f": function}).first()
    finally:
        engine.dispose()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


def in_use(database: str, node: str, function: str) -> int:
    return usage_row(database, node, function)[0]


def wait_for_a_fresh_view(database: str, node: str) -> None:
    """Until `node` has read the usage table after now: two more of its exchanges committed (the
    first may have read before this call; the second began after the first committed)."""
    seen = [usage_row(database, node, "")[1]]

    def advanced() -> bool:
        current = usage_row(database, node, "")[1]
        if current > seen[-1]:
            seen.append(current)
        return len(seen) >= 3

    wait_for(advanced, 60, what=f"{node} exchanging its usage twice")



def call(handle: ServerHandle, function: str, sleep: float = 0, gate: str | None = None) -> dict | ClientError:
    """Invoke `function` on `handle`'s node: it runs `sleep` s, after waiting at the module's
    `Gate` key `gate` when one is given (in flight until the test releases it)."""
    try:
        response, body = invoke_json(handle.client(), function, {"sleep": sleep} | ({"gate": gate} if gate else {}))
    except ClientError as exc:
        return exc
    assert "FunctionError" not in response, body
    return body  # type: ignore[return-value]


def overlap(stamps: list[dict]) -> int:
    """The most invocations running at one instant, from their own start/end stamps."""
    events = sorted([(s["start"], 1) for s in stamps] + [(s["end"], -1) for s in stamps], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def reasons(outcomes: list) -> list[str]:  # type: ignore[type-arg]
    out = []
    for o in outcomes:
        if isinstance(o, ClientError):
            assert o.response["Error"]["Code"] == "TooManyRequestsException"
            assert o.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            out.append(o.response["Reason"])
    return out


def test_reserved_concurrency_holds_across_two_nodes(nodes: dict[str, ServerHandle], database: str, gate: Gate) -> None:
    """Reserved concurrency 2; six held invokes, three per node: node A admits two, and once its
    count is published node B admits none of its three. The admitted ones stay in flight (held
    at the gate) until B has answered all of its three."""
    a, b = nodes["a"], nodes["b"]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        try:
            first = [pool.submit(call, a, "capped", gate="reserved") for _ in range(3)]
            wait_for(lambda: in_use(database, "node-a", "capped") == RESERVED, 60, what="node A publishing its 2 admitted invokes")
            wait_for_a_fresh_view(database, "node-b")  # B's view includes A's count (the documented refresh lag)
            asked = time.time()
            on_b = [pool.submit(call, b, "capped", gate="reserved") for _ in range(3)]
            concurrent.futures.wait(on_b, timeout=30)  # refusals answer at once; one B wrongly admitted is held
            # every admitted invoke is in its handler (its start stamped), so all overlap until the release
            wait_for(lambda: gate.held("reserved") >= RESERVED, 60, what="node A's admitted invokes at the gate")
        finally:
            gate.release("reserved")
        second = [f.result() for f in on_b]
        outcomes = [f.result() for f in first] + second
    stamps = [o for o in outcomes if isinstance(o, dict)]
    assert reasons(second) == ["ReservedFunctionConcurrentInvocationLimitExceeded"] * 3
    assert all(s["end"] > asked for s in stamps), "test premise: node A's invokes still ran when node B was asked"
    assert reasons(outcomes) == ["ReservedFunctionConcurrentInvocationLimitExceeded"] * 4
    assert len(stamps) == RESERVED and overlap(stamps) == RESERVED


def test_a_burst_on_both_nodes_stays_within_the_documented_slack(nodes: dict[str, ServerHandle], database: str) -> None:
    """Six invokes at once, three per node: each node admits at most its reserved concurrency
    on its own counts, so the cluster runs at most 2 + 2 (over-admission of one refresh
    interval), and every other request gets Lambda's reserved-concurrency throttle."""
    wait_for(lambda: in_use(database, "node-a", "capped") == 0 and in_use(database, "node-b", "capped") == 0, 60,
             what="both nodes idle")
    wait_for_a_fresh_view(database, "node-a")
    wait_for_a_fresh_view(database, "node-b")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(call, node, "capped", 5) for node in (nodes["a"], nodes["b"]) for _ in range(3)]
        outcomes = [f.result() for f in futures]
    stamps = [o for o in outcomes if isinstance(o, dict)]
    assert set(reasons(outcomes)) == {"ReservedFunctionConcurrentInvocationLimitExceeded"}
    assert RESERVED <= len(stamps) <= 2 * RESERVED
    assert overlap(stamps) <= 2 * RESERVED


def test_the_account_limit_holds_across_two_nodes(nodes: dict[str, ServerHandle], database: str, gate: Gate) -> None:
    """--account-concurrency 3: two invokes running on node A leave one slot for node B (the
    three admitted ones are held at the gate until B has refused the fourth)."""
    a, b = nodes["a"], nodes["b"]
    wait_for(lambda: in_use(database, "node-a", "") == 0 and in_use(database, "node-b", "") == 0, 60, what="both nodes idle")
    wait_for_a_fresh_view(database, "node-a")  # A no longer counts B's earlier invokes
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        try:
            first = [pool.submit(call, a, FREE["node-a"], gate="account") for _ in range(2)]
            wait_for(lambda: in_use(database, "node-a", "") == 2, 60, what="node A publishing its 2 invokes")
            wait_for_a_fresh_view(database, "node-b")
            asked = time.time()
            running_on_b = pool.submit(call, b, FREE["node-b"], gate="account")
            wait_for(lambda: in_use(database, "node-b", "") == 1, 60, what="node B publishing its invoke")
            refused = call(b, FREE["node-b"])
            # every admitted invoke is in its handler (its start stamped), so all overlap until the release
            wait_for(lambda: gate.held("account") >= ACCOUNT, 60, what="the three admitted invokes at the gate")
        finally:
            gate.release("account")
        outcomes = [f.result() for f in first] + [running_on_b.result(), refused]
    stamps = [o for o in outcomes if isinstance(o, dict)]
    assert all(s["end"] > asked for s in stamps), "test premise: the first invokes still ran"
    assert reasons([refused]) == ["ConcurrentInvocationLimitExceeded"]
    assert len(stamps) == 3 and overlap(stamps) == ACCOUNT
