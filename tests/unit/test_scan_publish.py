"""`publish_scanner`: the SnapshotManager.scanner hook that scans a version's code at publish,
logs every finding and returns the ones that block the publish."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from snapfaas.config import Limits
from snapfaas.registry.artifacts import ArtifactStore
from snapfaas.registry.model import FunctionVersion
from snapfaas.scan import publish_scanner
from snapfaas.worker.logs import LogStore
from tests.conftest import make_zip

APP = "import time, uuid\n\nID = uuid.uuid4()\nSTARTED = time.time()\n\n\ndef handler(event, context):\n    return ID\n"


@pytest.fixture
def stores(tmp_path: Path) -> tuple[ArtifactStore, LogStore]:
    return ArtifactStore(tmp_path / "code", tmp_path / "trees", Limits()), LogStore(tmp_path / "logs")


def version_of(artifacts: ArtifactStore, files: dict[str, str]) -> FunctionVersion:
    artifact = artifacts.ingest(make_zip(files))
    return FunctionVersion(name="fn", version="3", runtime="python3.12", handler="app.handler", role="r",
                           code_digest=artifact.digest, code_sha256=artifact.sha256, code_size=artifact.size,
                           snap_start="PublishedVersions")


def log_messages(logs: LogStore) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 2)[1:]) for line in logs.read("fn")]  # type: ignore[misc]


@pytest.mark.parametrize(("block_on", "blocking"), [
    (None, []),
    ("never", []),
    ("error", ["SNAP001 app.py:3 Unique id or secret bytes generated at init"]),
    ("warning", ["SNAP001 app.py:3 Unique id or secret bytes generated at init",
                 "SNAP003 app.py:4 Current time captured at init"]),
])
def test_findings_are_logged_and_blocking_ones_returned(stores: tuple[ArtifactStore, LogStore], block_on: str | None,
                                                         blocking: list[str]) -> None:
    artifacts, logs = stores
    version = version_of(artifacts, {"app.py": APP})
    assert asyncio.run(publish_scanner(artifacts, logs, block_on)(version)) == blocking
    assert log_messages(logs) == [
        ("scan/[3]", "SCAN error SNAP001 app.py:3 uuid.uuid4() at module level: unique id or secret bytes generated at init"),
        ("scan/[3]", "SCAN warning SNAP003 app.py:4 time.time() at module level: current time captured at init"),
    ]


def test_clean_code_logs_nothing_and_never_blocks(stores: tuple[ArtifactStore, LogStore]) -> None:
    artifacts, logs = stores
    version = version_of(artifacts, {"app.py": "def handler(event, context):\n    return 1\n"})
    assert asyncio.run(publish_scanner(artifacts, logs, "info")(version)) == []
    assert logs.read("fn") == []


def test_a_missing_package_is_logged_and_does_not_block(stores: tuple[ArtifactStore, LogStore]) -> None:
    artifacts, logs = stores
    version = version_of(artifacts, {"app.py": APP})
    artifacts.discard(version.code_digest)
    assert asyncio.run(publish_scanner(artifacts, logs, "info")(version)) == []
    [(stream, message)] = log_messages(logs)
    assert stream == "scan/[3]" and message.startswith("SCAN info SNAP000 - scan failed: CodeUnavailable")


def test_many_blocking_findings_are_capped(stores: tuple[ArtifactStore, LogStore]) -> None:
    artifacts, logs = stores
    version = version_of(artifacts, {f"m{i:02}.py": "import uuid\nX = uuid.uuid4()\n" for i in range(15)})
    blocking = asyncio.run(publish_scanner(artifacts, logs, "error")(version))
    assert len(blocking) == 11 and blocking[-1] == "and 5 more (see the function log)"
    assert len(logs.read("fn")) == 15


def test_invalid_block_on_is_rejected(stores: tuple[ArtifactStore, LogStore]) -> None:
    with pytest.raises(ValueError):
        publish_scanner(*stores, "fatal")


def test_wired_into_the_snapshot_manager_a_blocking_scan_fails_the_publish(stores: tuple[ArtifactStore, LogStore]) -> None:
    """The contract with SnapshotManager.scanner: blocking findings fail the version (before any
    environment is started) with a StateReason that lists them."""
    from types import SimpleNamespace

    from snapfaas.registry.model import State
    from snapfaas.snapshot import engine
    from snapfaas.snapshot.manager import SnapshotManager

    artifacts, logs = stores
    version = version_of(artifacts, {"app.py": APP})

    class Registry:
        def update_version(self, name: str, number: str, change) -> None:  # type: ignore[no-untyped-def]
            change(version)

    class Factory:
        logs = stores[1]

        def create(self, *args: object) -> None:
            raise AssertionError("a blocked publish must not start an environment")

    manager = SnapshotManager(Registry(), Factory(), SimpleNamespace(), engine.CriuStatus(True, "criu", "4"),  # type: ignore[arg-type]
                              retention_s=60, environ_for=lambda *_: {}, revoke=lambda _: None)
    manager.scanner = publish_scanner(artifacts, logs, "error")
    asyncio.run(manager.publish(version))
    assert version.state == State.FAILED
    assert version.state_reason == ("Snapshot safety scan blocked the publish: "
                                    "SNAP001 app.py:3 Unique id or secret bytes generated at init")
    streams = [stream for stream, _ in log_messages(logs)]
    assert streams[:2] == ["scan/[3]", "scan/[3]"] and streams[-1] == "snapshot/[3]"
