"""SnapStart snapshot storage through real boto3 and the real chunk store (directory origin),
with eager restores (``--restore-loading eager``: the plaintext RAM cache; the lazy default is
covered by test_snapstart_lazy.py):
deleting versions and functions deletes their snapshots (manifests, their unique chunks from
the origin and the disk cache, and the plaintext RAM cache) while chunks other snapshots share
stay; snapshots are encrypted at rest; corruption at each tier is handled (a bad RAM copy is
dropped and read again from the store, a bad disk-cache chunk is read from the origin, a bad or
missing chunk at the origin fails that restore and the snapshot is re-created); and Active
snapshots survive a daemon restart.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.config import bundles_for
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import (
    SNAPSTART, assert_restored, assert_warm, cache_root, chunk_files, containers_of, damage_an_origin_chunk, damage_at_origin,
    function_log, manifest_chunks, publish, report, snapshot_dirs, store_cache, store_root, wait_for, wait_state,
)

APP = """
import os, time, uuid
from snapshot_restore_py import register_after_restore

ENV = {}

@register_after_restore
def tag():
    ENV["id"] = uuid.uuid4().hex

def handler(event, context):
    time.sleep((event or {}).get("sleep", 0))
    return {"env_id": ENV.get("id"), "greeting": os.environ.get("GREETING"), "version": context.function_version}
"""


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A negligible chunk memory tier: every restore reads the disk cache or the origin, so what
    each test damages there is what the restore meets."""
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("storage"), ["--keep-alive", "60", "--store-memory-bytes", "1K",
                                                                          "--restore-loading", "eager"])


