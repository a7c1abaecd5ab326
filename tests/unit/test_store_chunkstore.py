"""ChunkStore over a real directory origin and real cache dirs: round trips, holes, random
access, tampering at every tier, dedup across versions and functions, concurrent readers."""

from __future__ import annotations

import os
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapfaas.store import CHUNK_SIZE, ChunkStore, ChunkUnavailable, DirectoryOrigin, SnapshotExists, SnapshotMissing, StoreError
from snapfaas.store.manifest import decode, encode
from tests.storekit import flip_byte, make_tree, tree_digest

SECRET = bytes(range(32))
MiB = 1 << 20

StoreFactory = Callable[..., ChunkStore]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes stores sharing one origin directory and secret, each with its own cache dir."""
    made: list[ChunkStore] = []

    def make(name: str = "a", cache: bool = True, memory: int = 64 * MiB, disk: int = 64 * MiB, **kwargs: object) -> ChunkStore:
        store = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=tmp_path / f"cache-{name}" if cache else None,
                           cache_bytes=disk, memory_bytes=memory, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def origin_chunk(store: ChunkStore, name: str) -> Path:
    origin = store.origin
    assert isinstance(origin, DirectoryOrigin)
    return origin.chunks / name[:2] / name


def test_round_trip_rebuilds_the_tree_with_modes_symlinks_and_sparse_holes(tmp_path: Path, stores: StoreFactory) -> None:
    src = make_tree(tmp_path / "src")
    manifest = stores("writer").put_tree("fn-1-aaaa", src, meta={"restore_memory": "map"})
    pages = manifest.file("pages-1.img")
    assert [ref.is_hole for ref in pages.chunks] == [False, False, True, False, False, False, False]
    assert manifest.file("empty.img").chunks == [] and manifest.file("tmp/cache/model.bin").chunks[0].is_hole
    reader = stores("reader")
    out = tmp_path / "restored" / "images"
    assert reader.materialize("fn-1-aaaa", out).meta == {"restore_memory": "map"}
    assert tree_digest(out) == tree_digest(src)
    allocated = os.stat(out / "pages-1.img").st_blocks * 512
    assert allocated <= os.path.getsize(out / "pages-1.img") - CHUNK_SIZE // 2  # the zero chunk is a hole
    assert not [path for path in out.parent.iterdir() if path.name != "images"]  # no staging left
    with pytest.raises(StoreError, match="exists"):
        reader.materialize("fn-1-aaaa", out)


def test_zero_chunks_are_never_stored(tmp_path: Path, stores: StoreFactory) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "zeros.img").write_bytes(bytes(5 * CHUNK_SIZE + 7))
    store = stores()
    manifest = store.put_tree("zeros", src)
    assert manifest.chunk_refs() == [] and store.stats().usage["origin"].chunks == 0
    assert store.read("zeros", "zeros.img", CHUNK_SIZE - 3, 10) == bytes(10)
    stats = store.snapshot_stats("zeros")
    assert (stats.raw_bytes, stats.hole_bytes, stats.chunks, stats.stored_bytes) == (5 * CHUNK_SIZE + 7,) * 2 + (0, 0)


def test_random_reads_return_exactly_the_file_bytes(tmp_path: Path, stores: StoreFactory) -> None:
    src = make_tree(tmp_path / "src")
    stores("writer").put_tree("fn-1-aaaa", src)
    reader = stores("reader", memory=2 * CHUNK_SIZE)  # small memory tier: evictions on the way
    rng = random.Random(7)
    for path in ("pages-1.img", "pages-2.img", "core-1.img", "tmp/cache/model.bin", "empty.img"):
        data = (src / path).read_bytes()
        for _ in range(40):
            offset = rng.randrange(len(data) + 10)
            length = rng.choice([0, 1, 4096, CHUNK_SIZE, 3 * CHUNK_SIZE, rng.randrange(2 * CHUNK_SIZE)])
            assert reader.read("fn-1-aaaa", path, offset, length) == data[offset:offset + length], (path, offset, length)
    assert reader.memory.usage().bytes <= 2 * CHUNK_SIZE and reader.counters()["memory"].evictions > 0
    with pytest.raises(StoreError, match="has no file 'tmp'"):
        reader.read("fn-1-aaaa", "tmp", 0, 1)
    with pytest.raises(SnapshotMissing, match="step 'read manifest'"):
        reader.read("nope", "pages-1.img", 0, 1)


def test_hits_promote_upward_and_counters_say_where_bytes_came_from(tmp_path: Path, stores: StoreFactory) -> None:
    src = make_tree(tmp_path / "src")
    manifest = stores("writer").put_tree("fn-1-aaaa", src)
    ref = manifest.file("pages-2.img").chunks[1]
    reader = stores("reader")
    assert reader.read("fn-1-aaaa", "pages-2.img", ref.offset, 10)
    counters = reader.counters()
    assert (counters["memory"].misses, counters["disk"].misses, counters["origin"].hits) == (1, 1, 1)
    assert counters["origin"].bytes_read == ref.stored
    reader.read("fn-1-aaaa", "pages-2.img", ref.offset, 10)
    assert reader.counters()["memory"].hits == 1
    reader.memory.discard(ref.name)
    reader.read("fn-1-aaaa", "pages-2.img", ref.offset, 10)
    counters = reader.counters()
    assert (counters["disk"].hits, counters["origin"].hits) == (1, 1)  # from disk, not the origin again
    assert reader.memory.get(ref.name) is not None  # promoted back into memory


def test_a_tampered_copy_in_a_cache_tier_is_evicted_and_read_from_below(tmp_path: Path, stores: StoreFactory) -> None:
    src = make_tree(tmp_path / "src")
    manifest = stores("writer").put_tree("fn-1-aaaa", src)
    expected = (src / "pages-2.img").read_bytes()
    reader = stores("reader")
    ref = manifest.file("pages-2.img").chunks[0]
    assert reader.read("fn-1-aaaa", "pages-2.img", 0, CHUNK_SIZE) == expected[:CHUNK_SIZE]
    # memory tier: a wrong plaintext under the chunk's name
    bad = bytearray(reader.memory.get(ref.name))
    bad[100] ^= 1
    reader.memory.put(ref.name, bytes(bad))
    assert reader.read("fn-1-aaaa", "pages-2.img", 0, CHUNK_SIZE) == expected[:CHUNK_SIZE]
    assert reader.counters()["memory"].corrupt == 1 and reader.counters()["disk"].hits == 1
    assert reader.memory.lookup(ref.name) == (expected[:CHUNK_SIZE], True)  # decoded from a verified blob
    # a right copy put there unverified is hashed at its first hit, then trusted
    reader.memory.put(ref.name, bytes(expected[:CHUNK_SIZE]))
    assert reader.read("fn-1-aaaa", "pages-2.img", 0, CHUNK_SIZE) == expected[:CHUNK_SIZE]
    assert reader.memory.lookup(ref.name) == (expected[:CHUNK_SIZE], True)
    assert reader.counters()["memory"].corrupt == 1
    # disk tier: every region of the blob (header, nonce, ciphertext, tag)
    for position in (0, 5, 10, 40, ref.stored // 2, ref.stored - 1):
        reader.memory.discard(ref.name)
        flip_byte(reader.disk._path(ref.name), position)
        assert reader.read("fn-1-aaaa", "pages-2.img", 0, CHUNK_SIZE) == expected[:CHUNK_SIZE]
        assert reader.disk.get(ref.name) == origin_chunk(reader, ref.name).read_bytes()  # replaced from the origin
    counters = reader.counters()
    assert counters["disk"].corrupt == 6 and counters["origin"].hits == 7


@pytest.mark.parametrize("position", [0, 6, 20, 1000, -1])
def test_a_tampered_chunk_at_the_origin_fails_naming_snapshot_file_and_chunk_and_a_new_put_heals_it(
        tmp_path: Path, stores: StoreFactory, position: int) -> None:
    src = make_tree(tmp_path / "src")
    manifest = stores("writer").put_tree("fn-1-aaaa", src)
    ref = manifest.file("pages-1.img").chunks[3]
    reader = stores("reader")
    flip_byte(origin_chunk(reader, ref.name), position)
    with pytest.raises(ChunkUnavailable) as caught:
        reader.read("fn-1-aaaa", "pages-1.img", ref.offset + 5, 10)
    error = caught.value
    assert "failed at step 'fetch chunk'" in str(error) and "corrupt at origin" in str(error)
    assert (error.snapshot_id, error.path, error.index, error.offset, error.name) == ("fn-1-aaaa", "pages-1.img", 3, ref.offset, ref.name)
    assert reader.memory.get(ref.name) is None and reader.disk.get(ref.name) is None  # nothing bad was cached
    assert not origin_chunk(reader, ref.name).exists() and "removed it" in str(error)  # unusable: removed
    with pytest.raises(ChunkUnavailable, match="pages-1.img, chunk 3 .*missing at origin"):
        reader.materialize("fn-1-aaaa", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    assert reader.read("fn-1-aaaa", "pages-1.img", 0, 10) == (src / "pages-1.img").read_bytes()[:10]  # others still fine
    stores("republisher").put_tree("fn-1-bbbb", src)  # the version re-creates its snapshot: same content, uploaded again
    reader.materialize("fn-1-aaaa", tmp_path / "healed")
    assert tree_digest(tmp_path / "healed") == tree_digest(src)


def test_a_chunk_missing_at_the_origin_fails_clearly(tmp_path: Path, stores: StoreFactory) -> None:
    src = make_tree(tmp_path / "src")
    ref = stores("writer").put_tree("fn-1-aaaa", src).file("pages-2.img").chunks[1]
    reader = stores("reader")
    origin_chunk(reader, ref.name).unlink()
    with pytest.raises(ChunkUnavailable, match=r"snapshot fn-1-aaaa, file pages-2.img, chunk 1 \(offset 524288, name [0-9a-f]{64}\): missing at origin"):
        reader.read("fn-1-aaaa", "pages-2.img", ref.offset, 1)
    assert reader.counters()["origin"].misses == 1


def test_a_warm_disk_cache_serves_without_the_origin(tmp_path: Path, stores: StoreFactory) -> None:
    src = make_tree(tmp_path / "src")
    stores("writer").put_tree("fn-1-aaaa", src)
    reader = stores("reader")
    reader.materialize("fn-1-aaaa", tmp_path / "first")
    manifest_bytes = (tmp_path / "origin" / "manifests" / "fn-1-aaaa").read_bytes()
    shutil.rmtree(tmp_path / "origin" / "chunks")
    reader.memory = type(reader.memory)(reader.memory.budget)  # drop the memory tier
    reader.materialize("fn-1-aaaa", tmp_path / "second")
    assert tree_digest(tmp_path / "second") == tree_digest(src)
    assert reader.counters()["origin"].hits == len(reader.manifest("fn-1-aaaa").names())
    assert (tmp_path / "origin" / "manifests" / "fn-1-aaaa").read_bytes() == manifest_bytes


def test_two_versions_differing_in_a_few_bytes_share_nearly_all_chunks(tmp_path: Path, stores: StoreFactory) -> None:
    v1 = make_tree(tmp_path / "v1", pages_chunks=12, library_chunks=8)
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2, symlinks=True)
    pages = bytearray((v2 / "pages-2.img").read_bytes())
    pages[3 * CHUNK_SIZE + 100:3 * CHUNK_SIZE + 110] = b"return 42\n"  # one line of handler code
    (v2 / "pages-2.img").write_bytes(bytes(pages))
    store = stores()
    store.put_tree("fn-1-aaaa", v1)
    written = store.counters()["origin"].bytes_written
    store.put_tree("fn-2-bbbb", v2)
    new_stats, old_stats = store.snapshot_stats("fn-2-bbbb"), store.snapshot_stats("fn-1-aaaa")
    assert new_stats.chunks - new_stats.shared_chunks == 1  # exactly the changed chunk is new
    assert new_stats.shared_chunks / new_stats.chunks >= 0.9 and old_stats.shared_chunks == new_stats.shared_chunks
    assert store.counters()["origin"].bytes_written - written < CHUNK_SIZE  # one compressed chunk uploaded
    assert store.stats().dedup_ratio > 1.9


def test_two_functions_sharing_library_content_share_those_chunks(tmp_path: Path, stores: StoreFactory) -> None:
    one = make_tree(tmp_path / "one", seed=1)
    two = make_tree(tmp_path / "two", seed=2)
    shutil.copy(one / "pages-2.img", two / "pages-2.img")  # the same libraries, their own heaps
    store = stores()
    store.put_tree("one-1-aaaa", one)
    store.put_tree("two-1-bbbb", two)
    one_manifest, two_manifest = store.manifest("one-1-aaaa"), store.manifest("two-1-bbbb")
    library = {ref.name for ref in one_manifest.file("pages-2.img").chunks}
    heaps = [{ref.name for ref in m.file("pages-1.img").chunks if not ref.is_hole} for m in (one_manifest, two_manifest)]
    common = one_manifest.names() & two_manifest.names()
    assert library <= common and not heaps[0] & heaps[1]  # libraries shared, heaps not
    assert store.snapshot_stats("two-1-bbbb").shared_chunks == len(common) == len(library) + 2  # + core and model tail
    stats = store.stats()
    assert stats.unique_chunks == len(one_manifest.names() | two_manifest.names()) and stats.dedup_ratio > 1.2


def test_put_refuses_an_existing_id_and_files_it_cannot_store(tmp_path: Path, stores: StoreFactory) -> None:
    src = make_tree(tmp_path / "src")
    store = stores()
    store.put_tree("fn-1-aaaa", src)
    with pytest.raises(SnapshotExists):
        store.put_tree("fn-1-aaaa", src)
    os.mkfifo(src / "tmp" / "fifo")
    with pytest.raises(StoreError, match="step 'read tree'.*tmp/fifo"):
        store.put_tree("fn-2-bbbb", src)
    with pytest.raises(SnapshotMissing):
        store.manifest("fn-2-bbbb")  # a failed put leaves no snapshot
    with pytest.raises(StoreError, match="not a directory"):
        store.put_tree("fn-3-cccc", src / "core-1.img")


def test_delete_removes_the_snapshot(tmp_path: Path, stores: StoreFactory) -> None:
    store = stores()
    store.put_tree("fn-1-aaaa", make_tree(tmp_path / "src"))
    assert store.snapshots() == ["fn-1-aaaa"]
    store.delete("fn-1-aaaa")
    store.delete("fn-1-aaaa")
    assert store.snapshots() == []
    with pytest.raises(SnapshotMissing):
        store.read("fn-1-aaaa", "core-1.img", 0, 1)


def test_concurrent_readers_get_right_bytes_and_each_chunk_is_fetched_once(tmp_path: Path, stores: StoreFactory) -> None:
    src = make_tree(tmp_path / "src", pages_chunks=10)
    manifest = stores("writer").put_tree("fn-1-aaaa", src)
    reader = stores("reader", cache=False)
    data = (src / "pages-1.img").read_bytes()
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait(timeout=30)
            for _ in range(30):
                offset, length = rng.randrange(len(data)), rng.randrange(3 * CHUNK_SIZE)
                if reader.read("fn-1-aaaa", "pages-1.img", offset, length) != data[offset:offset + length]:
                    raise AssertionError(f"wrong bytes at {offset}+{length}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(thread.is_alive() for thread in threads)
    stored = {ref.name for ref in manifest.file("pages-1.img").chunks if not ref.is_hole}
    assert reader.counters()["origin"].hits == len(stored)  # concurrent misses shared one fetch


def test_open_store_from_server_settings(tmp_path: Path) -> None:
    from snapfaas.store import S3Origin, open_store

    store = open_store(str(tmp_path / "origin"), tmp_path / "store.key", cache_dir=tmp_path / "cache", memory_bytes=MiB)
    store.put_tree("fn-1-aaaa", make_tree(tmp_path / "src"))
    again = open_store(str(tmp_path / "origin"), tmp_path / "store.key")  # same secret file: same deployment
    assert again.read("fn-1-aaaa", "core-1.img", 0, 8) == b"corecore" and again.disk is None
    other = open_store(str(tmp_path / "origin"), tmp_path / "other.key")  # another secret cannot read it
    with pytest.raises(StoreError, match="authentication failed"):
        other.manifest("fn-1-aaaa")
    s3 = open_store("s3://bucket/some/prefix", tmp_path / "store.key", s3_endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3.origin, S3Origin) and (s3.origin.bucket, s3.origin.prefix) == ("bucket", "some/prefix")
    with pytest.raises(StoreError, match="needs an s3:// origin"):
        open_store(str(tmp_path / "origin"), tmp_path / "store.key", s3_endpoint_url="http://127.0.0.1:9")
    for made in (store, again, other, s3):
        made.close()


def test_a_blob_damaged_in_transfer_once_is_read_again_and_not_removed(tmp_path: Path) -> None:
    class FlakyOrigin(DirectoryOrigin):
        """Hands out one damaged copy of each chunk, then the stored one."""

        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.damaged: set[str] = set()

        def get_chunk(self, name: str) -> bytes | None:
            blob = super().get_chunk(name)
            if blob is not None and name not in self.damaged:
                self.damaged.add(name)
                return blob[:-1] + bytes([blob[-1] ^ 1])
            return blob

    src = make_tree(tmp_path / "src")
    origin = FlakyOrigin(tmp_path / "origin")
    store = ChunkStore(origin, SECRET, cache_dir=None)
    store.put_tree("fn-1-aaaa", src)
    store.materialize("fn-1-aaaa", tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(src)
    assert origin.damaged == store.manifest("fn-1-aaaa").names() <= {info.key for info in origin.list_chunks()}
    assert store.counters()["origin"].corrupt == 0
    store.close()


def test_a_warm_cache_put_leaves_the_chunks_in_the_publishing_hosts_memory_and_disk(tmp_path: Path, stores: StoreFactory) -> None:
    src = make_tree(tmp_path / "src")
    store = stores("publisher")
    manifest = store.put_tree("fn-1-aaaa", src, warm_cache=True)
    assert set(store.disk.names()) == manifest.names() == set(store.memory.names())
    store.materialize("fn-1-aaaa", tmp_path / "out")
    counters = store.counters()
    assert counters["memory"].hits == len(manifest.names()) and counters["origin"].hits == 0
    assert tree_digest(tmp_path / "out") == tree_digest(src)
    for name in manifest.names():  # with the memory tier gone, the disk cache serves
        store.memory.discard(name)
    shutil.rmtree(tmp_path / "out")
    store.materialize("fn-1-aaaa", tmp_path / "out")
    assert store.counters()["disk"].hits == len(manifest.names()) and store.counters()["origin"].hits == 0



def test_a_restarted_store_restores_from_its_warm_cache_with_the_origin_gone(tmp_path: Path, stores: StoreFactory) -> None:
    source = make_tree(tmp_path / "src", seed=3)
    first = stores("a")
    first.put_tree("snap-1", source, warm_cache=True)
    first.close()  # the cache directory is free for the "restarted" store
    restarted = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=tmp_path / "cache-a",
                           cache_bytes=64 * MiB, memory_bytes=64 * MiB)
    try:
        shutil.move(tmp_path / "origin", tmp_path / "origin-away")  # unreachable: its directory is gone
        restarted.materialize("snap-1", tmp_path / "out")  # manifest and chunks from the disk cache
        assert tree_digest(tmp_path / "out") == tree_digest(source)
        # the origin is back, without the manifest (deleted meanwhile): the cached copy is not used
        shutil.move(tmp_path / "origin-away", tmp_path / "origin")
        (tmp_path / "origin" / "manifests" / "snap-1").unlink()
        with restarted._lock:
            restarted._manifests.clear()  # as after another restart
        with pytest.raises(SnapshotMissing):
            restarted.manifest("snap-1")
        assert not (tmp_path / "cache-a" / "manifests" / "snap-1").exists()
    finally:
        restarted.close()


def test_a_tampered_cached_manifest_is_refused_when_the_origin_is_gone(tmp_path: Path, stores: StoreFactory) -> None:
    first = stores("a")
    first.put_tree("snap-1", make_tree(tmp_path / "src", seed=4), warm_cache=True)
    first.close()
    flip_byte(tmp_path / "cache-a" / "manifests" / "snap-1", 40)
    restarted = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=tmp_path / "cache-a")
    try:
        shutil.rmtree(tmp_path / "origin")
        with pytest.raises(StoreError):
            restarted.manifest("snap-1")
    finally:
        restarted.close()


def _small_images(path: Path, stamp: bytes) -> Path:
    """A dump's small images (several, one with a per-dump timestamp) beside a page image."""
    path.mkdir()
    (path / "pages-1.img").write_bytes(os.urandom(2 * CHUNK_SIZE))  # two fixed chunks
    for index in range(12):
        (path / f"core-{index}.img").write_bytes(bytes([index]) * (100 + 50 * index))
    (path / "stats-dump").write_bytes(b"dump took " + stamp)
    (path / "zeros.img").write_bytes(bytes(300))
    return path


