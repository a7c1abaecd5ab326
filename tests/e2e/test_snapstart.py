"""SnapStart through real boto3 against a real server with real CRIU: publish -> snapshot ->
restore on scale-out, hooks, uniqueness, aliases, warm reuse, and the failure paths of init and
hooks (sockets: test_snapstart_sockets.py). Init is counted outside the snapshot by the test's `Counter` server.

Not tested: init longer than max(130 s, Timeout) failing the publish with
FunctionError.InitTimeout (too slow for the suite; not faked).
"""

from __future__ import annotations

import concurrent.futures
import random
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ServerHandle, create, invoke_json
from tests.e2e.snapstart_support import (
    SNAPSTART, Counter, assert_restored, assert_warm, containers_of, function_log, publish, report, snapshot_dirs,
    view_root, wait_state,
)

HOOKS_APP = """
import os, random, ssl, time, urllib.request, uuid
from snapshot_restore_py import register_after_restore, register_before_snapshot

VERSION = os.environ["AWS_LAMBDA_FUNCTION_VERSION"]
# counted outside the snapshot; also opens and closes a TCP connection during init
urllib.request.urlopen(f"{os.environ['COUNTER_URL']}/init/{os.environ['AWS_LAMBDA_FUNCTION_NAME']}/{VERSION}", timeout=5).read()
INIT_TOKEN = uuid.uuid4().hex
with open("/tmp/init-marker", "w") as f:
    f.write(INIT_TOKEN)
random.seed(1234)  # as on AWS, nothing reseeds after a restore: every restored copy draws the same numbers
ssl.RAND_bytes(16)  # OpenSSL's DRBG is instantiated in the snapshot: restored copies share its state
ENV = {"id": None, "order": []}


def record_before(tag):
    with open("/tmp/before-order", "a") as f:
        f.write(tag + "\\n")


@register_before_snapshot
def before_first():
    record_before("first")


register_before_snapshot(record_before, "second")


@register_after_restore
def after_first():
    ENV["id"] = uuid.uuid4().hex
    ENV["order"].append("first")


def after_second(tag, *, suffix):
    ENV["order"].append(tag + suffix)


register_after_restore(after_second, "sec", suffix="ond")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def handler(event, context):
    with open(f"/tmp/env-{ENV['id']}", "w"):
        pass  # each environment's /tmp is its own copy of the snapshot's
    time.sleep((event or {}).get("sleep", 0))
    return {
        "env_id": ENV["id"],
        "tmp_files": sorted(n for n in os.listdir("/tmp") if n.startswith("env-")),
        "random": random.random(),
        "openssl": ssl.RAND_bytes(16).hex(),
        "marker": read("/tmp/init-marker"),
        "init_token": INIT_TOKEN,
        "before_order": (read("/tmp/before-order") or "").split(),
        "after_order": ENV["order"],
        "init_type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"],
        "version": context.function_version,
        "log_stream": context.log_stream_name,
        "log_stream_env": os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME"),
    }
"""

PLAIN_APP = """
import os
def handler(event, context):
    return {"init_type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"], "version": context.function_version}
"""


@pytest.fixture(scope="module")
def counter(netpeer) -> Iterator[Counter]:  # type: ignore[no-untyped-def]
    c = Counter(netpeer)
    yield c
    c.close()


def create_snap(lam, name: str, code: str, counter: Counter, **kwargs: object) -> None:  # type: ignore[no-untyped-def]
    env = {"Variables": {"COUNTER_URL": counter.url, **kwargs.pop("variables", {})}}  # type: ignore[dict-item]
    create(lam, name, {"app.py": code}, SnapStart=SNAPSTART, Environment=env, Timeout=15, **kwargs)


@pytest.fixture(scope="module")
def hooks_fn(lam, counter: Counter) -> tuple[str, dict, dict]:  # type: ignore[no-untyped-def]
    """The hooks function with version 1 published; (name, publish response, settled config)."""
    create_snap(lam, "hooks", HOOKS_APP, counter)
    response, final = publish(lam, "hooks")
    return "hooks", response, final


