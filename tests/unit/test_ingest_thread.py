"""CreateFunction/UpdateFunctionCode ingest code off the event loop (snapfaas.registry.service)."""

from __future__ import annotations

import asyncio
import base64
import sys
import threading
from pathlib import Path

import pytest

from snapfaas.config import Limits
from snapfaas.errors import InvalidParameterValue
from snapfaas.registry.artifacts import ArtifactStore
from snapfaas.registry.db import Registry
from snapfaas.registry.model import LATEST, State
from snapfaas.registry.service import ControlPlane
from snapfaas.sandbox.interpreter import InterpreterRegistry
from tests.unit.test_artifacts import make_zip, with_encryption_flag
from tests.unit.test_registry import PREFIX

ROLE = "arn:aws:iam::000000000000:role/r"


class RecordingStore(ArtifactStore):
    """The real store, noting which thread each ingest ran on."""

    threads: list[threading.Thread]

    def ingest(self, data: bytes):  # type: ignore[no-untyped-def]
        self.threads.append(threading.current_thread())
        return super().ingest(data)


def body(files: dict[str, str] | None = None, raw: bytes | None = None) -> dict:
    data = raw if raw is not None else make_zip(files or {"app.py": "def handler(e, c):\n    return 1\n"})
    return {"FunctionName": "f", "Runtime": "python3.11", "Role": ROLE, "Handler": "app.handler",
            "Code": {"ZipFile": base64.b64encode(data).decode()}}


@pytest.fixture
def control(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = RecordingStore(tmp_path / "code", tmp_path / "trees", Limits())
    store.threads = []
    registry = Registry(tmp_path / "state.db", PREFIX)
    interpreters = InterpreterRegistry({"python3.11": sys.executable})  # the test interpreter is 3.11
    yield ControlPlane(registry, store, interpreters)
    registry.close()


def test_ingest_runs_in_a_worker_thread(control: ControlPlane) -> None:
    async def scenario() -> None:
        loop_thread = threading.current_thread()
        await control.create_function(body())
        control.registry.set_state("f", LATEST, State.ACTIVE, None, None)
        await control.update_code("f", body({"app.py": "def handler(e, c):\n    return 2\n"})["Code"])
        threads = control.artifacts.threads  # type: ignore[attr-defined]
        assert len(threads) == 2 and all(t is not loop_thread for t in threads)
        await control.close()

    asyncio.run(scenario())


def test_encrypted_entry_is_a_400_and_leaves_nothing(control: ControlPlane) -> None:
    data = with_encryption_flag(make_zip({"app.py": "def handler(e, c):\n    return 1\n"}), "app.py")

    async def scenario() -> None:
        with pytest.raises(InvalidParameterValue, match="'app.py' is encrypted"):
            await control.create_function(body(raw=data))
        await control.close()

    asyncio.run(scenario())
    assert control.registry.list_latest() == []
    assert list(control.artifacts.root.iterdir()) == []


def test_garbage_collection_waits_for_ingests_in_flight(control: ControlPlane) -> None:
    """A package ingested in a thread but not yet referenced by a version survives a delete
    (which collects garbage) that happens meanwhile; the collection runs once the ingest is done."""
    store = control.artifacts
    started, release = threading.Event(), threading.Event()
    original = store.ingest

    def paused_ingest(data: bytes):  # type: ignore[no-untyped-def]
        artifact = original(data)
        if artifact.digest != other_digest:
            started.set()
            release.wait(timeout=60)
        return artifact

    async def scenario() -> None:
        nonlocal other_digest
        other = await control.create_function({**body({"app.py": "def handler(e, c):\n    return 0\n"}), "FunctionName": "other"})
        other_digest = other.code_digest
        store.ingest = paused_ingest  # type: ignore[method-assign]
        creating = asyncio.create_task(control.create_function(body()))
        await asyncio.to_thread(started.wait, 60)
        await control.delete("other", None)  # collects garbage: must not take the unreferenced new package
        assert (store.root / f"{other_digest}.zip").is_file()  # deferred, not run
        release.set()
        created = await creating
        assert (store.root / f"{created.code_digest}.zip").is_file()
        assert not (store.root / f"{other_digest}.zip").exists()  # collected once the ingest committed
        await control.close()

    other_digest = ""
    asyncio.run(scenario())
