"""The in-sandbox runtime (`python -m snapfaas_runtime`) as a plain subprocess, without runc.

The runtime package is made importable as ``snapfaas_runtime`` through a symlink in a temporary
directory, with ``provided/`` (``snapshot_restore_py``) on PYTHONPATH as in the sandbox; the
task directory is the working directory. The test drives it over stdin/stdout with the real
framing and reads its log stream (stderr) separately.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapfaas.runtime import protocol

ROOT = Path(__file__).resolve().parents[2]
NATIVE_INIT = ROOT / "src" / "snapfaas" / "runtime" / "snapfaas-init"
RUNTIME_SRC = ROOT / "src" / "snapfaas" / "runtime"
TIMEOUT = 10.0
ARN = "arn:aws:lambda:us-east-1:000000000000:function:f"


class Runtime:
    """One runtime process and reader threads for its frame channel and its log stream."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.hooks_frames = 0
        self.proc = proc
        self.frames: queue.Queue[tuple[dict[str, Any], bytes] | None] = queue.Queue()
        self.noise: list[bytes] = []  # stdout lines that are not frames
        self._log: list[str] = []
        self._log_cond = threading.Condition()
        self._log_done = False
        self._threads = [
            threading.Thread(target=self._read_frames, daemon=True),
            threading.Thread(target=self._read_log, daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- readers -----------------------------------------------------------------------------
    def _read_frames(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        try:
            while True:
                line = stream.readline()
                if not line:
                    break
                header = protocol.parse_header(line)
                if header is None:
                    self.noise.append(line)
                    continue
                payload = stream.read(header["n"]) if header["n"] else b""
                self.frames.put((header, payload))
        finally:
            self.frames.put(None)

    def _read_log(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for raw in iter(stream.readline, b""):
            with self._log_cond:
                self._log.append(raw.decode(errors="replace"))
                self._log_cond.notify_all()
        with self._log_cond:
            self._log_done = True
            self._log_cond.notify_all()

    # -- driving -----------------------------------------------------------------------------
    def send(self, kind: str, payload: bytes = b"", **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode(kind, payload, **fields))
        self.proc.stdin.flush()

    def invoke(self, event: Any = None, request_id: str = "req-1", *, raw: bytes | None = None,
               deadline_s: float = 30, client_context: str | None = None, trace_id: str | None = None,
               arn: str = ARN) -> None:
        payload = raw if raw is not None else json.dumps(event).encode()
        self.send("invoke", payload, id=request_id, arn=arn, deadline_ms=int((time.time() + deadline_s) * 1000),
                  client_context=client_context, trace_id=trace_id)

    def frame(self, timeout: float = TIMEOUT) -> tuple[dict[str, Any], bytes]:
        try:
            item = self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame within {timeout}s; log so far:\n{self.log}") from None
        if item is None:
            self.frames.put(None)  # keep EOF sticky
            raise AssertionError(f"runtime closed stdout (exit {self.proc.poll()}); log:\n{self.log}")
        return item

    def expect(self, kind: str) -> tuple[dict[str, Any], bytes]:
        """The next frame, which must be `kind`; a SnapStart init's ``hooks`` progress frame is
        counted in `hooks_frames` and passed over unless it is the one expected."""
        header, payload = self.frame()
        if header["t"] == "hooks" and kind != "hooks":
            self.hooks_frames += 1
            header, payload = self.frame()
        assert header["t"] == kind, (header, payload, self.log)
        return header, payload

    def expect_eof(self) -> None:
        assert self.frames.get(timeout=TIMEOUT) is None

    @property
    def log(self) -> str:
        with self._log_cond:
            return "".join(self._log)

    def wait_mark(self, tag: str, timeout: float = TIMEOUT) -> str:
        """Wait for the log mark of phase `tag`; return the log text written before it (since
        the previous mark)."""
        mark = protocol.LOG_MARK + tag + "\n"
        deadline = time.monotonic() + timeout
        with self._log_cond:
            while mark not in self._log:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._log_done:
                    raise AssertionError(f"log mark {tag!r} not seen; log:\n{''.join(self._log)}")
                self._log_cond.wait(remaining)
            index = self._log.index(mark)
            start = max((i + 1 for i, line in enumerate(self._log[:index]) if line.startswith(protocol.LOG_MARK)),
                        default=0)
            return "".join(self._log[start:index])

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(timeout)
        return code

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()


def spawn(command: list[str], cwd: Path, environ: dict[str, str], started: list[Runtime]) -> Runtime:
    """Start a runtime process in its own session (so `reap` can kill all it spawned), recorded
    in `started`."""
    proc = subprocess.Popen(command, cwd=cwd, env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    runtime = Runtime(proc)
    started.append(runtime)
    return runtime


def reap(started: list[Runtime]) -> None:
    """Kill every runtime in `started` with its whole session (the supervisor, the runtime it
    forked and anything user code spawned) and close its pipes."""
    for runtime in started:
        proc = runtime.proc
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(TIMEOUT)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


@pytest.fixture
def start(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """start(files, handler="app.handler", init_type="on-demand", env=None, launcher=None, init="python") -> Runtime.

    `init`: ``python`` runs the Python init (``-m snapfaas_runtime``), ``native`` the native
    one (``snapfaas-init``, built by ``make``) exec'ing the runtime's entry (``-m snapfaas_runtime.start``)."""
    pkg_root = tmp_path / "runtime-path"
    pkg_root.mkdir()
    (pkg_root / "snapfaas_runtime").symlink_to(RUNTIME_SRC, target_is_directory=True)
    started: list[Runtime] = []
    counter = iter(range(1000))

    def _start(files: dict[str, str], handler: str = "app.handler", init_type: str = "on-demand",
               env: dict[str, str] | None = None, launcher: list[str] | None = None, init: str = "python") -> Runtime:
        task = tmp_path / f"task{next(counter)}"
        task.mkdir()
        for name, text in files.items():
            path = task / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": f"{pkg_root}:{RUNTIME_SRC / 'provided'}",
            "_HANDLER": handler,
            "LAMBDA_TASK_ROOT": str(task),
            "AWS_LAMBDA_FUNCTION_NAME": "f",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/f",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]abc",
            "AWS_LAMBDA_INITIALIZATION_TYPE": init_type,
            "AWS_REGION": "us-east-1",
            **(env or {}),
        }
        if init == "native":
            if not NATIVE_INIT.is_file():  # a checkout where only the venv was made: what `make` builds
                subprocess.run(["make", "-s", "-C", str(ROOT), "native-init"], check=True, capture_output=True, timeout=60)
            runtime = [str(NATIVE_INIT), sys.executable, "-m", "snapfaas_runtime.start"]
        else:
            runtime = [sys.executable, "-m", "snapfaas_runtime"]
        return spawn([*(launcher or []), *runtime], task, environ, started)

    yield _start
    reap(started)


APP = """
import json, os, sys
print("init print from module")

def handler(event, context):
    print("in handler", json.dumps(event))
    cc = context.client_context
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "remaining_ok": 0 < context.get_remaining_time_in_millis() <= 30_000,
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "custom": cc.custom if cc else None,
        "stdout_is_stderr": sys.stdout is sys.stderr,
    }

def fail(event, context):
    print("about to fail")
    raise ValueError("bad input: " + str(event))

def unserializable(event, context):
    return {"x": object()}

def subprocess_output(event, context):
    os.system("echo from-a-subprocess")
    return "done"

def suicide(event, context):
    os.kill(os.getpid(), 9)
"""


# -- invocations -----------------------------------------------------------------------------
def test_ready_then_invoke(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": APP})
    rt.expect("ready")
    assert "init print from module" in rt.wait_mark("init")

    rt.invoke({"k": [1, 2]}, "req-1", client_context=json.dumps({"custom": {"a": "b"}}), trace_id="Root=1-abc")
    header, payload = rt.expect("response")
    assert header == {"t": "response", "n": len(payload), "id": "req-1"}
    assert json.loads(payload) == {
        "event": {"k": [1, 2]}, "request_id": "req-1", "arn": ARN, "remaining_ok": True,
        "function_name": "f", "memory": "128", "trace": "Root=1-abc", "custom": {"a": "b"},
        "stdout_is_stderr": True,
    }
    assert 'in handler {"k": [1, 2]}' in rt.wait_mark("req-1")

    # a second invocation on the same process; no trace id clears the previous one
    rt.invoke("just a string", "req-2", arn=ARN + ":prod")
    header, payload = rt.expect("response")
    body = json.loads(payload)
    assert header["id"] == "req-2"
    assert (body["event"], body["arn"], body["trace"], body["custom"]) == ("just a string", ARN + ":prod", None, None)
    assert 'in handler "just a string"' in rt.wait_mark("req-2")
    # print() never reaches the frame channel
    assert rt.noise == []

    rt.close_stdin()
    rt.expect_eof()
    assert rt.wait_exit() == 0


def test_null_and_empty_payload(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": "def handler(event, context):\n    return [event, None]\n"})
    rt.expect("ready")
    rt.invoke(None, "a")
    assert json.loads(rt.expect("response")[1]) == [None, None]
    rt.invoke(raw=b"", request_id="b")
    assert json.loads(rt.expect("response")[1]) == [None, None]


def test_handler_error(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": APP}, handler="app.fail")
    rt.expect("ready")
    rt.wait_mark("init")
    rt.invoke({"n": 1}, "req-err")
    header, payload = rt.expect("error")
    assert header["id"] == "req-err"
    assert header["error_type"] == "ValueError"
    error = json.loads(payload)
    assert error["errorMessage"] == "bad input: {'n': 1}"
    assert error["errorType"] == "ValueError"
    assert error["requestId"] == "req-err"
    assert isinstance(error["stackTrace"], list) and error["stackTrace"]
    assert all(isinstance(line, str) for line in error["stackTrace"])
    assert any("app.py" in line and "fail" in line for line in error["stackTrace"])
    log = rt.wait_mark("req-err")
    assert "about to fail" in log
    assert "[ERROR] ValueError: bad input: {'n': 1}" in log
    # the environment keeps serving after a function error
    rt.invoke({"n": 2}, "req-err-2")
    header, payload = rt.expect("error")
    assert header["id"] == "req-err-2"
    assert json.loads(payload)["requestId"] == "req-err-2"


def test_marshal_error(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": APP}, handler="app.unserializable")
    rt.expect("ready")
    rt.invoke({}, "m")
    header, payload = rt.expect("error")
    error = json.loads(payload)
    assert header["error_type"] == error["errorType"] == "Runtime.MarshalError"
    assert error["errorMessage"].startswith("Unable to marshal response:")
    assert error["requestId"] == "m"
    assert isinstance(error["stackTrace"], list)


def test_decimal_result_is_serialized(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": "import decimal\ndef handler(e, c):\n    return {'pi': decimal.Decimal('3.14159')}\n"})
    rt.expect("ready")
    rt.invoke({}, "d")
    header, payload = rt.frame()
    assert header["t"] == "response", payload
    assert json.loads(payload) == {"pi": 3.14159}


def test_invalid_json_event_is_an_invocation_error(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": APP})
    rt.expect("ready")
    rt.invoke(raw=b"{not json", request_id="bad")
    header, payload = rt.expect("error")
    assert header["id"] == "bad"
    assert json.loads(payload)["errorType"] == "JSONDecodeError"
    rt.invoke({"ok": True}, "good")
    assert rt.expect("response")[0]["id"] == "good"


def test_non_invoke_frames_and_noise_are_ignored(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": APP})
    rt.expect("ready")
    assert rt.proc.stdin is not None
    rt.proc.stdin.write(b"garbage line that is not a frame\n")
    rt.send("unknown-kind", b"xyz")
    rt.invoke({"a": 1}, "after-noise")
    header, payload = rt.expect("response")
    assert header["id"] == "after-noise"
    assert json.loads(payload)["event"] == {"a": 1}


def test_subprocess_output_on_fd1_is_not_a_frame(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": APP}, handler="app.subprocess_output")
    rt.expect("ready")
    rt.invoke({}, "s")
    header, payload = rt.expect("response")
    assert json.loads(payload) == "done"
    assert rt.noise == [b"from-a-subprocess\n"]


@pytest.mark.parametrize("init", ["python", "native"])
def test_runtime_killed_by_signal_reports_128_plus_signal(start, init: str) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": APP}, handler="app.suicide", init=init)
    rt.expect("ready")
    rt.invoke({}, "k")
    rt.expect_eof()
    assert rt.wait_exit() == 128 + signal.SIGKILL


# -- init errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("files", "handler", "error_type", "message"),
    [
        ({"app.py": APP}, "missing.handler", "Runtime.ImportModuleError",
         "Unable to import module 'missing': No module named 'missing'"),
        ({"app.py": "import not_installed_dep\n"}, "app.handler", "Runtime.ImportModuleError",
         "Unable to import module 'app': No module named 'not_installed_dep'"),
        ({"app.py": APP}, "app.nothere", "Runtime.HandlerNotFound", "Handler 'nothere' missing on module 'app'"),
        ({"app.py": "def handler(:\n"}, "app.handler", "Runtime.UserCodeSyntaxError", "Syntax error in module 'app'"),
        ({"app.py": APP}, "nodot", "Runtime.MalformedHandlerName", "Bad handler 'nodot'"),
        ({"app.py": APP}, "sys.handler", "Runtime.BuiltInModuleConflict", "Cannot use built-in module sys"),
        ({"app.py": "x = 1 / 0\n"}, "app.handler", "ZeroDivisionError", "division by zero"),
    ],
)
def test_init_error(start, files: dict[str, str], handler: str, error_type: str, message: str) -> None:  # type: ignore[no-untyped-def]
    rt = start(files, handler=handler)
    header, payload = rt.expect("init_error")
    error = json.loads(payload)
    assert header["error_type"] == error["errorType"] == error_type
    assert error["errorMessage"].startswith(message), error
    assert isinstance(error["stackTrace"], list)
    log = rt.wait_mark("init")
    assert f"[ERROR] {error_type}: {message}" in log
    rt.expect_eof()
    assert rt.wait_exit() == 1


def test_handler_in_subdirectory_and_package(start) -> None:  # type: ignore[no-untyped-def]
    files = {"src/mod.py": "def h(e, c):\n    return 'sub'\n", "pkg/__init__.py": "",
             "pkg/inner.py": "def h(e, c):\n    return 'pkg'\n", "src/__init__.py": ""}
    for handler, expected in (("src/mod.h", "sub"), ("pkg.inner.h", "pkg")):
        rt = start(files, handler=handler)
        rt.expect("ready")
        rt.invoke({}, "x")
        assert json.loads(rt.expect("response")[1]) == expected


# -- SnapStart -------------------------------------------------------------------------------
SNAP_APP = """
import os, random
import snapshot_restore_py
from snapshot_restore_py import register_after_restore, register_before_snapshot

random.seed(1234)
print("module init", os.environ.get("FOO"))

@register_before_snapshot
def before_first():
    print("before-snapshot first")

def before_second(tag, *, suffix=""):
    print("before-snapshot second", tag + suffix)

register_before_snapshot(before_second, "arg", suffix="!")

@register_after_restore
def after_first():
    print("after-restore first", os.environ.get("FOO"))

def after_second(a, b=None):
    print("after-restore second", a, b)

register_after_restore(after_second, "x", b="y")

def handler(event, context):
    return {
        "random": random.random(),
        "foo": os.environ.get("FOO"),
        "dropped": os.environ.get("DROP_ME"),
        "before_left": len(snapshot_restore_py.get_before_snapshot()),
        "after_left": len(snapshot_restore_py.get_after_restore()),
    }
"""


def seeded_first_random() -> float:
    import random

    return random.Random(1234).random()


def test_snapstart_hooks_and_restore(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": SNAP_APP}, init_type="snap-start", env={"DROP_ME": "present"})
    rt.expect("hooks")  # init code done: the publish's progress moves to the before-snapshot hooks
    rt.expect("restore_ready")
    init_log = rt.wait_mark("init")
    lines = [line for line in init_log.splitlines() if line]
    # module init first, then the before-snapshot hooks in reverse registration order
    assert lines == ["module init None", "before-snapshot second arg!", "before-snapshot first"]
    assert "after-restore" not in rt.log
    # blocked at the barrier: nothing more until the restore frame arrives
    with pytest.raises(queue.Empty):
        rt.frames.get(timeout=0.3)

    rt.send("restore", json.dumps({"FOO": "bar", "DROP_ME": None}).encode())
    rt.expect("resumed")
    restore_log = rt.wait_mark("restore")
    assert [line for line in restore_log.splitlines() if line] == [
        "after-restore first bar",
        "after-restore second x y",
    ]
    rt.expect("ready")
    rt.invoke({}, "r1")
    body = json.loads(rt.expect("response")[1])
    assert body["foo"] == "bar"
    assert body["dropped"] is None
    assert body["before_left"] == 0  # consumed when they ran
    assert body["after_left"] == 2
    # as on AWS, nothing reseeds the RNG after a restore unless the worker asks (--reseed-after-restore)
    assert body["random"] == seeded_first_random()


def test_on_demand_init_runs_no_hooks_and_keeps_seed(start) -> None:  # type: ignore[no-untyped-def]
    """Control for the SnapStart test: without snap-start nothing reseeds or runs hooks."""
    rt = start({"app.py": SNAP_APP}, init_type="on-demand", env={"FOO": "env", "DROP_ME": "present"})
    rt.expect("ready")
    assert [line for line in rt.wait_mark("init").splitlines() if line] == ["module init env"]
    rt.invoke({}, "r1")
    body = json.loads(rt.expect("response")[1])
    assert body["random"] == seeded_first_random()
    assert (body["foo"], body["dropped"], body["before_left"], body["after_left"]) == ("env", "present", 2, 2)
    assert "before-snapshot" not in rt.log and "after-restore" not in rt.log


@pytest.mark.parametrize("reseed", [True, False])
def test_snapstart_restores_diverge_only_when_reseeded(start, reseed: bool) -> None:  # type: ignore[no-untyped-def]
    values = []
    for _ in range(2):
        rt = start({"app.py": SNAP_APP}, init_type="snap-start")
        rt.expect("restore_ready")
        rt.send("restore", b"{}", reseed=reseed)
        rt.expect("resumed")
        rt.expect("ready")
        rt.invoke({}, "r")
        values.append(json.loads(rt.expect("response")[1])["random"])
    if reseed:  # the restore frame's `reseed` (--reseed-after-restore): fresh entropy in each
        assert values[0] != values[1]
        assert seeded_first_random() not in values
    else:  # AWS's behaviour: both draw what the init's seed gives
        assert values == [seeded_first_random()] * 2


INSPECTED_APP = """
import random, time, uuid
import helper

TOKEN = uuid.uuid4()
STARTED = time.time()
API_SECRET = "s3cr3t-value"
LIMIT = 10
DRAWN = random.random()

class Cache:
    def __init__(self):
        self.session_id = uuid.uuid4().hex

CACHE = Cache()

def handler(event, context):
    return "ok"
"""


def test_inspect_frame_answers_fingerprints_not_values(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": INSPECTED_APP, "helper.py": "NAME = 'helper'\n"})
    rt.expect("ready")
    rt.invoke({}, "r")
    rt.expect("response")
    rt.send("inspect")
    header, payload = rt.expect("inspection")
    found = json.loads(payload)
    kinds = {name: (entry["kind"], entry["category"]) for name, entry in found.items()}
    assert kinds["app.TOKEN"] == ("uuid", "value")
    assert kinds["app.STARTED"] == ("timestamp", "value")
    assert kinds["app.API_SECRET"] == ("credential", "value")
    assert kinds["app.LIMIT"] == ("value", "value")
    assert kinds["app.DRAWN"] == ("value", "value")
    assert kinds["app.CACHE.session_id"] == ("uuid", "value")
    assert kinds["helper.NAME"] == ("value", "value")  # every module of the package, not only the handler's
    assert kinds["random (global state)"] == ("random-state", "state")
    assert not any(name.startswith(("json.", "os.", "snapfaas")) for name in found)  # the function's modules only
    assert "s3cr3t-value" not in payload.decode()  # digests leave the environment, never values
    # the runtime keeps serving afterwards
    rt.invoke({}, "r2")
    assert json.loads(rt.expect("response")[1]) == "ok"


def test_snapstart_without_hooks_module(start) -> None:  # type: ignore[no-untyped-def]
    """A function that never imported snapshot_restore_py registered no hook: the runtime does
    not import it either (not before the snapshot, not in each restored copy)."""
    app = "import sys\ndef handler(e, c):\n    return ['plain', 'snapshot_restore_py' in sys.modules]\n"
    rt = start({"app.py": app}, init_type="snap-start")
    rt.expect("restore_ready")
    rt.send("restore", b"")
    rt.expect("resumed")
    rt.expect("ready")
    rt.invoke({}, "p")
    assert json.loads(rt.expect("response")[1]) == ["plain", False]


def test_snapstart_eof_at_barrier_exits_cleanly(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": SNAP_APP}, init_type="snap-start")
    rt.expect("restore_ready")
    rt.close_stdin()
    rt.expect_eof()
    assert rt.wait_exit() == 0


def test_before_snapshot_hook_failure(start) -> None:  # type: ignore[no-untyped-def]
    app = """
    from snapshot_restore_py import register_before_snapshot

    @register_before_snapshot
    def runs_second():
        print("never printed")

    @register_before_snapshot
    def runs_first():
        raise RuntimeError("cannot snapshot")

    def handler(e, c):
        return 1
    """
    rt = start({"app.py": app}, init_type="snap-start")
    header, payload = rt.expect("init_error")
    error = json.loads(payload)
    assert header["error_type"] == error["errorType"] == "Runtime.BeforeSnapshotError"
    assert error["errorMessage"] == "RuntimeError: cannot snapshot"
    assert isinstance(error["stackTrace"], list)
    assert any("runs_first" in line for line in error["stackTrace"])
    rt.wait_mark("init")
    rt.expect_eof()
    assert rt.wait_exit() == 64
    assert "never printed" not in rt.log


def test_after_restore_hook_failure(start) -> None:  # type: ignore[no-untyped-def]
    app = """
    from snapshot_restore_py import register_after_restore

    def first():
        print("first ran")

    def broken(x):
        raise KeyError(x)

    def never():
        print("never printed")

    register_after_restore(first)
    register_after_restore(broken, "missing-key")
    register_after_restore(never)

    def handler(e, c):
        return 1
    """
    rt = start({"app.py": app}, init_type="snap-start")
    rt.expect("restore_ready")
    rt.send("restore", b"{}")
    rt.expect("resumed")
    header, payload = rt.expect("restore_error")
    error = json.loads(payload)
    assert header["error_type"] == error["errorType"] == "Runtime.AfterRestoreError"
    assert error["errorMessage"] == "KeyError: 'missing-key'"
    assert isinstance(error["stackTrace"], list)
    assert "first ran" in rt.wait_mark("restore")
    rt.expect_eof()
    assert rt.wait_exit() == 65
    assert "never printed" not in rt.log


# -- SnapStart: a deterministic init (snapshot/determinism.py, runtime/preimport.py) ---------
DETERMINISTIC_APP = """
\"\"\"A handler module with leading imports.\"\"\"
from __future__ import annotations
import json
import os, subprocess
from helper import VALUE
import sys

ORDER = [name for name in ("json", "helper") if name in sys.modules]
CODE_LOADER = type(__loader__).__name__

def handler(event, context):
    child = subprocess.run(["cat", "/proc/self/personality"], capture_output=True, text=True).stdout.strip()
    return {"value": VALUE, "order": ORDER, "file": __file__, "loader": CODE_LOADER,
            "env": {k: os.environ.get(k) for k in ("PYTHONHASHSEED", "GLIBC_TUNABLES", "_SNAPFAAS_INIT_VARS",
                                                  "_SNAPFAAS_POINTER_GUARD", "_SNAPFAAS_STACK_CANARY", "KEEP")},
            "guard": at_random(8), "canary": at_random(0),
            "hash": hash("snapfaas"), "personality": open("/proc/self/personality").read().strip(),
            "child_personality": child}

def at_random(at):
    # glibc's stack canary (at 0) and pointer guard (at 8) come from AT_RANDOM (an auxv entry of type 25)
    import struct
    with open("/proc/self/auxv", "rb") as auxv:
        data = auxv.read()
    address = dict(struct.iter_unpack("<QQ", data[: len(data) // 16 * 16]))[25]
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(address + at)
        return mem.read(8)[::-1].hex()

def fail(event, context):
    raise ValueError("from the handler")
"""
HELPER = "import json\nVALUE = json.dumps([1, 2])\n"


@pytest.mark.parametrize("init", ["python", "native"])
def test_a_deterministic_snapstart_init_keeps_semantics_and_hands_back_aslr(start, init: str) -> None:  # type: ignore[no-untyped-def]
    """What the worker adds for a SnapStart init (the hash seed, glibc tunables, the pointer
    guard, a layout without ASLR) is gone before user code runs or restored copies start programs; the
    handler module, loaded from code compiled in a child after its leading imports ran, is
    the module an ordinary import gives."""
    setarch = [shutil.which("setarch") or "setarch", platform.machine(), "--addr-no-randomize"]
    env = {"PYTHONHASHSEED": "12345", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "KEEP": "user",
           "_SNAPFAAS_POINTER_GUARD": "0123456789abcdef", "_SNAPFAAS_STACK_CANARY": "0f1e2d3c4b5a6900",
           "_SNAPFAAS_INIT_VARS": "GLIBC_TUNABLES,PYTHONHASHSEED,_SNAPFAAS_POINTER_GUARD,_SNAPFAAS_STACK_CANARY"}

    def restored(handler: str = "app.handler"):  # type: ignore[no-untyped-def]
        """A deterministic SnapStart init of the app, through the restore barrier, ready."""
        rt = start({"app.py": DETERMINISTIC_APP, "helper.py": HELPER}, handler=handler, init_type="snap-start",
                   env=env, launcher=setarch, init=init)
        rt.expect("restore_ready")
        rt.send("restore", b"{}")
        rt.expect("resumed")
        rt.expect("ready")
        return rt

    rt = restored()
    rt.invoke({}, "r1")
    body = json.loads(rt.expect("response")[1])
    assert body["value"] == "[1, 2]" and body["order"] == ["json", "helper"]
    assert body["file"].endswith("/app.py") and body["loader"] == "CompiledLoader"
    assert body["env"] == {"PYTHONHASHSEED": None, "GLIBC_TUNABLES": None, "_SNAPFAAS_INIT_VARS": None,
                           "_SNAPFAAS_POINTER_GUARD": None, "_SNAPFAAS_STACK_CANARY": None, "KEEP": "user"}
    if platform.machine() == "x86_64":  # re-keyed by the Python init before it forked the runtime, or by the exec'd runtime
        assert body["guard"] == "0123456789abcdef" and body["canary"] == "0f1e2d3c4b5a6900"
    seeded = subprocess.run([sys.executable, "-c", "print(hash('snapfaas'))"], capture_output=True, text=True,
                            env={"PYTHONHASHSEED": "12345"}, check=True).stdout
    assert body["hash"] == int(seeded)  # the interpreter started with the seed
    assert int(body["personality"], 16) & 0x0040000 == 0 and int(body["child_personality"], 16) & 0x0040000 == 0

    rt2 = restored("app.fail")
    rt2.invoke({}, "r2")
    error = json.loads(rt2.expect("error")[1])
    # tracebacks name the file and show its source line, as for an ordinary import
    assert any('app.py' in line and 'raise ValueError("from the handler")' in line for line in error["stackTrace"]), error


@pytest.mark.parametrize(("files", "error_type", "message"), [
    ({"app.py": "import json\nimport not_installed_dep\n"}, "Runtime.ImportModuleError",
     "Unable to import module 'app': No module named 'not_installed_dep'"),
    ({"app.py": "import json\nimport broken\n", "broken.py": "x = 1 / 0\n"}, "ZeroDivisionError", "division by zero"),
    ({"app.py": "import json\ndef handler(:\n"}, "Runtime.UserCodeSyntaxError", "Syntax error in module 'app'"),
])
def test_a_snapstart_init_reports_import_errors_as_an_ordinary_import_does(start, files: dict[str, str], error_type: str,  # type: ignore[no-untyped-def]
                                                                           message: str) -> None:
    rt = start(files, init_type="snap-start")
    header, payload = rt.expect("init_error")
    error = json.loads(payload)
    assert header["error_type"] == error["errorType"] == error_type
    assert error["errorMessage"].startswith(message), error
    assert rt.wait_exit() == 1


def test_a_package_handler_module_is_imported_the_ordinary_way_in_a_snapstart_init(start) -> None:  # type: ignore[no-untyped-def]
    files = {"pkg/__init__.py": "import sys\nORDER = ['pkg']\n",
             "pkg/inner.py": "import json\nfrom pkg import ORDER\nORDER.append('inner')\nLOADER = type(__loader__).__name__\n"
                             "def h(e, c):\n    return [ORDER, LOADER]\n"}
    rt = start(files, handler="pkg.inner.h", init_type="snap-start")
    rt.expect("restore_ready")
    rt.send("restore", b"{}")
    rt.expect("resumed")
    rt.expect("ready")
    rt.invoke({}, "p")
    assert json.loads(rt.expect("response")[1]) == [["pkg", "inner"], "SourceFileLoader"]


# -- the phases debug switch -------------------------------------------------------------------
def _phase_names(line: str) -> list[str]:
    """The phase names of a ``SNAPFAAS_PHASES <kind>: <name> cpu ... | ...`` line."""
    return [part.strip().split(" cpu ")[0] for part in line.split(": ", 1)[1].split("|")]


def test_phases_switch_logs_a_restore_and_its_first_invoke_once(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": SNAP_APP}, init_type="snap-start", env={"SNAPFAAS_RUNTIME_PHASES": "1"})
    rt.expect("restore_ready")
    assert "SNAPFAAS_PHASES" not in rt.wait_mark("init")
    rt.send("restore", b"{}")
    rt.expect("resumed")
    rt.wait_mark("restore")
    rt.expect("ready")
    rt.invoke({}, "r1")
    rt.expect("response")
    lines = [line for line in rt.wait_mark("r1").splitlines() if line.startswith("SNAPFAAS_PHASES")]
    assert len(lines) == 1, rt.log
    assert lines[0].startswith("SNAPFAAS_PHASES restore: ")
    assert _phase_names(lines[0]) == ["restored", "credentials", "hooks", "log mark", "invoke read", "first invoke"]
    assert " faults " in lines[0] and " wall " in lines[0] and " anon " in lines[0]
    rt.invoke({}, "r2")
    rt.expect("response")
    assert "SNAPFAAS_PHASES" not in rt.wait_mark("r2")


def test_phases_switch_logs_an_on_demand_init_even_when_the_first_invoke_fails(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": APP}, handler="app.fail", env={"SNAPFAAS_RUNTIME_PHASES": "1"})
    rt.expect("ready")
    rt.invoke({}, "r1")
    rt.expect("error")
    lines = [line for line in rt.wait_mark("r1").splitlines() if line.startswith("SNAPFAAS_PHASES")]
    assert len(lines) == 1 and _phase_names(lines[0]) == ["init", "invoke read", "first invoke"], rt.log


def test_without_the_phases_switch_nothing_is_sampled(start) -> None:  # type: ignore[no-untyped-def]
    rt = start({"app.py": APP})
    rt.expect("ready")
    rt.invoke({}, "r1")
    rt.expect("response")
    assert "SNAPFAAS_PHASES" not in rt.wait_mark("r1")
