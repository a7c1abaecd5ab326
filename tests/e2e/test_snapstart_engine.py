"""SnapStart restores with ``--restore-engine criu``: the daemon drives CRIU itself, no runc
process per restore. Restore and invoke, concurrent restores, teardown leaving no process,
cgroup or mount behind, a daemon killed with SIGKILL and restarted ending what it restored, and
the sandbox's isolation (user namespace, seccomp, cgroup limits, own network namespace) intact.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas import timeline
from snapfaas.bench import cpu
from snapfaas.sandbox.cgroup import CGROUP_ROOT, daemon_cgroup
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, assert_warm, publish, wait_for

APP = """
import os, socket, uuid
from snapshot_restore_py import register_after_restore

ENV = {"id": None}
with open("/tmp/init-marker", "w") as f:
    f.write("from init")


@register_after_restore
def fresh_id():
    ENV["id"] = uuid.uuid4().hex


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].split()
    return []


def handler(event, context):
    with open("/proc/self/uid_map") as f:
        uid_map = f.read().split()
    with open("/proc/self/cgroup") as f:
        cgroups = f.read()
    try:
        socket.create_connection(("127.0.0.1", 9000), timeout=1).close()
        host_loopback = "reached"
    except OSError as exc:
        host_loopback = type(exc).__name__
    return {
        "env_id": ENV["id"],
        "pid": os.getpid(),
        "uid": os.getuid(),
        "uid_map": uid_map,
        "seccomp": status("Seccomp"),
        "no_new_privs": status("NoNewPrivs"),
        "cap_eff": status("CapEff"),
        "marker": open("/tmp/init-marker").read(),
        "cgroups": cgroups,
        "interfaces": sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else None,
        "host_loopback": host_loopback,
    }
"""


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    base = tmp_path_factory.mktemp("engine")
    yield from run_server(processes, base, ["--keep-alive", "3", "--restore-engine", "criu", "--invoke-timeline"])


@pytest.fixture(scope="module")
def fn(lam) -> str:  # type: ignore[no-untyped-def]
    create(lam, "engine", {"app.py": APP}, SnapStart=SNAPSTART, Timeout=15, MemorySize=256)
    publish(lam, "engine")
    return "engine"


def daemon_tree(server: ServerHandle) -> Path:
    return CGROUP_ROOT / "pids" / daemon_cgroup(server.data_dir / "runc").lstrip("/")


def live_pids(server: ServerHandle) -> list[int]:
    """Processes in the daemon's environment cgroups."""
    root = daemon_tree(server)
    out: list[int] = []
    if root.is_dir():
        for dirpath, _, files in os.walk(root):
            if "cgroup.procs" in files:
                out += [int(p) for p in (Path(dirpath) / "cgroup.procs").read_text().split()]
    return out


def environment_cgroups(server: ServerHandle) -> list[str]:
    root = daemon_tree(server)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def records(server: ServerHandle) -> list[str]:
    return sorted(p.name for p in (server.data_dir / "restored").glob("*.json"))


def bundle_mounts(server: ServerHandle) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if "/bundles/" in line.split()[4] and server.data_dir.name in line]


