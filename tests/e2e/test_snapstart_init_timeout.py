"""Snapshot init is bounded by max(floor, Timeout): an init that outlasts it fails the publish
with FunctionError.InitTimeout. The floor (Lambda's 130 s) is lowered to 3 s on this server so
the real timeout path runs in seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import ProcessFactory, ServerHandle, create, require_root, run_server
from tests.e2e.snapstart_support import function_log, publish

SLOW_INIT = """
import time
time.sleep(30)
def handler(event, context):
    return "never"
"""


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("inittimeout"), ["--snapshot-init-floor", "3s"])


def test_init_longer_than_the_bound_fails_the_publish(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "slow-init", {"app.py": SLOW_INIT}, Timeout=2, SnapStart={"ApplyOn": "PublishedVersions"})
    started = time.monotonic()
    _, config = publish(lam, "slow-init", expect="Failed", timeout=30)
    elapsed = time.monotonic() - started
    assert config["StateReasonCode"] == "FunctionError.InitTimeout"
    assert "3 seconds" in config["StateReason"]
    assert 2.5 < elapsed < 15, elapsed  # max(3 s floor, Timeout 2 s), not the 30 s sleep
    assert config["SnapStart"]["OptimizationStatus"] == "Off"
    messages = [m for v, _, m in function_log(server, "slow-init") if v == "1"]
    assert any(m.startswith("INIT_REPORT") and "Status: timeout" in m for m in messages), messages
    assert server.runc_containers() == []


def test_timeout_above_the_floor_extends_the_bound(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    app = "import time\ntime.sleep(4)\ndef handler(event, context):\n    return 'ok'\n"
    create(lam, "slowish-init", {"app.py": app}, Timeout=8, SnapStart={"ApplyOn": "PublishedVersions"})
    _, config = publish(lam, "slowish-init", expect="Active", timeout=40)
    assert config["SnapStart"]["OptimizationStatus"] == "On"
