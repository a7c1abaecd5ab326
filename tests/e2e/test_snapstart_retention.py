"""SnapStart snapshot retention through real boto3, on a server keeping snapshots for 3 s: a
version not invoked for the retention period loses its snapshot (Inactive), invoking it answers
SnapStartNotReadyException and re-creates the snapshot, and it becomes Active again by itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, publish, snapshot_dirs, wait_for, wait_state

APP = """
import os
def handler(event, context):
    return {"init_type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"], "version": context.function_version}
"""
RETENTION_S = 3


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    base: Path = tmp_path_factory.mktemp("retention")
    yield from run_server(processes, base, ["--snapshot-retention", f"{RETENTION_S}s", "--keep-alive", "60"])


def test_idle_version_goes_inactive_and_comes_back(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "idle", {"app.py": APP}, SnapStart=SNAPSTART)
    create(lam, "busy", {"app.py": APP}, SnapStart=SNAPSTART)
    before_publish = time.monotonic()  # "idle" becomes Active after this, so its retention ends >= 3 s later
    publish(lam, "idle")
    publish(lam, "busy")
    stored, cached = snapshot_dirs(server, "idle", "1")
    assert len(stored) == len(cached) == 1  # the manifest, and the snapshot's exposure in the view

    # "busy" is invoked all along and keeps its snapshot while "idle" loses its own
    deadline = time.monotonic() + 20
    while lam.get_function_configuration(FunctionName="idle", Qualifier="1")["State"] == "Active":
        assert time.monotonic() < deadline, "the idle version never went Inactive"
        response, body = invoke_json(lam, "busy", {}, Qualifier="1")
        assert body == {"init_type": "snap-start", "version": "1"}
        time.sleep(0.5)  # invoke "busy" at a steady pace while polling
    assert time.monotonic() - before_publish >= RETENTION_S
    inactive = lam.get_function_configuration(FunctionName="idle", Qualifier="1")
    assert inactive["State"] == "Inactive"
    assert inactive["StateReasonCode"] == "Idle"
    # the cached copy goes at once; the manifest at the collection the expiry schedules
    assert snapshot_dirs(server, "idle", "1")[1] == []
    wait_for(lambda: snapshot_dirs(server, "idle", "1") == ([], []), 20, "the expired snapshot's manifest to be collected")
    assert lam.get_function_configuration(FunctionName="busy", Qualifier="1")["State"] == "Active"
    assert len(snapshot_dirs(server, "busy", "1")[0]) == 1

    with pytest.raises(lam.exceptions.SnapStartNotReadyException) as not_ready:
        invoke_json(lam, "idle", {}, Qualifier="1")
    assert not_ready.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    # while the snapshot is re-created invokes keep answering SnapStartNotReady (not a conflict)
    try:
        invoke_json(lam, "idle", {}, Qualifier="1")
    except lam.exceptions.SnapStartNotReadyException:
        pass

    final = wait_state(lam, "idle", "1", ("Active", "Failed"), timeout=30)
    assert final["State"] == "Active" and final["SnapStart"]["OptimizationStatus"] == "On"
    response, body = invoke_json(lam, "idle", {}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    assert body == {"init_type": "snap-start", "version": "1"}
    assert len(snapshot_dirs(server, "idle", "1")[0]) == 1