def test_restore_and_invoke_without_runc(lam, fn: str, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    response, body = invoke_json(lam, fn, {}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    assert body["marker"] == "from init"  # /tmp came back from the snapshot
    assert body["env_id"]  # the after-restore hook ran
    runc_list = subprocess.run(["runc", "--root", str(server.data_dir / "runc"), "list", "-q"], capture_output=True, text=True)
    assert runc_list.stdout.split() == []  # runc does not know the restored container
    assert len(records(server)) == 1  # ... the daemon's record does
    again, second = invoke_json(lam, fn, {}, Qualifier="1", LogType="Tail")
    assert_warm(again["LogResult"])
    assert second["env_id"] == body["env_id"]


def test_invoke_timeline_names_each_restore_step(lam, fn: str, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """``--invoke-timeline``: one log line per invoke with its steps, the criu engine's among them."""
    wait_for(cpu.settled(server.proc.pid, server.data_dir / "runc"), 60, "idle environments to be reclaimed")
    response, _ = invoke_json(lam, fn, {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    request_id = response["ResponseMetadata"]["RequestId"]
    lines = [line for line in server.log_path.read_text().splitlines() if f"invoke timeline {request_id} " in line]
    assert len(lines) == 1, lines
    kind, steps = timeline.parse(lines[0])
    assert kind == "restore"
    names = [name for name, _ in steps]
    for step in ("parsed", "authenticated", "images leased", "criu spawned", "criu moved into the cgroup",
                 "criu answered", "resumed frame", "invoke sent", "response frame", "answered"):
        assert step in names, names
    assert names.index("criu spawned") < names.index("criu answered") < names.index("response frame")


def test_restored_environment_keeps_the_isolation(lam, fn: str) -> None:  # type: ignore[no-untyped-def]
    _, body = invoke_json(lam, fn, {}, Qualifier="1")
    assert body["uid"] == 1000
    assert body["uid_map"][0] == "0" and body["uid_map"][1] != "0"  # an id-mapped user namespace
    assert body["seccomp"] == ["2"]  # filter mode
    assert body["no_new_privs"] == ["1"]
    assert int(body["cap_eff"][0], 16) == 0
    assert body["pid"] == 1 or body["pid"] < 10  # its own pid namespace
    assert body["host_loopback"] != "reached"
    memory = [line for line in body["cgroups"].splitlines() if ":memory:" in line]
    assert memory  # in a memory cgroup (its path is hidden or relative inside the container)


def test_restored_cgroup_has_runcs_limits(lam, fn: str, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    invoke_json(lam, fn, {}, Qualifier="1")
    envs = environment_cgroups(server)
    assert envs
    # a restored container runs in its environment's cgroup itself (no runc-made "sandbox" leaf)
    memory = CGROUP_ROOT / "memory" / daemon_cgroup(server.data_dir / "runc").lstrip("/")
    limits = {int((memory / env / "memory.limit_in_bytes").read_text()) for env in envs}
    assert limits == {256 * 1024 * 1024}
    devices = CGROUP_ROOT / "devices" / daemon_cgroup(server.data_dir / "runc").lstrip("/")
    for env in envs:
        listed = (devices / env / "devices.list").read_text().split("\n")
        assert "a *:* rwm" not in listed  # not everything allowed


def test_cpu_per_restore_is_accounted(lam, fn: str, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """bench/cpu.py under the criu engine: CRIU runs in the environment's cgroup (so its CPU is
    read there); no runc call is accounted."""
    assert server.proc is not None
    pid, state_dir = server.proc.pid, server.data_dir / "runc"
    settled = cpu.settled(pid, state_dir)
    wait_for(settled, 60, "idle environments to be reclaimed")  # a new environment per restore

    def restore() -> None:
        response, _ = invoke_json(lam, fn, {}, Qualifier="1", LogType="Tail")
        assert_restored(response["LogResult"])

    result = cpu.measure(pid, state_dir, restore, settled, batches=1, per_batch=2, idle_window_s=0.5)
    parts = result["per_restore_ms"]
    assert all(value >= 0 for value in parts.values()), parts
    # the daemon's part is its CPU minus an idle rate sampled just before (clamped at 0): noise on a
    # busy host can eat a 2-restore batch's share. That the daemon's CPU is read at all is shown by
    # its raw counter (unadjusted, over the batch), which two restores always move.
    assert parts["CRIU"] > 0 and parts["runtime"] > 0, parts
    raw_daemon = [batch["counters"]["daemon_ms"] for batch in result["batches"]]
    assert raw_daemon and all(ms > 0 for ms in raw_daemon), result["batches"]
    assert result["runc_by_command_ms"] is None


def test_concurrent_restores(lam, fn: str, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: invoke_json(lam, fn, {}, Qualifier="1"), range(4)))
    ids = {body["env_id"] for _, body in results}
    assert all("FunctionError" not in response for response, _ in results), results
    assert len(ids) >= 2


def test_teardown_leaves_nothing(lam, fn: str, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    invoke_json(lam, fn, {}, Qualifier="1")
    lam.delete_function(FunctionName=fn, Qualifier="1")  # retires the version's environments
    wait_for(lambda: not live_pids(server) and not records(server), 30, "restored environments to end")
    wait_for(lambda: not environment_cgroups(server), 30, "environment cgroups to be removed")
    assert bundle_mounts(server) == []


def test_daemon_killed_then_restarted_ends_what_it_restored(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "engine2", {"app.py": APP}, SnapStart=SNAPSTART, Timeout=15)
    publish(lam, "engine2")
    _, body = invoke_json(lam, "engine2", {}, Qualifier="1")
    assert body["env_id"]
    assert records(server)
    pids = live_pids(server)
    assert pids
    server.restart(signal.SIGKILL)
    assert records(server) == []
    assert [p for p in pids if os.path.exists(f"/proc/{p}")] == []
    assert environment_cgroups(server) == []
    lam2 = server.client()
    response, again = invoke_json(lam2, "engine2", {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    assert json.dumps(again)
