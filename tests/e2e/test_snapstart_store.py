"""SnapStart over the chunk store's tiers, end to end (real CRIU, the real store, real boto3):

* every cache tier dropped (RAM plaintext copy, the store's disk cache, its memory tier: a
  restarted server) and the snapshot restores from the origin alone;
* the origin gone and the local cache warm: the snapshot still restores;
* an S3 origin (moto's standalone server on loopback as the wire peer, started by the test):
  one server process publishes, a second one on the same data dir (the registry and the store
  secret live there) with an empty disk cache restores from the bucket;
* the operator tools (`snapfaas snapshot ls|inspect`, `snapfaas store stats|gc`) on a live and
  a stopped server, including chunks shared by two versions and an orphan collected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from snapfaas.config import store_secret_for
from snapfaas.store import ChunkStore, DirectoryOrigin, load_or_create_secret
from tests.storekit import offline_aws_credentials
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import (
    SNAPSTART, assert_restored, cache_root, chunk_files, drop_page_cache, manifest_chunks, publish, snapshot_dirs, store_cache, store_root,
    view_root, wait_for,
)
from tests.integration.test_store_s3 import S3Peer, s3  # noqa: F401 (the moto server fixture)

APP = """
import os, uuid
STATE = {"boot": uuid.uuid4().hex}

def handler(event, context):
    return {"boot": STATE["boot"], "version": context.function_version, "line": LINE}

LINE = 1
"""
BUCKET = "snapfaas-e2e"


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """Origin and disk cache in places the tests can take away; a negligible chunk memory tier
    (what a restore reads comes from the disk cache or the origin); deterministic publish inits
    (``--no-snapshot-init-aslr``, for the dedup test)."""
    require_root()
    base = tmp_path_factory.mktemp("storetiers")
    yield from run_server(processes, base, ["--keep-alive", "60", "--store-origin", str(base / "origin"),
                                            "--store-cache-dir", str(base / "disk-cache"), "--store-memory-bytes", "1K",
                                            "--no-snapshot-init-aslr"])


@pytest.fixture(scope="module")
def lam(server: ServerHandle):  # type: ignore[no-untyped-def]
    return server.client()


def snapfaas(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "snapfaas", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def store_args(server: ServerHandle) -> list[str]:
    return ["--data-dir", str(server.data_dir), "--store-origin", str(store_root(server)),
            "--store-cache-dir", str(store_cache(server))]


def test_with_every_cache_tier_dropped_a_lazy_restore_fetches_only_what_it_touches(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "roundtrip", {"app.py": APP}, SnapStart=SNAPSTART)
    publish(lam, "roundtrip")
    [manifest], plaintext = snapshot_dirs(server, "roundtrip", "1")
    assert [p.parent for p in plaintext] == [view_root(server)]  # plaintext only in the view (memory)
    chunks = manifest_chunks(server, manifest.name)
    server.stop()  # the chunk memory tier and the view (with its page cache) go with the process
    shutil.rmtree(store_cache(server))  # the disk cache
    server.start()
    response, body = invoke_json(lam, "roundtrip", {}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    assert body["version"] == "1" and body["line"] == 1
    fetched = set(chunk_files(store_cache(server))) & chunks  # read from the origin, promoted into the disk cache
    print(f"\n[lazy] a restore from the origin alone fetched {len(fetched)} of the snapshot's {len(chunks)} chunks")
    assert 0 < len(fetched) < len(chunks)
    [exposed] = snapshot_dirs(server, "roundtrip", "1")[1]
    assert exposed.name == manifest.name


def test_with_the_origin_gone_a_warm_local_cache_still_restores(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "offline", {"app.py": APP}, SnapStart=SNAPSTART)
    publish(lam, "offline")  # the publish warmed the disk cache; the server verified and keeps the manifest
    [manifest], _ = snapshot_dirs(server, "offline", "1")
    assert manifest_chunks(server, manifest.name) <= set(chunk_files(store_cache(server)))
    origin = store_root(server)
    away = origin.with_name(origin.name + ".away")
    origin.rename(away)
    try:
        drop_page_cache()  # what the view served before is read again: from the disk cache
        response, body = invoke_json(lam, "offline", {}, Qualifier="1", LogType="Tail")
        assert "FunctionError" not in response, body
        assert_restored(response["LogResult"])
        assert not origin.exists()
    finally:
        away.rename(origin)


DEDUP_APP = """
import json
import model

def handler(event, context):
    with open("/proc/self/maps") as maps, open("/proc/self/personality") as persona:
        layout = {"first_mapping": maps.readline().split("-")[0], "personality": persona.read().strip()}
    return {"version": context.function_version, "answer": 1, "vocabulary": len(model.VOCAB), **layout}
