"""Cluster mode end to end: three real nodes in network namespaces of their own, one PostgreSQL
(`tests/cluster.py`): membership, invoke forwarding by rendezvous hashing, the internal route's
signature, and a node killed during a burst."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import subprocess
import threading
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from snapfaas.cluster import routing
from snapfaas.cluster.nodes import NodeLoad, NodeRecord, NodeView
from snapfaas.cluster.signing import ClusterSigner
from snapfaas.config import run_dir_for
from snapfaas.sandbox.mounts import remove_tree
from tests.cluster import Cluster, wait_for
from tests.conftest import ROLE, make_zip

pytestmark = pytest.mark.usefixtures("cluster3")
ACCOUNT = "000000000000"
ECHO = "import os, time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return {'n': event.get('n')}\n"


@pytest.fixture(scope="module")
def cluster(cluster3: Cluster) -> Cluster:
    return cluster3


def node_of(response: dict) -> str:  # type: ignore[type-arg]
    return response["ResponseMetadata"]["HTTPHeaders"]["x-snapfaas-node"]


def preferred(cluster: Cluster, name: str, version: str = "$LATEST", live: list[str] | None = None) -> list[str]:
    """The nodes in rendezvous order for a version of `name` (what routing prefers when idle)."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    views = [NodeView(NodeRecord(n, "", now, now, NodeLoad()), "live", 0.0) for n in (live or cluster.ids)]
    key = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{name}:{version}"
    return [v.node_id for v in routing.ranking(views, key)]


def ensure_function(cluster: Cluster, name: str, code: str = ECHO) -> None:
    """Create `name` through node a (the registry is shared: the other nodes then know it; the
    loop only skips them)."""
    for node in cluster.nodes:
        lam = node.client()
        try:
            lam.get_function(FunctionName=name)
            continue
        except lam.exceptions.ResourceNotFoundException:
            pass
        lam.create_function(FunctionName=name, Runtime="python3.12", Role=ROLE, Handler="app.handler",
                            Code={"ZipFile": make_zip({"app.py": code})}, Timeout=30)
        lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})


def invoke(node, name: str, payload: object) -> tuple[dict, object]:  # type: ignore[no-untyped-def, type-arg]
    response = node.client().invoke(FunctionName=name, Payload=json.dumps(payload).encode())
    return response, json.loads(response["Payload"].read())


def status(node) -> dict:  # type: ignore[no-untyped-def, type-arg]
    from tests.conftest import ACCESS_KEY, SECRET_KEY
    from snapfaas.client import Connection

    conn = Connection(node.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)
    return json.loads(conn.signed_get("/snapfaas/v1/cluster-status"))


def states(node) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {n["NodeId"]: n["State"] for n in status(node)["Nodes"]}


def test_every_node_sees_the_three_live_nodes(cluster: Cluster) -> None:
    for node in cluster.nodes:
        wait_for(lambda: states(node) == {"a": "live", "b": "live", "c": "live"}, what=f"node {node.node_id}'s view")
        view = status(node)
        assert view["NodeId"] == node.node_id and view["Clustered"]
        urls = {n["NodeId"]: n["Url"] for n in view["Nodes"]}
        assert urls == {n.node_id: f"http://{n.address}:9000" for n in cluster.nodes}


