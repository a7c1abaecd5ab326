"""Shared fixtures. `processes` owns every process a test starts; `server` is a real snapfaas
daemon (real runc sandboxes) on a free port with its own data dir, shared by a test module.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from snapfaas.bench.harness import zip_files
from snapfaas.config import bundles_for, run_dir_for, snapshot_cache_for
from snapfaas.sandbox.mounts import remove_tree
from snapfaas.sandbox.restored import live_records
from tests.cluster import Cluster, run_cluster
from tests.netpeer import NetPeer
from tests.pgserver import PostgresCluster
from tests.reaper import REAPER

ROOT = Path(__file__).resolve().parent.parent
ACCESS_KEY = "SFIATESTKEY000000001"
SECRET_KEY = "test-secret-key-for-the-suite-0123456789"
ROLE = "arn:aws:iam::000000000000:role/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessFactory:
    """Starts processes and guarantees they are gone after the owning scope (kill + reap)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "ab")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return int(proc.returncode)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.stop(proc, signal.SIGKILL)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every sandbox tree retired during the session is deleted before it ends."""
    REAPER.close()


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessFactory]:
    factory = ProcessFactory()
    yield factory
    factory.close()


make_zip = zip_files  # one package builder for tests, bench and demo


@dataclasses.dataclass
class ServerHandle:
    factory: ProcessFactory
    data_dir: Path
    port: int
    extra_args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def tls_cert(self) -> str | None:
        """The certificate a ``--tls-cert`` server serves (clients trust it), else None."""
        args = self.extra_args
        return args[args.index("--tls-cert") + 1] if "--tls-cert" in args else None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.tls_cert) if self.tls_cert else None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "server.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SNAPFAAS_ACCESS_KEY_ID=ACCESS_KEY, SNAPFAAS_SECRET_ACCESS_KEY=SECRET_KEY)
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "snapfaas", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
                *self.extra_args]

    def start(self) -> None:
        self.proc = self.factory.start(self.command(), self.log_path, self.env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + "/snapfaas/v1/health", timeout=1, context=self.ssl_context()) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)  # polling a port that is not open yet
        raise RuntimeError("server did not come up in 60 s")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        return self.factory.stop(self.proc, sig)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def client(self, secret: str = SECRET_KEY, key: str = ACCESS_KEY, **config: object):  # type: ignore[no-untyped-def]
        return boto3.client(
            "lambda", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=key, aws_secret_access_key=secret, verify=self.tls_cert,
            config=Config(retries={"total_max_attempts": 1}, read_timeout=120, **config),  # type: ignore[arg-type]
        )

    def flush_logs(self, name: str) -> None:
        """Have the server write every log line of function `name` appended so far (its log
        writer batches lines for up to ~50 ms): a signed read of its log through the API does
        that. For tests that then read the log file directly. An unknown function is fine; a
        stopped server has nothing queued any more (written at a clean stop, lost at a SIGKILL)."""
        from snapfaas.client import Connection
        if self.proc is None or self.proc.poll() is not None:
            return
        connection = Connection(self.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)
        try:
            connection.signed_get(f"/snapfaas/v1/logs/{name}?limit=1")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise

    def restored_records(self) -> list[dict]:
        """The records of containers the server restored without runc (``--restore-engine criu``,
        `snapfaas.sandbox.restored`): container_id, cgroup, bundle, pid. A record removed while
        it is read is skipped."""
        out = []
        for path in live_records(self.data_dir):
            try:
                out.append(json.loads(path.read_text()))
            except (FileNotFoundError, ValueError):
                continue
        return out

    def runc_containers(self) -> list[str]:
        """Container ids in the server's runc state, then those of the containers it restored
        without runc (`restored_records`). `runc list` fails when a container's state
        disappears while it reads it (a deletion in progress): such a run is repeated."""
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run(["runc", "--root", str(self.data_dir / "runc"), "list", "--format", "json"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                restored = [r["container_id"] for r in self.restored_records()]
                return [c["id"] for c in json.loads(out.stdout or "null") or []] + restored
            if time.monotonic() > deadline:
                raise RuntimeError(f"runc list kept failing: {out.stderr.strip()}")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests run real runc sandboxes and need root (CI runs as root)")


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    base = tmp_path_factory.mktemp("server")
    yield from run_server(processes, base, ["--keep-alive", "60"])


# SnapStart tests run python3.11 functions (the interpreter every CI host has); AWS's list starts at python3.12
WIDE_SNAPSTART_RUNTIMES = ["--snapstart-runtimes", "python3.11,python3.12,python3.13"]


def run_server(processes: ProcessFactory, base: Path, args: list[str], aws_snapstart_runtimes: bool = False) -> Iterator[ServerHandle]:
    """Start a server with its own data and sandbox dirs; stop it and check nothing leaked.
    SnapStart is accepted for python3.11 too (`WIDE_SNAPSTART_RUNTIMES`) unless
    `aws_snapstart_runtimes` keeps the server's default, AWS's list."""
    sandbox = Path(f"/var/lib/snapfaas/test/{base.name}-{os.getpid()}")
    widened = [] if aws_snapstart_runtimes or "--snapstart-runtimes" in args else WIDE_SNAPSTART_RUNTIMES
    handle = ServerHandle(processes, base / "data", free_port(), [*args, *widened, "--sandbox-dir", str(sandbox)])
    handle.start()
    try:
        yield handle
        if handle.proc is not None and handle.proc.poll() is None:
            handle.stop()
            assert handle.runc_containers() == [], "containers survived server shutdown"
    finally:
        REAPER.retire(sandbox)  # deleted in the background
        remove_tree(bundles_for(sandbox))
        shutil.rmtree(snapshot_cache_for(sandbox), ignore_errors=True)  # snapshot RAM cache
        remove_tree(run_dir_for(sandbox))  # the server's directory under /run/snapfaas


def run_servers(processes: ProcessFactory, specs: dict[str, tuple[Path, list[str]]],
                aws_snapstart_runtimes: frozenset[str] = frozenset()) -> Iterator[dict[str, ServerHandle]]:
    """`run_server` for several servers (name -> (base, args)), started together and stopped
    together, one thread each (a daemon's start and stop are mostly waiting on its own
    processes). Yields the handles by name; each server's own checks run at its stop, the first
    failure is raised after every server was stopped. The servers named in
    `aws_snapstart_runtimes` keep the default SnapStart runtime list (`run_server`)."""
    runs = {name: run_server(processes, base, args, name in aws_snapstart_runtimes) for name, (base, args) in specs.items()}
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, len(runs))) as pool:
            started = {name: pool.submit(next, run) for name, run in runs.items()}
            handles = {name: future.result() for name, future in started.items()}
        yield handles
    finally:
        with concurrent.futures.ThreadPoolExecutor(max(1, len(runs))) as pool:
            stopped = [pool.submit(next, run, None) for run in runs.values()]
        for future in stopped:
            future.result()


def shared_store_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--store-origin`` and ``--store-secret-file`` for nodes of one cluster (a directory origin
    and a secret file, root-owned and private as `snapfaas serve` demands): every node sharing a
    registry must share the store (a node with another secret is refused)."""
    shared = tmp_path_factory.mktemp("shared-store")
    shared.chmod(0o700)
    (shared / "origin").mkdir(mode=0o700)
    secret = shared / "store.secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    return ["--store-origin", str(shared / "origin"), "--store-secret-file", str(secret)]


