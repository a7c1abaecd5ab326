"""Cluster-wide garbage collection of one store origin (cluster/leases.py `OriginLeases`): two
nodes (two real chunk stores with caches of their own on one directory origin, leases in the
suite's PostgreSQL). Node A publishes while node B collects: nothing A's snapshot needs goes,
even the chunks A deduplicated against a snapshot B is deleting; deleted snapshots' chunks do
go at the next collection; an upload starting during a collection waits for it."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from snapfaas.cluster.leases import GC, GC_KEY, UPLOAD, Keeper, Leases, OriginLeases
from snapfaas.database import open_engine
from snapfaas.store import StoreError, open_store
from tests.storekit import make_tree, tree_digest


@pytest.fixture(scope="module")
def pg_url(postgres) -> str:  # type: ignore[no-untyped-def]
    return postgres.create_database("origin_leases")


@pytest.fixture
def nodes(pg_url, tmp_path):  # type: ignore[no-untyped-def]
    origin, secret = tmp_path / "origin", tmp_path / "store.secret"
    engine = open_engine(pg_url)
    stores = {name: open_store(str(origin), secret, cache_dir=tmp_path / f"{name}-cache", memory_bytes=8 << 20)
              for name in ("a", "b")}
    leases = {name: Leases(engine, f"node-{name}-{tmp_path.name}", ttl_s=5) for name in ("a", "b")}
    yield stores, leases, origin
    for store in stores.values():
        store.close()
    engine.dispose()


def wait_until(condition, deadline_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not reached before the deadline"
        time.sleep(0.02)


def origin_chunks(origin: Path) -> set[str]:
    return {p.name for p in (origin / "chunks").rglob("*") if p.is_file()}


def collect(store, leases: Leases, referenced: set[str]):  # type: ignore[no-untyped-def]
    """What a node's collection does: the gc lease, then the upload leases, then the registry."""
    guard = OriginLeases(leases)
    with guard.collection() as collection:
        assert collection is not None, "the gc lease is free"
        return store.collect(referenced | collection.uploads, grace_seconds=0.0,
                             pending=collection.uploads, still_held=collection.still_held)