def test_cluster_status_command_reads_the_database(cluster: Cluster) -> None:
    done = subprocess.run([sys.executable, "-m", "snapfaas", "cluster", "status", "--registry", cluster.registry_url,
                           "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    nodes = {n["NodeId"]: n for n in json.loads(done.stdout)["Nodes"]}
    assert set(nodes) == {"a", "b", "c"} and {n["State"] for n in nodes.values()} == {"live"}
    assert all(n["Capacity"] == 32 for n in nodes.values())
    table = subprocess.run([sys.executable, "-m", "snapfaas", "cluster", "status", "--registry", cluster.registry_url],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 0 and "live" in table.stdout and cluster.nodes[0].address in table.stdout


def test_invokes_run_on_the_rendezvous_node_whichever_node_receives_them(cluster: Cluster) -> None:
    """Create on a, invoke on a, b and c: each function runs on its preferred node, so most
    invokes are forwarded; payloads, status and the executed version come back unchanged."""
    names = [f"spread{i}" for i in range(4)]
    for name in names:
        ensure_function(cluster, name)
    forwarded = 0
    for name in names:
        target = preferred(cluster, name)[0]
        for node in cluster.nodes:
            response, body = invoke(node, name, {"n": name})
            assert response["StatusCode"] == 200 and body == {"n": name}
            assert response["ExecutedVersion"] == "$LATEST" and "FunctionError" not in response
            assert node_of(response) == target
            forwarded += node.node_id != target
    assert forwarded == 2 * len(names)


SNAP_APP = """
import os, uuid
INIT = uuid.uuid4().hex  # taken once, at the publish's init

def handler(event, context):
    return {"init": INIT, "type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE")}
"""


def test_publish_on_a_first_restore_on_c_from_the_origin(cluster: Cluster) -> None:
    """A SnapStart version published through node a is snapshotted there (its publish lease);
    invoked through node b, it runs on c (its rendezvous node), whose first restore fetches the
    snapshot's chunks from the shared origin: c's own /metrics show origin reads."""
    from snapfaas.client import Connection
    from snapfaas.metrics import sample_value
    from tests.conftest import ACCESS_KEY, SECRET_KEY

    name = next(f"snapped{i}" for i in range(1000) if preferred(cluster, f"snapped{i}", "1")[0] == "c")
    a = cluster["a"].client()
    a.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler", Timeout=30,
                      Code={"ZipFile": make_zip({"app.py": SNAP_APP})}, SnapStart={"ApplyOn": "PublishedVersions"})
    a.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    assert a.publish_version(FunctionName=name)["Version"] == "1"
    wait_for(lambda: a.get_function_configuration(FunctionName=name, Qualifier="1")["State"] == "Active", 180,
             what="the version to be published")
    c_metrics = Connection(cluster["c"].endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)
    before = sample_value(c_metrics.signed_get("/metrics").decode(), "snapfaas_store_hits_total", tier="origin") or 0
    response = cluster["b"].client().invoke(FunctionName=name, Qualifier="1", Payload=b"{}", LogType="Tail")
    body = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, body
    assert node_of(response) == "c"
    tail = base64.b64decode(response["LogResult"]).decode()
    assert "Restore Duration" in tail and "Init Duration" not in tail, tail
    assert body["type"] == "snap-start"
    after = sample_value(c_metrics.signed_get("/metrics").decode(), "snapfaas_store_hits_total", tier="origin") or 0
    assert after > before  # c had none of the snapshot's chunks: they came from the origin
    again = cluster["a"].client().invoke(FunctionName=name, Qualifier="1", Payload=b"{}")
    assert node_of(again) == "c" and json.loads(again["Payload"].read())["init"] == body["init"]  # warm, same snapshot


def test_function_errors_and_log_tails_pass_through_a_forward(cluster: Cluster) -> None:
    code = "def handler(event, context):\n    print('tail-marker')\n    raise ValueError('boom')\n"
    ensure_function(cluster, "failing", code)
    target = preferred(cluster, "failing")[0]
    sender = next(n for n in cluster.nodes if n.node_id != target)
    response = sender.client().invoke(FunctionName="failing", Payload=b"{}", LogType="Tail")
    assert node_of(response) == target
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    assert json.loads(response["Payload"].read())["errorMessage"] == "boom"
    import base64
    assert "tail-marker" in base64.b64decode(response["LogResult"]).decode()


def test_api_errors_of_a_forwardable_invoke_are_lambdas(cluster: Cluster) -> None:
    """A missing function is answered by the receiving node; a payload that is not JSON by the
    target, with Lambda's error either way."""
    lam = cluster.nodes[0].client()
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="no-such-function", Payload=b"{}")
    ensure_function(cluster, "spread0")
    target = preferred(cluster, "spread0")[0]
    sender = next(n for n in cluster.nodes if n.node_id != target).client()
    with pytest.raises(sender.exceptions.InvalidRequestContentException):
        sender.invoke(FunctionName="spread0", Payload=b"not json")


def _internal(node, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:  # type: ignore[no-untyped-def, type-arg]
    request = urllib.request.Request(f"{node.endpoint}/snapfaas/v1/cluster/functions/spread0/invocations", data=body,
                                     method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_forged_internal_requests_are_refused(cluster: Cluster) -> None:
    """Unsigned, signed with another key, SigV4-signed by the operator, replayed or from an
    unknown node: 403, and the function does not run."""
    from snapfaas.principals import Operator
    from tests.conftest import ACCESS_KEY, SECRET_KEY
    from snapfaas.client import Connection

    ensure_function(cluster, "spread0")
    target = cluster.nodes[1]
    body = json.dumps({"n": "forged"}).encode()
    path = "/snapfaas/v1/cluster/functions/spread0/invocations"
    code, error = _internal(target, body, {})
    assert code == 403 and "step 'headers'" in error["message"]
    forger = ClusterSigner(b"\x07" * 32, "a")
    code, error = _internal(target, body, forger.sign("POST", path, body, Operator(ACCESS_KEY), "r1", "b"))
    assert code == 403 and "step 'signature'" in error["message"]
    conn = Connection(target.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)  # the operator's SigV4 is not enough
    with pytest.raises(urllib.error.HTTPError) as refused:
        conn.signed_request("POST", path, body)
    assert refused.value.code == 403
    # the earlier tests' invokes have ended; heartbeats report it within a second or two
    def idle() -> dict | None:  # type: ignore[type-arg]
        view = status(target)
        return view if all(n["InFlight"] == 0 for n in view["Nodes"]) else None

    wait_for(idle, 30, what="every node to report no invoke in flight")


def test_a_killed_node_fails_only_its_in_flight_invokes_and_new_ones_go_elsewhere(cluster: Cluster) -> None:
    """500 invokes at concurrency 16 through a and c for a function whose node is b; b is
    killed -9 midway. Nothing is lost: every invoke answers, the ones in flight on b with
    ServiceException (at most the concurrency), every other one succeeds; new ones run on a or
    c at once (b is suspect after the first failed forward) and b is out within seconds."""
    name = next(f"burst{i}" for i in range(100) if preferred(cluster, f"burst{i}")[0] == "b")
    ensure_function(cluster, name)
    senders = [cluster["a"], cluster["c"]]
    for sender in senders:
        assert node_of(invoke(sender, name, {"n": 0})[0]) == "b"
    ran_on_b = [0]
    lock = threading.Lock()
    enough_on_b = threading.Event()
    clients = [sender.client(max_pool_connections=16) for sender in senders]

    def one(i: int) -> str:
        try:
            response = clients[i % 2].invoke(FunctionName=name, Payload=json.dumps({"n": i, "sleep": 0.1}).encode())
        except ClientError as exc:
            return "error:" + exc.response["Error"]["Code"]
        assert json.loads(response["Payload"].read()) == {"n": i}
        if node_of(response) == "b":
            with lock:
                ran_on_b[0] += 1
                if ran_on_b[0] >= 50:
                    enough_on_b.set()
        return node_of(response)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(500)]
        assert enough_on_b.wait(timeout=300), "b never ran 50 of the burst's invokes"
        cluster["b"].kill()
        outcomes = [f.result(timeout=300) for f in futures]
    assert len(outcomes) == 500
    errors = [o for o in outcomes if o.startswith("error:")]
    assert set(errors) <= {"error:ServiceException"}, outcomes
    assert len(errors) <= 16  # at most the invokes in flight on b when it died
    assert outcomes.count("b") >= 50 and sum(o in ("a", "c") for o in outcomes) > 0  # the rest ran elsewhere
    # new invokes: all succeed, on a or c, at once
    for i in range(10):
        response, body = invoke(senders[i % 2], name, {"n": i})
        assert body == {"n": i} and node_of(response) in ("a", "c")
    wait_for(lambda: states(cluster["a"]).get("b") == "out", timeout=30, what="b out in a's view")
    cluster["b"].start()  # b comes back: live again, and its function runs there again
    wait_for(lambda: states(cluster["a"]).get("b") == "live", timeout=60, what="b live again")
    wait_for(lambda: node_of(invoke(cluster["a"], name, {"n": 1})[0]) == "b", timeout=30, what="b running its function")


def db_nodes(cluster: Cluster) -> dict[str, dict]:  # type: ignore[type-arg]
    done = subprocess.run([sys.executable, "-m", "snapfaas", "cluster", "status", "--registry", cluster.registry_url,
                           "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {n["NodeId"]: n for n in json.loads(done.stdout)["Nodes"]}


def test_dry_run_and_event_invokes_are_answered_by_the_receiving_node(cluster: Cluster) -> None:
    ensure_function(cluster, "spread1")
    target = preferred(cluster, "spread1")[0]
    sender = next(n for n in cluster.nodes if n.node_id != target)
    lam = sender.client()
    dry = lam.invoke(FunctionName="spread1", InvocationType="DryRun", Payload=b"{}")
    assert dry["StatusCode"] == 204 and node_of(dry) == sender.node_id
    event = lam.invoke(FunctionName="spread1", InvocationType="Event", Payload=b"{}")
    assert event["StatusCode"] == 202 and node_of(event) == sender.node_id


def test_a_cleanly_stopped_node_leaves_at_once_and_rejoins(cluster: Cluster) -> None:
    node = cluster["c"]
    assert node.stop() == 0
    nodes = db_nodes(cluster)
    assert "c" not in nodes and set(nodes) == {"a", "b"}  # deleted by the shutdown, not aged out
    node.start()
    wait_for(lambda: states(cluster["a"]).get("c") == "live", timeout=60, what="c live again in a's view")


def test_a_node_with_another_store_secret_refuses_to_start(cluster: Cluster, processes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from snapfaas.cluster.membership import store_fingerprint
    from tests.conftest import free_port

    other = tmp_path / "other.secret"
    other.write_bytes(b"\x01" * 32)
    other.chmod(0o600)
    log = tmp_path / "refused.log"
    sandbox = Path(f"/var/lib/snapfaas/test/refused-{os.getpid()}")
    try:
        proc = processes.start([sys.executable, "-m", "snapfaas", "serve", "--port", str(free_port()), "--data-dir",
                                str(tmp_path / "data"), "--sandbox-dir", str(sandbox), "--registry", cluster.registry_url,
                                "--store-origin", str(cluster.origin), "--store-secret-file", str(other),
                                "--node-id", "intruder"], log)
        assert proc.wait(timeout=120) != 0
    finally:
        remove_tree(sandbox)
        remove_tree(run_dir_for(sandbox))
    text = log.read_text()
    ours, theirs = store_fingerprint(other.read_bytes()), store_fingerprint(cluster.secret_file.read_bytes())
    assert "step 'store secret'" in text and ours in text and theirs in text, text[-2000:]
    assert "intruder" not in db_nodes(cluster)


CALLER_APP = """
import boto3
from botocore.exceptions import ClientError

def handler(event, context):
    client = boto3.client("lambda")  # the in-namespace API of the node this environment runs on
    try:
        response = client.invoke(FunctionName=event["target"], Payload=b'{"n": "from a function"}')
    except ClientError as exc:
        return {"ok": False, "code": exc.response["Error"]["Code"], "message": exc.response["Error"]["Message"]}
    return {"ok": True, "body": response["Payload"].read().decode(),
            "node": response["ResponseMetadata"]["HTTPHeaders"].get("x-snapfaas-node")}
"""
CALLER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/cluster-caller"


def test_a_function_invoking_another_is_forwarded_with_its_own_identity(cluster: Cluster) -> None:
    """A function's environment invokes a function whose node is another one: its node
    authenticates the environment's credentials, forwards the invoke asserting the function's
    role, and the target authorizes that role again. Denied without a grant, run on the
    callee's node with one."""
    pairs = ((f"caller{i}", f"callee{i}") for i in range(100))
    caller, callee = next((a, b) for a, b in pairs if preferred(cluster, a)[0] != preferred(cluster, b)[0])
    ensure_function(cluster, callee)
    for node in cluster.nodes:  # ensure_function with the caller's own role and runtime (boto3 inside)
        lam = node.client()
        try:
            lam.get_function(FunctionName=caller)
        except lam.exceptions.ResourceNotFoundException:
            lam.create_function(FunctionName=caller, Runtime="python3.11", Role=CALLER_ROLE, Handler="app.handler",
                                Code={"ZipFile": make_zip({"app.py": CALLER_APP})}, Timeout=30)
            lam.get_waiter("function_active_v2").wait(FunctionName=caller, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    home = cluster[preferred(cluster, caller)[0]]
    _, body = invoke(home, caller, {"target": callee})
    assert body["ok"] is False and body["code"] == "AccessDeniedException", body  # type: ignore[index]
    for node in cluster.nodes:  # the grant (on every registry until the registry is shared)
        lam = node.client()
        try:
            lam.add_permission(FunctionName=callee, StatementId="caller", Action="lambda:InvokeFunction",
                               Principal=CALLER_ROLE)
        except lam.exceptions.ResourceConflictException:
            pass  # a shared registry already has it
    _, body = invoke(home, caller, {"target": callee})
    assert body["ok"] is True, body  # type: ignore[index]
    assert json.loads(body["body"]) == {"n": "from a function"}  # type: ignore[index]
    assert body["node"] == preferred(cluster, callee)[0] != home.node_id  # type: ignore[index]