@pytest.fixture(scope="session")
def netpeer() -> Iterator[NetPeer]:
    """The suite's own network peer (a namespace routed from the host): where tests run the
    servers functions talk to, since functions cannot reach the host's loopback."""
    require_root()
    peer = NetPeer("p")
    yield peer
    peer.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """The suite's private PostgreSQL server (started on first use, gone at the session's end);
    a test module takes a database of its own with ``postgres.create_database(name)``."""
    require_root()
    cluster = PostgresCluster()
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def cluster3(processes: ProcessFactory, postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three `snapfaas serve` nodes, each in a network namespace of its own on a bridge the
    fixture creates, sharing a database of the suite's PostgreSQL, a directory store origin and
    its secret (`tests/cluster.py`). For a test module: its database is named after it."""
    require_root()
    yield from run_cluster(processes, postgres, tmp_path_factory.mktemp("cluster"), 3)


@pytest.fixture(scope="module")
def lam(server: ServerHandle):  # type: ignore[no-untyped-def]
    return server.client()


def create(lam, name: str, files: dict[str, str], handler: str = "app.handler", wait: bool = True,  # type: ignore[no-untyped-def]
           poll_s: float = 0.1, **kwargs: object) -> dict:
    """Create a function and (`wait`) poll until it is Active, every `poll_s` seconds for up to a minute.

    A server with `--replay-cache` refuses a byte-identical request within the same second, which
    is what a waiter's polls within one second are: such tests poll at more than 1 s."""
    params: dict[str, object] = dict(FunctionName=name, Runtime="python3.12", Role=ROLE, Handler=handler,
                                     Code={"ZipFile": make_zip(files)})
    params.update(kwargs)
    response = lam.create_function(**params)
    if wait:
        lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": poll_s, "MaxAttempts": max(1, round(60 / poll_s))})
    return response


def invoke_json(lam, name: str, payload: object = None, **kwargs: object) -> tuple[dict, object]:  # type: ignore[no-untyped-def]
    response = lam.invoke(FunctionName=name, Payload=json.dumps(payload if payload is not None else {}).encode(), **kwargs)
    body = response["Payload"].read()
    return response, json.loads(body) if body else None
