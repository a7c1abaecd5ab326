"""Code packages in the store origin (registry/packages.py, registry/artifacts.py): a real
ChunkStore over a directory origin, two "nodes" (artifact stores with their own code cache,
chunk cache and trees) sharing only the origin and the secret."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import shutil
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.config import Limits
from snapfaas.errors import ServiceUnavailable
from snapfaas.registry.artifacts import ArtifactStore
from snapfaas.registry.db import Registry
from snapfaas.registry.model import LATEST, State
from snapfaas.registry.packages import CodeUnavailable, PackageOrigin, package_id, package_ids
from snapfaas.registry.service import ControlPlane
from snapfaas.sandbox.interpreter import InterpreterRegistry
from snapfaas.store import CHUNK_SIZE, ChunkStore, DirectoryOrigin
from tests.unit.test_artifacts import make_zip
from tests.unit.test_registry import PREFIX
from tests.unit.test_store_gc import WAIT, GatedOrigin

SECRET = bytes(range(32))
LIMITS = Limits(unzipped_bytes=8 << 20, zip_bytes=4 << 20)


class Node:
    """One node's view: its own chunk cache, code cache and trees; the origin is shared."""

    def __init__(self, base: Path, origin: Path, cache_bytes: int | None = None) -> None:
        base.mkdir(parents=True)
        self.store = ChunkStore(DirectoryOrigin(origin), SECRET, cache_dir=base / "store-cache", memory_bytes=1 << 20)
        self.artifacts = ArtifactStore(base / "code", base / "trees", LIMITS, packages=PackageOrigin(self.store),
                                       cache_bytes=cache_bytes)

    def ingest(self, data: bytes) -> str:
        """An upload whose mutation (CreateFunction...) has ended: what `ControlPlane` does."""
        digest = self.artifacts.ingest(data).digest
        self.artifacts.release(digest)
        return digest

    def collect(self, referenced_digests: set[str]) -> None:
        """What `SnapshotManager.collect_garbage` does for packages, with no snapshots."""
        mark = self.artifacts.mark()
        ids = package_ids(referenced_digests)
        self.store.collect(ids | self.artifacts.live_ids(mark), grace_seconds=0)
        self.artifacts.settle(mark)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return tmp_path / "origin"


@pytest.fixture
def nodes(tmp_path: Path, origin: Path) -> Iterator[tuple[Node, Node]]:
    a, b = Node(tmp_path / "a", origin), Node(tmp_path / "b", origin)
    yield a, b
    a.store.close()
    b.store.close()


def big_zip(seed: int, size: int = 2 * CHUNK_SIZE + 1000) -> bytes:
    """A stored (uncompressed) zip of random bytes: several chunks at the origin."""
    return make_zip({"app.py": "def handler(e, c):\n    return 1\n", "blob.bin": random.Random(seed).randbytes(size)},
                    method=zipfile.ZIP_STORED)


def origin_files(origin: Path) -> list[Path]:
    return [p for p in origin.rglob("*") if p.is_file()]


def test_ingest_is_durable_at_the_origin_and_another_node_extracts_it(nodes: tuple[Node, Node], origin: Path) -> None:
    a, b = nodes
    data = big_zip(1)
    artifact = a.artifacts.ingest(data)
    assert (origin / "manifests" / package_id(artifact.digest)).is_file()
    assert len(a.store.manifest(package_id(artifact.digest)).names()) == 3  # cut into 512 KiB chunks
    marker = data[-600:-100]  # random bytes of the package: not stored in clear anywhere at the origin
    assert not any(marker in path.read_bytes() for path in origin_files(origin))
    tree = b.artifacts.tree(artifact.digest, 4)  # node B has nothing local: it fetches
    assert (tree / "app.py").read_text() == "def handler(e, c):\n    return 1\n"
    assert (tree / "blob.bin").read_bytes() == random.Random(1).randbytes(2 * CHUNK_SIZE + 1000)
    assert (b.artifacts.root / f"{artifact.digest}.zip").read_bytes() == data
    assert sorted(p.name for p in b.artifacts.root.iterdir()) == [f"{artifact.digest}.zip"]  # no temporaries left
    assert b.artifacts.read_zip(artifact.digest) == data
    assert b.artifacts.unzipped_size(artifact.digest) == a.artifacts.unzipped_size(artifact.digest)