"""
UNRANDOMIZED_BASE = "555555554000"  # where Linux maps a PIE executable without ASLR (x86-64, aarch64)
# what the function's init builds, in a module it imports (as a library or a model would be)
DEDUP_MODEL = """
import hashlib
WEIGHTS = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(2_500_000))
VOCAB = {f"token-{i}": i for i in range(300_000)}
"""


def test_a_one_line_code_change_adds_at_most_a_tenth_new_chunks(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """Issue 10's dedup target: version 2 differs from version 1 by one line of the handler;
    of version 2's distinct chunks at most 10% are new (counted from the two manifests). What
    makes it hold: the init is deterministic (no ASLR, the function's own hash seed, no tcache,
    the leading imports before the compile) and page images are cut along memory windows.
    The function's state is built by a module it imports (~130 MB), as a library or a model
    would be: what differs between any two dumps regardless of code (CRIU's metadata images,
    stack canaries, env strings; ~30 chunks) then stays under the 10%."""
    create(lam, "dedup", {"app.py": DEDUP_APP, "model.py": DEDUP_MODEL}, SnapStart=SNAPSTART, MemorySize=512)
    publish(lam, "dedup")
    lam.update_function_code(FunctionName="dedup", ZipFile=_zip({"app.py": DEDUP_APP.replace('"answer": 1', '"answer": 2'),
                                                                            "model.py": DEDUP_MODEL}))
    lam.get_waiter("function_updated_v2").wait(FunctionName="dedup", WaiterConfig={"Delay": 0.1, "MaxAttempts": 300})
    publish(lam, "dedup")
    [v1], _ = snapshot_dirs(server, "dedup", "1")
    [v2], _ = snapshot_dirs(server, "dedup", "2")
    one, two = manifest_chunks(server, v1.name), manifest_chunks(server, v2.name)
    new = two - one
    print(f"\n[dedup] one-line change: {len(new)} of version 2's {len(two)} distinct chunks are new ({len(new) / len(two):.1%})")
    assert len(new) / len(two) <= 0.10
    for version, answer in (("1", 1), ("2", 2)):  # both restore, each with its own code
        response, body = invoke_json(lam, "dedup", {}, Qualifier=version, LogType="Tail")
        assert "FunctionError" not in response, body
        assert_restored(response["LogResult"])
        assert (body["version"], body["answer"], body["vocabulary"]) == (version, answer, 300_000)
        # the snapshot's layout is the unrandomized one; the flag was cleared before the checkpoint
        assert body["first_mapping"] == UNRANDOMIZED_BASE and int(body["personality"], 16) == 0, body
    response, body = invoke_json(lam, "dedup", {})  # $LATEST: an on-demand environment keeps ASLR
    assert "FunctionError" not in response, body
    assert body["first_mapping"] != UNRANDOMIZED_BASE and int(body["personality"], 16) == 0, body


def test_operator_tools_report_snapshots_tiers_and_sharing_and_collect_orphans(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "tools", {"app.py": APP}, SnapStart=SNAPSTART)
    publish(lam, "tools")
    lam.update_function_code(FunctionName="tools", ZipFile=_zip({"app.py": APP.replace("LINE = 1", "LINE = 2")}))
    lam.get_waiter("function_updated_v2").wait(FunctionName="tools", WaiterConfig={"Delay": 0.1, "MaxAttempts": 300})
    publish(lam, "tools")
    [v1], _ = snapshot_dirs(server, "tools", "1")
    [v2], _ = snapshot_dirs(server, "tools", "2")

    listed = json.loads(snapfaas("snapshot", "ls", "--json", *store_args(server)).stdout)
    mine = {(row["function"], row["version"]): row for row in listed}
    assert mine[("tools", "1")]["snapshot"] == v1.name and mine[("tools", "2")]["snapshot"] == v2.name
    assert all(row["referenced"] for row in listed)
    assert mine[("tools", "1")]["raw_bytes"] > 0

    info = json.loads(snapfaas("snapshot", "inspect", "tools:2", "--json", *store_args(server)).stdout)
    assert info["snapshot_id"] == v2.name and info["function"] == "tools" and info["version"] == "2"
    assert info["chunks"] == len(manifest_chunks(server, v2.name))
    assert 0 < info["stored_bytes"] < info["raw_bytes"]
    shared = manifest_chunks(server, v1.name) & manifest_chunks(server, v2.name)
    assert info["shared_chunks"] >= len(shared) > 0  # a one-line change: most chunks are v1's
    print(f"\n[store] tools:2 shares {info['shared_chunks']} of {info['chunks']} chunks with other snapshots; "
          f"stored {info['stored_bytes']} of {info['raw_bytes']} raw bytes")
    assert info["tiers"]["origin"]["chunks"] == info["chunks"]
    assert info["tiers"]["disk"]["chunks"] == info["chunks"]  # the publish warmed the disk cache

    stats = json.loads(snapfaas("store", "stats", "--json", *store_args(server)).stdout)
    assert stats["snapshots"] == len(listed) and stats["dedup_ratio"] > 1
    assert stats["usage"]["origin"]["bytes"] >= stats["stored_bytes"] > 0
    assert stats["usage"]["disk"]["chunks"] > 0

    # an orphan: a snapshot no version references, with a chunk of its own and one tools:2 has
    secret = load_or_create_secret(store_secret_for(server.data_dir))
    orphan_tree = server.data_dir.parent / "orphan-tree"
    orphan_tree.mkdir()
    (orphan_tree / "pages-1.img").write_bytes(os.urandom(600_000))
    foreign = ChunkStore(DirectoryOrigin(store_root(server)), secret, cache_dir=None, memory_bytes=0)
    try:
        orphan = foreign.put_tree("orphan-1-000000000000", orphan_tree, meta={"function": "orphan", "function_version": "1"})
    finally:
        foreign.close()
    assert orphan.names() <= set(chunk_files(store_root(server)))
    # with the server running: the grace window spares young objects; the disk cache is the server's
    report = json.loads(snapfaas("store", "gc", "--json", *store_args(server)).stdout)
    assert report["manifests_deleted"] == 0 and report["disk_cache_collected"] is False
    server.stop()
    try:
        report = json.loads(snapfaas("store", "gc", "--json", "--grace", "0s", *store_args(server)).stdout)
        assert report["manifests_deleted"] == 1 and report["chunks_deleted"] >= 1 and report["disk_cache_collected"]
        assert not orphan.names() & set(chunk_files(store_root(server)))
        remaining = {row["snapshot"] for row in json.loads(snapfaas("snapshot", "ls", "--json", *store_args(server)).stdout)}
        assert {v1.name, v2.name} <= remaining and "orphan-1-000000000000" not in remaining
        stats = json.loads(snapfaas("store", "stats", "--json", *store_args(server)).stdout)
        counters = stats["server_counters"]["counters"]  # written by the server at shutdown
        assert set(counters) == {"memory", "disk", "origin"} and counters["origin"]["bytes_written"] > 0
    finally:
        server.start()
    response, body = invoke_json(lam, "tools", {}, Qualifier="2")
    assert "FunctionError" not in response and body["line"] == 2


def _zip(files: dict[str, str]) -> bytes:
    from tests.conftest import make_zip

    return make_zip(files)


@pytest.fixture
def aws_environ(tmp_path: Path) -> Iterator[None]:
    """Credentials for the S3 origin through the standard AWS variables (inherited by the
    server process); nothing from the host's config files, no instance-metadata lookups."""
    with pytest.MonkeyPatch.context() as patch:
        offline_aws_credentials(patch, tmp_path)
        yield


