"""Garbage collection over a real directory origin: unique chunks of a deleted snapshot go from
every tier, shared ones stay, and a put running concurrently (paused at the riskiest points by
a gated origin) never loses a chunk."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.store import CHUNK_SIZE, ChunkStore, DirectoryOrigin, StoreError
from snapfaas.store.origin import ObjectInfo
from tests.storekit import make_tree, tree_digest

SECRET = bytes(range(32))
WAIT = 60.0


class GatedOrigin(DirectoryOrigin):
    """A directory origin that can hold one manifest write or the chunk listing until released."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hold_manifest: str | None = None
        self.hold_listing = False
        self.reached = threading.Event()
        self.release = threading.Event()

    def _hold(self) -> None:
        self.reached.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("the test never released the gate")

    def put_manifest(self, snapshot_id: str, data: bytes) -> None:
        if snapshot_id == self.hold_manifest:
            self._hold()
        super().put_manifest(snapshot_id, data)

    def list_chunks(self) -> Iterator[ObjectInfo]:
        if self.hold_listing:
            self._hold()
        return super().list_chunks()


def versions(tmp_path: Path) -> tuple[Path, Path]:
    """v1 and v2 of one function: v2 changes one chunk of v1's library image."""
    v1 = make_tree(tmp_path / "v1", pages_chunks=8, library_chunks=6)
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2, symlinks=True)
    data = bytearray((v2 / "pages-2.img").read_bytes())
    data[2 * CHUNK_SIZE + 5:2 * CHUNK_SIZE + 15] = b"return 42\n"
    (v2 / "pages-2.img").write_bytes(bytes(data))
    return v1, v2


def origin_names(origin: DirectoryOrigin) -> set[str]:
    return {info.key for info in origin.list_chunks()}


@pytest.fixture
def origin(tmp_path: Path) -> GatedOrigin:
    return GatedOrigin(tmp_path / "origin")


@pytest.fixture
def store(tmp_path: Path, origin: GatedOrigin) -> Iterator[ChunkStore]:
    store = ChunkStore(origin, SECRET, cache_dir=tmp_path / "cache", memory_bytes=64 << 20)
    yield store
    store.close()


def fresh_reader(tmp_path: Path, origin: DirectoryOrigin, name: str) -> ChunkStore:
    return ChunkStore(DirectoryOrigin(origin.root), SECRET, cache_dir=tmp_path / f"cache-{name}")


def test_a_deleted_versions_unique_chunks_go_from_every_tier_and_shared_ones_stay(
        tmp_path: Path, store: ChunkStore, origin: GatedOrigin) -> None:
    v1, v2 = versions(tmp_path)
    one, two = store.put_tree("fn-1-aaaa", v1), store.put_tree("fn-2-bbbb", v2)
    other = store.put_tree("other-1-cccc", make_tree(tmp_path / "other", seed=9))
    store.materialize("fn-1-aaaa", tmp_path / "warm")  # v1's chunks now in memory and on disk
    unique_to_one = one.names() - two.names() - other.names()
    assert len(unique_to_one) == 1
    store.delete("fn-1-aaaa")
    report = store.collect(["fn-2-bbbb", "other-1-cccc"], grace_seconds=0)
    assert (report.chunks_deleted, report.manifests_deleted) == (1, 0)
    assert report.bytes_freed == sum(ref.stored for ref in one.chunk_refs() if ref.name in unique_to_one)
    names = origin_names(origin)
    assert not unique_to_one & names and two.names() | other.names() <= names
    assert not unique_to_one & (set(store.memory.names()) | set(store.disk.names()))
    assert report.cache_entries_dropped == 2  # the unique chunk, from memory and from disk
    assert store.collect(["fn-2-bbbb", "other-1-cccc"], grace_seconds=0).chunks_deleted == 0
    reader = fresh_reader(tmp_path, origin, "reader")
    reader.materialize("fn-2-bbbb", tmp_path / "v2-again")
    assert tree_digest(tmp_path / "v2-again") == tree_digest(v2)
    reader.close()