def test_identical_uploads_on_two_nodes_share_one_package(nodes: tuple[Node, Node], origin: Path) -> None:
    a, b = nodes
    data = big_zip(2)
    first, second = a.artifacts.ingest(data), b.artifacts.ingest(data)
    assert first == second
    assert [p.name for p in (origin / "manifests").iterdir()] == [package_id(first.digest)]
    assert {p.name for p in (origin / "chunks").rglob("*") if p.is_file()} == a.store.manifest(package_id(first.digest)).names()


def test_a_corrupt_chunk_at_the_origin_is_a_clear_invoke_error(nodes: tuple[Node, Node], origin: Path) -> None:
    a, b = nodes
    artifact = a.artifacts.ingest(big_zip(3))
    name = sorted(a.store.manifest(package_id(artifact.digest)).names())[0]
    chunk = origin / "chunks" / name[:2] / name
    blob = bytearray(chunk.read_bytes())
    blob[40] ^= 0xFF
    chunk.write_bytes(bytes(blob))
    with pytest.raises(CodeUnavailable) as caught:
        b.artifacts.tree(artifact.digest, 0)
    error = caught.value
    assert (error.code, error.status, error.missing) == ("InvalidZipFileException", 502, False)
    assert error.message.startswith("Lambda could not unzip the deployment package")
    assert artifact.digest in error.message and "corrupt" in error.message and str(origin) not in error.message
    assert list(b.artifacts.root.iterdir()) == [] and not b.artifacts.holds(0)  # nothing half-made
    # node A still has its verified copy; uploading the package again heals the origin
    a.artifacts.ingest(a.artifacts.read_zip(artifact.digest))
    assert b.artifacts.tree(artifact.digest, 0).is_dir()


def test_a_package_missing_at_the_origin_and_an_unreachable_origin(nodes: tuple[Node, Node], origin: Path) -> None:
    a, b = nodes
    artifact = a.artifacts.ingest(big_zip(4))
    (origin / "manifests" / package_id(artifact.digest)).unlink()
    with pytest.raises(CodeUnavailable) as caught:
        b.artifacts.read_zip(artifact.digest)
    assert caught.value.missing and "missing from the store origin" in caught.value.message
    shutil.rmtree(origin)  # the origin's file system is gone: retryable, not "corrupt"
    with pytest.raises(ServiceUnavailable) as unreachable:
        b.artifacts.tree(artifact.digest, 0)
    assert unreachable.value.status == 503 and "cannot be reached" in unreachable.value.message