def create_snap(lam, name: str, greeting: str = "hello") -> None:  # type: ignore[no-untyped-def]
    create(lam, name, {"app.py": APP}, SnapStart=SNAPSTART, Environment={"Variables": {"GREETING": greeting}})


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def test_deleting_a_version_then_the_function_deletes_their_snapshots(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create_snap(lam, "doomed")
    publish(lam, "doomed")
    lam.update_function_configuration(FunctionName="doomed", Environment={"Variables": {"GREETING": "v2"}})
    lam.get_waiter("function_updated_v2").wait(FunctionName="doomed", WaiterConfig={"Delay": 0.1, "MaxAttempts": 300})
    publish(lam, "doomed")
    for version in ("1", "2"):
        response, body = invoke_json(lam, "doomed", {}, Qualifier=version, LogType="Tail")
        assert_restored(response["LogResult"])
        assert body["version"] == version
    v1_stored, v1_cached = (only(d) for d in snapshot_dirs(server, "doomed", "1"))
    v2_stored, v2_cached = (only(d) for d in snapshot_dirs(server, "doomed", "2"))
    v1_chunks, v2_chunks = manifest_chunks(server, v1_stored.name), manifest_chunks(server, v2_stored.name)
    shared = v1_chunks & v2_chunks
    assert shared and v1_chunks - v2_chunks, "test premise: the versions share some chunks and not others"
    assert v1_chunks | v2_chunks <= set(chunk_files(store_root(server))) and v1_chunks <= set(chunk_files(store_cache(server)))

    lam.delete_function(FunctionName="doomed", Qualifier="1")
    assert not v1_cached.exists()
    wait_for(lambda: not v1_stored.exists(), 30, "the manifest of doomed:1 to be deleted")
    assert v2_stored.is_file() and v2_cached.is_dir()  # the other version keeps its snapshot
    # garbage collection: doomed:1's own chunks leave the origin and the disk cache, shared ones stay
    wait_for(lambda: not (v1_chunks - v2_chunks) & set(chunk_files(store_root(server))), 30,
             "doomed:1's unique chunks to leave the origin")
    assert not (v1_chunks - v2_chunks) & set(chunk_files(store_cache(server)))
    assert v2_chunks <= set(chunk_files(store_root(server)))
    response, body = invoke_json(lam, "doomed", {}, Qualifier="2", LogType="Tail")
    assert body["greeting"] == "v2"

    # version 3 is deleted while its snapshot is still being taken: the finished snapshot is dropped
    lam.update_function_configuration(FunctionName="doomed", Environment={"Variables": {"GREETING": "v3"}})
    lam.get_waiter("function_updated_v2").wait(FunctionName="doomed", WaiterConfig={"Delay": 0.1, "MaxAttempts": 300})
    assert lam.publish_version(FunctionName="doomed")["State"] == "Pending"
    lam.delete_function(FunctionName="doomed", Qualifier="3")
    wait_for(lambda: [m for v, _, m in function_log(server, "doomed") if v == "3" and m.startswith("SNAPSHOT_REPORT")],
             20, "the snapshot of doomed:3 to finish")
    wait_for(lambda: snapshot_dirs(server, "doomed", "3") == ([], []), 10, "the orphaned snapshot of doomed:3 to be deleted")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function_configuration(FunctionName="doomed", Qualifier="3")

    lam.delete_function(FunctionName="doomed")
    wait_for(lambda: not v2_stored.exists(), 30, "the manifest of doomed:2 to be deleted")
    assert not v2_cached.exists()
    assert all(snapshot_dirs(server, "doomed", v) == ([], []) for v in ("1", "2", "3"))
    wait_for(lambda: not v2_chunks & set(chunk_files(store_root(server))), 30, "doomed:2's chunks to leave the origin")


def corrupt_and_invoke(lam, server: ServerHandle, name: str, damage) -> str:  # type: ignore[no-untyped-def]
    """Apply `damage(server, snapshot id, cache dir)` to the snapshot of `name`:1, then invoke it:
    the invoke must answer SnapStartNotReadyException promptly and leave no container and no
    mount behind. Returns the broken snapshot id."""
    stored, cached = (only(d) for d in snapshot_dirs(server, name, "1"))
    damage(server, stored.name, cached)
    started = time.monotonic()
    with pytest.raises(lam.exceptions.SnapStartNotReadyException) as not_ready:
        invoke_json(lam, name, {}, Qualifier="1")
    assert not_ready.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert time.monotonic() - started < 10
    # whatever environment the restore started is gone: container, bundle and mounts
    restored = {env for v, env, m in function_log(server, name) if v == "1" and m.startswith("RESTORE_START")}
    assert containers_of(server, restored) == []
    bundles = bundles_for(Path(server.extra_args[server.extra_args.index("--sandbox-dir") + 1]))
    mounts = Path("/proc/self/mountinfo").read_text()
    for env in restored:
        assert not (bundles / env).exists() and str(bundles / env) not in mounts
    assert not restored  # a store failure stops before any container
    # runc's own error messages (which name host paths) stay out of the function's log
    for host_path in ("/var/lib/snapfaas", "/dev/shm/snapfaas", str(server.data_dir)):
        assert not [m for v, env, m in function_log(server, name) if host_path in m], host_path
    return stored.name


def remove_an_origin_chunk(server: ServerHandle, snapshot_id: str, cached: Path) -> None:
    """Lose one chunk at the origin (and its disk-cache copy) and drop the RAM copy."""
    damage_at_origin(server, sorted(manifest_chunks(server, snapshot_id))[0], "missing")
    shutil.rmtree(cached)


def truncate_cached(server: ServerHandle, snapshot_id: str, cached: Path) -> None:
    """Damage the plaintext RAM copy itself: cut its largest pages image to a third."""
    image = max(cached.glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with open(image, "r+b") as f:
        f.truncate(image.stat().st_size // 3)


@pytest.mark.parametrize(("name", "damage", "detail"), [
    ("corrupt-origin", damage_an_origin_chunk, "corrupt at origin"),
    ("missing-origin", remove_an_origin_chunk, "missing at origin"),
])
def test_a_bad_chunk_at_the_origin_fails_the_restore_and_the_snapshot_is_recreated(  # type: ignore[no-untyped-def]
        lam, server: ServerHandle, name: str, damage, detail: str) -> None:
    create_snap(lam, name)
    publish(lam, name)
    broken = corrupt_and_invoke(lam, server, name, damage)
    final = wait_state(lam, name, "1", ("Active", "Failed"), timeout=60)
    assert final["State"] == "Active", final.get("StateReason")
    assert final["SnapStart"]["OptimizationStatus"] == "On"
    stored, cached = (only(d) for d in snapshot_dirs(server, name, "1"))
    assert stored.name != broken and cached.name == stored.name  # a new snapshot replaced the broken one
    wait_for(lambda: not (store_root(server) / "manifests" / broken).exists(), 30, "the broken manifest to go")
    assert not (cache_root(server) / broken).exists()
    response, body = invoke_json(lam, name, {}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    notes = [m for v, env, m in function_log(server, name) if v == "1" and not env and "restore failed" in m]
    assert len(notes) == 1 and detail in notes[0] and "materialize from the store" in notes[0], notes
    # the new snapshot restores from the origin alone too: its chunks were stored afresh
    shutil.rmtree(cached)
    for chunk in manifest_chunks(server, stored.name):
        chunk_files(store_cache(server)).get(chunk, Path("/nonexistent")).unlink(missing_ok=True)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two at once: the warm environment is busy
        results = list(pool.map(lambda _: invoke_json(lam, name, {"sleep": 1}, Qualifier="1", LogType="Tail"), range(2)))
    assert all("FunctionError" not in response for response, _ in results)
    assert any("Restore Duration" in report(response["LogResult"]) for response, _ in results)


def test_a_damaged_ram_copy_is_dropped_and_read_again_from_the_store(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """A truncated image in the RAM copy is caught before the restore (its size differs from the
    verified manifest's): the copy is read again from the store and the restore succeeds. (Mapped
    copy-on-write, the missing pages would fault with SIGBUS in the restored process instead.)"""
    name = "corrupt-cache"
    create_snap(lam, name)
    publish(lam, name)
    stored, cached = (only(d) for d in snapshot_dirs(server, name, "1"))
    image = max(cached.glob("pages-*.img"), key=lambda p: p.stat().st_size)
    size = image.stat().st_size
    truncate_cached(server, stored.name, cached)
    assert image.stat().st_size < size
    started = time.monotonic()
    response, body = invoke_json(lam, name, {}, Qualifier="1", LogType="Tail")
    assert time.monotonic() - started < 10  # no restore timeout
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    assert body["greeting"] == "hello"
    config = lam.get_function_configuration(FunctionName=name, Qualifier="1")
    assert config["State"] == "Active"  # the snapshot itself is fine: not re-created
    stored_now, cached_now = (only(d) for d in snapshot_dirs(server, name, "1"))
    assert stored_now.name == cached_now.name == stored.name
    assert (cached_now / image.name).stat().st_size == size  # read again from the store, whole
    wait_for(lambda: "the manifest says" in server.log_path.read_text(), 10, "the server to log the damaged copy")


def test_a_corrupt_disk_cache_chunk_is_read_from_the_origin(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    name = "corrupt-disk"
    create_snap(lam, name)
    publish(lam, name)
    stored, cached = (only(d) for d in snapshot_dirs(server, name, "1"))
    # chunks no other snapshot has: a shared one may sit in the store's memory tier (a small
    # image file fits its 1K), and a restore served from memory never reads the disk copy
    others = set().union(*(manifest_chunks(server, m.name) for m in (store_root(server) / "manifests").iterdir()
                           if m.name != stored.name and ".tmp" not in m.name))
    chunks = manifest_chunks(server, stored.name) - others
    disk = chunk_files(store_cache(server))
    assert chunks and chunks <= set(disk), "test premise: the publish warmed the disk cache"
    for chunk in chunks:
        data = bytearray(disk[chunk].read_bytes())
        data[len(data) // 2] ^= 0xFF
        disk[chunk].write_bytes(bytes(data))
    shutil.rmtree(cached)  # the next restore reads the store: memory tier (cold: nothing restored yet), disk, origin
    response, body = invoke_json(lam, name, {}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    origin = chunk_files(store_root(server))
    disk = chunk_files(store_cache(server))
    for chunk in chunks:  # the bad copies were replaced by the origin's
        assert disk[chunk].read_bytes() == origin[chunk].read_bytes()
    assert [d.name for d in snapshot_dirs(server, name, "1")[0]] == [stored.name]  # not re-created


def test_snapshots_are_encrypted_at_rest(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """Neither the origin nor the disk cache holds a plaintext page of the images; a distinctive
    string in the function's init memory appears in the RAM copy only."""
    marker = "snapfaas-at-rest-" + "7" * 24
    create(lam, "at-rest", {"app.py": APP + f"\nMARKER = {marker!r} * 64\n"}, SnapStart=SNAPSTART)
    publish(lam, "at-rest")
    stored, cached = (only(d) for d in snapshot_dirs(server, "at-rest", "1"))
    needle = marker.encode()
    assert any(needle in p.read_bytes() for p in cached.glob("pages-*.img")), "test premise: the marker is in memory"
    names = manifest_chunks(server, stored.name)
    for root in (store_root(server), store_cache(server)):
        blobs = chunk_files(root)
        assert names <= set(blobs)
        for chunk in names:
            assert needle not in blobs[chunk].read_bytes()
    assert needle not in stored.read_bytes() and b"at-rest" not in stored.read_bytes()  # the manifest is encrypted too


def test_active_snapshot_survives_a_daemon_restart(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """Last in the module: it restarts the shared server."""
    create_snap(lam, "survivor")
    publish(lam, "survivor")
    stored, cached = (only(d) for d in snapshot_dirs(server, "survivor", "1"))
    shutil.rmtree(cached)  # after the restart the restore must materialize from the store with the stored secret
    create_snap(lam, "interrupted")
    assert lam.publish_version(FunctionName="interrupted")["State"] == "Pending"
    server.restart()  # most likely while "interrupted" is being snapshotted
    final = lam.get_function_configuration(FunctionName="survivor", Qualifier="1")
    assert final["State"] == "Active" and final["SnapStart"]["OptimizationStatus"] == "On"
    # three restores at once all miss the cache: one materialization, and none sees a half-written cache
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: invoke_json(lam, "survivor", {"sleep": 1}, Qualifier="1", LogType="Tail"), range(3)))
    for response, body in results:
        assert "FunctionError" not in response, body
        assert_restored(response["LogResult"])
        assert body["greeting"] == "hello"
    assert len({body["env_id"] for _, body in results} - {None}) == 3
    assert only(snapshot_dirs(server, "survivor", "1")[1]) == cached and (cached / ".complete").exists()
    assert stored.is_file()
    response, _ = invoke_json(lam, "survivor", {}, Qualifier="1", LogType="Tail")
    assert_warm(response["LogResult"])
    # the publish the restart interrupted is finished by the new daemon
    final = wait_state(lam, "interrupted", "1", ("Active", "Failed"))
    assert final["State"] == "Active", final.get("StateReason")
    response, body = invoke_json(lam, "interrupted", {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    assert len(snapshot_dirs(server, "interrupted", "1")[0]) == 1
