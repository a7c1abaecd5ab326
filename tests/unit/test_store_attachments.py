"""Snapshot attachments over a real directory origin and real cache dirs: sealed and bound to
their snapshot and name, shared by stores on one origin, served from the disk cache only while
the origin is down, deleted and garbage-collected with the snapshot (orphans too), and
overwritten atomically."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapfaas.store import ChunkStore, DirectoryOrigin, OriginError, SnapshotMissing, StoreError
from snapfaas.store.attachment import MAX_BYTES
from tests.storekit import flip_byte, make_tree

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
MiB = 1 << 20

StoreFactory = Callable[..., ChunkStore]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes stores sharing one origin directory, each with its own cache dir (a host each);
    the same name gives the same store."""
    made: dict[str, ChunkStore] = {}

    def make(name: str = "a", secret: bytes = SECRET, cache: bool = True) -> ChunkStore:
        if name not in made:
            made[name] = ChunkStore(DirectoryOrigin(tmp_path / "origin"), secret,
                                    cache_dir=tmp_path / f"cache-{name}" if cache else None, memory_bytes=16 * MiB)
        return made[name]

    yield make
    for store in made.values():
        store.close()


@pytest.fixture
def snapshots(tmp_path: Path, stores: StoreFactory) -> tuple[str, str]:
    """Two snapshots at the origin, written by store "a"."""
    writer = stores("a")
    writer.put_tree("fn-1-aaaa", make_tree(tmp_path / "t1", seed=1, pages_chunks=3, library_chunks=1))
    writer.put_tree("fn-2-bbbb", make_tree(tmp_path / "t2", seed=2, pages_chunks=3, library_chunks=1))
    return "fn-1-aaaa", "fn-2-bbbb"


def at_origin(tmp_path: Path, snapshot_id: str, name: str) -> Path:
    return tmp_path / "origin" / "attachments" / snapshot_id / name


def in_cache(tmp_path: Path, cache: str, snapshot_id: str, name: str) -> Path:
    return tmp_path / f"cache-{cache}" / "attachments" / snapshot_id / name


def test_an_attachment_round_trips_sealed_beside_the_manifest_and_another_host_reads_it(
        tmp_path: Path, stores: StoreFactory, snapshots: tuple[str, str]) -> None:
    one, two = snapshots
    writer = stores("a")
    data = b'{"version":1,"sections":{"files":{"entries":[]}}}' + os.urandom(3000)
    writer.put_attachment(one, "workingset", data)
    writer.put_attachment(one, "notes", b"")
    stored = at_origin(tmp_path, one, "workingset").read_bytes()
    assert data[:20] not in stored and stored.startswith(b"SFATTACH")  # sealed, not plaintext
    assert in_cache(tmp_path, "a", one, "workingset").read_bytes() == stored  # the writer's disk cache has a copy
    assert writer.get_attachment(one, "workingset") == data and writer.get_attachment(one, "notes") == b""
    assert writer.attachments(one) == ["notes", "workingset"] and writer.attachments(two) == []
    assert writer.get_attachment(two, "workingset") is None

    reader = stores("b")  # another host: the same origin and secret, an empty cache dir
    assert not in_cache(tmp_path, "b", one, "workingset").exists()
    assert reader.get_attachment(one, "workingset") == data
    assert in_cache(tmp_path, "b", one, "workingset").read_bytes() == stored  # read through into its cache


def test_attaching_needs_a_manifest_a_valid_name_and_a_bounded_size(
        tmp_path: Path, stores: StoreFactory, snapshots: tuple[str, str]) -> None:
    store = stores("a")
    with pytest.raises(SnapshotMissing, match=r"step 'put attachment' workingset: snapshot fn-9-none has no manifest"):
        store.put_attachment("fn-9-none", "workingset", b"x")
    assert not (tmp_path / "origin" / "attachments" / "fn-9-none").exists()
    for bad in ("", "Working", "a.b", "../x", "a/b", "x" * 65, ".tmp"):
        with pytest.raises(StoreError, match="step 'check attachment name'"):
            store.put_attachment("fn-1-aaaa", bad, b"x")
    with pytest.raises(StoreError, match="step 'check snapshot id'"):
        store.get_attachment("../fn-1-aaaa", "workingset")
    with pytest.raises(StoreError, match=r"step 'seal attachment'.*more than"):
        store.put_attachment("fn-1-aaaa", "big", bytes(MAX_BYTES + 1))


