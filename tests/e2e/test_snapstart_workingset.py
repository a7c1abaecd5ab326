"""The file working set of a snapshot: recorded from its first restored environment into the
snapshot's store attachment ``workingset``, read ahead at later restores (snapshot/workingset.py),
read by a second server process on the same (S3) origin with an empty cache dir instead of
being recorded again, and off with --no-restore-prefetch."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from snapfaas.config import store_secret_for
from snapfaas.store import ChunkStore, DirectoryOrigin, load_or_create_secret
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import (
    SNAPSTART, assert_restored, cache_root, origin_store, publish, snapshot_dirs, store_root, wait_for,
)
from tests.integration.test_store_s3 import S3Peer, s3  # noqa: F401 (the moto server fixture)
from tests.storekit import offline_aws_credentials

CODE = {"app.py": "import json, hashlib\nTABLE = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]\n"
                  "def handler(event, context):\n    return {'n': len(TABLE), 'pid': __import__('os').getpid()}\n"}


BUCKET = "snapfaas-ws"


def snapshot_id(server: ServerHandle, name: str) -> str:
    [manifest], _ = snapshot_dirs(server, name, "1")
    return manifest.name


def working_set(server: ServerHandle, name: str) -> dict[str, Any] | None:
    """The version's working-set document, read from the store attachment with the data dir's
    secret (None while none is recorded)."""
    store = ChunkStore(DirectoryOrigin(store_root(server)), load_or_create_secret(store_secret_for(server.data_dir)),
                       cache_dir=None, memory_bytes=0)
    try:
        data = store.get_attachment(snapshot_id(server, name), "workingset")
    finally:
        store.close()
    return None if data is None else json.loads(data)


def manifest_chunk_ranges(server: ServerHandle, snapshot: str) -> set[tuple[str, int, int]]:
    """(file, offset, length) of every stored chunk of the snapshot's manifest."""
    with origin_store(server) as store:
        return {(entry.path, ref.offset, ref.length) for entry in store.manifest(snapshot).files
                for ref in entry.chunks if not ref.is_hole}


def attachment_file(server: ServerHandle, name: str) -> Path:
    """The sealed attachment at the directory origin (a rewrite re-seals it: new bytes)."""
    return store_root(server) / "attachments" / snapshot_id(server, name) / "workingset"


