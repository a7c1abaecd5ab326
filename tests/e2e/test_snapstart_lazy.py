"""Lazy restores (the default) end to end: real CRIU restoring from the snapshot view (FUSE over
the real chunk store), real boto3.

* a chunk every restore reads (of a small image file, copied out of the store by the lease) that
  is corrupt or missing at the origin fails that restore promptly, before any container
  (SnapStartNotReadyException), the version re-creates its snapshot and restores again from a
  fresh one;
* a corrupt chunk in the local disk cache is read again from the origin (the snapshot stays);
* deleting a version withdraws its snapshot from the view and the store;
* a bad chunk first touched by an invoke after the restore kills that process with SIGBUS (the
  invoke fails with Runtime.ExitError) and the snapshot is re-created;
* snapshots are encrypted at rest: the origin and the disk cache hold no plaintext, while the
  view (memory only) serves the real images.

The eager path (the plaintext RAM cache) is covered by test_snapstart_storage.py.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import (
    SNAPSTART, assert_restored, cache_root, chunk_files, containers_of, damage_a_restore_chunk, damage_at_origin, drop_page_cache,
    function_log, restore_chunk, origin_store, publish, snapshot_dirs,
    store_cache, store_root, view_root, wait_for, wait_state,
)
from tests.storekit import flip_byte

APP = """
import os
SECRET = "lazy-marker-" + "0123456789abcdef" * 4
KEEP = [SECRET + str(i) for i in range(64)]

def handler(event, context):
    return {"version": context.function_version, "marker": KEEP[3][:12]}
"""


BUS_APP = """
BUF = bytearray(b"".join(b"BUSMARK:" + i.to_bytes(8, "little") for i in range(8 << 16)))  # 8 MiB, never touched by a restore

def handler(event, context):
    if event.get("touch"):
        return {"sum": sum(BUF[i] for i in range(0, len(BUF), 4096))}
    return {"size": len(BUF)}
"""


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A negligible chunk memory tier: what the view serves comes from the disk cache or the origin."""
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("lazy"), ["--keep-alive", "60", "--store-memory-bytes", "1K"])


@pytest.fixture(scope="module")
def lam(server: ServerHandle):  # type: ignore[no-untyped-def]
    return server.client()


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


