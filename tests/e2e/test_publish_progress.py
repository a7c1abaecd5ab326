"""A SnapStart publish seen phase by phase: the progress route through a real publish (real
CRIU), a failing one, and `snapfaas deploy --snapstart` showing the phases, the snapshot size
and the scan findings at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from snapfaas.client import Connection
from tests.conftest import ACCESS_KEY, SECRET_KEY, ServerHandle, create
from tests.e2e.snapstart_support import SNAPSTART, wait_state

HOOKED = """
import time
from snapshot_restore_py import register_before_snapshot

STARTED = time.time()  # SNAP003: a time taken at init is frozen in the snapshot


@register_before_snapshot
def before():
    pass


def handler(event, context):
    return {"started": STARTED}
"""
BROKEN = "raise RuntimeError('init fails on purpose')\n"


def progress(server: ServerHandle, target: str) -> dict:
    conn = Connection(server.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)
    return json.loads(conn.signed_get(f"/snapfaas/v1/snapstart/{target}/publish"))


def test_progress_of_a_publish_phase_by_phase(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "progressive", {"app.py": HOOKED}, Runtime="python3.11", SnapStart=SNAPSTART, Timeout=15)
    version = lam.publish_version(FunctionName="progressive")["Version"]
    wait_state(lam, "progressive", version, ("Active", "Failed"))
    seen = progress(server, f"progressive:{version}")
    assert seen["State"] == "Active" and seen["Phase"] == "done", seen
    phases = [p["Phase"] for p in seen["Phases"]]
    # the server's scanner runs (default), a slot is free at once, and the Python runtime announces its hooks
    assert phases == ["scan", "queued", "init", "hooks", "checkpoint", "upload"], seen
    assert all(p["Seconds"] >= 0 for p in seen["Phases"])
    assert seen["TotalSeconds"] >= sum(p["Seconds"] for p in seen["Phases"]) - 0.01
    assert seen["SnapshotBytes"] > 1 << 20 and seen["PhaseElapsedSeconds"] is None


def test_progress_of_a_failed_publish_says_why(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "unpublishable", {"app.py": BROKEN}, Runtime="python3.11", SnapStart=SNAPSTART, Timeout=15)
    version = lam.publish_version(FunctionName="unpublishable")["Version"]
    wait_state(lam, "unpublishable", version, ("Active", "Failed"))
    seen = progress(server, f"unpublishable:{version}")
    assert seen["State"] == "Failed" and seen["Phase"] == "failed"
    assert "init fails on purpose" in seen["Reason"] and seen["Reason"] == seen["StateReason"]
    assert [p["Phase"] for p in seen["Phases"]][-1] == "init"  # it never reached the hooks
    # $LATEST has no publish: a clear error, not an empty progress
    conn = Connection(server.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)
    try:
        conn.signed_get("/snapfaas/v1/snapstart/unpublishable/publish")
    except Exception as exc:  # urllib's HTTPError
        assert getattr(exc, "code", None) == 400 and b"published version" in exc.read()  # type: ignore[attr-defined]
    else:
        raise AssertionError("progress of $LATEST answered")


def test_deploy_snapstart_shows_phases_size_and_findings(server: ServerHandle, tmp_path: Path) -> None:
    source = tmp_path / "fn"
    source.mkdir()
    (source / "app.py").write_text(HOOKED)
    result = subprocess.run(
        [sys.executable, "-m", "snapfaas", "deploy", str(source), "--name", "deployed", "--snapstart",
         "--runtime", "python3.11", "--timeout", "15", "--endpoint-url", server.endpoint],
        capture_output=True, text=True, env=server.env(), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for shown in ("created deployed", "publishing version 1 with SnapStart", "init", "before-snapshot hooks",
                  "checkpoint (CRIU)", "upload to the store", "snapshot ready:"):
        assert shown in out, out
    assert " MB in " in out
    assert "snapshot safety scan: 1 finding(s)" in out and "SNAP003" in out.split("snapshot safety scan: 1 finding(s)")[1]
