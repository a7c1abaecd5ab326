"""SnapshotManager.broken: a restore that failed from the RAM cache's copy drops that copy once
(the next restore reads the snapshot again from the store, where every chunk is verified); only
a copy read afresh that fails too gets the snapshot re-created. A real vault and store in a
temporary directory; the registry and the log are stand-ins."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from snapfaas.snapshot import engine
from snapfaas.snapshot.manager import SnapshotManager
from snapfaas.snapshot.vault import SnapshotVault
from snapfaas.store import ChunkStore, DirectoryOrigin


def test_a_bad_cached_copy_is_dropped_once_and_a_bad_fresh_copy_recreates(tmp_path: Path) -> None:
    store = ChunkStore(DirectoryOrigin(tmp_path / "origin"), bytes(32), cache_dir=tmp_path / "disk")
    vault = SnapshotVault(store, tmp_path / "ram" / "cache", os.getuid(), lambda index: os.getgid())
    work = vault.work_dir("fn-1-aaa")
    (work / "pages-1.img").write_bytes(os.urandom(10_000))
    vault.seal("fn-1-aaa", work, {}, 0)
    lines: list[str] = []
    factory = SimpleNamespace(logs=SimpleNamespace(append=lambda name, stream, new: lines.extend(new)))
    manager = SnapshotManager(SimpleNamespace(), factory, vault, engine.CriuStatus(True, "criu", "4"),  # type: ignore[arg-type]
                              3600, lambda *a: {}, lambda identity: None)
    recreated: list[str] = []
    manager.recreate = lambda version, why: recreated.append(why)  # type: ignore[method-assign]
    version = SimpleNamespace(name="fn", version="1", snapshot_id="fn-1-aaa")

    manager.broken(version, "Restoring FAILED")  # type: ignore[arg-type]
    assert recreated == [] and not (vault.cache / "fn-1-aaa").exists()
    assert "read again from the snapshot store" in lines[-1]
    manager.broken(version, "Restoring FAILED")  # type: ignore[arg-type]  # another restore from the same dropped copy
    assert recreated == [] and len(lines) == 1

    vault.lease("fn-1-aaa", 0).release()  # the next restore materializes a fresh copy...
    manager.broken(version, "Restoring FAILED")  # type: ignore[arg-type]  # ...and that fails too
    assert recreated == ["Restoring"] and "being re-created" in lines[-1]
    assert not (vault.cache / "fn-1-aaa").exists()
    manager.broken(version, "Restoring FAILED")  # type: ignore[arg-type]  # handled once
    assert recreated == ["Restoring"]
    vault.close()