@pytest.mark.parametrize(("how", "detail"), [("corrupt", "corrupt at origin"), ("missing", "missing at origin")])
def test_an_unreadable_chunk_fails_the_lazy_restore_and_the_snapshot_is_recreated(lam, server: ServerHandle,  # type: ignore[no-untyped-def]
                                                                                   how: str, detail: str) -> None:
    name = f"lazy-{how}"
    create(lam, name, {"app.py": APP}, SnapStart=SNAPSTART)
    publish(lam, name)
    broken = only(snapshot_dirs(server, name, "1")[0]).name
    damage_a_restore_chunk(server, broken, how)
    started = time.monotonic()
    with pytest.raises(lam.exceptions.SnapStartNotReadyException) as not_ready:
        invoke_json(lam, name, {}, Qualifier="1")
    assert not_ready.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert time.monotonic() - started < 10  # never a hang
    # the lease copies the small images out of the store (CRIU reads them from a tmpfs, not the
    # view): the failure stops the restore before any container, as with eager loading
    restored = {env for v, env, m in function_log(server, name) if v == "1" and m.startswith("RESTORE_START")}
    assert len(restored) == 0 and containers_of(server, restored) == []
    assert not (cache_root(server) / broken).exists()

    final = wait_state(lam, name, "1", ("Active", "Failed"), timeout=60)
    assert final["State"] == "Active", final.get("StateReason")
    fresh = only(snapshot_dirs(server, name, "1")[0]).name
    assert fresh != broken
    wait_for(lambda: not (store_root(server) / "manifests" / broken).exists(), 30, "the broken manifest to go")
    assert not (view_root(server) / broken).exists()
    notes = [m for v, env, m in function_log(server, name) if v == "1" and not env and "restore failed" in m]
    assert notes and any(detail in m for m in notes), notes
    response, body = invoke_json(lam, name, {}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    assert body == {"version": "1", "marker": "lazy-marker-"}


def published_and_restored(lam, server: ServerHandle, name: str) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """Create `name`, publish version 1 and restore it once: (its manifest, its view directory)."""
    create(lam, name, {"app.py": APP}, SnapStart=SNAPSTART)
    publish(lam, name)
    response, _ = invoke_json(lam, name, {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    stored, exposed = (only(d) for d in snapshot_dirs(server, name, "1"))
    return stored, exposed


def test_deleting_a_version_withdraws_it_from_the_view_and_the_store(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    stored, exposed = published_and_restored(lam, server, "lazy-doomed")
    assert (exposed / "pstree.img").is_file()
    lam.delete_function(FunctionName="lazy-doomed", Qualifier="1")
    wait_for(lambda: not stored.exists(), 30, "the manifest to go")
    assert not exposed.exists()


def test_snapshots_are_encrypted_at_rest_and_plaintext_only_in_the_view(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    _, exposed = published_and_restored(lam, server, "lazy-at-rest")
    needle = b"lazy-marker-0123456789abcdef"
    assert any(needle in p.read_bytes() for p in exposed.glob("pages-*.img")), "test premise: the marker is in memory"
    for root in (store_root(server), store_cache(server)):
        for path in root.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path
    assert exposed.stat().st_mode & 0o777 == 0o750 and all(p.stat().st_mode & 0o777 == 0o640 for p in exposed.iterdir())


def test_a_corrupt_disk_cache_chunk_is_read_from_the_origin_and_the_snapshot_kept(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "lazy-disk", {"app.py": APP}, SnapStart=SNAPSTART)
    publish(lam, "lazy-disk")  # the publish warmed the disk cache with every chunk
    snapshot = only(snapshot_dirs(server, "lazy-disk", "1")[0]).name
    with origin_store(server) as store:
        name = restore_chunk(store.manifest(snapshot), set())
    cached = chunk_files(store_cache(server))[name]
    flip_byte(cached, cached.stat().st_size // 2)
    damaged = cached.read_bytes()
    drop_page_cache()  # the publish primed the view's page cache: the restore must read the chunk
    response, body = invoke_json(lam, "lazy-disk", {}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    assert only(snapshot_dirs(server, "lazy-disk", "1")[0]).name == snapshot  # not re-created
    assert chunk_files(store_cache(server))[name].read_bytes() != damaged  # the bad copy was replaced from the origin


def test_a_bad_chunk_first_touched_after_the_restore_fails_that_invoke_and_recreates_the_snapshot(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """A page the restore did not need is fetched when the function touches it: if its chunk
    is bad at the origin, the process dies of SIGBUS (never runs on other bytes), the invoke
    fails, and the version re-creates its snapshot."""
    create(lam, "lazy-bus", {"app.py": BUS_APP}, SnapStart=SNAPSTART, MemorySize=256)
    publish(lam, "lazy-bus")
    broken = only(snapshot_dirs(server, "lazy-bus", "1")[0]).name
    damaged: list[tuple[str, int]] = []
    with origin_store(server) as store:
        for entry in store.manifest(broken).files:
            for index, ref in enumerate(entry.chunks):
                if ref.is_hole or not entry.path.startswith("pages-"):
                    continue
                plain = store.read(broken, entry.path, ref.offset, ref.length)
                if all(plain[i:i + 8] == b"BUSMARK:" for i in range(0, len(plain), 16)):  # wholly inside BUF
                    damage_at_origin(server, ref.name, "missing")
                    damaged.append((entry.path, ref.offset))
    assert len(damaged) >= 8, "test premise: BUF's chunks are found"
    drop_page_cache()  # the publish primed the view's page cache with BUF too
    # A read of a bad chunk that no restore or process needs (what the kernel's readahead does
    # around a faulted page) fails, and condemns nothing: the version stays Active.
    path, offset = damaged[0]
    with open(view_root(server) / broken / path, "rb", buffering=0) as image:
        with pytest.raises(OSError) as unreadable:
            os.pread(image.fileno(), 4096, offset)
    assert unreadable.value.errno == errno.EIO
    response, body = invoke_json(lam, "lazy-bus", {}, Qualifier="1", LogType="Tail")  # the restore never needs them
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    assert lam.get_function_configuration(FunctionName="lazy-bus", Qualifier="1")["State"] == "Active"
    response, body = invoke_json(lam, "lazy-bus", {"touch": True}, Qualifier="1")  # the warm environment touches BUF
    assert response.get("FunctionError") == "Unhandled" and body["errorType"] == "Runtime.ExitError", body
    assert "bus error" in body["errorMessage"], body
    def replaced() -> bool:
        manifests = snapshot_dirs(server, "lazy-bus", "1")[0]  # one listing: the old one may go between two
        return len(manifests) == 1 and manifests[0].name != broken

    wait_for(replaced, 60, "a new snapshot")
    final = wait_state(lam, "lazy-bus", "1", ("Active", "Failed"), timeout=60)
    assert final["State"] == "Active", final.get("StateReason")
    response, body = invoke_json(lam, "lazy-bus", {"touch": True}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert body["sum"] == ord("B") * ((8 << 20) // 4096)  # every sampled byte starts a record: the real BUF
