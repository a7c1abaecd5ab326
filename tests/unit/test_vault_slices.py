"""Snapshot images belong to the id slice they were taken in (snapfaas.snapshot.vault)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snapfaas.snapshot.vault import SnapshotCorrupt, SnapshotVault

GROUPS = {0: 50000, 1: 50000 + 65536}


@pytest.fixture
def vault(tmp_path: Path) -> SnapshotVault:
    if os.geteuid() != 0:
        pytest.fail("chown needs root (the suite runs as root)")
    return SnapshotVault(tmp_path / "stored", tmp_path / "cache", tmp_path / "snapshot.key", 0, GROUPS.__getitem__)


def sealed(vault: SnapshotVault, slice_index: int) -> str:
    work = vault.work_dir("snap")
    (work / "pages-1.img").write_bytes(b"\1" * 5000)
    (work / "core-1.img").write_bytes(b"core")
    vault.seal("snap", work, {"function": "f"}, slice_index)
    return "snap"


def test_images_belong_to_the_slice_they_were_taken_in(vault: SnapshotVault) -> None:
    snapshot = sealed(vault, 0)
    manifest = vault.manifest(snapshot)
    assert (manifest["id_slice"], manifest["image_group"]) == (0, GROUPS[0])
    plain = vault.lease(snapshot, 0).path
    for path in [plain, *plain.iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (0, GROUPS[0]), path
    assert oct(plain.stat().st_mode & 0o777) == "0o750"
    assert oct((plain / "pages-1.img").stat().st_mode & 0o777) == "0o640"
    assert vault.holds(0) and not vault.holds(1)
    vault.evict(snapshot)
    assert not vault.holds(0)
    assert (vault.lease(snapshot, 0).path / "pages-1.img").read_bytes() == b"\1" * 5000  # decrypted again
    with pytest.raises(SnapshotCorrupt, match="taken in id slice 0"):
        vault.lease(snapshot, 1).path


def test_a_snapshot_from_before_slices_is_refused(vault: SnapshotVault) -> None:
    snapshot = sealed(vault, 0)
    manifest_path = vault.root / snapshot / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["id_slice"], manifest["image_group"]
    manifest["mac"] = vault._mac(manifest)  # authentic, as an old manifest re-sealed with the key would be
    manifest_path.write_text(json.dumps(manifest))
    os.chown(vault.cache / snapshot, 0, 100000)  # a cache entry of the old shared range
    with pytest.raises(SnapshotCorrupt, match="taken in id slice None"):
        vault.lease(snapshot, 0).path
