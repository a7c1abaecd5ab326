"""Attacker suite, resources: nothing a function sends (frames, logs, files it maps, publishes)
makes the daemon allocate without bound or crash. Each test runs a real function trying one
attack through real boto3, asserts it fails, and that the daemon keeps serving afterwards.

One daemon for the module, with a small environment limit (the publish storm), a small log cap
(rotation) and a snapshot RAM cache budget smaller than any snapshot (every restore evicts the
other snapshots' cached images); the daemon's memory is read from /proc/<pid>/status.
"""

from __future__ import annotations

import base64
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.conftest import ACCESS_KEY, SECRET_KEY, ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import SNAPSTART, cache_root, function_log, publish, snapshot_dirs, wait_for, wait_state

LIMIT = 2
LOG_CAP = 2 * 1024 * 1024
RSS_BUDGET = 64 * 1024 * 1024
ECHO = "def handler(event, context):\n    return {'echo': event}\n"


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("attackres"),
                          ["--max-environments", str(LIMIT), "--keep-alive", "60", "--log-max-bytes", str(LOG_CAP),
                           "--snapshot-cache-bytes", "1"])


@pytest.fixture(scope="module")
def lam(server: ServerHandle):  # type: ignore[no-untyped-def]
    """A client that waits long enough for a 100 MB flood on a loaded machine."""
    return boto3.client("lambda", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        config=Config(retries={"total_max_attempts": 1}, read_timeout=900))


def rss(server: ServerHandle) -> int:
    """The daemon's resident set size in bytes."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def assert_still_serving(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    assert server.proc is not None and server.proc.poll() is None, "the daemon died"
    if "bystander" not in {f["FunctionName"] for f in lam.list_functions()["Functions"]}:
        create(lam, "bystander", {"app.py": ECHO})
    response, body = invoke_json(lam, "bystander", {"still": "serving"})
    assert "FunctionError" not in response and body == {"echo": {"still": "serving"}}


def tail(response: dict) -> str:
    return base64.b64decode(response["LogResult"]).decode(errors="replace")


# -- frames ----------------------------------------------------------------------------------
FORGED_FRAME = """
import gc, os, uuid
ENV_ID = uuid.uuid4().hex
MAGIC = b"\\x1esnapfaas "  # the runtime's frame marker

def channel_fd():
    # the runtime's frame channel: a private pipe fd of this process (an on-demand environment's
    # direct channel; fd 1 is the log there), or fd 1 (stdio channel); code in the process can find it
    for obj in gc.get_objects():
        if type(obj).__name__ == "Channel" and hasattr(obj, "outbound"):
            return obj.outbound.fileno()
    return 1

def handler(event, context):
    if event.get("n") is not None:
        fd = channel_fd()
        os.write(fd, MAGIC + ('{"t":"response","n":%s}' % event["n"]).encode() + b"\\n")
        os.write(fd, b"x" * 65536)  # some payload bytes follow, as if it were being sent
    return {"env_id": ENV_ID}
"""


def test_a_forged_huge_frame_header_is_a_lambda_error_and_ends_only_that_environment(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "forger", {"app.py": FORGED_FRAME}, Timeout=30)
    _, first = invoke_json(lam, "forger", {})
    before = rss(server)
    response, body = invoke_json(lam, "forger", {"n": 2**40}, LogType="Tail")
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    assert body == {"errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).",
                    "errorType": "Function.ResponseSizeTooLarge"}
    assert rss(server) - before < RSS_BUDGET
    # the environment that sent it is gone (never reused); the function itself still works
    response, again = invoke_json(lam, "forger", {}, LogType="Tail")
    assert "FunctionError" not in response and again["env_id"] != first["env_id"]
    assert "Init Duration" in tail(response)
    assert_still_serving(lam, server)


@pytest.mark.parametrize("size", ["-1", '"12"', "1.5", "true"])
def test_a_malformed_frame_size_ends_the_environment_with_an_exit_error(lam, server: ServerHandle, size: str) -> None:  # type: ignore[no-untyped-def]
    if "forger" not in {f["FunctionName"] for f in lam.list_functions()["Functions"]}:
        create(lam, "forger", {"app.py": FORGED_FRAME}, Timeout=30)
    _, first = invoke_json(lam, "forger", {})
    response, body = invoke_json(lam, "forger", {"n": size})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert "invalid payload size" in body["errorMessage"]
    assert body["errorMessage"].startswith(f"RequestId: {response['ResponseMetadata']['RequestId']} Error: Runtime sent ")
    _, again = invoke_json(lam, "forger", {})
    assert again["env_id"] != first["env_id"]
    assert server.proc is not None and server.proc.poll() is None


# -- stderr floods ---------------------------------------------------------------------------
FLOOD = """
import os

