"""SnapStart snapshot storage through real boto3: deleting versions and functions deletes their
snapshots (encrypted images and the plaintext RAM cache), corrupt images are detected at
restore and the snapshot is re-created, and Active snapshots survive a daemon restart.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from pathlib import Path

import pytest

from snapfaas.config import bundles_for
from tests.conftest import ServerHandle, create, invoke_json
from tests.e2e.snapstart_support import (
    SNAPSTART, assert_restored, assert_warm, cache_root, containers_of, function_log, publish, snapshot_dirs, wait_for, wait_state,
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


def create_snap(lam, name: str, greeting: str = "hello") -> None:  # type: ignore[no-untyped-def]
    create(lam, name, {"app.py": APP}, SnapStart=SNAPSTART, Environment={"Variables": {"GREETING": greeting}})


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def test_deleting_a_version_then_the_function_deletes_their_snapshots(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create_snap(lam, "doomed")
    publish(lam, "doomed")
    lam.update_function_configuration(FunctionName="doomed", Environment={"Variables": {"GREETING": "v2"}})
    lam.get_waiter("function_updated_v2").wait(FunctionName="doomed", WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    publish(lam, "doomed")
    for version in ("1", "2"):
        response, body = invoke_json(lam, "doomed", {}, Qualifier=version, LogType="Tail")
        assert_restored(response["LogResult"])
        assert body["version"] == version
    v1_stored, v1_cached = (only(d) for d in snapshot_dirs(server, "doomed", "1"))
    v2_stored, v2_cached = (only(d) for d in snapshot_dirs(server, "doomed", "2"))

    lam.delete_function(FunctionName="doomed", Qualifier="1")
    assert not v1_stored.exists() and not v1_cached.exists()
    assert v2_stored.is_dir() and v2_cached.is_dir()  # the other version keeps its snapshot
    response, body = invoke_json(lam, "doomed", {}, Qualifier="2", LogType="Tail")
    assert body["greeting"] == "v2"

    # version 3 is deleted while its snapshot is still being taken: the finished snapshot is dropped
    lam.update_function_configuration(FunctionName="doomed", Environment={"Variables": {"GREETING": "v3"}})
    lam.get_waiter("function_updated_v2").wait(FunctionName="doomed", WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    assert lam.publish_version(FunctionName="doomed")["State"] == "Pending"
    lam.delete_function(FunctionName="doomed", Qualifier="3")
    wait_for(lambda: [m for v, _, m in function_log(server, "doomed") if v == "3" and m.startswith("SNAPSHOT_REPORT")],
             20, "the snapshot of doomed:3 to finish")
    wait_for(lambda: snapshot_dirs(server, "doomed", "3") == ([], []), 10, "the orphaned snapshot of doomed:3 to be deleted")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function_configuration(FunctionName="doomed", Qualifier="3")

    lam.delete_function(FunctionName="doomed")
    assert not v2_stored.exists() and not v2_cached.exists()
    assert all(snapshot_dirs(server, "doomed", v) == ([], []) for v in ("1", "2", "3"))


def corrupt_and_invoke(lam, server: ServerHandle, name: str, damage) -> str:  # type: ignore[no-untyped-def]
    """Apply `damage(stored dir, cache dir)` to the snapshot of `name`:1, then invoke it: the
    invoke must answer SnapStartNotReadyException promptly and leave no container and no mount
    behind. Returns the broken snapshot id."""
    stored, cached = (only(d) for d in snapshot_dirs(server, name, "1"))
    damage(stored, cached)
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
    # a decryption failure stops before any container; a damaged cache fails in CRIU's restore
    assert len(restored) == (damage is truncate_cached)
    # runc's own error messages (which name host paths) stay out of the function's log
    for host_path in ("/var/lib/snapfaas", "/dev/shm/snapfaas", str(server.data_dir)):
        assert not [m for v, env, m in function_log(server, name) if host_path in m], host_path
    return stored.name


def largest(directory: Path, pattern: str) -> Path:
    return max(directory.glob(pattern), key=lambda p: p.stat().st_size)


def flip_stored_bytes(stored: Path, cached: Path) -> None:
    """Tamper with an encrypted image and drop the cache: the restore must decrypt, and fail."""
    image = largest(stored, "*.enc")
    with open(image, "r+b") as f:
        f.seek(image.stat().st_size // 2)
        chunk = f.read(16)
        f.seek(image.stat().st_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    shutil.rmtree(cached)


def truncate_stored(stored: Path, cached: Path) -> None:
    image = largest(stored, "*.enc")
    with open(image, "r+b") as f:
        f.truncate(image.stat().st_size // 3)
    shutil.rmtree(cached)


def truncate_cached(stored: Path, cached: Path) -> None:
    """Damage the plaintext cache itself: decryption is skipped, CRIU's restore fails."""
    image = largest(cached, "pages-*.img")
    with open(image, "r+b") as f:
        f.truncate(image.stat().st_size // 3)


@pytest.mark.parametrize(("name", "damage", "detail"), [
    ("corrupt-flipped", flip_stored_bytes, "failed to decrypt"),
    ("corrupt-truncated", truncate_stored, "failed to decrypt"),
    ("corrupt-cache", truncate_cached, "Restoring FAILED"),  # CRIU's own words
])
def test_corrupt_images_are_detected_and_the_snapshot_recreated(lam, server: ServerHandle, name: str, damage,  # type: ignore[no-untyped-def]
                                                                detail: str) -> None:
    create_snap(lam, name)
    publish(lam, name)
    broken = corrupt_and_invoke(lam, server, name, damage)
    final = wait_state(lam, name, "1", ("Active", "Failed"), timeout=30)
    assert final["State"] == "Active", final.get("StateReason")
    assert final["SnapStart"]["OptimizationStatus"] == "On"
    stored, cached = (only(d) for d in snapshot_dirs(server, name, "1"))
    assert stored.name != broken and cached.name == stored.name  # a new snapshot replaced the broken one
    assert not (server.data_dir / "snapshots" / broken).exists()
    assert not (cache_root(server) / broken).exists()
    response, body = invoke_json(lam, name, {}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    notes = [m for v, env, m in function_log(server, name) if v == "1" and not env and "restore failed" in m]
    assert len(notes) == 1 and detail in notes[0], notes


def test_active_snapshot_survives_a_daemon_restart(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """Last in the module: it restarts the shared server."""
    create_snap(lam, "survivor")
    publish(lam, "survivor")
    stored, cached = (only(d) for d in snapshot_dirs(server, "survivor", "1"))
    shutil.rmtree(cached)  # after the restart the restore must decrypt from disk with the stored key
    create_snap(lam, "interrupted")
    assert lam.publish_version(FunctionName="interrupted")["State"] == "Pending"
    server.restart()  # most likely while "interrupted" is being snapshotted
    final = lam.get_function_configuration(FunctionName="survivor", Qualifier="1")
    assert final["State"] == "Active" and final["SnapStart"]["OptimizationStatus"] == "On"
    # three restores at once all miss the cache: one decryption, and none sees a half-written cache
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: invoke_json(lam, "survivor", {"sleep": 1}, Qualifier="1", LogType="Tail"), range(3)))
    for response, body in results:
        assert "FunctionError" not in response, body
        assert_restored(response["LogResult"])
        assert body["greeting"] == "hello"
    assert len({body["env_id"] for _, body in results} - {None}) == 3
    assert only(snapshot_dirs(server, "survivor", "1")[1]) == cached and (cached / ".complete").exists()
    assert stored.is_dir()
    response, _ = invoke_json(lam, "survivor", {}, Qualifier="1", LogType="Tail")
    assert_warm(response["LogResult"])
    # the publish the restart interrupted is finished by the new daemon
    final = wait_state(lam, "interrupted", "1", ("Active", "Failed"))
    assert final["State"] == "Active", final.get("StateReason")
    response, body = invoke_json(lam, "interrupted", {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    assert len(snapshot_dirs(server, "interrupted", "1")[0]) == 1