def test_the_first_restore_records_the_host_files_it_touched_and_later_restores_use_them(server: ServerHandle, lam) -> None:  # type: ignore[no-untyped-def]
    create(lam, "wset", CODE, SnapStart=SNAPSTART)
    publish(lam, "wset")
    response, body = invoke_json(lam, "wset", {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    data = wait_for(lambda: working_set(server, "wset"), 30, "the working set to be recorded")
    assert data["version"] == 1 and set(data["sections"]) == {"files", "images"}
    # the image ranges the restore used (lazy): of the page images, runs of pages inside one chunk
    # of the manifest; of the small images, each one whole chunk
    images = data["sections"]["images"]["ranges"]
    assert any(path.startswith("pages-") for path, _, _ in images), images
    chunks = manifest_chunk_ranges(server, snapshot_id(server, "wset"))
    page = os.sysconf("SC_PAGE_SIZE")
    for path, offset, length in images:
        if path.startswith("pages-"):
            assert offset % page == 0 and length > 0 and any(
                p == path and o <= offset and offset + length <= o + n for p, o, n in chunks), (path, offset, length)
        else:
            assert (path, offset, length) in chunks, (path, offset, length)
    assert data["sections"]["images"]["bytes"] == sum(length for _, _, length in images)
    entries = data["sections"]["files"]["entries"]
    files = {entry["path"]: entry for entry in entries}
    assert any("libpython" in p or "/python3" in p for p in files), sorted(files)
    assert any(p.endswith("/libc.so.6") for p in files), sorted(files)
    for entry in entries:  # host files as they are on the host, never the sandbox's view or a tmpfs
        st = os.stat(entry["path"])
        assert (st.st_dev, st.st_ino) == (entry["dev"], entry["ino"]) and os.major(st.st_dev) != 0, entry["path"]
        assert entry["ranges"] and all(length > 0 for _, length in entry["ranges"])
    assert not any(p.startswith("/var/task") or p.startswith("/tmp") for p in files)
    sealed = attachment_file(server, "wset").read_bytes()
    assert sealed.startswith(b"SFATTACH") and b"libc" not in sealed  # sealed by the store
    assert not (server.data_dir / "workingsets").exists()  # nothing beside the store
    # two more restores at once (the first environment is busy with one of them or warm): both read it ahead
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(lambda _: invoke_json(lam, "wset", {}, Qualifier="1"), range(3)))
    assert all("FunctionError" not in r and b["n"] == 1000 for r, b in outcomes), outcomes
    server.stop()  # waits for recordings under way, so a second one could not hide
    try:
        assert attachment_file(server, "wset").read_bytes() == sealed, "recorded once per snapshot"
    finally:
        server.start()


@pytest.fixture(scope="module")
def no_prefetch(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("noprefetch"), ["--keep-alive", "60", "--no-restore-prefetch"])


def test_no_restore_prefetch_records_nothing(no_prefetch: ServerHandle) -> None:
    lam = no_prefetch.client()
    create(lam, "plain", CODE, SnapStart=SNAPSTART)
    publish(lam, "plain")
    response, _ = invoke_json(lam, "plain", {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    second, _ = invoke_json(lam, "plain", {}, Qualifier="1")  # warm: the first invocation is long over
    assert "FunctionError" not in second
    assert working_set(no_prefetch, "plain") is None
    assert not (store_root(no_prefetch) / "attachments" / snapshot_id(no_prefetch, "plain")).exists()


@pytest.fixture
def aws_environ(tmp_path: Path) -> Iterator[None]:
    """Credentials for the S3 origin through the standard AWS variables (inherited by the
    server process and the operator tool); nothing from the host's config files, no
    instance-metadata lookups."""
    with pytest.MonkeyPatch.context() as patch:
        offline_aws_credentials(patch, tmp_path)
        yield


def test_a_second_server_on_the_same_origin_with_an_empty_cache_reads_the_working_set_the_first_recorded(  # type: ignore[no-untyped-def]
        processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory, s3: S3Peer, aws_environ: None) -> None:  # noqa: F811
    """As in test_snapstart_store: the registry is per data dir, so the second server process
    runs on the same data dir with a new, empty disk cache and no RAM copy; the working set
    can only come from the bucket. A legacy <data-dir>/workingsets/ is removed at its start."""
    require_root()
    client = boto3.session.Session().client("s3", endpoint_url=s3.endpoint)
    client.create_bucket(Bucket=BUCKET)
    base = tmp_path_factory.mktemp("wsorigin")
    origin = ["--store-origin", f"s3://{BUCKET}/fleet", "--store-s3-endpoint-url", s3.endpoint]
    servers = run_server(processes, base, ["--keep-alive", "60", *origin, "--store-cache-dir", str(base / "cache-1")])
    handle = next(servers)
    try:
        lam = handle.client()
        create(lam, "shared", CODE, SnapStart=SNAPSTART)
        publish(lam, "shared")
        response, _ = invoke_json(lam, "shared", {}, Qualifier="1", LogType="Tail")
        assert_restored(response["LogResult"])
        [key] = wait_for(lambda: [item["Key"] for item in client.list_objects_v2(
            Bucket=BUCKET, Prefix="fleet/attachments/").get("Contents", [])], 30, "the working set in the bucket")
        shared_id = re.fullmatch(r"fleet/attachments/(shared-1-[0-9a-f]{12})/workingset", key)[1]  # type: ignore[index]
        sealed = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

        handle.stop()
        shutil.rmtree(cache_root(handle))  # no RAM copy of the snapshot either
        (handle.data_dir / "workingsets").mkdir()  # what an older build left
        (handle.data_dir / "workingsets" / f"{shared_id}.json").write_text('{"format": 1, "files": []}')
        handle.extra_args[handle.extra_args.index("--store-cache-dir") + 1] = str(base / "cache-2")
        offset = handle.log_path.stat().st_size
        handle.start()  # the second server process
        assert not (handle.data_dir / "workingsets").exists()
        assert not (base / "cache-2" / "attachments" / shared_id).exists()
        response, body = invoke_json(lam, "shared", {}, Qualifier="1", LogType="Tail")
        assert "FunctionError" not in response, body
        assert_restored(response["LogResult"])

        def second_log() -> str:
            return handle.log_path.read_bytes()[offset:].decode(errors="replace")

        line = wait_for(lambda: [l for l in second_log().splitlines() if f"snapshot {shared_id}: working set of" in l],
                        30, "the second server to read the working set")
        assert "read from the store" in line[0]
        assert (base / "cache-2" / "attachments" / shared_id / "workingset").read_bytes() == sealed  # read through
        info = json.loads(subprocess.run(
            [sys.executable, "-m", "snapfaas", "snapshot", "inspect", "shared:1", "--json", "--data-dir",
             str(handle.data_dir), *origin, "--store-cache-dir", str(base / "cache-2")],
            capture_output=True, text=True, timeout=120, check=True).stdout)
        assert info["working_set"]["sections"] == ["files", "images"] and info["working_set"]["files"] > 0
        assert info["working_set"]["bytes"] > 0

        handle.stop()  # waits for recordings under way
        assert f"snapshot {shared_id}: recorded a working set" not in second_log()
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == sealed  # not recorded again
        handle.start()
        lam.delete_function(FunctionName="shared")
        wait_for(lambda: not client.list_objects_v2(Bucket=BUCKET, Prefix="fleet/attachments/").get("Contents"),
                 30, "the working set to leave the bucket with its snapshot")
    finally:
        for _ in servers:  # stops the server and checks that nothing leaked
            pass