def handler(event, context):
    block = (b"y" * 99 + b"\\n") * 10486 if event["newlines"] else b"z" * (1 << 20)
    for _ in range(event["mb"]):
        os.write(2, block)
    return {"done": True}
"""


class RssSampler:
    """Samples the daemon's VmRSS in a thread until stopped; `peak` is the largest sample."""

    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self.peak = rss(server)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):  # a sampling period, not synchronization
            self.peak = max(self.peak, rss(self.server))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.mark.parametrize("newlines", [True, False], ids=["lines", "no-newline"])
def test_100_mb_of_stderr_completes_with_bounded_daemon_memory_and_capped_log_files(lam, server: ServerHandle, newlines: bool) -> None:  # type: ignore[no-untyped-def]
    name = "flood-lines" if newlines else "flood-raw"
    create(lam, name, {"app.py": FLOOD}, Timeout=900, MemorySize=256)
    invoke_json(lam, name, {"newlines": newlines, "mb": 1})  # warm: the environment exists before measuring
    before = rss(server)
    sampler = RssSampler(server)
    response, body = invoke_json(lam, name, {"newlines": newlines, "mb": 100}, LogType="Tail")
    peak = sampler.stop()
    after = rss(server)
    print(f"\n[{name}] daemon VmRSS before {before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB "
          f"(+{(peak - before) / 2**20:.1f}), after {after / 2**20:.1f} MiB (+{(after - before) / 2**20:.1f})")
    assert "FunctionError" not in response and body == {"done": True}
    assert peak - before < RSS_BUDGET and after - before < RSS_BUDGET
    # the tail is the last 4 KB, the REPORT line included
    text = tail(response)
    assert len(text.encode()) <= 4096 and "REPORT RequestId" in text
    # the log file is rotated at the cap; lines longer than 256 KiB were cut into pieces
    log_dir = server.data_dir / "logs"
    current, rotated = log_dir / f"{name}.log", log_dir / f"{name}.log.1"
    report = "REPORT RequestId: " + response["ResponseMetadata"]["RequestId"]

    def reported() -> bool:
        try:
            return report in current.read_text(errors="replace")
        except FileNotFoundError:  # for a moment right after a rotation renamed it away
            return False

    wait_for(reported, 60, "the invocation's REPORT line in the log")
    assert rotated.exists() and current.stat().st_size <= LOG_CAP and rotated.stat().st_size <= LOG_CAP
    messages = [line.split("\t", 2)[2] for line in rotated.read_text(errors="replace").splitlines()]
    assert max(len(m) for m in messages) <= 256 * 1024
    assert_still_serving(lam, server)


# -- SnapStart: the jemalloc scan, manifests, publish storms -----------------------------------
CHURN = """
import mmap, os, threading

SIZE = 64 << 20
FILES = []
for i in range(4):
    f = open(f"/tmp/churn{i}", "w+b")
    f.truncate(SIZE)  # sparse: costs no memory
    FILES.append((f, mmap.mmap(f.fileno(), SIZE, access=mmap.ACCESS_READ)))  # the platform's scan reads what we map

def churn():
    while True:  # shrink and regrow the mapped files while the daemon scans them
        for f, _ in FILES:
            os.ftruncate(f.fileno(), SIZE // 2)  # never empty: a scan always maps (and reads) past the cut
            os.ftruncate(f.fileno(), SIZE)

threading.Thread(target=churn, daemon=True).start()

def handler(event, context):
    return {"ok": True}
"""