def test_a_cached_copy_that_fails_its_hash_is_fetched_again(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    data = big_zip(5)
    artifact = a.artifacts.ingest(data)
    cached = b.artifacts.zip_path(artifact.digest)
    cached.write_bytes(b"bit rot" + data[7:])
    assert b.artifacts.read_zip(artifact.digest) == data
    assert cached.read_bytes() == data


def test_the_cache_evicts_least_recently_used_zips_past_its_budget(tmp_path: Path, origin: Path) -> None:
    a = Node(tmp_path / "a", origin)
    size = len(big_zip(10, CHUNK_SIZE))
    b = Node(tmp_path / "b", origin, cache_bytes=2 * size + 100)  # room for two
    try:
        digests = [a.artifacts.ingest(big_zip(10 + i, CHUNK_SIZE)).digest for i in range(3)]
        for digest in digests[:2]:
            b.artifacts.zip_path(digest)
        b.artifacts.zip_path(digests[0])  # used again: the second is now the least recently used
        b.artifacts.zip_path(digests[2])
        assert sorted(p.stem for p in b.artifacts.root.glob("*.zip")) == sorted([digests[0], digests[2]])
        assert b.artifacts.cached_bytes() <= 2 * size + 100
        assert b.artifacts.read_zip(digests[1]) == big_zip(11, CHUNK_SIZE)  # evicted: fetched again
        # a node's own uploads too, once uploaded: the origin keeps them (`live_ids`), the cache need not
        c = Node(tmp_path / "c", origin, cache_bytes=1)
        try:
            mine = [c.artifacts.ingest(big_zip(20 + i, CHUNK_SIZE)).digest for i in range(2)]
            assert [p.stem for p in c.artifacts.root.glob("*.zip")] == [mine[1]]  # the newest stays
            assert package_ids(mine) <= c.artifacts.live_ids()  # mutations still open
            c.collect(set(digests))
            assert c.artifacts.read_zip(mine[0]) == big_zip(20, CHUNK_SIZE)
        finally:
            c.store.close()
    finally:
        a.store.close()
        b.store.close()


def test_collection_keeps_referenced_and_unrecorded_packages_only(nodes: tuple[Node, Node], origin: Path) -> None:
    a, b = nodes
    kept, dropped, pending = (a.artifacts.ingest(big_zip(30 + i)).digest for i in range(3))
    a.artifacts.release(kept)  # their mutations ended (pending's is still open)
    a.artifacts.release(dropped)
    b.artifacts.tree(dropped, 0)  # node B's cache and tree of it are node-local: collection leaves them
    a.collect({kept})
    manifests = sorted(p.name for p in (origin / "manifests").iterdir())
    assert manifests == sorted(package_id(d) for d in (kept, pending))
    live = a.store.manifest(package_id(kept)).names() | a.store.manifest(package_id(pending)).names()
    assert {p.name for p in (origin / "chunks").rglob("*") if p.is_file()} == live
    assert (b.artifacts.root / f"{dropped}.zip").is_file()
    b.artifacts.collect_garbage({kept}, set())  # node-local cleanup
    assert not (b.artifacts.root / f"{dropped}.zip").exists() and not b.artifacts.holds(0)
    a.artifacts.discard(pending)  # its mutation failed
    a.artifacts.release(pending)
    a.collect({kept})
    assert sorted(p.name for p in (origin / "manifests").iterdir()) == [package_id(kept)]


def test_a_chunk_shared_by_a_snapshot_and_a_package_stays_while_either_needs_it(nodes: tuple[Node, Node], tmp_path: Path,
                                                                                origin: Path) -> None:
    a, _ = nodes
    data = big_zip(40)
    digest = a.ingest(data)
    tree = tmp_path / "snapshot-tree"
    tree.mkdir()
    (tree / "copy.bin").write_bytes(data[:CHUNK_SIZE])  # the package's first chunk, byte for byte
    snapshot = a.store.put_tree("fn-1-aaaa", tree)
    shared = snapshot.names() & a.store.manifest(package_id(digest)).names()
    assert len(shared) == 1
    (name,) = shared
    chunk = origin / "chunks" / name[:2] / name
    a.store.collect({"fn-1-aaaa"}, grace_seconds=0)  # the package is unreferenced
    assert chunk.is_file() and not (origin / "manifests" / package_id(digest)).exists()
    digest = a.artifacts.ingest(data).digest  # uploaded again; now the snapshot goes
    a.store.collect(package_ids({digest}), grace_seconds=0)
    assert chunk.is_file() and not (origin / "manifests" / "fn-1-aaaa").exists()
    a.store.collect(set(), grace_seconds=0)
    a.artifacts.discard(digest)
    a.store.collect(set(), grace_seconds=0)
    assert not chunk.exists()


def test_reingest_restores_a_lost_manifest_and_lost_chunks(nodes: tuple[Node, Node], origin: Path) -> None:
    a, b = nodes
    data = big_zip(50)
    digest = a.artifacts.ingest(data).digest
    shutil.rmtree(origin / "chunks")
    (origin / "chunks").mkdir()
    (origin / "manifests" / package_id(digest)).unlink()
    assert a.artifacts.ingest(data).digest == digest  # cached here, put again all the same
    assert b.artifacts.read_zip(digest) == data


def test_migration_uploads_the_zips_of_a_data_dir_from_before_once(tmp_path: Path, origin: Path) -> None:
    legacy = ArtifactStore(tmp_path / "data" / "code", tmp_path / "trees", LIMITS)  # no origin: main's layout
    used, unused = legacy.ingest(big_zip(60)).digest, legacy.ingest(big_zip(61)).digest
    broken = "ab" * 32
    (legacy.root / f"{broken}.zip").write_bytes(b"not what its name says")
    store = ChunkStore(DirectoryOrigin(origin), SECRET, cache_dir=None, memory_bytes=0)
    try:
        node = ArtifactStore(legacy.root, legacy.trees, LIMITS, packages=PackageOrigin(store))
        assert node.migrate({used, broken}) == 1
        assert sorted(p.name for p in (origin / "manifests").iterdir()) == [package_id(used)]
        assert node.migrate({used, broken}) == 0  # idempotent
        assert node.migrate(None) == 1 and package_id(unused) in {p.name for p in (origin / "manifests").iterdir()}
    finally:
        store.close()
    other = Node(tmp_path / "other", origin)
    try:
        assert other.artifacts.read_zip(used) == big_zip(60)
    finally:
        other.store.close()


def test_package_ids_are_never_snapshot_ids() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert package_id(digest) == f"code.{digest}"
    assert package_ids({digest, "not-a-digest", ""}) == {f"code.{digest}"}
    with pytest.raises(ValueError):
        package_id("fn-1-abc")
    assert os.path.basename(package_id(digest)) == package_id(digest)


def test_a_package_uploaded_again_while_a_collection_deletes_it_keeps_every_chunk(tmp_path: Path) -> None:
    """The collection has decided the package is garbage (deleted its manifest) and is about to
    list chunks when the same package is uploaded again (its chunks exist, so the upload skips
    them): the fence keeps them, and the package is whole afterwards."""
    origin = GatedOrigin(tmp_path / "origin")
    store = ChunkStore(origin, SECRET, cache_dir=tmp_path / "cache", memory_bytes=1 << 20)
    artifacts = ArtifactStore(tmp_path / "code", tmp_path / "trees", LIMITS, packages=PackageOrigin(store))
    data = big_zip(70)
    try:
        digest = artifacts.ingest(data).digest
        artifacts.discard(digest)  # the function went: unreferenced, unrecorded, not cached
        names = store.manifest(package_id(digest)).names()
        origin.hold_listing = True
        collection = threading.Thread(target=store.collect, args=(set(),), kwargs={"grace_seconds": 0})
        collection.start()
        assert origin.reached.wait(WAIT)
        assert not (origin.root / "manifests" / package_id(digest)).exists()  # decided: garbage
        origin.hold_listing = False
        assert artifacts.ingest(data).digest == digest  # a new function with the same zip
        origin.release.set()
        collection.join(WAIT)
        assert not collection.is_alive()
        assert names <= {info.key for info in origin.list_chunks()}
        other = Node(tmp_path / "other", origin.root)
        try:
            assert other.artifacts.read_zip(digest) == data
        finally:
            other.store.close()
    finally:
        origin.release.set()
        store.close()


def test_a_package_is_protected_until_a_registry_read_after_its_mutation_ended(
        nodes: tuple[Node, Node], origin: Path) -> None:
    a, _ = nodes
    digest = a.artifacts.ingest(big_zip(80)).digest
    manifest = origin / "manifests" / package_id(digest)
    a.collect(set())  # its mutation (CreateFunction) is still open: kept though the registry lacks it
    assert manifest.is_file()
    mark = a.artifacts.mark()  # a collection reads the registry, which does not have it yet...
    a.artifacts.release(digest)  # ...then the mutation commits
    a.store.collect(a.artifacts.live_ids(mark), grace_seconds=0)  # that collection must keep it
    a.artifacts.settle(mark)
    assert manifest.is_file()
    a.collect(set())  # the next one read the registry after the commit: unreferenced there (deleted), it goes
    assert not manifest.exists()


def test_the_control_plane_releases_its_uploads_when_the_mutation_ends(tmp_path: Path, origin: Path) -> None:
    """CreateFunction (committed) and a rejected UpdateFunctionCode (DryRun) both release their
    package: a collection after them keeps exactly what the registry references."""
    node = Node(tmp_path / "node", origin)
    registry = Registry(tmp_path / "state.db", PREFIX)
    control = ControlPlane(registry, node.artifacts, InterpreterRegistry({"python3.11": sys.executable}))

    def code(seed: int) -> dict[str, str]:
        return {"ZipFile": base64.b64encode(big_zip(seed, 1000)).decode()}

    async def scenario() -> tuple[str, str]:
        created = await control.create_function({"FunctionName": "f", "Runtime": "python3.11", "Handler": "app.handler",
                                                 "Role": "arn:aws:iam::000000000000:role/r", "Code": code(90)})
        registry.set_state("f", LATEST, State.ACTIVE, None, None)
        dry = await control.update_code("f", {**code(91), "DryRun": True})
        assert dry.code_digest == created.code_digest
        await control.close()
        return created.code_digest, hashlib.sha256(big_zip(91, 1000)).hexdigest()

    try:
        used, dry_run = asyncio.run(scenario())
        assert node.artifacts.live_ids(node.artifacts.mark()) == set()  # both released
        node.collect(registry.referenced_digests())
        assert sorted(p.name for p in (origin / "manifests").iterdir()) == [package_id(used)]
        assert dry_run != used
    finally:
        registry.close()
        node.store.close()
