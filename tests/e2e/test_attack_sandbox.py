"""Attacker tests for the sandbox itself: seccomp, per-function host ids, the synthesized /etc.

A real function tries to open the kernel attack surface a container without capabilities can
still reach (new user and network namespaces, mount, keyrings, bpf, io_uring, userfaultfd,
perf events, clone with namespace flags), on demand and in an environment restored from a
SnapStart snapshot; every attempt must fail with EPERM (ENOSYS for clone3) while ordinary
process creation keeps working, and the platform must keep serving. From the host: two
functions run under different host uids, and a process holding one function's uid can read
neither another function's /proc/<pid>/environ, nor its code, nor its cached snapshot images,
nor signal its processes (each checked against a positive control, so the checks can fail). The
daemon refuses to start when its id range overlaps a subordinate id file (a test copy).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.sandbox.ids import DEFAULT_BASE, DEFAULT_SLICES, SLICE_SIZE
from tests.conftest import ProcessFactory, ServerHandle, create, free_port, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, publish, snapshot_dirs

ATTACKER = r'''
import ctypes, errno, grp, os, platform, pwd, socket, ssl, struct, subprocess, threading, time

NR = {
    "x86_64": {"clone": 56, "clone3": 435, "mount": 165, "keyctl": 250, "bpf": 321, "io_uring_setup": 425,
               "userfaultfd": 323, "perf_event_open": 298, "personality": 135},
    "aarch64": {"clone": 220, "clone3": 435, "mount": 40, "keyctl": 219, "bpf": 280, "io_uring_setup": 425,
                "userfaultfd": 282, "perf_event_open": 241, "personality": 92},
}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def outcome(result):
    if result < 0:
        code = ctypes.get_errno()
        return errno.errorcode.get(code, str(code))
    return "ok"


def raw(name, *args):
    ctypes.set_errno(0)
    return outcome(libc.syscall(ctypes.c_long(NR[name]), *args))


def python_call(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def clone_new_user():
    """clone(CLONE_NEWUSER|SIGCHLD) with fork semantics; a child that got through exits at once."""
    ctypes.set_errno(0)
    pid = libc.syscall(ctypes.c_long(NR["clone"]), ctypes.c_ulong(0x10000000 | 17), ctypes.c_void_p(0),
                       ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_void_p(0))
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
    return outcome(pid)


def perf_attr():
    # PERF_TYPE_SOFTWARE / PERF_COUNT_SW_CPU_CLOCK, disabled|exclude_kernel|exclude_hv: allowed
    # to unprivileged users at perf_event_paranoid <= 2 without seccomp
    return ctypes.create_string_buffer(struct.pack("<IIQQQQQ", 1, 128, 0, 0, 0, 0, 0x61).ljust(128, b"\0"), 128)


def attacks():
    return {
        "unshare_user": python_call(lambda: os.unshare(os.CLONE_NEWUSER)),
        "unshare_net": python_call(lambda: os.unshare(os.CLONE_NEWNET)),
        "clone_newuser": clone_new_user(),
        "clone3": raw("clone3", ctypes.c_void_p(0), ctypes.c_size_t(0)),
        "mount": raw("mount", ctypes.c_char_p(b"none"), ctypes.c_char_p(b"/tmp"), ctypes.c_char_p(b"tmpfs"),
                     ctypes.c_ulong(0), ctypes.c_void_p(0)),
        "keyctl": raw("keyctl", ctypes.c_long(0), ctypes.c_long(-3), ctypes.c_long(1)),  # GET_KEYRING_ID session
        "bpf": raw("bpf", ctypes.c_int(0), ctypes.c_void_p(0), ctypes.c_uint(0)),
        "io_uring_setup": raw("io_uring_setup", ctypes.c_uint(1), ctypes.create_string_buffer(120)),
        "userfaultfd": raw("userfaultfd", ctypes.c_int(1 | os.O_CLOEXEC)),  # UFFD_USER_MODE_ONLY
        "perf_event_open": raw("perf_event_open", perf_attr(), ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_int(-1),
                               ctypes.c_ulong(0)),
        "personality_no_randomize": raw("personality", ctypes.c_ulong(0x0040000)),
    }


def still_works():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    done = []
    thread = threading.Thread(target=done.append, args=(1,))
    thread.start()
    thread.join()
    return {
        "fork": os.waitstatus_to_exitcode(status) == 7,
        "thread": done == [1],
        "spawn": subprocess.run(["/bin/sh", "-c", "echo spawned"], capture_output=True, text=True).stdout.strip(),
        "personality_query": raw("personality", ctypes.c_ulong(0xFFFFFFFF)),
    }


def status(*names):
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in names:
            out[key] = value.strip()
    return out


def etc_view():
    context = ssl.create_default_context()
    return {
        "listing": sorted(os.listdir("/etc")),
        "shadow": os.path.exists("/etc/shadow"),
        "machine_id": os.path.exists("/etc/machine-id"),
        "users": sorted(p.pw_name for p in pwd.getpwall()),
        "groups": sorted(g.gr_name for g in grp.getgrall()),
        "me": pwd.getpwuid(os.getuid()).pw_name,
        "localhost": sorted({a[4][0] for a in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)}),
        "https_port": socket.getservbyname("https", "tcp"),
        "tz": time.strftime("%Z", time.localtime()),
        "ca_certs": context.cert_store_stats()["x509_ca"],
        "verify": context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname,
    }


def handler(event, context):
    if event.get("check") == "ping":
        return "pong"
    return {"attacks": attacks(), "works": still_works(), "status": status("Seccomp", "Seccomp_filters", "Uid"),
            "etc": etc_view() if event.get("etc") else None}
'''

PLAIN = "def handler(event, context):\n    return {'name': context.function_name}\n"

EXPECTED_ATTACKS = {
    "unshare_user": "EPERM", "unshare_net": "EPERM", "clone_newuser": "EPERM", "clone3": "ENOSYS", "mount": "EPERM",
    "keyctl": "EPERM", "bpf": "EPERM", "io_uring_setup": "EPERM", "userfaultfd": "EPERM", "perf_event_open": "EPERM",
    "personality_no_randomize": "EPERM",
}


@pytest.fixture(scope="module")
def subid_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Debian-like subordinate id files (a user from useradd) that do not meet the range."""
    base = tmp_path_factory.mktemp("subids")
    subuid, subgid = base / "subuid", base / "subgid"
    for path in (subuid, subgid):
        path.write_text("alice:100000:65536\nbob:165536:65536\n")
    return subuid, subgid


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory,
           subid_files: tuple[Path, Path]) -> Iterator[ServerHandle]:
    require_root()
    base = tmp_path_factory.mktemp("server")
    yield from run_server(processes, base, ["--keep-alive", "120", "--subuid-file", str(subid_files[0]),
                                            "--subgid-file", str(subid_files[1])])


