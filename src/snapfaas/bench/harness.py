"""Run a private `snapfaas serve` for a benchmark or the demo, and talk to it with boto3."""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from snapfaas.config import bundles_for, run_dir_for, snapshot_cache_for
from snapfaas.client import Connection
from snapfaas.sandbox.mounts import remove_tree
from snapfaas.worker.platform_log import fields_of

ROLE = "arn:aws:iam::000000000000:role/snapfaas"


def bench_runtime_args(runtime_python: object) -> list[str]:
    """Server flags for the reference functions' interpreter (`make-bench-runtime.sh`: a Python 3.11
    virtualenv with numpy, scipy and torch), run as runtime python3.11. AWS offers SnapStart from
    python3.12 on, so these servers widen the SnapStart runtime list to include it."""
    return ["--runtime", f"python3.11={runtime_python}", "--snapstart-runtimes", "python3.11,python3.12,python3.13"]


@dataclasses.dataclass(frozen=True)
class TimedInvoke:
    elapsed_ms: float  # end to end, as the client saw it
    report: str  # the REPORT line of the log tail ("" if none)
    log: str  # the whole log tail
    function_error: str | None  # X-Amz-Function-Error, if the function failed

    @property
    def fields(self) -> dict[str, str]:
        """The REPORT line's fields by exact name ("Restore Duration" -> "47.27 ms"), so that
        "Billed Restore Duration" never stands in for "Restore Duration"."""
        return fields_of(self.report.partition(" ")[2])

    def durations(self) -> dict[str, float]:
        """Init Duration, Restore Duration and Duration in ms, those the REPORT line has."""
        fields = self.fields
        return {name: float(fields[name].split()[0]) for name in ("Init Duration", "Restore Duration", "Duration")
                if name in fields}


def timed_invoke(client: Any, name: str, qualifier: str | None = None, payload: bytes = b"{}") -> TimedInvoke:
    """One synchronous invoke with `LogType: Tail`, timed around the whole boto3 call."""
    kwargs: dict[str, Any] = {"FunctionName": name, "Payload": payload, "LogType": "Tail"}
    if qualifier:
        kwargs["Qualifier"] = qualifier
    started = time.perf_counter()
    response = client.invoke(**kwargs)
    response["Payload"].read()
    elapsed = (time.perf_counter() - started) * 1000
    log = base64.b64decode(response.get("LogResult", "")).decode(errors="replace")
    report = next((line for line in log.splitlines() if line.startswith("REPORT")), "")
    return TimedInvoke(elapsed, report, log, response.get("FunctionError"))


def zip_files(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buf.getvalue()


class PrivateServer:
    """A daemon on a free port with throwaway data and sandbox dirs; a context manager."""

    def __init__(self, extra_args: list[str] | None = None, environ: dict[str, str] | None = None) -> None:
        """`environ`: variables added to the daemon's environment (e.g. PYTHONPATH pointing at
        another revision's source, for a same-run baseline)."""
        self.extra_args = extra_args or []
        self.environ = dict(environ or {})
        self.tmp = Path(tempfile.mkdtemp(prefix="snapfaas-run-"))
        self.sandbox = Path("/var/lib/snapfaas/run") / self.tmp.name
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.connection = Connection(f"http://127.0.0.1:{self.port}", "us-east-1",
                                     "SFIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    def __enter__(self) -> PrivateServer:
        self.start()
        return self

    def start(self) -> None:
        """Start the daemon (again, after `stop`: same data dir, sandbox dir, port and keys)."""
        env = dict(os.environ, SNAPFAAS_ACCESS_KEY_ID=self.connection.access_key_id,
                   SNAPFAAS_SECRET_ACCESS_KEY=self.connection.secret_access_key, **self.environ)
        argv = [sys.executable, "-m", "snapfaas", "serve", "--port", str(self.port), "--data-dir", str(self.tmp / "data"),
                "--sandbox-dir", str(self.sandbox), "--log-level", "WARNING", *self.extra_args]
        log = open(self.tmp / "server.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.tmp / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.connection.endpoint + "/snapfaas/v1/health", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start within 60 s") from None
                time.sleep(0.1)  # waiting for the port to open

    def stop(self) -> None:
        """Stop the daemon (SIGTERM: it destroys its environments and unmounts its snapshot view)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        remove_tree(self.sandbox)
        remove_tree(bundles_for(self.sandbox))
        shutil.rmtree(snapshot_cache_for(self.sandbox), ignore_errors=True)  # snapshot RAM cache
        remove_tree(run_dir_for(self.sandbox))  # the server's directory under /run/snapfaas
        shutil.rmtree(self.tmp, ignore_errors=True)

    def client(self) -> Any:
        return self.connection.lambda_client()

    def deploy(self, name: str, files: dict[str, str], **config: Any) -> None:
        client = self.client()
        client.create_function(FunctionName=name, Role=ROLE, Code={"ZipFile": zip_files(files)},
                               **{"Runtime": "python3.12", "Handler": "app.handler", **config})
        client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
