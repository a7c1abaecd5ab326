"""The store against a real S3-protocol server on loopback: moto's standalone server (the wire
peer; not AWS) started by this module as a subprocess on 127.0.0.1, driven through real boto3.

One ChunkStore publishes a tree with an empty cache; a second one, with its own empty cache
dir and only the same bucket/prefix and secret in common, materializes it byte for byte.
Corruption and loss at the S3 origin, GC over S3, attachments beside the manifests, and
stored-vs-raw bytes (printed) too.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from snapfaas.store import ChunkStore, ChunkUnavailable, OriginError, S3Origin, SnapshotMissing, origin_from_url
from tests.conftest import ProcessFactory, free_port
from tests.storekit import make_tree, offline_aws_credentials, tree_digest

SECRET = bytes(range(32))
BUCKET = "snapfaas-store"
PREFIX = "deploy-a/snapshots"
SITE = Path(boto3.__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class S3Peer:
    endpoint: str


@pytest.fixture(scope="module")
def s3(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Peer]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = processes.start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)  # polling a condition (the port accepting) under a deadline
    yield S3Peer(f"http://127.0.0.1:{port}")
    processes.stop(proc)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials through the standard AWS variables, nothing from the host's config files,
    and no instance-metadata lookups."""
    offline_aws_credentials(monkeypatch, tmp_path)


@pytest.fixture
def bucket(s3: S3Peer, aws_env: None) -> Iterator[object]:
    client = boto3.session.Session().client("s3", endpoint_url=s3.endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def snapshot_tree(root: Path) -> Path:
    """Synthetic CRIU-like images plus real library bytes (a shared object and JSON data files
    from this venv), the kind of content a Python function's snapshot maps."""
    make_tree(root, pages_chunks=8, library_chunks=6)
    lib = root / "tmp" / "lib"
    lib.mkdir()
    shutil.copy(SITE / "cryptography" / "hazmat" / "bindings" / "_rust.abi3.so", lib / "_rust.abi3.so")
    shutil.copytree(SITE / "botocore" / "data" / "lambda", lib / "lambda-data")
    return root


def keys(client: object, kind: str) -> set[str]:
    prefix = f"{PREFIX}/{kind}/"
    found: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):  # type: ignore[attr-defined]
        found |= {item["Key"][len(prefix):] for item in page.get("Contents", [])}
    return found


def test_publish_through_one_store_and_restore_through_another_with_an_empty_cache(
        tmp_path: Path, s3: S3Peer, bucket: object) -> None:
    src = snapshot_tree(tmp_path / "src")
    writer = ChunkStore(origin_from_url(f"s3://{BUCKET}/{PREFIX}", s3.endpoint), SECRET, cache_dir=tmp_path / "cache-w")
    manifest = writer.put_tree("fn-1-aaaa", src, meta={"restore_memory": "map"})
    writer.close()
    assert keys(bucket, "manifests") == {"fn-1-aaaa"} and keys(bucket, "chunks") == manifest.names()

    reader = ChunkStore(S3Origin(BUCKET, PREFIX, endpoint_url=s3.endpoint), SECRET, cache_dir=tmp_path / "cache-r")
    assert reader.disk.usage().chunks == 0
    reader.materialize("fn-1-aaaa", tmp_path / "restored")
    assert tree_digest(tmp_path / "restored") == tree_digest(src)
    counters = reader.counters()
    assert counters["origin"].hits == len(manifest.names()) and counters["disk"].hits == 0
    assert reader.disk.usage().chunks == len(manifest.names())  # the restore warmed the local cache
    so = (src / "tmp" / "lib" / "_rust.abi3.so").read_bytes()
    assert reader.read("fn-1-aaaa", "tmp/lib/_rust.abi3.so", 3_000_000, 100_000) == so[3_000_000:3_100_000]

    stats, one = reader.stats(), reader.snapshot_stats("fn-1-aaaa")
    print(f"\nstore over S3 (moto on loopback): raw {one.raw_bytes} B in {one.files} files, holes {one.hole_bytes} B, "
          f"{one.chunks} chunks stored as {one.stored_bytes} B = {one.stored_bytes / one.raw_bytes:.1%} of raw; "
          f"compression (stored/unique) {stats.compression_ratio:.2f}")
    assert one.stored_bytes < one.raw_bytes
    reader.close()