def sandbox_dir(server: ServerHandle) -> Path:
    return Path(server.extra_args[server.extra_args.index("--sandbox-dir") + 1])


def containers(server: ServerHandle) -> list[dict]:
    """Every running container: its function, version, init pid and that pid's host uids."""
    out = []
    for cid in server.runc_containers():
        state = subprocess.run(["runc", "--root", str(server.data_dir / "runc"), "state", cid],
                               capture_output=True, text=True)
        if state.returncode != 0:
            continue
        info = json.loads(state.stdout)
        config = json.loads((Path(info["bundle"]) / "config.json").read_text())
        env = dict(item.split("=", 1) for item in config["process"]["env"])
        uids = next(line.split()[1:] for line in Path(f"/proc/{info['pid']}/status").read_text().splitlines()
                    if line.startswith("Uid:"))
        out.append({"id": cid, "pid": info["pid"], "function": env["AWS_LAMBDA_FUNCTION_NAME"],
                    "version": env["AWS_LAMBDA_FUNCTION_VERSION"], "uids": {int(u) for u in uids},
                    "config": config})
    for record in server.restored_records():  # restored without runc (--restore-engine criu)
        if record.get("pid") is None:
            continue
        config = json.loads((Path(record["bundle"]) / "config.json").read_text())
        env = dict(item.split("=", 1) for item in config["process"]["env"])
        uids = next(line.split()[1:] for line in Path(f"/proc/{record['pid']}/status").read_text().splitlines()
                    if line.startswith("Uid:"))
        out.append({"id": record["container_id"], "pid": record["pid"], "function": env["AWS_LAMBDA_FUNCTION_NAME"],
                    "version": env["AWS_LAMBDA_FUNCTION_VERSION"], "uids": {int(u) for u in uids}, "config": config})
    return out


def host_uid_of(server: ServerHandle, function: str, version: str = "$LATEST") -> int:
    found = [c for c in containers(server) if c["function"] == function and c["version"] == version]
    assert found, f"no running container of {function}:{version}"
    (uid,) = found[0]["uids"]
    return uid