def test_a_publish_during_a_collection_loses_nothing(nodes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    stores, leases, origin = nodes
    a, b = stores["a"], stores["b"]
    old = b.put_tree("fn-1-old", make_tree(tmp_path / "old", seed=1))  # content A's publish will share
    gone = b.put_tree("fn-2-gone", make_tree(tmp_path / "gone", seed=2))  # a deleted version's snapshot
    gone_only = gone.names() - old.names()
    assert gone_only and gone_only <= origin_chunks(origin)

    # node A publishes the same content as "fn-1-old" and stalls before its manifest is written:
    # it has already found (and skipped uploading) every chunk the old snapshot holds
    reached, proceed = threading.Event(), threading.Event()
    write_manifest = a.origin.put_manifest

    def stalled_put_manifest(snapshot_id: str, data: bytes) -> None:
        reached.set()
        assert proceed.wait(60)
        write_manifest(snapshot_id, data)

    a.origin.put_manifest = stalled_put_manifest  # type: ignore[method-assign]
    source = make_tree(tmp_path / "new", seed=1)
    published: dict[str, object] = {}

    def publish() -> None:
        guard = OriginLeases(leases["a"])
        with Keeper(leases["a"]) as keeper:
            upload = guard.begin_upload("fn-1-new", keeper)
            published["manifest"] = a.put_tree("fn-1-new", source)
            published["referenced"] = True  # the registry now references it: the lease can go
            guard.end_upload(upload, keeper)

    thread = threading.Thread(target=publish)
    thread.start()
    assert reached.wait(60)
    assert old.names() <= origin_chunks(origin)

    # node B collects with no version referencing either old snapshot
    report = collect(b, leases["b"], set())
    assert report.chunks_deferred and report.chunks_deleted == 0
    assert report.manifests_deleted == 2  # both deleted versions' manifests go at once
    assert old.names() <= origin_chunks(origin)

    proceed.set()
    thread.join(60)
    assert published.get("referenced")
    assert leases["b"].holder(UPLOAD, "fn-1-new") is None

    # the next collection (the registry references the new snapshot) removes the deleted one's chunks
    report = collect(b, leases["b"], {"fn-1-new"})
    assert not report.chunks_deferred
    assert report.chunks_deleted == len(gone_only)
    assert origin_chunks(origin) == published["manifest"].names()  # type: ignore[attr-defined]
    # and node B, with nothing of it in its caches, restores A's snapshot from the origin
    for tier in (b.memory, b.disk):
        for name in list(tier.names()):
            tier.discard(name)
    b.materialize("fn-1-new", tmp_path / "restored")
    assert tree_digest(tmp_path / "restored") == tree_digest(source)


def test_an_upload_waits_for_a_running_collection(nodes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, leases, _ = nodes
    guard_b = OriginLeases(leases["b"], poll_s=0.05)
    collection = guard_b.open_collection()
    assert collection is not None
    assert OriginLeases(leases["a"]).open_collection() is None  # one collector at a time
    done = threading.Event()

    def upload() -> None:
        claim = OriginLeases(leases["a"], poll_s=0.05).begin_upload("fn-9-x")
        done.set()
        leases["a"].release(claim)

    thread = threading.Thread(target=upload)
    thread.start()
    wait_until(lambda: leases["b"].holder(UPLOAD, "fn-9-x") is not None)  # announced, now waiting for the gc lease
    assert not done.is_set()
    assert leases["b"].holder(GC, GC_KEY) is not None
    guard_b.close_collection(collection)
    thread.join(30)
    assert done.is_set()


def test_a_collection_that_lost_its_lease_stops_deleting(nodes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    stores, leases, origin = nodes
    b = stores["b"]
    b.put_tree("fn-3-doomed", make_tree(tmp_path / "doomed", seed=3))
    before = origin_chunks(origin)
    with pytest.raises(StoreError, match="failed at step 'collect: hold the gc lease'"):
        b.collect(set(), grace_seconds=0.0, pending=set(), still_held=lambda: False)
    assert origin_chunks(origin) == before
    shutil.rmtree(tmp_path / "doomed")


def test_offline_store_gc_takes_the_clusters_gc_lease(pg_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`snapfaas store gc --registry URL` collects only as the holder of the gc lease, and spares
    snapshots being uploaded by a node."""
    import json
    import subprocess
    import sys

    from snapfaas.config import store_secret_for

    data_dir, origin = tmp_path / "data", tmp_path / "origin"
    data_dir.mkdir()
    store = open_store(str(origin), store_secret_for(data_dir), cache_dir=None, memory_bytes=0)
    try:
        store.put_tree("fn-1-orphan", make_tree(tmp_path / "orphan", seed=4))
    finally:
        store.close()
    engine = open_engine(pg_url)
    node = Leases(engine, f"node-{tmp_path.name}", ttl_s=30)
    argv = [sys.executable, "-m", "snapfaas", "store", "gc", "--json", "--grace", "0s", "--registry", pg_url,
            "--data-dir", str(data_dir), "--store-origin", str(origin)]
    try:
        gc = node.claim(GC, GC_KEY)
        assert gc is not None
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0
        assert f"failed at step 'take the gc lease': node node-{tmp_path.name} is collecting" in refused.stderr
        node.release(gc)
        upload = node.claim(UPLOAD, "fn-2-writing")  # a node is writing a snapshot: no chunk may go
        assert upload is not None
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["manifests_deleted"] == 1 and report["chunks_deleted"] == 0 and report["chunks_deferred"]
        node.release(upload)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["chunks_deleted"] > 0 and not report["chunks_deferred"]
        assert origin_chunks(origin) == set()
        assert node.holder(GC, GC_KEY) is None  # the CLI released it
    finally:
        engine.dispose()