def test_an_s3_origin_publish_on_one_server_restores_on_a_second_with_an_empty_cache(  # type: ignore[no-untyped-def]
        processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory, s3: S3Peer, aws_environ: None) -> None:  # noqa: F811
    """The registry is per data dir (SQLite), so the second server process runs on the same data
    dir (its registry and store secret) with a new, empty disk cache and no RAM copy: everything
    it restores comes from the bucket."""
    require_root()
    client = boto3.session.Session().client("s3", endpoint_url=s3.endpoint)
    client.create_bucket(Bucket=BUCKET)

    def keys(prefix: str) -> list[str]:
        return [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                for item in page.get("Contents", [])]

    base = tmp_path_factory.mktemp("s3origin")
    args = ["--keep-alive", "60", "--store-origin", f"s3://{BUCKET}/fleet-a", "--store-s3-endpoint-url", s3.endpoint,
            "--store-cache-dir", str(base / "cache-1")]
    servers = run_server(processes, base, args)
    handle = next(servers)
    try:
        lam = handle.client()
        create(lam, "overs3", {"app.py": APP}, SnapStart=SNAPSTART)
        publish(lam, "overs3")
        assert len([k for k in keys("fleet-a/manifests/") if k.startswith("fleet-a/manifests/overs3-1-")]) == 1
        assert keys("fleet-a/chunks/")
        assert not (handle.data_dir / "store").exists()  # nothing of the snapshot on local disk but the cache
        assert len([k for k in keys("fleet-a/manifests/") if k.startswith("fleet-a/manifests/code.")]) == 1  # the zip

        handle.stop()
        shutil.rmtree(cache_root(handle))
        handle.extra_args[handle.extra_args.index("--store-cache-dir") + 1] = str(base / "cache-2")
        handle.start()  # the second server process
        assert chunk_files(base / "cache-2") == {}
        response, body = invoke_json(lam, "overs3", {}, Qualifier="1", LogType="Tail")
        assert "FunctionError" not in response, body
        assert_restored(response["LogResult"])
        assert body["version"] == "1"
        fetched = set(chunk_files(base / "cache-2"))
        assert fetched and fetched <= {k.rsplit("/", 1)[1] for k in keys("fleet-a/chunks/")}  # read from the bucket

        lam.delete_function(FunctionName="overs3")
        # the snapshot's manifest goes at once; the code package (code.<sha256>, also in the bucket)
        # goes at a collection after the S3 origin's grace period
        wait_for(lambda: not [k for k in keys("fleet-a/manifests/") if not k.startswith("fleet-a/manifests/code.")], 30,
                 "the manifest to leave the bucket")
    finally:
        for _ in servers:  # stops the server and checks that nothing leaked
            pass