def run_as(uid: int, gid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` on the host as `uid`/`gid` with no supplementary groups."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv],
                          capture_output=True, text=True)


def assert_attacks_fail(body: dict) -> None:
    assert body["attacks"] == EXPECTED_ATTACKS
    assert body["works"] == {"fork": True, "thread": True, "spawn": "spawned", "personality_query": "ok"}
    assert body["status"]["Seccomp"] == "2", body["status"]
    assert int(body["status"]["Seccomp_filters"]) >= 1


def assert_serving(lam) -> None:  # type: ignore[no-untyped-def]
    response, body = invoke_json(lam, "attacker", {"check": "ping"})
    assert "FunctionError" not in response and body == "pong"


@pytest.fixture(scope="module")
def attacker(lam) -> str:  # type: ignore[no-untyped-def]
    """The attacker function, with a published SnapStart version 1."""
    create(lam, "attacker", {"app.py": ATTACKER}, SnapStart=SNAPSTART, Timeout=30)
    publish(lam, "attacker")
    return "attacker"


def test_seccomp_blocks_the_attack_surface_on_demand(lam, attacker: str) -> None:  # type: ignore[no-untyped-def]
    response, body = invoke_json(lam, attacker, {"etc": True})
    assert "FunctionError" not in response, body
    assert_attacks_fail(body)
    assert_serving(lam)


def test_seccomp_survives_a_snapstart_restore(lam, attacker: str) -> None:  # type: ignore[no-untyped-def]
    response, body = invoke_json(lam, f"{attacker}:1", {}, LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])  # served by an environment CRIU restored, filter and all
    assert_attacks_fail(body)
    assert_serving(lam)
    response, body = invoke_json(lam, f"{attacker}:1", {"check": "ping"})
    assert body == "pong"


def test_config_carries_the_profile(server: ServerHandle, lam, attacker: str) -> None:  # type: ignore[no-untyped-def]
    invoke_json(lam, attacker, {"check": "ping"})
    (container,) = [c for c in containers(server) if c["function"] == attacker and c["version"] == "$LATEST"]
    seccomp = container["config"]["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ALLOW"
    assert any("unshare" in rule["names"] for rule in seccomp["syscalls"])


def test_etc_is_synthesized(server: ServerHandle, lam, attacker: str) -> None:  # type: ignore[no-untyped-def]
    _, body = invoke_json(lam, attacker, {"etc": True})
    view = body["etc"]
    assert not view["shadow"] and not view["machine_id"]
    assert "shadow" not in view["listing"] and "gshadow" not in view["listing"]
    assert view["users"] == ["nobody", "root", "sbx_user1051"]
    assert view["groups"] == ["nogroup", "root", "sbx_user1051"]
    assert view["me"] == "sbx_user1051"
    assert set(view["localhost"]) <= {"127.0.0.1", "::1"} and "127.0.0.1" in view["localhost"]
    assert view["https_port"] == 443
    assert view["tz"] == "UTC"
    assert view["ca_certs"] > 10, "ssl.create_default_context() loads the CA bundle"
    assert view["verify"]
    # the source is the server's own /etc, not the host's
    (container,) = [c for c in containers(server) if c["function"] == attacker and c["version"] == "$LATEST"]
    (etc_mount,) = [m for m in container["config"]["mounts"] if m["destination"] == "/etc"]
    assert etc_mount["source"] == str(sandbox_dir(server) / "etc")
    assert "ro" in etc_mount["options"]


def test_functions_run_under_distinct_host_ids(server: ServerHandle, lam, attacker: str) -> None:  # type: ignore[no-untyped-def]
    create(lam, "neighbour", {"app.py": PLAIN})
    invoke_json(lam, "neighbour")
    invoke_json(lam, attacker, {"check": "ping"})
    invoke_json(lam, f"{attacker}:1", {"check": "ping"})
    mine, theirs = host_uid_of(server, attacker), host_uid_of(server, "neighbour")
    assert mine != theirs
    for uid in (mine, theirs):
        assert DEFAULT_BASE <= uid < DEFAULT_BASE + DEFAULT_SLICES * SLICE_SIZE
        assert (uid - DEFAULT_BASE) % SLICE_SIZE == 1000  # container uid 1000 of a slice
    assert (mine - DEFAULT_BASE) // SLICE_SIZE != (theirs - DEFAULT_BASE) // SLICE_SIZE
    # a restored environment runs in the slice its snapshot was taken in: its function's
    assert host_uid_of(server, attacker, "1") == mine
    for container in containers(server):
        (mapping,) = container["config"]["linux"]["uidMappings"]
        assert container["config"]["linux"]["gidMappings"] == [mapping]
        assert container["uids"] == {mapping["hostID"] + 1000}
        tmp = Path(f"/proc/{container['pid']}/root/tmp").stat()  # the tmpfs's uid=/gid= follow the slice
        assert (tmp.st_uid, tmp.st_gid) == (mapping["hostID"] + 1000, mapping["hostID"] + 1000)


def test_one_functions_uid_cannot_reach_anothers_processes_code_or_images(server: ServerHandle, lam, attacker: str) -> None:  # type: ignore[no-untyped-def]
    """`attacker` is the victim here (it has a cached snapshot); `intruder` is the other function."""
    create(lam, "intruder", {"app.py": PLAIN})
    invoke_json(lam, "intruder")
    invoke_json(lam, attacker, {"check": "ping"})
    victim_uid, intruder_uid = host_uid_of(server, attacker), host_uid_of(server, "intruder")
    victim_base, intruder_base = victim_uid - 1000, intruder_uid - 1000
    (victim,) = [c for c in containers(server) if c["function"] == attacker and c["version"] == "$LATEST"]

    # Signals are checked by uid alone (no user-namespace rule): a shared host uid would let one
    # function kill another's processes. Signal 0 tests the permission without delivering.
    probe = f"kill -0 {victim['pid']}"
    assert run_as(victim_uid, victim_uid, "sh", "-c", probe).returncode == 0, "control: the owner's uid may signal it"
    for uid in (intruder_uid, intruder_base):
        denied = run_as(uid, uid, "sh", "-c", probe)
        assert denied.returncode != 0 and "not permitted" in denied.stderr, denied
    # /proc/<pid>/environ needs ptrace access, which the kernel also ties to the user namespace
    # (owned by host root, so no other host uid has it); only root reads it.
    environ = f"/proc/{victim['pid']}/environ"
    assert "AWS_LAMBDA_FUNCTION_NAME=attacker" in Path(environ).read_text(errors="replace"), "control: root reads it"
    for uid in (intruder_uid, intruder_base):
        denied = run_as(uid, uid, "cat", environ)
        assert denied.returncode != 0 and "AWS_LAMBDA" not in denied.stdout, denied

    (code_mount,) = [m for m in victim["config"]["mounts"] if m["destination"] == "/var/task"]
    app = Path(code_mount["source"]) / "app.py"
    assert run_as(victim_uid, victim_uid, "cat", str(app)).stdout.startswith("\nimport ctypes"), "control"
    for uid in (intruder_uid, intruder_base):
        denied = run_as(uid, uid, "cat", str(app))
        assert denied.returncode != 0 and "ctypes" not in denied.stdout, denied
        assert run_as(uid, uid, "ls", code_mount["source"]).returncode != 0

    _, cached = snapshot_dirs(server, attacker, "1")
    assert cached, "the published version's images are in the RAM cache"
    image = next(p for p in cached[0].iterdir() if p.name.endswith(".img"))
    readable = run_as(victim_base, victim_base, "head", "-c", "4", str(image))
    assert readable.returncode == 0, f"control: the victim's mapped root (CRIU) reads its images: {readable.stderr}"
    for uid in (intruder_uid, intruder_base, victim_uid):  # not even the victim's own function uid
        denied = run_as(uid, uid, "head", "-c", "4", str(image))
        assert denied.returncode != 0, (uid, denied)
    invoke_json(lam, "intruder")  # still serving


def test_daemon_refuses_to_start_when_the_range_overlaps_a_subuid_entry(tmp_path: Path) -> None:
    """(The module's server starts with Debian-like entries below the range: those are fine.)"""
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text(f"alice:100000:65536\nmallory:{DEFAULT_BASE + 7 * SLICE_SIZE}:65536\n")
    subgid.write_text("alice:100000:65536\n")
    data_dir = tmp_path / "data"
    run = subprocess.run(
        [sys.executable, "-m", "snapfaas", "serve", "--port", str(free_port()), "--data-dir", str(data_dir),
         "--sandbox-dir", str(tmp_path / "sandbox"), "--subuid-file", str(subuid), "--subgid-file", str(subgid)],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0
    message = run.stderr
    assert "refusing to start" in message and str(subuid) in message and "'mallory'" in message, message
    assert f"{DEFAULT_BASE + 7 * SLICE_SIZE}-{DEFAULT_BASE + 8 * SLICE_SIZE - 1}" in message, message
    assert not data_dir.exists() and not (tmp_path / "sandbox").exists(), "nothing is created before the check"
