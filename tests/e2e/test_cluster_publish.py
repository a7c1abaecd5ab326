"""Publish claims across nodes (cluster/leases.py, snapshot/manager.py): a SnapStart publish is
worked on by the holder of its lease in the shared PostgreSQL database; a node killed mid-publish
stops renewing it, and once it has expired another node takes the publish over and redoes it
from scratch: nothing stays Pending.

Until the registry itself is in PostgreSQL (the pgreg slice), the "other node" is a second
server process with another --node-id on the same data dir (so it sees the same Pending version);
the lease, its expiry and the take-over are the cluster's, in PostgreSQL.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.cluster import wait_for
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import SNAPSTART, wait_state

SLOW_INIT = """
import time
time.sleep(8)
INIT_DONE = time.time()
def handler(event, context):
    return {"init_done": INIT_DONE}
"""


@pytest.fixture(scope="module")
def database(postgres) -> str:  # type: ignore[no-untyped-def]
    return postgres.create_database("cluster_publish")


@pytest.fixture
def node(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[ServerHandle]:
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("publish-node"),
                          ["--registry", database, "--node-id", "node-a", "--lease-ttl", "3s", "--keep-alive", "60"])


def claim_of(database: str, kind: str, key: str) -> str | None:
    engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT holder FROM claims WHERE kind = :k AND key = :key"),
                               {"k": kind, "key": key}).first()
    finally:
        engine.dispose()
    return row[0] if row else None



def test_a_publish_of_a_killed_node_is_taken_over(node: ServerHandle, database: str) -> None:
    lam = node.client()
    create(lam, "slowinit", {"app.py": SLOW_INIT}, Timeout=30, SnapStart=SNAPSTART)
    published = lam.publish_version(FunctionName="slowinit")
    assert published["State"] == "Pending"
    wait_for(lambda: claim_of(database, "publish", "slowinit:1") == "node-a", 60, what="node A claiming the publish")
    node.stop(signal.SIGKILL)  # mid-init: node A never renews its lease again
    assert claim_of(database, "publish", "slowinit:1") == "node-a"

    node.extra_args = ["node-b" if arg == "node-a" else arg for arg in node.extra_args]
    node.start()
    lam = node.client()
    final = wait_state(lam, "slowinit", "1", ("Active", "Failed"), 300)
    assert final["State"] == "Active", final.get("StateReason")
    assert final["SnapStart"]["OptimizationStatus"] == "On"
    log = node.log_path.read_text()
    assert "lease publish slowinit:1 taken over from node node-a" in log
    assert claim_of(database, "publish", "slowinit:1") is None  # released once Active
    assert not [line for line in log.splitlines() if "upload" in line and "not released" in line]
    response, body = invoke_json(lam, "slowinit", {}, Qualifier="1")
    assert "FunctionError" not in response, body
    assert isinstance(body, dict) and body["init_done"] > 0  # restored from the snapshot node B took
