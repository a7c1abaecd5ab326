"""SnapshotVault: the authenticated manifest and the RAM cache's byte budget (real files and
real encryption in a temporary directory)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snapfaas.snapshot.vault import SnapshotCorrupt, SnapshotVault


def make_vault(tmp_path: Path, budget: int | None) -> SnapshotVault:
    return SnapshotVault(tmp_path / "stored", tmp_path / "ram" / "cache", tmp_path / "snapshot.key",
                         image_owner=os.getuid(), group_of=lambda index: os.getgid(), cache_bytes=budget)


def take(vault: SnapshotVault, snapshot_id: str, size: int) -> dict:
    """A snapshot of `size` bytes of images, sealed (and so cached)."""
    work = vault.work_dir(snapshot_id)
    (work / "pages-1.img").write_bytes(os.urandom(size))
    (work / "core.img").write_bytes(b"core")
    return vault.seal(snapshot_id, work, {"restore_memory": "map"}, 0)


def manifest_path(vault: SnapshotVault, snapshot_id: str) -> Path:
    return vault.root / snapshot_id / "manifest.json"


def test_sealed_manifest_verifies_and_every_change_is_detected(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, None)
    sealed = take(vault, "a", 1000)
    assert vault.manifest("a") == sealed and isinstance(sealed["mac"], str)
    original = manifest_path(vault, "a").read_bytes()
    changes = {
        "mode": lambda m: m.update(restore_memory="copy"),
        "file list": lambda m: m["files"].pop(),
        "checksum": lambda m: m["files"][0].update(sha256="0" * 64),
        "no MAC": lambda m: m.pop("mac"),
        "forged MAC": lambda m: m.update(mac="00" * 32),
        "added key": lambda m: m.update(extra=1),
    }
    for what, change in changes.items():
        manifest = json.loads(original)
        change(manifest)
        manifest_path(vault, "a").write_text(json.dumps(manifest))
        with pytest.raises(SnapshotCorrupt):
            vault.manifest("a")
        with pytest.raises(SnapshotCorrupt):
            vault.lease("a", 0)  # the cache copy is there, but a lease verifies the manifest every time
        assert vault._pins == {}, what  # a failed lease pins nothing
    manifest_path(vault, "a").write_bytes(original)
    assert vault.lease("a", 0).manifest == sealed


def test_a_manifest_moved_to_another_snapshot_is_rejected(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, None)
    take(vault, "a", 100)
    take(vault, "b", 100)
    manifest_path(vault, "b").write_bytes(manifest_path(vault, "a").read_bytes())
    with pytest.raises(SnapshotCorrupt, match="belongs to snapshot 'a'"):
        vault.manifest("b")


def test_the_mac_key_comes_from_the_master_key(tmp_path: Path) -> None:
    take(make_vault(tmp_path, None), "a", 100)
    (tmp_path / "snapshot.key").write_bytes(os.urandom(32))  # another key: the same manifest no longer verifies
    with pytest.raises(SnapshotCorrupt, match="MAC"):
        make_vault(tmp_path, None).manifest("a")


def test_cache_evicts_least_recently_used_unpinned_snapshots(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, budget=25_000)
    for name in ("a", "b"):
        take(vault, name, 10_000)
    assert list(vault.cached()) == ["a", "b"]
    vault.lease("a", 0).release()  # a is now the most recently used
    take(vault, "c", 10_000)  # over budget: b (least recently used) goes
    assert list(vault.cached()) == ["a", "c"]
    assert not (vault.cache / "b").exists() and (vault.cache / "a" / "pages-1.img").exists()
    lease = vault.lease("b", 0)  # a miss: decrypted from disk again, a is evicted
    assert (lease.path / "pages-1.img").stat().st_size == 10_000
    assert list(vault.cached()) == ["c", "b"]
    assert sum(vault.cached().values()) <= 25_000
    lease.release()


def test_pinned_snapshots_are_never_evicted(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, budget=15_000)
    take(vault, "a", 10_000)
    held = vault.lease("a", 0)
    take(vault, "b", 10_000)  # over budget, but a is pinned by a restore in progress
    assert set(vault.cached()) == {"a", "b"}
    held.release()
    held.release()  # idempotent
    take(vault, "c", 1000)
    assert list(vault.cached()) == ["b", "c"]


def test_a_snapshot_bigger_than_the_budget_is_still_cached_and_restorable(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, budget=5_000)
    take(vault, "small", 1000)
    take(vault, "huge", 20_000)
    assert list(vault.cached()) == ["huge"]
    vault.evict("huge")
    lease = vault.lease("huge", 0)
    assert (lease.path / "pages-1.img").stat().st_size == 20_000
    lease.release()


def test_eviction_unlinks_files_a_restored_process_still_maps(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, budget=15_000)
    take(vault, "a", 10_000)
    lease = vault.lease("a", 0)
    with open(lease.path / "pages-1.img", "rb") as mapped:  # stands for a restored process's mapping
        before = mapped.read()
        lease.release()
        take(vault, "b", 10_000)
        assert "a" not in vault.cached()
        mapped.seek(0)
        assert mapped.read() == before  # the file was unlinked, not rewritten


def test_a_restarted_vault_counts_what_is_already_cached(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, budget=None)
    for name in ("a", "b", "c"):
        take(vault, name, 10_000)
    restarted = make_vault(tmp_path, budget=25_000)
    assert len(restarted.cached()) == 2
    restarted.collect_garbage({"c"})
    assert list(restarted.cached()) in (["c"], [])
    assert [p.name for p in restarted.cache.iterdir()] in (["c"], [])
