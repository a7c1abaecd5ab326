"""SnapshotVault over a real ChunkStore (directory origin, disk cache) in a temporary directory:
the authenticated manifest, the RAM cache's byte budget, materialization from the store,
deletion and garbage collection, and the previous format's removal."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from snapfaas.snapshot.vault import SnapshotCorrupt, SnapshotVault, remove_legacy
from snapfaas.store import ChunkStore, DirectoryOrigin

SECRET = bytes(range(32))


def make_store(tmp_path: Path, secret: bytes = SECRET) -> ChunkStore:
    return ChunkStore(DirectoryOrigin(tmp_path / "origin"), secret, cache_dir=tmp_path / "disk-cache", memory_bytes=1 << 20)


def origin_only(tmp_path: Path, secret: bytes = SECRET) -> ChunkStore:
    """A second store on the same origin: no caches, no manifest cached in memory."""
    return ChunkStore(DirectoryOrigin(tmp_path / "origin"), secret, cache_dir=None, memory_bytes=0)


def make_vault(tmp_path: Path, budget: int | None, store: ChunkStore | None = None) -> SnapshotVault:
    return SnapshotVault(store or make_store(tmp_path), tmp_path / "ram" / "cache",
                         image_owner=os.getuid(), group_of=lambda index: os.getgid(), cache_bytes=budget)


def take(vault: SnapshotVault, snapshot_id: str, size: int, seed: bytes | None = None) -> dict:
    """A snapshot of `size` bytes of images, sealed (and so cached)."""
    work = vault.work_dir(snapshot_id)
    (work / "pages-1.img").write_bytes(os.urandom(size) if seed is None else (seed * size)[:size])
    (work / "core.img").write_bytes(b"core")
    (work / "dump.log").write_text("criu said things")
    return vault.seal(snapshot_id, work, {"restore_memory": "map"}, 0)


def manifest_path(vault: SnapshotVault, snapshot_id: str) -> Path:
    return vault.store.origin.root / "manifests" / snapshot_id  # type: ignore[attr-defined]


def test_sealed_snapshot_lives_in_the_store_and_its_manifest_verifies(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, None)
    sealed = take(vault, "a", 1000)
    assert vault.manifest("a") == sealed
    assert sealed["restore_memory"] == "map" and sealed["id"] == "a" and sealed["id_slice"] == 0
    assert sorted(f["name"] for f in sealed["files"]) == ["core.img", "pages-1.img"]  # no dump.log, no .complete
    assert not (vault.cache / "a" / "dump.log").exists()
    original = manifest_path(vault, "a").read_bytes()
    for offset in (10, len(original) // 2, len(original) - 40):
        damaged = bytearray(original)
        damaged[offset] ^= 1
        manifest_path(vault, "a").write_bytes(bytes(damaged))
        fresh = make_vault(tmp_path / "other", None, origin_only(tmp_path))  # no manifest cached in memory
        with pytest.raises(SnapshotCorrupt, match="manifest unusable"):
            fresh.manifest("a")
        with pytest.raises(SnapshotCorrupt):
            fresh.lease("a", 0)
        assert fresh._pins == {}  # a failed lease pins nothing
        fresh.close()
    manifest_path(vault, "a").write_bytes(original)
    assert vault.lease("a", 0).manifest == sealed


def test_a_manifest_moved_to_another_snapshot_is_rejected(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, None)
    take(vault, "a", 100)
    manifest_path(vault, "b").write_bytes(manifest_path(vault, "a").read_bytes())
    with pytest.raises(SnapshotCorrupt, match="manifest unusable"):
        make_vault(tmp_path / "x", None, origin_only(tmp_path)).manifest("b")


def test_another_secret_cannot_read_the_manifest(tmp_path: Path) -> None:
    take(make_vault(tmp_path, None), "a", 100)
    with pytest.raises(SnapshotCorrupt, match="manifest unusable"):
        make_vault(tmp_path / "x", None, origin_only(tmp_path, secret=bytes(32))).manifest("a")


def test_a_cache_miss_materializes_from_the_store_byte_for_byte(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, None)
    take(vault, "a", 3 << 20)
    original = (vault.cache / "a" / "pages-1.img").read_bytes()
    vault.evict("a")
    vault.store.memory = type(vault.store.memory)(0)  # drop every chunk tier above the origin
    import shutil
    shutil.rmtree(tmp_path / "disk-cache")
    (tmp_path / "disk-cache").mkdir()
    lease = vault.lease("a", 0)
    assert lease.materialized and vault.materializations("a") == 1
    assert (lease.path / "pages-1.img").read_bytes() == original
    assert (lease.path / ".complete").exists()
    lease.release()
    again = vault.lease("a", 0)
    assert not again.materialized  # a cache hit
    again.release()


def test_a_corrupt_chunk_at_the_origin_is_a_clear_failure(tmp_path: Path) -> None:
    store = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=None, memory_bytes=0)
    vault = make_vault(tmp_path, None, store)
    take(vault, "a", 1 << 20)
    vault.evict("a")
    for blob in (tmp_path / "origin" / "chunks").rglob("*"):
        if blob.is_file():
            data = bytearray(blob.read_bytes())
            data[len(data) // 2] ^= 0xFF
            blob.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt, match="failed at step 'materialize from the store'.*chunk"):
        vault.lease("a", 0)
    assert vault._pins == {} and not (vault.cache / "a").exists()
    assert [p.name for p in vault.cache.iterdir()] == []  # no staging left behind


def test_cache_evicts_least_recently_used_unpinned_snapshots(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, budget=25_000)
    for name in ("a", "b"):
        take(vault, name, 10_000)
    assert list(vault.cached()) == ["a", "b"]
    vault.lease("a", 0).release()  # a is now the most recently used
    take(vault, "c", 10_000)  # over budget: b (least recently used) goes
    assert list(vault.cached()) == ["a", "c"]
    assert not (vault.cache / "b").exists() and (vault.cache / "a" / "pages-1.img").exists()
    lease = vault.lease("b", 0)  # a miss: materialized from the store again, a is evicted
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
    vault.close()
    restarted = make_vault(tmp_path, budget=25_000)
    assert len(restarted.cached()) == 2
    restarted.collect_garbage({"c"}, startup=True)
    assert list(restarted.cached()) in (["c"], [])
    assert [p.name for p in restarted.cache.iterdir()] in (["c"], [])
    assert restarted.store.snapshots() == ["c"]


def test_deleting_a_snapshot_collects_its_unique_chunks_and_keeps_shared_ones(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, None)
    shared = os.urandom(1 << 20)
    for name, tail in (("a", b"A"), ("b", b"B")):
        work = vault.work_dir(name)
        (work / "lib.img").write_bytes(shared)
        (work / "pages-1.img").write_bytes(tail * (1 << 20))
        vault.seal(name, work, {}, 0)
    unique_a = vault.store.manifest("a").names() - vault.store.manifest("b").names()
    assert unique_a
    vault.delete("a")
    assert not (vault.cache / "a").exists()
    report = vault.collect_garbage({"b"})
    assert vault.store.snapshots() == ["b"] and report.chunks_deleted == len(unique_a)
    origin_chunks = {p.name for p in (tmp_path / "origin" / "chunks").rglob("*") if p.is_file()}
    assert origin_chunks == vault.store.manifest("b").names()
    assert not unique_a & set(vault.store.disk.names())  # type: ignore[union-attr]
    lease = vault.lease("b", 0)
    assert (lease.path / "lib.img").read_bytes() == shared


def test_a_publish_not_yet_recorded_survives_a_collection(tmp_path: Path) -> None:
    """Between `work_dir` and the registry recording the id, a collection that does not list it
    as referenced keeps the snapshot (and a later one drops it once it is neither)."""
    vault = make_vault(tmp_path, None)
    take(vault, "old", 10_000)
    take(vault, "publishing", 10_000)  # sealed, not yet recorded by the registry
    vault.collect_garbage({"old"})
    assert vault.store.snapshots() == ["old", "publishing"]
    vault.collect_garbage({"old", "publishing"})  # recorded now
    vault.collect_garbage({"old"})  # and since dropped from the registry
    assert vault.store.snapshots() == ["old"]


def test_collection_during_a_concurrent_publish_loses_nothing(tmp_path: Path) -> None:
    vault = make_vault(tmp_path, None)
    errors: list[BaseException] = []

    def publish(index: int) -> None:
        try:
            take(vault, f"p{index}", 600_000, seed=bytes([index % 3 + 1]) * 7)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for _ in range(5):
        vault.collect_garbage(set())
    for thread in threads:
        thread.join()
    assert errors == []
    vault.collect_garbage(set())
    published = [f"p{i}" for i in range(6)]
    assert vault.store.snapshots() == published
    for name in published:
        vault.evict(name)
        lease = vault.lease(name, 0)
        assert (lease.path / "pages-1.img").stat().st_size == 600_000
        lease.release()


def test_snapshots_of_the_previous_format_are_removed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "snapshots" / "fn-1-abc").mkdir(parents=True)
    (data / "snapshots" / "fn-1-abc" / "0.enc").write_bytes(b"x")
    (data / "snapshots" / "fn-1-abc" / "manifest.json").write_text("{}")
    (data / "snapshot.key").write_bytes(os.urandom(32))
    assert remove_legacy(data) == 1
    assert not (data / "snapshots").exists() and not (data / "snapshot.key").exists()
    assert remove_legacy(data) == 0
    vault = make_vault(tmp_path, None)
    with pytest.raises(SnapshotCorrupt, match="no manifest"):
        vault.lease("fn-1-abc", 0)