def test_corrupt_or_missing_chunks_at_the_s3_origin_fail_clearly_and_gc_cleans_the_bucket(
        tmp_path: Path, s3: S3Peer, bucket: object) -> None:
    origin = S3Origin(BUCKET, PREFIX, endpoint_url=s3.endpoint)
    writer = ChunkStore(origin, SECRET, cache_dir=tmp_path / "cache-w")
    v1 = make_tree(tmp_path / "v1", seed=1)
    v2 = make_tree(tmp_path / "v2", seed=2)
    one, two = writer.put_tree("fn-1-aaaa", v1), writer.put_tree("fn-2-bbbb", v2)

    ref = one.file("pages-1.img").chunks[1]
    key = f"{PREFIX}/chunks/{ref.name}"
    blob = bucket.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
    bucket.put_object(Bucket=BUCKET, Key=key, Body=blob[:-1] + bytes([blob[-1] ^ 1]))  # type: ignore[attr-defined]
    reader = ChunkStore(S3Origin(BUCKET, PREFIX, endpoint_url=s3.endpoint), SECRET, cache_dir=tmp_path / "cache-r")
    with pytest.raises(ChunkUnavailable, match=r"step 'fetch chunk' for snapshot fn-1-aaaa, file pages-1.img, chunk 1 .*corrupt at origin s3://"):
        reader.materialize("fn-1-aaaa", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    bucket.delete_object(Bucket=BUCKET, Key=key)  # type: ignore[attr-defined]
    with pytest.raises(ChunkUnavailable, match="missing at origin"):
        reader.read("fn-1-aaaa", "pages-1.img", ref.offset, 10)

    writer.delete("fn-1-aaaa")
    report = writer.collect(["fn-2-bbbb"], grace_seconds=0)
    assert report.manifests_deleted == 0 and report.chunks_deleted == len(one.names() - two.names()) - 1  # one already lost
    assert keys(bucket, "chunks") == two.names() and keys(bucket, "manifests") == {"fn-2-bbbb"}
    reader.materialize("fn-2-bbbb", tmp_path / "v2-restored")
    assert tree_digest(tmp_path / "v2-restored") == tree_digest(v2)
    writer.close()
    reader.close()


def test_an_unreachable_s3_origin_is_a_clear_error(tmp_path: Path, aws_env: None) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = boto3.session.Session().client("s3", endpoint_url=closed, config=Config(
        retries={"max_attempts": 1}, connect_timeout=2, s3={"addressing_style": "path"}))
    store = ChunkStore(S3Origin(BUCKET, PREFIX, endpoint_url=closed, client=client), SECRET, cache_dir=tmp_path / "cache")
    with pytest.raises(OriginError, match="failed at step 'read manifest' at origin s3://"):
        store.read("fn-1-aaaa", "pages-1.img", 0, 1)
    store.close()
    assert os.path.isdir(tmp_path / "cache")


def test_attachments_live_beside_the_manifest_in_the_bucket_shared_sealed_and_collected(
        tmp_path: Path, s3: S3Peer, bucket: object) -> None:
    writer = ChunkStore(S3Origin(BUCKET, PREFIX, endpoint_url=s3.endpoint), SECRET, cache_dir=tmp_path / "cache-w")
    writer.put_tree("fn-1-aaaa", make_tree(tmp_path / "v1", seed=1, pages_chunks=2, library_chunks=1))
    writer.put_tree("fn-2-bbbb", make_tree(tmp_path / "v2", seed=2, pages_chunks=2, library_chunks=1))
    writer.put_tree("fn-3-cccc", make_tree(tmp_path / "v3", seed=3, pages_chunks=2, library_chunks=1))
    for snapshot_id in ("fn-1-aaaa", "fn-2-bbbb", "fn-3-cccc"):
        writer.put_attachment(snapshot_id, "workingset", f"files of {snapshot_id}".encode())
    writer.put_attachment("fn-1-aaaa", "workingset", b"rewritten")  # last writer wins
    with pytest.raises(SnapshotMissing, match="has no manifest at origin s3://"):
        writer.put_attachment("fn-9-none", "workingset", b"x")
    assert keys(bucket, "attachments") == {"fn-1-aaaa/workingset", "fn-2-bbbb/workingset", "fn-3-cccc/workingset"}
    key = f"{PREFIX}/attachments/fn-2-bbbb/workingset"
    envelope = bucket.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
    assert envelope.startswith(b"SFATTACH") and b"files of" not in envelope

    reader = ChunkStore(S3Origin(BUCKET, PREFIX, endpoint_url=s3.endpoint), SECRET, cache_dir=tmp_path / "cache-r")
    assert reader.get_attachment("fn-1-aaaa", "workingset") == b"rewritten"  # another host, empty cache
    assert reader.attachments("fn-2-bbbb") == ["workingset"]
    bucket.put_object(Bucket=BUCKET, Key=key, Body=envelope[:-1] + bytes([envelope[-1] ^ 1]))  # type: ignore[attr-defined]
    assert reader.get_attachment("fn-2-bbbb", "workingset") is None  # tampered: absent, never data
    moved = bucket.get_object(Bucket=BUCKET, Key=f"{PREFIX}/attachments/fn-3-cccc/workingset")["Body"].read()  # type: ignore[attr-defined]
    bucket.put_object(Bucket=BUCKET, Key=key, Body=moved)  # type: ignore[attr-defined]
    assert reader.get_attachment("fn-2-bbbb", "workingset") is None  # another snapshot's

    writer.delete("fn-1-aaaa")
    assert keys(bucket, "attachments") == {"fn-2-bbbb/workingset", "fn-3-cccc/workingset"}
    bucket.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/manifests/fn-3-cccc")  # type: ignore[attr-defined]  # an orphan
    report = writer.collect(["fn-2-bbbb"], grace_seconds=0)
    assert report.attachments_deleted == 1 and keys(bucket, "attachments") == {"fn-2-bbbb/workingset"}
    writer.close()
    reader.close()