def test_small_files_share_one_packed_chunk_and_read_back_exactly(tmp_path: Path, stores: StoreFactory) -> None:
    v1 = _small_images(tmp_path / "v1", b"12 ms")
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2)
    (v2 / "stats-dump").write_bytes(b"dump took 13 ms")
    store = stores(memory=1)  # every read goes to the disk cache: slices are cut from the whole chunk each time
    one, two = store.put_tree("fn-1-aaaa", v1), store.put_tree("fn-2-bbbb", v2)
    small = [entry for entry in two.files if entry.path != "pages-1.img"]
    assert len({entry.chunks[0].name for entry in small}) == 1 and all(entry.chunks[0].packed for entry in small)
    assert not two.file("pages-1.img").chunks[0].packed
    assert two.names() - one.names() == {small[0].chunks[0].name}  # one changed small file: one new chunk
    assert len(two.names()) == 3  # two page-image chunks and the pack
    for entry in small:
        assert store.read("fn-2-bbbb", entry.path, 0, entry.size) == (v2 / entry.path).read_bytes()
        assert store.read("fn-2-bbbb", entry.path, 3, 5) == (v2 / entry.path).read_bytes()[3:8]
    assert decode("fn-2-bbbb", encode(two, store.codec.manifest_key), store.codec.manifest_key) == two
    store.materialize("fn-2-bbbb", tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(v2)
    assert stores("other").snapshot_stats("fn-2-bbbb").chunks == 3