def test_unreferenced_manifests_are_collected_and_young_ones_kept_within_the_grace_window(
        tmp_path: Path, store: ChunkStore, origin: GatedOrigin) -> None:
    v1, _ = versions(tmp_path)
    store.put_tree("fn-1-aaaa", v1)
    orphan = store.codec.seal(b"a chunk whose put crashed before its manifest")
    origin.put_chunk(orphan.name, orphan.blob)
    kept = store.collect([], grace_seconds=3600)  # just published, not yet recorded by the caller
    assert (kept.manifests_deleted, kept.chunks_deleted) == (0, 0) and store.snapshots() == ["fn-1-aaaa"]
    before = origin_names(origin)
    assert orphan.name in before
    gone = store.collect([], grace_seconds=0)
    assert (gone.manifests_deleted, gone.chunks_deleted) == (1, len(before))
    assert store.snapshots() == [] and origin_names(origin) == set()


def test_an_unreadable_live_manifest_aborts_the_collection_before_anything_is_deleted(
        tmp_path: Path, store: ChunkStore, origin: GatedOrigin) -> None:
    v1, v2 = versions(tmp_path)
    store.put_tree("fn-1-aaaa", v1)
    store.put_tree("fn-2-bbbb", v2)
    before = origin_names(origin)
    (origin.manifests / "fn-2-bbbb").write_bytes(b"garbage" * 20)
    reader = fresh_reader(tmp_path, origin, "gc")  # no cached copy of the good manifest
    with pytest.raises(StoreError, match="step 'collect: read live manifest' of snapshot fn-2-bbbb; nothing was deleted"):
        reader.collect(["fn-2-bbbb"], grace_seconds=0)
    assert origin_names(origin) == before and sorted(reader.snapshots()) == ["fn-1-aaaa", "fn-2-bbbb"]
    reader.close()


def test_a_put_whose_manifest_is_not_written_yet_keeps_the_chunks_it_reuses(
        tmp_path: Path, store: ChunkStore, origin: GatedOrigin) -> None:
    """The riskiest interleaving: v2's put found v1's chunks at the origin and skipped uploading
    them; v1 is deleted; a collection runs before v2's manifest exists. Without the fence those
    reused chunks are referenced by nothing the collector can see and would be deleted."""
    v1, v2 = versions(tmp_path)
    one = store.put_tree("fn-1-aaaa", v1)
    store.delete("fn-1-aaaa")
    origin.hold_manifest = "fn-2-bbbb"
    errors: list[BaseException] = []

    def put() -> None:
        try:
            store.put_tree("fn-2-bbbb", v2)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=put)
    writer.start()
    assert origin.reached.wait(WAIT), "the put never reached its manifest write"
    report = store.collect([], grace_seconds=0)  # fn-2 is not referenced yet: its publish has not finished
    origin.release.set()
    writer.join(WAIT)
    assert not writer.is_alive() and not errors
    two = store.manifest("fn-2-bbbb")
    assert report.chunks_deleted == len(one.names() - two.names()) == 1  # only v1's unique chunk went
    assert two.names() <= origin_names(origin)
    reader = fresh_reader(tmp_path, origin, "reader")
    reader.materialize("fn-2-bbbb", tmp_path / "restored")
    assert tree_digest(tmp_path / "restored") == tree_digest(v2)
    reader.close()


def test_a_put_completing_during_a_collection_loses_nothing(tmp_path: Path, store: ChunkStore, origin: GatedOrigin) -> None:
    """The collection has read the live manifests (fn-2 does not exist yet) and is about to list
    chunks when a whole put of fn-2, reusing the deleted fn-1's chunks, runs to completion."""
    v1, v2 = versions(tmp_path)
    store.put_tree("fn-1-aaaa", v1)
    store.delete("fn-1-aaaa")
    origin.hold_listing = True
    outcome: list[object] = []

    def collect() -> None:
        try:
            outcome.append(store.collect([], grace_seconds=0))
        except BaseException as exc:
            outcome.append(exc)

    collector = threading.Thread(target=collect)
    collector.start()
    assert origin.reached.wait(WAIT), "the collection never reached its chunk listing"
    two = store.put_tree("fn-2-bbbb", v2)
    origin.release.set()
    collector.join(WAIT)
    assert not collector.is_alive() and len(outcome) == 1 and not isinstance(outcome[0], BaseException)
    assert two.names() <= origin_names(origin) and store.snapshots() == ["fn-2-bbbb"]
    reader = fresh_reader(tmp_path, origin, "reader")
    reader.materialize("fn-2-bbbb", tmp_path / "restored")
    assert tree_digest(tmp_path / "restored") == tree_digest(v2)
    reader.close()
    # once the collection is over, the fence holds nothing: an unreferenced fn-2 is garbage now
    origin.hold_listing = False
    assert store.collect([], grace_seconds=0).manifests_deleted == 1 and origin_names(origin) == set()
