"""Snapshot images belong to the id slice they were taken in (snapfaas.snapshot.vault)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapfaas.snapshot.vault import FORMAT_KEY, SnapshotCorrupt, SnapshotVault
from snapfaas.store import ChunkStore, DirectoryOrigin

GROUPS = {0: 50000, 1: 50000 + 65536}


@pytest.fixture
def vault(tmp_path: Path) -> SnapshotVault:
    if os.geteuid() != 0:
        pytest.fail("chown needs root (the suite runs as root)")
    store = ChunkStore(DirectoryOrigin(tmp_path / "origin"), bytes(32), cache_dir=tmp_path / "disk")
    return SnapshotVault(store, tmp_path / "cache", 0, GROUPS.__getitem__)


def sealed(vault: SnapshotVault, slice_index: int, snapshot_id: str = "snap") -> str:
    work = vault.work_dir(snapshot_id)
    (work / "pages-1.img").write_bytes(b"\1" * 5000)
    (work / "core-1.img").write_bytes(b"core")
    vault.seal(snapshot_id, work, {"function": "f"}, slice_index)
    return snapshot_id


def test_images_belong_to_the_slice_they_were_taken_in(vault: SnapshotVault) -> None:
    snapshot = sealed(vault, 0)
    manifest = vault.manifest(snapshot)
    assert (manifest["id_slice"], manifest["image_group"]) == (0, GROUPS[0])
    vault.evict(snapshot)
    plain = vault.lease(snapshot, 0).path  # materialized from the store
    for path in [plain, *plain.iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (0, GROUPS[0]), path
    assert oct(plain.stat().st_mode & 0o777) == "0o750"
    assert oct((plain / "pages-1.img").stat().st_mode & 0o777) == "0o640"
    assert vault.holds(0) and not vault.holds(1)
    vault.evict(snapshot)
    assert not vault.holds(0)
    assert (vault.lease(snapshot, 0).path / "pages-1.img").read_bytes() == b"\1" * 5000  # read from the store again
    with pytest.raises(SnapshotCorrupt, match="taken in id slice 0"):
        vault.lease(snapshot, 1).path


def test_a_store_snapshot_the_vault_did_not_write_is_refused(vault: SnapshotVault, tmp_path: Path) -> None:
    tree = tmp_path / "foreign"
    tree.mkdir()
    (tree / "pages-1.img").write_bytes(b"x")
    vault.store.put_tree("foreign", tree, meta={"id_slice": 0, "image_group": GROUPS[0]})  # no vault format key
    with pytest.raises(SnapshotCorrupt, match="not a format-2"):
        vault.lease("foreign", 0)
    vault.store.put_tree("old-format", tree, meta={FORMAT_KEY: 2})  # no slice recorded
    with pytest.raises(SnapshotCorrupt, match="taken in id slice None"):
        vault.lease("old-format", 0)