def test_a_tampered_moved_renamed_or_foreign_attachment_reads_as_absent_with_a_warning(
        tmp_path: Path, stores: StoreFactory, snapshots: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    one, two = snapshots
    store = stores("nocache", cache=False)
    store.put_attachment(one, "workingset", b"the working set of one")
    store.put_attachment(two, "workingset", b"the working set of two")
    store.put_attachment(one, "other", b"another name")
    caplog.set_level(logging.WARNING, logger="snapfaas.store.chunkstore")

    shutil.copy(at_origin(tmp_path, one, "workingset"), at_origin(tmp_path, two, "workingset"))  # moved to another snapshot
    assert store.get_attachment(two, "workingset") is None
    shutil.copy(at_origin(tmp_path, one, "workingset"), at_origin(tmp_path, one, "other"))  # renamed
    assert store.get_attachment(one, "other") is None
    foreign = stores("f", secret=OTHER_SECRET, cache=False)
    assert foreign.get_attachment(one, "workingset") is None  # another deployment secret
    assert store.get_attachment(one, "workingset") == b"the working set of one"
    for offset in (0, 12, -1):  # magic, nonce, tag
        original = at_origin(tmp_path, one, "workingset").read_bytes()
        flip_byte(at_origin(tmp_path, one, "workingset"), offset)
        assert store.get_attachment(one, "workingset") is None
        at_origin(tmp_path, one, "workingset").write_bytes(original)
    at_origin(tmp_path, one, "workingset").write_bytes(b"SFATTACH")  # truncated
    assert store.get_attachment(one, "workingset") is None
    warnings = [r.getMessage() for r in caplog.records if "is invalid" in r.getMessage()]
    assert len(warnings) == 7 and all("treated as absent" in w for w in warnings), warnings
    assert "authentication failed" in warnings[0] and "too short" in warnings[-1]

    store.put_attachment(one, "workingset", b"recorded again")  # a rewrite heals it
    assert store.get_attachment(one, "workingset") == b"recorded again"


def test_the_cached_copy_serves_only_while_the_origin_is_down_and_an_origin_without_one_wins(
        tmp_path: Path, stores: StoreFactory, snapshots: tuple[str, str]) -> None:
    one, _ = snapshots
    writer = stores("a")
    writer.put_attachment(one, "workingset", b"v1")
    reader = stores("b")
    assert reader.get_attachment(one, "workingset") == b"v1"
    writer.put_attachment(one, "workingset", b"v2")
    assert reader.get_attachment(one, "workingset") == b"v2"  # the origin first: another host's rewrite is seen

    origin = tmp_path / "origin"
    origin.rename(tmp_path / "origin-away")
    try:
        assert reader.get_attachment(one, "workingset") == b"v2"  # from its disk cache
        with pytest.raises(OriginError, match="step 'read attachment'.*the origin directory is gone"):
            reader.get_attachment(one, "never-cached")
        flip_byte(in_cache(tmp_path, "b", one, "workingset"), -3)
        assert reader.get_attachment(one, "workingset") is None  # a bad copy is never data...
        assert not in_cache(tmp_path, "b", one, "workingset").exists()  # ...and goes
    finally:
        (tmp_path / "origin-away").rename(origin)

    assert reader.get_attachment(one, "workingset") == b"v2"
    at_origin(tmp_path, one, "workingset").unlink()
    assert reader.get_attachment(one, "workingset") is None
    assert not in_cache(tmp_path, "b", one, "workingset").exists()  # the origin said none: the copy went


def test_delete_removes_the_attachments_with_the_manifest_from_the_origin_and_the_cache(
        tmp_path: Path, stores: StoreFactory, snapshots: tuple[str, str]) -> None:
    one, two = snapshots
    store = stores("a")
    for snapshot_id in (one, two):
        store.put_attachment(snapshot_id, "workingset", snapshot_id.encode())
        store.put_attachment(snapshot_id, "other", b"x")
    store.delete(one)
    assert not (tmp_path / "origin" / "manifests" / one).exists()
    assert not (tmp_path / "origin" / "attachments" / one).exists()
    assert not (tmp_path / "cache-a" / "attachments" / one).exists()
    assert store.get_attachment(one, "workingset") is None
    assert store.get_attachment(two, "workingset") == two.encode() and store.attachments(two) == ["other", "workingset"]
    store.delete(one)  # idempotent
    with pytest.raises(SnapshotMissing):
        store.put_attachment(one, "workingset", b"late")


def test_collect_removes_attachments_of_collected_and_vanished_snapshots_and_keeps_live_ones(
        tmp_path: Path, stores: StoreFactory, snapshots: tuple[str, str]) -> None:
    one, two = snapshots
    collector, other_host = stores("a"), stores("b")
    three = "fn-3-cccc"
    collector.put_tree(three, make_tree(tmp_path / "t3", seed=3, pages_chunks=2, library_chunks=1))
    for snapshot_id in (one, two, three):
        collector.put_attachment(snapshot_id, "workingset", snapshot_id.encode())
        assert other_host.get_attachment(snapshot_id, "workingset") == snapshot_id.encode()  # copies in b's cache
    other_host.manifest(three)
    # an orphan: the manifest of `three` vanished (another host deleted it, or a crash between the deletions)
    (tmp_path / "origin" / "manifests" / three).unlink()

    report = collector.collect([two], grace_seconds=0)  # `one` is no longer referenced
    assert report.manifests_deleted == 1 and report.attachments_deleted == 2
    assert sorted(p.name for p in (tmp_path / "origin" / "attachments").iterdir()) == [two]
    assert not (tmp_path / "cache-a" / "attachments" / one).exists()
    assert not (tmp_path / "cache-a" / "attachments" / three).exists()
    assert collector.get_attachment(two, "workingset") == two.encode()

    # the other host's cache still has copies of both; its own collection drops them (and the manifest copy)
    assert (tmp_path / "cache-b" / "attachments" / three / "workingset").exists()
    assert (tmp_path / "cache-b" / "manifests" / three).exists()
    report = other_host.collect([two], grace_seconds=0)
    assert report.attachments_deleted == 0 and report.cache_entries_dropped >= 3
    assert sorted(p.name for p in (tmp_path / "cache-b" / "attachments").iterdir()) == [two]
    assert not (tmp_path / "cache-b" / "manifests" / three).exists()
    assert other_host.get_attachment(two, "workingset") == two.encode()


def test_a_young_unreferenced_snapshot_keeps_its_attachments(
        tmp_path: Path, stores: StoreFactory, snapshots: tuple[str, str]) -> None:
    one, _ = snapshots
    store = stores("a")
    store.put_attachment(one, "workingset", b"young")
    report = store.collect([], grace_seconds=3600)  # e.g. another host's publish not yet recorded
    assert report.manifests_deleted == 0 and report.attachments_deleted == 0
    assert store.get_attachment(one, "workingset") == b"young"


def test_an_overwrite_is_atomic_readers_see_one_whole_version_never_a_mix_or_nothing(
        tmp_path: Path, stores: StoreFactory, snapshots: tuple[str, str]) -> None:
    one, _ = snapshots
    versions = [bytes([index]) * (2 * MiB) for index in range(1, 5)]  # large: a torn write would show
    writers = [stores("w1"), stores("w2")]
    reader = stores("r")
    writers[0].put_attachment(one, "workingset", versions[0])
    failures: list[str] = []
    stop = threading.Event()

    def write(store: ChunkStore, mine: list[bytes]) -> None:
        for round_ in range(15):
            store.put_attachment(one, "workingset", mine[round_ % len(mine)])

    def read() -> None:
        while not stop.is_set():
            data = reader.get_attachment(one, "workingset")
            if data not in versions:
                failures.append("none" if data is None else f"{len(data)} bytes, not one version")

    threads = [threading.Thread(target=write, args=(writers[0], versions[:2])),
               threading.Thread(target=write, args=(writers[1], versions[2:]))]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads + readers:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert failures == []
    last = reader.get_attachment(one, "workingset")
    assert last in (versions[0], versions[2])  # the last writer's final version (round 14 of each)
    assert [p.name for p in at_origin(tmp_path, one, "x").parent.iterdir()] == ["workingset"]  # no temporaries left