# -- publish and states ----------------------------------------------------------------------
def test_publish_is_pending_then_active_with_optimization_on(lam, hooks_fn, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    name, response, final = hooks_fn
    assert response["Version"] == "1"
    assert response["State"] == "Pending"
    assert response["StateReasonCode"] == "Creating"
    assert response["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}
    assert final["State"] == "Active"
    assert final["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}
    # the botocore waiter agrees
    lam.get_waiter("published_version_active").wait(FunctionName=name, Qualifier="1",
                                                    WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    latest = lam.get_function_configuration(FunctionName=name)
    assert latest["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}
    stored, cached = snapshot_dirs(server, name, "1")
    assert len(stored) == 1 and stored[0].is_file()  # the manifest at the store origin
    # no plaintext copy on disk or in a RAM cache: the dump is dropped once stored, after priming
    # the page cache of its exposure in the snapshot view
    assert [p.parent for p in cached] == [view_root(server)]
    snapshot_lines = [m for v, _, m in function_log(server, name) if v == "1"]
    assert any(m.startswith("INIT_START") and "Phase: snapshot" in m for m in snapshot_lines), snapshot_lines
    assert any(m.startswith("SNAPSHOT_REPORT Snapshot: " + stored[0].name) for m in snapshot_lines), snapshot_lines


def test_latest_never_restores(lam, hooks_fn, counter: Counter, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    name = hooks_fn[0]
    for attempt in range(2):
        response, body = invoke_json(lam, name, {}, LogType="Tail")
        fields = report(response["LogResult"])
        assert "Restore Duration" not in fields
        assert ("Init Duration" in fields) == (attempt == 0), fields
        assert response["ExecutedVersion"] == "$LATEST"
        assert body["init_type"] == "on-demand"
        assert body["env_id"] is None and body["after_order"] == []  # no after-restore hooks ran
        assert body["before_order"] == []  # nor before-snapshot hooks
    assert counter.count(f"/init/{name}/$LATEST") == 1
    assert not [m for v, _, m in function_log(server, name) if v == "$LATEST" and m.startswith("RESTORE")]


def test_function_without_snapstart_publishes_on_demand_versions(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "plain", {"app.py": PLAIN_APP})
    response = lam.publish_version(FunctionName="plain")
    assert response["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}
    final = wait_state(lam, "plain", response["Version"], ("Active", "Failed"))
    assert final["State"] == "Active"
    assert final["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}
    result, body = invoke_json(lam, "plain", {}, Qualifier=response["Version"], LogType="Tail")
    fields = report(result["LogResult"])
    assert "Init Duration" in fields and "Restore Duration" not in fields
    assert body == {"init_type": "on-demand", "version": response["Version"]}
    assert snapshot_dirs(server, "plain", response["Version"]) == ([], [])


# -- scale-out from the snapshot -------------------------------------------------------------
def test_concurrent_invokes_restore_distinct_environments(lam, hooks_fn, counter: Counter, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    name = hooks_fn[0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: invoke_json(lam, name, {"sleep": 1.5}, Qualifier="1", LogType="Tail"), range(8)))
    bodies = [body for _, body in results]
    for response, body in results:
        assert "FunctionError" not in response, body
        assert response["ExecutedVersion"] == "1"
        assert_restored(response["LogResult"])
    env_ids = {b["env_id"] for b in bodies}
    assert None not in env_ids and len(env_ids) == 8, bodies
    # init ran exactly once, when the snapshot was taken
    assert counter.count(f"/init/{name}/1") == 1
    # the snapshot's /tmp and memory are in every environment
    assert {b["marker"] for b in bodies} == {bodies[0]["init_token"]}
    assert {b["init_token"] for b in bodies} == {bodies[0]["init_token"]}
    assert all(b["tmp_files"] == [f"env-{b['env_id']}"] for b in bodies), [b["tmp_files"] for b in bodies]
    # AWS's semantics (no --reseed-after-restore): the copies share the snapshot's RNG state
    # (test_snapstart_verify.py covers the switch, and OpenSSL)
    assert {b["random"] for b in bodies} == {random.Random(1234).random()}
    # before-snapshot hooks ran once, newest first; after-restore hooks in registration order
    assert all(b["before_order"] == ["second", "first"] for b in bodies), bodies[0]
    assert all(b["after_order"] == ["first", "second"] for b in bodies), bodies[0]
    assert all(b["init_type"] == "snap-start" and b["version"] == "1" for b in bodies)
    # the function's log: one RESTORE_START and one RESTORE_REPORT per restored environment
    entries = [(env, m) for v, env, m in function_log(server, name) if v == "1"]
    restored = {env for env, m in entries if m.startswith("RESTORE_START")}
    reported = {env for env, m in entries if m.startswith("RESTORE_REPORT Restore Duration")}
    assert len(restored) == 8 and restored == reported
    # each invoke is reported in its own environment's stream; the function itself gets no log
    # stream name (AWS: not available with SnapStart), neither the snapshotted environment's
    reporting = set()
    for response, body in results:
        request_id = response["ResponseMetadata"]["RequestId"]
        [env] = [env for env, m in entries if m.startswith(f"REPORT RequestId: {request_id}")]
        reporting.add(env)
        assert body["log_stream"] is None and body["log_stream_env"] is None
    assert reporting == restored


def test_alias_restores_then_reuses_the_warm_environment(lam, counter: Counter) -> None:  # type: ignore[no-untyped-def]
    create_snap(lam, "aliased", HOOKS_APP, counter)
    publish(lam, "aliased")
    lam.create_alias(FunctionName="aliased", Name="live", FunctionVersion="1")
    first, body1 = invoke_json(lam, "aliased", {}, Qualifier="live", LogType="Tail")
    assert first["ExecutedVersion"] == "1"
    assert_restored(first["LogResult"])
    second, body2 = invoke_json(lam, "aliased", {}, Qualifier="live", LogType="Tail")
    assert second["ExecutedVersion"] == "1"
    assert_warm(second["LogResult"])
    assert body1["env_id"] is not None and body2["env_id"] == body1["env_id"]
    assert body1["after_order"] == ["first", "second"]  # hooks do not run again on a warm invoke
    assert body2["after_order"] == ["first", "second"]
    assert counter.count("/init/aliased/1") == 1


# -- failures at publish ---------------------------------------------------------------------
def test_import_error_fails_the_publish(lam, counter: Counter) -> None:  # type: ignore[no-untyped-def]
    create_snap(lam, "import-error", "import module_that_does_not_exist\ndef handler(e, c):\n    return 1\n", counter)
    response, final = publish(lam, "import-error", expect="Failed")
    assert response["State"] == "Pending"
    assert final["StateReasonCode"] == "FunctionError.RuntimeInitError"
    assert "Runtime.ImportModuleError" in final["StateReason"]
    assert "module_that_does_not_exist" in final["StateReason"]
    assert final["SnapStart"]["OptimizationStatus"] == "Off"
    with pytest.raises(lam.exceptions.ResourceConflictException, match="Failed"):
        invoke_json(lam, "import-error", {}, Qualifier="1")


BEFORE_ERROR_APP = """
from snapshot_restore_py import register_before_snapshot

@register_before_snapshot
def flush():
    raise ValueError("cannot flush the cache")

def handler(event, context):
    return "never"
"""


def test_before_snapshot_hook_error_fails_the_publish(lam, counter: Counter, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create_snap(lam, "before-error", BEFORE_ERROR_APP, counter)
    _, final = publish(lam, "before-error", expect="Failed")
    assert "Runtime.BeforeSnapshotError" in final["StateReason"]
    assert "cannot flush the cache" in final["StateReason"]
    assert final["StateReasonCode"].startswith("FunctionError")
    assert snapshot_dirs(server, "before-error", "1") == ([], [])


# UDP and listening sockets kept by the snapshot, and init's TCP connections broken per
# --snapstart-connections: test_snapstart_sockets.py


# -- failures at restore ---------------------------------------------------------------------
AFTER_ERROR_APP = """
import os, urllib.request
from snapshot_restore_py import register_after_restore

@register_after_restore
def reconnect():
    # the counter answers how many restores got here: fail the first one only
    with urllib.request.urlopen(os.environ["COUNTER_URL"] + "/restore/after-error", timeout=5) as r:
        attempt = int(r.read())
    if attempt == 1:
        raise ConnectionError("database unreachable")

def handler(event, context):
    return "restored"
"""


def test_after_restore_hook_error_answers_snapstart_exception(lam, counter: Counter, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create_snap(lam, "after-error", AFTER_ERROR_APP, counter)
    publish(lam, "after-error")
    with pytest.raises(lam.exceptions.SnapStartException) as failed:
        invoke_json(lam, "after-error", {}, Qualifier="1")
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "database unreachable" in str(failed.value)
    first_envs = {env for v, env, m in function_log(server, "after-error") if v == "1" and m.startswith("RESTORE_START")}
    assert len(first_envs) == 1
    assert containers_of(server, first_envs) == []  # the failed environment was destroyed
    errors = [m for v, _, m in function_log(server, "after-error") if m.startswith("RESTORE_REPORT")]
    assert any("Status: error" in m and "Runtime.AfterRestoreError" in m for m in errors), errors
    # the next invoke restores again, in a new environment, and this time the hook succeeds
    response, body = invoke_json(lam, "after-error", {}, Qualifier="1", LogType="Tail")
    assert body == "restored"
    assert_restored(response["LogResult"])
    all_envs = {env for v, env, m in function_log(server, "after-error") if v == "1" and m.startswith("RESTORE_START")}
    assert len(all_envs) == 2 and first_envs < all_envs
    assert counter.count("/restore/after-error") == 2
    assert lam.get_function_configuration(FunctionName="after-error", Qualifier="1")["State"] == "Active"


SLOW_RESTORE_APP = """
import time
from snapshot_restore_py import register_after_restore

@register_after_restore
def warm_up():
    time.sleep(12)

def handler(event, context):
    return "too late"
"""


def test_slow_after_restore_hook_times_out(lam, counter: Counter, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create_snap(lam, "slow-restore", SLOW_RESTORE_APP, counter)
    publish(lam, "slow-restore")
    started = time.monotonic()
    with pytest.raises(lam.exceptions.SnapStartTimeoutException) as failed:
        invoke_json(lam, "slow-restore", {}, Qualifier="1")
    elapsed = time.monotonic() - started
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 408
    assert 9.5 < elapsed < 12, elapsed  # Lambda's 10 s bound, not the hook's 12 s
    envs = {env for v, env, m in function_log(server, "slow-restore") if v == "1" and m.startswith("RESTORE_START")}
    assert len(envs) == 1 and containers_of(server, envs) == []


# The init-timeout path runs on a server whose snapshot init floor is lowered from Lambda's 130 s
# (the bound is max(floor, Timeout)): see tests/e2e/test_snapstart_init_timeout.py.
