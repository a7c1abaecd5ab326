"""A server without CRIU (``--no-snapstart``): SnapStart versions fail to publish, saying why,
and everything on-demand keeps working."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import SNAPSTART, publish, report, snapshot_dirs

APP = """
import os
def handler(event, context):
    return {"init_type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"], "version": context.function_version}
"""


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    base: Path = tmp_path_factory.mktemp("no-snapstart")
    yield from run_server(processes, base, ["--no-snapstart"])


def test_snapstart_publish_fails_and_on_demand_still_works(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "wants-snapstart", {"app.py": APP}, SnapStart=SNAPSTART)
    response, final = publish(lam, "wants-snapstart", expect="Failed")
    assert response["State"] == "Pending"
    assert "SnapStart is unavailable" in final["StateReason"], final["StateReason"]
    assert "--no-snapstart" in final["StateReason"]
    assert final["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}
    assert snapshot_dirs(server, "wants-snapstart", "1") == ([], [])
    with pytest.raises(lam.exceptions.ResourceConflictException, match="Failed"):
        invoke_json(lam, "wants-snapstart", {}, Qualifier="1")

    # $LATEST of the same function runs on-demand
    result, body = invoke_json(lam, "wants-snapstart", {}, LogType="Tail")
    assert "Init Duration" in report(result["LogResult"])
    assert body == {"init_type": "on-demand", "version": "$LATEST"}

    # and so do published versions of functions without SnapStart
    create(lam, "on-demand", {"app.py": APP})
    _, plain = publish(lam, "on-demand")
    assert plain["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}
    result, body = invoke_json(lam, "on-demand", {}, Qualifier="1", LogType="Tail")
    fields = report(result["LogResult"])
    assert "Init Duration" in fields and "Restore Duration" not in fields
    assert body == {"init_type": "on-demand", "version": "1"}
    assert "SnapStart unavailable" in server.log_path.read_text()
