"""Isolation as seen from inside a function: identity, read-only code, private /proc and /tmp,
no view of other functions, memory limit, /tmp size, capabilities.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import ServerHandle, create, invoke_json, make_zip

NATIVE_INIT = Path(__file__).resolve().parents[2] / "src" / "snapfaas" / "runtime" / "snapfaas-init"

PROBE = r'''
import errno, glob, os, json

def attempt(action):
    """Run `action`; return ("ok", value) or ("error", "<ExceptionType> errno").""" 
    try:
        return ["ok", action()]
    except OSError as exc:
        return ["error", type(exc).__name__, errno.errorcode.get(exc.errno, str(exc.errno))]

def write(path):
    with open(path, "w") as f:
        f.write("x")
    return path

def status_fields(*names):
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in names:
            out[key] = value.strip()
    return out

def handler(event, context):
    tmp_file = "/tmp/probe.txt"
    with open(tmp_file, "w") as f:
        f.write("written")
    st = os.statvfs("/tmp")
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "pid": os.getpid(),
        "pids": pids,
        "pid1_cmdline": open("/proc/1/cmdline", "rb").read().replace(b"\0", b" ").decode(),
        "pid_cmdline": open("/proc/self/cmdline", "rb").read().replace(b"\0", b" ").decode(),
        "write_task": attempt(lambda: write("/var/task/new.txt")),
        "write_task_existing": attempt(lambda: write("/var/task/app.py")),
        "write_root": attempt(lambda: write("/evil.txt")),
        "write_etc": attempt(lambda: write("/etc/evil.txt")),
        "write_runtime": attempt(lambda: write("/var/runtime/evil.txt")),
        "tmp_read_back": open(tmp_file).read(),
        "tmp_total": st.f_blocks * st.f_frsize,
        "status": status_fields("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"),
        "root_entries": sorted(os.listdir("/")),
    }
'''

SECRET_HOLDER = '''
SECRET_IN_CODE = "{code_secret}"

def handler(event, context):
    with open("/tmp/secret.txt", "w") as f:
        f.write("{tmp_secret}")
    return "stored"
'''

SNOOPER = r'''
import glob, os

OWN_MARKER = "snooper-own-marker"
SKIP = ("/proc", "/sys", "/usr", "/dev")

def read(path):
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return b""

def candidate_files(extra):
    """Every regular file we can reach outside the big shared host trees, plus `extra` guesses."""
    found = list(extra)
    for top in ("/tmp", "/var", "/dev/shm", "/run", "/home", "/root", "/mnt", "/srv", "/opt"):
        for dirpath, dirnames, filenames in os.walk(top):
            found.extend(os.path.join(dirpath, n) for n in filenames)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            found += [f"/proc/{pid}/environ", f"/proc/{pid}/cmdline"]
            found += glob.glob(f"/proc/{pid}/root/tmp/*") + glob.glob(f"/proc/{pid}/cwd/*")
    return found

def handler(event, context):
    secrets = [s.encode() for s in event["secrets"]]
    host_code = event["host_code"]
    guesses = [host_code + "/app.py", "/proc/1/root" + host_code + "/app.py", "/tmp/secret.txt",
               "/proc/1/root/tmp/secret.txt", event["host_zip"]]
    hits, readable = [], 0
    for path in candidate_files(guesses):
        data = read(path)
        readable += bool(data)
        if any(s in data for s in secrets):
            hits.append(path)
    return {
        "hits": hits,
        "host_code_listable": os.path.isdir(host_code),
        "own_code_found": OWN_MARKER.encode() in read("/var/task/app.py"),
        "readable": readable,
        "tmp": sorted(glob.glob("/tmp/*")),
    }
'''

HOG = """
def handler(event, context):
    if event.get("hog"):
        blocks = []
        for _ in range(event["hog"] // 16):
            blocks.append(b"\\x01" * (16 << 20))  # touched pages, not lazily zeroed ones
        return len(blocks)
    return "fine"
"""


@pytest.fixture(scope="module")
def probe(lam) -> dict:  # type: ignore[no-untyped-def]
    create(lam, "probe", {"app.py": PROBE})
    response, body = invoke_json(lam, "probe")
    assert "FunctionError" not in response, body
    return body


def sandbox_dir(server: ServerHandle) -> Path:
    return Path(server.extra_args[server.extra_args.index("--sandbox-dir") + 1])


def test_runs_as_unprivileged_uid_1000(probe: dict) -> None:
    assert (probe["uid"], probe["euid"], probe["gid"]) == (1000, 1000, 1000)


@pytest.mark.parametrize("attempt", ["write_task", "write_task_existing", "write_root", "write_etc", "write_runtime"])
def test_code_and_root_filesystem_are_read_only(probe: dict, attempt: str) -> None:
    outcome = probe[attempt]
    assert outcome[0] == "error", outcome
    assert outcome[2] in ("EROFS", "EACCES"), outcome


def test_sees_only_its_own_processes(probe: dict) -> None:
    """pid 1 is the runtime's init (so the handler can be killed, like on Lambda); the handler
    runs in its child. Nothing else exists in the namespace."""
    assert probe["pids"] == [1, probe["pid"]], probe["pids"]
    assert probe["pid"] != 1
    assert "-m snapfaas_runtime" in probe["pid1_cmdline"]
    if NATIVE_INIT.is_file():  # built by make: pid 1 is the native init, which exec'd the runtime
        assert probe["pid1_cmdline"].startswith("/var/runtime/snapfaas_runtime/snapfaas-init "), probe["pid1_cmdline"]
        assert "-m snapfaas_runtime.start" in probe["pid_cmdline"], probe["pid_cmdline"]


def test_no_capabilities_and_no_new_privileges(probe: dict) -> None:
    status = probe["status"]
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, (key, status[key])
    assert status["NoNewPrivs"] == "1"


def test_root_filesystem_is_the_minimal_skeleton(probe: dict) -> None:
    assert {"usr", "etc", "tmp", "var", "proc", "dev"} <= set(probe["root_entries"])
    skeleton = {"bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "sys", "tmp", "usr", "var"}
    interpreter_tops = {"root", "opt"}  # only the interpreter's install tree is mounted there
    assert set(probe["root_entries"]) <= skeleton | interpreter_tops, probe["root_entries"]


def test_tmp_is_writable_and_sized_by_ephemeral_storage(lam, probe: dict) -> None:
    assert probe["tmp_read_back"] == "written"
    assert probe["tmp_total"] == 512 * 1024 * 1024
    create(lam, "bigtmp", {"app.py": PROBE}, EphemeralStorage={"Size": 1024})
    _, body = invoke_json(lam, "bigtmp")
    assert body["tmp_total"] == 1024 * 1024 * 1024


def test_cannot_see_another_functions_code_or_tmp(server: ServerHandle, lam) -> None:
    code_secret, tmp_secret = f"code-{uuid.uuid4().hex}", f"tmp-{uuid.uuid4().hex}"
    holder_zip = make_zip({"app.py": SECRET_HOLDER.format(code_secret=code_secret, tmp_secret=tmp_secret)})
    create(lam, "holder", {}, Code={"ZipFile": holder_zip})
    assert invoke_json(lam, "holder")[1] == "stored"  # its environment stays warm with the /tmp secret

    digest = hashlib.sha256(holder_zip).hexdigest()
    trees = list((sandbox_dir(server) / "code").glob(f"*/{digest}"))  # code/<id slice>/<digest>
    assert len(trees) == 1, trees
    host_code = trees[0]
    assert code_secret in (host_code / "app.py").read_text(), "test premise: this is the holder's code tree"
    create(lam, "snooper", {"app.py": SNOOPER}, Timeout=30)  # it walks the whole filesystem: slow on a busy host
    event = {"secrets": [code_secret, tmp_secret], "host_code": str(host_code),
             "host_zip": str(server.data_dir / "code" / f"{digest}.zip")}
    response, body = invoke_json(lam, "snooper", event)
    assert "FunctionError" not in response, body
    assert body["own_code_found"], "the probe can read files it is allowed to read"
    assert body["readable"] > 0
    assert body["hits"] == []
    assert not body["host_code_listable"]
    assert body["tmp"] == []


def test_memory_limit_is_an_error_not_a_host_crash(server: ServerHandle, lam) -> None:
    create(lam, "hog", {"app.py": HOG}, MemorySize=128, Timeout=30)
    response, body = invoke_json(lam, "hog", {"hog": 400}, LogType="Tail")
    request_id = response["ResponseMetadata"]["RequestId"]
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] in ("Runtime.OutOfMemory", "Runtime.ExitError"), body
    assert body["errorMessage"].startswith(f"RequestId: {request_id} Error: Runtime exited with error: signal: killed")
    with urllib.request.urlopen(server.endpoint + "/snapfaas/v1/health", timeout=5) as health:
        assert health.status == 200
    response, body = invoke_json(lam, "hog", {})
    assert "FunctionError" not in response and body == "fine"


def test_out_of_memory_is_reported_as_such(lam) -> None:
    """Lambda's Python runtime reports an OOM kill as Runtime.OutOfMemory."""
    response, body = invoke_json(lam, "hog", {"hog": 400}, LogType="Tail")
    assert body["errorType"] == "Runtime.OutOfMemory", body
    report = base64.b64decode(response["LogResult"]).decode().splitlines()[-1]
    assert "Max Memory Used: 128 MB" in report