def test_truncating_a_mapped_file_while_the_daemon_scans_it_does_not_crash_the_daemon(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "churner", {"app.py": CHURN}, SnapStart=SNAPSTART, MemorySize=512, Timeout=30)
    version = lam.publish_version(FunctionName="churner")["Version"]
    final = wait_state(lam, "churner", version, ("Active", "Failed"), timeout=180)
    assert server.proc is not None and server.proc.poll() is None, "the daemon died while scanning"
    wait_for(lambda: [m for v, _, m in function_log(server, "churner") if v == version and m.startswith("INIT_REPORT")
                      and "Status: success" in m], 30, "test premise: init finished, so the scan ran")
    assert final["State"] in ("Active", "Failed")  # CRIU may refuse a file that changes size; the daemon must not care
    assert_still_serving(lam, server)


def test_a_tampered_manifest_is_never_restored_and_the_snapshot_is_recreated(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """Another snapshot's manifest (self-consistent: its checksum holds) swapped in at the store
    origin fails authentication (the snapshot id is authenticated data): after a restart, when
    the server reads it, the version is re-created instead of restored."""
    create(lam, "tampered", {"app.py": ECHO}, SnapStart=SNAPSTART)
    create(lam, "donor", {"app.py": ECHO + "\n# another function\n"}, SnapStart=SNAPSTART)
    publish(lam, "tampered", timeout=180)  # no environment of it is left: the next invoke restores
    publish(lam, "donor", timeout=180)
    [stored], _ = snapshot_dirs(server, "tampered", "1")
    [donor], _ = snapshot_dirs(server, "donor", "1")
    stored.write_bytes(donor.read_bytes())
    server.restart()  # a running server verified the manifest when it read it and keeps that copy
    with pytest.raises(lam.exceptions.SnapStartNotReadyException):
        invoke_json(lam, "tampered", {"a": 2}, Qualifier="1")
    wait_for(lambda: [m for v, _, m in function_log(server, "tampered") if v == "1" and "authentication failed" in m],
             30, "the re-creation notice in the function's log")
    assert not [m for v, _, m in function_log(server, "tampered") if m.startswith("RESTORE_START")], "it was restored"
    wait_state(lam, "tampered", "1", ("Active",), timeout=180)
    [fresh], _ = snapshot_dirs(server, "tampered", "1")
    assert fresh != stored
    wait_for(lambda: not stored.exists(), 30, "the tampered manifest to be collected")
    response, body = invoke_json(lam, "tampered", {"a": 3}, Qualifier="1")
    assert "FunctionError" not in response and body == {"echo": {"a": 3}}
    assert_still_serving(lam, server)


def test_a_publish_storm_beyond_the_environment_limit_queues_and_never_exceeds_it(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    names = [f"storm{i}" for i in range(2 * LIMIT + 1)]
    for name in names:
        create(lam, name, {"app.py": ECHO}, SnapStart=SNAPSTART)
    counts: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):  # a sampling period, not synchronization
            counts.append(len(server.runc_containers()))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            versions = list(pool.map(lambda n: lam.publish_version(FunctionName=n)["Version"], names))
        finals = [wait_state(lam, name, version, ("Active", "Failed"), timeout=600) for name, version in zip(names, versions)]
    finally:
        stop.set()
        watcher.join()
    assert [f["State"] for f in finals] == ["Active"] * len(names), [f.get("StateReason") for f in finals]
    print(f"\n[storm] {len(names)} publishes, max-environments {LIMIT}: at most {max(counts)} containers "
          f"over {len(counts)} samples")
    assert max(counts) <= LIMIT and max(counts) > 0
    # a 1-byte cache budget: every restore materializes its snapshot from the store and evicts the others' images
    # (unlinked: the environments restored from them, which map their pages, keep working)
    for _ in range(2):
        for name, version in zip(names, versions):
            response, body = invoke_json(lam, name, {"n": name}, Qualifier=version)
            assert "FunctionError" not in response and body == {"echo": {"n": name}}
            # (lazy restores' local copies of the small images, ".lazy", go with the view's exposure, unbudgeted)
            cached = [p.name for p in cache_root(server).iterdir() if not p.name.startswith(".") and not (p / ".lazy").exists()]
            assert len(cached) <= 1, cached
    assert_still_serving(lam, server)
