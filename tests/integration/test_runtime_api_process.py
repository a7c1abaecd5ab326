"""The custom-runtime supervisor (`runtime.custom`) as a plain subprocess, without runc.

The test plays the worker on the frame channel (the `Runtime` driver of test_runtime_process)
and the supervisor runs real bootstrap and extension processes written in Python with urllib,
which speak the Runtime and Extensions APIs over the supervisor's real HTTP server on the
host's loopback (the sandbox would give it a loopback of its own). The bootstrap and extension
paths are the test's own directories instead of /var/task and /opt/extensions.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_runtime_process import RUNTIME_SRC, Runtime, reap, spawn

DRIVER = """
import os, sys
from snapfaas_runtime.bootstrap import Channel, private_inbound
from snapfaas_runtime.custom import Supervisor
outbound = os.fdopen(1, "wb", buffering=0, closefd=False)
channel = Channel(private_inbound(), outbound, sys.stderr)
Supervisor(channel, os.environ, extensions_dir=sys.argv[1], bootstraps=(sys.argv[2],)).run()
"""

# A raw Runtime API client: every call's status and body are reported in the response it sends.
CLIENT = '''
import json, os, sys, urllib.request, urllib.error
API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"]

def call(method, path, body=None, headers=None):
    request = urllib.request.Request(API + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()

def log(*parts):
    print(*parts, file=sys.stderr, flush=True)
'''


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """supervise(bootstrap_source, extensions={name: source}, env=None) -> Runtime."""
    pkg_root = tmp_path / "runtime-path"
    pkg_root.mkdir()
    (pkg_root / "snapfaas_runtime").symlink_to(RUNTIME_SRC, target_is_directory=True)
    started: list[Runtime] = []

    def _start(bootstrap: str | None, extensions: dict[str, str] | None = None, env: dict[str, str] | None = None) -> Runtime:
        task = tmp_path / f"task{len(started)}"
        exts = tmp_path / f"extensions{len(started)}"
        task.mkdir()
        exts.mkdir()
        (task / "client.py").write_text(CLIENT)
        if bootstrap is not None:
            write_executable(task / "bootstrap", f"#!{sys.executable}\n" + textwrap.dedent(bootstrap))
        for name, source in (extensions or {}).items():
            write_executable(exts / name, f"#!{sys.executable}\n" + textwrap.dedent(source))
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": f"{pkg_root}:{task}",
            "_HANDLER": "function.handler",
            "AWS_LAMBDA_FUNCTION_NAME": "f",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            **(env or {}),
        }
        return spawn([sys.executable, "-c", DRIVER, str(exts), str(task / "bootstrap")], task, environ, started)

    yield _start
    reap(started)


def write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


ECHO = """
from client import call, log
import json
status, headers, body = call("GET", "/2018-06-01/runtime/invocation/next")
while True:
    request_id = headers["Lambda-Runtime-Aws-Request-Id"]
    event = json.loads(body)
    log("handling", request_id)
    if event.get("fail"):
        call("POST", f"/2018-06-01/runtime/invocation/{request_id}/error",
             json.dumps({"errorMessage": "boom", "errorType": "ValueError", "stackTrace": ["here"]}).encode(),
             {"Lambda-Runtime-Function-Error-Type": "Function.Custom"})
    else:
        wrong = call("POST", "/2018-06-01/runtime/invocation/not-the-id/response", b"{}")
        stray = call("GET", "/2018-06-01/runtime/nope")
        restore = call("GET", "/2018-06-01/runtime/restore/next")
        early = call("GET", "/2018-06-01/runtime/invocation/next")  # the invocation is unanswered
        reply = {"event": event, "headers": {k: v for k, v in headers.items() if k.startswith("Lambda-Runtime")},
                 "wrong_id": [wrong[0], json.loads(wrong[2])], "unknown_path": [stray[0], stray[2].decode()],
                 "restore_next": restore[0], "early_next": [early[0], json.loads(early[2])]}
        call("POST", f"/2018-06-01/runtime/invocation/{request_id}/response", json.dumps(reply).encode())
        again = call("POST", f"/2018-06-01/runtime/invocation/{request_id}/response", b"{}")
        log("second response", again[0], again[2].decode())
    status, headers, body = call("GET", "/2018-06-01/runtime/invocation/next")
"""


def test_raw_protocol_invocations_and_errors(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise(ECHO)
    header, _ = rt.expect("ready")
    assert header["extensions"] == 0
    rt.wait_mark("init")
    rt.invoke({"x": 1}, "req-1", trace_id="Root=1-abc", client_context='{"custom":{"a":"b"}}')
    header, payload = rt.expect("response")
    assert header["id"] == "req-1"
    reply = json.loads(payload)
    assert reply["event"] == {"x": 1}
    assert reply["headers"]["Lambda-Runtime-Aws-Request-Id"] == "req-1"
    assert reply["headers"]["Lambda-Runtime-Trace-Id"] == "Root=1-abc"
    assert reply["headers"]["Lambda-Runtime-Client-Context"] == '{"custom":{"a":"b"}}'
    assert reply["headers"]["Lambda-Runtime-Invoked-Function-Arn"].endswith(":function:f")
    assert int(reply["headers"]["Lambda-Runtime-Deadline-Ms"]) > time.time() * 1000
    assert "Lambda-Runtime-Cognito-Identity" not in reply["headers"]
    assert reply["wrong_id"] == [400, {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"}]
    assert reply["unknown_path"] == [404, "404 page not found\n"]
    assert reply["restore_next"] == 404  # an on-demand environment has no restore routes
    assert reply["early_next"][0] == 403 and reply["early_next"][1]["errorType"] == "InvalidStateTransition"
    log = rt.wait_mark("req-1")
    assert "handling req-1" in log
    rt.invoke({"fail": True}, "req-2")
    header, payload = rt.expect("error")
    assert header["id"] == "req-2" and header["error_type"] == "Function.Custom"
    assert json.loads(payload) == {"errorMessage": "boom", "errorType": "ValueError", "stackTrace": ["here"]}
    log = rt.wait_mark("req-2")
    assert 'second response 400 {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"}' in log


def test_response_over_the_limit_is_413_and_fails_the_invocation(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise("""
        from client import call, log
        while True:
            status, headers, body = call("GET", "/2018-06-01/runtime/invocation/next")
            request_id = headers["Lambda-Runtime-Aws-Request-Id"]
            status, _, body = call("POST", f"/2018-06-01/runtime/invocation/{request_id}/response", b"x" * 5000)
            log("answer", status, body.decode())
    """, env={"_SNAPFAAS_RESPONSE_LIMIT": "1000"})
    rt.expect("ready")
    rt.invoke({}, "big")
    header, payload = rt.expect("error")
    assert header["error_type"] == "Function.ResponseSizeTooLarge"
    assert json.loads(payload) == {
        "errorMessage": "Response payload size exceeded maximum allowed payload size (1000 bytes).",
        "errorType": "Function.ResponseSizeTooLarge"}
    rt.invoke({}, "next-one")  # the runtime goes on serving
    header, _ = rt.expect("error")
    assert header["id"] == "next-one"
    assert 'answer 413 {"errorMessage": "Exceeded maximum allowed payload size (1000 bytes).", ' \
           '"errorType": "RequestEntityTooLarge"}' in rt.log


def test_init_error_is_reported_and_the_exit_status_kept(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise("""
        import json, sys
        from client import call
        error = {"errorMessage": "Unable to import module 'app'", "errorType": "Runtime.ImportModuleError", "stackTrace": []}
        status, _, _ = call("POST", "/2018-06-01/runtime/init/error", json.dumps(error).encode(),
                            {"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"})
        second, _, body = call("POST", "/2018-06-01/runtime/init/error", b"{}")
        print("init error answers", status, second, body.decode(), file=sys.stderr, flush=True)
        sys.exit(3)
    """)
    header, payload = rt.expect("init_error")
    assert header["error_type"] == "Runtime.ImportModuleError"
    assert json.loads(payload)["errorMessage"] == "Unable to import module 'app'"
    rt.expect_eof()
    assert rt.wait_exit() == 3
    assert "init error answers 202 403" in rt.log
    assert "InvalidStateTransition" in rt.log


def test_missing_bootstrap_is_an_invalid_entrypoint(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise(None)
    header, payload = rt.expect("init_error")
    assert header["error_type"] == "Runtime.InvalidEntrypoint"
    assert json.loads(payload)["errorMessage"].startswith("Couldn't find valid bootstrap(s): [")
    assert rt.wait_exit() == 1


def test_restore_next_orders_the_snap_start_phases(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise("""
        from client import call, log
        log("restore next", call("GET", "/2018-06-01/runtime/restore/next")[0])
        log("restore next again", call("GET", "/2018-06-01/runtime/restore/next")[0])
        status, headers, body = call("GET", "/2018-06-01/runtime/invocation/next")
        late = call("POST", "/2018-06-01/runtime/restore/error", b"{}")
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        call("POST", f"/2018-06-01/runtime/invocation/{request_id}/response", str(late[0]).encode())
    """, env={"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"})
    rt.expect("restore_ready")  # init done: the checkpoint would be taken now
    assert "restore next" not in rt.wait_mark("init")
    rt.send("restore", b"{}")
    rt.expect("resumed")
    rt.expect("ready")
    log = rt.wait_mark("restore")
    assert "restore next 200" in log and "restore next again 403" in log
    rt.invoke({}, "after-restore")
    header, payload = rt.expect("response")
    assert payload == b"403"  # restore/error is only valid while restoring


def test_restore_error_fails_the_restore(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise("""
        import json, sys
        from client import call
        call("GET", "/2018-06-01/runtime/restore/next")
        call("POST", "/2018-06-01/runtime/restore/error", json.dumps({"errorMessage": "hook", "errorType": "X"}).encode(),
             {"Lambda-Runtime-Function-Error-Type": "Runtime.AfterRestoreError"})
        sys.exit(65)
    """, env={"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"})
    rt.expect("restore_ready")
    rt.send("restore", b"{}")
    rt.expect("resumed")
    header, payload = rt.expect("restore_error")
    assert header["error_type"] == "Runtime.AfterRestoreError"
    assert json.loads(payload)["errorMessage"] == "hook"
    assert rt.wait_exit() == 65


EXTENSION = """
import json, os, sys, urllib.request
API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2020-01-01/extension"
name = os.path.basename(sys.argv[0])
request = urllib.request.Request(API + "/register", data=json.dumps({"events": ["INVOKE", "SHUTDOWN"]}).encode(),
                                 headers={"Lambda-Extension-Name": name}, method="POST")
with urllib.request.urlopen(request) as response:
    identifier = response.headers["Lambda-Extension-Identifier"]
    print(name, "registered for", json.loads(response.read())["functionName"], file=sys.stderr, flush=True)
while True:
    request = urllib.request.Request(API + "/event/next", headers={"Lambda-Extension-Identifier": identifier})
    with urllib.request.urlopen(request) as response:
        event = json.loads(response.read())
    print(name, "got", event["eventType"], event.get("requestId", event.get("shutdownReason")), file=sys.stderr, flush=True)
    if event["eventType"] == "SHUTDOWN":
        sys.exit(0)
"""

SIMPLE = """
from client import call
while True:
    status, headers, body = call("GET", "/2018-06-01/runtime/invocation/next")
    call("POST", f"/2018-06-01/runtime/invocation/{headers['Lambda-Runtime-Aws-Request-Id']}/response", body)
"""


def test_extensions_register_see_invokes_and_shut_down(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise(SIMPLE, extensions={"b-ext": EXTENSION, "a-ext": EXTENSION})
    header, _ = rt.expect("ready")
    assert header["extensions"] == 2
    init_log = rt.wait_mark("init")
    assert "a-ext registered for f" in init_log and "b-ext registered for f" in init_log
    assert "EXTENSION\tName: a-ext\tState: Ready\tEvents: [INVOKE,SHUTDOWN]\n" in init_log
    assert "EXTENSION\tName: b-ext\tState: Ready\tEvents: [INVOKE,SHUTDOWN]\n" in init_log
    for request_id in ("one", "two"):
        rt.invoke({"n": request_id}, request_id)
        header, payload = rt.expect("response")
        assert json.loads(payload) == {"n": request_id}
        log = rt.wait_mark(request_id)  # the invocation ended only after both extensions were done with it
        assert f"a-ext got INVOKE {request_id}" in log and f"b-ext got INVOKE {request_id}" in log
    rt.send("shutdown", deadline_ms=int(time.time() * 1000) + 5000)
    rt.expect_eof()
    assert rt.wait_exit() == 0
    assert "a-ext got SHUTDOWN spindown" in rt.log and "b-ext got SHUTDOWN spindown" in rt.log


def test_extension_api_errors(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise("""
        import json
        from client import call, log
        log("no name", *call("POST", "/2020-01-01/extension/register", b"{}")[::2])
        log("bad body", *call("POST", "/2020-01-01/extension/register", b"[", {"Lambda-Extension-Name": "x"})[::2])
        log("no id", *call("GET", "/2020-01-01/extension/event/next")[::2])
        log("bad id", *call("GET", "/2020-01-01/extension/event/next", None, {"Lambda-Extension-Identifier": "zz"})[::2])
        log("internal shutdown", *call("POST", "/2020-01-01/extension/register", b'{"events": ["SHUTDOWN"]}',
                                       {"Lambda-Extension-Name": "inside"})[::2])
        status, headers, body = call("GET", "/2018-06-01/runtime/invocation/next")
        late = call("POST", "/2020-01-01/extension/register", b'{"events": []}', {"Lambda-Extension-Name": "late"})
        call("POST", f"/2018-06-01/runtime/invocation/{headers['Lambda-Runtime-Aws-Request-Id']}/response",
             json.dumps([late[0], json.loads(late[2])]).encode())
    """)
    rt.expect("ready")
    log = rt.wait_mark("init")
    assert "no name 403" in log and "Empty extension name" in log and "Extension.InvalidExtensionName" in log
    assert "bad body 403" in log and "InvalidRequestFormat" in log
    assert "no id 403" in log and "Extension.MissingExtensionIdentifier" in log
    assert "bad id 403" in log and "Extension.InvalidExtensionIdentifier" in log
    assert "internal shutdown 403" in log and "Extension.InvalidEventType" in log
    rt.invoke({}, "r")
    _, payload = rt.expect("response")
    assert json.loads(payload) == [403, {"errorMessage": "Extension registration closed already",
                                         "errorType": "Extension.RegistrationClosed"}]


def test_extension_that_crashes_fails_init(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise(SIMPLE, extensions={"broken": "import sys\nsys.exit(2)\n"})
    header, payload = rt.expect("init_error")
    assert header["error_type"] == "Extension.Crash"
    assert "broken" in json.loads(payload)["errorMessage"]
    assert rt.wait_exit() == 1


def test_extension_init_error_fails_init(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise(SIMPLE, extensions={"picky": """
        import json, os, urllib.request
        API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2020-01-01/extension"
        req = urllib.request.Request(API + "/register", data=b'{"events": ["INVOKE"]}', method="POST",
                                     headers={"Lambda-Extension-Name": "picky"})
        identifier = urllib.request.urlopen(req).headers["Lambda-Extension-Identifier"]
        req = urllib.request.Request(API + "/init/error", data=b'{"errorMessage": "no config", "errorType": "Extension.Config"}',
                                     method="POST", headers={"Lambda-Extension-Identifier": identifier,
                                                             "Lambda-Extension-Function-Error-Type": "Extension.Config"})
        urllib.request.urlopen(req)
        import time
        while True:
            time.sleep(60)
    """})
    header, payload = rt.expect("init_error")
    assert header["error_type"] == "Extension.Config"
    assert json.loads(payload) == {"errorMessage": "no config", "errorType": "Extension.Config"}


PYTHON_DRIVER = """
import os, sys
from snapfaas_runtime import bootstrap, extension_host
outbound = os.fdopen(1, "wb", buffering=0, closefd=False)
channel = bootstrap.Channel(bootstrap.private_inbound(), outbound, sys.stderr)
sys.stdout = sys.stderr
extended = extension_host.ExtensionChannel(channel, os.environ)
if not extended.start(sys.argv[1]):
    os._exit(1)
try:
    handler = bootstrap.load_handler(os.environ["_HANDLER"])
except bootstrap.Fault as fault:
    bootstrap.fail(extended, "init_error", "init", fault.to_error(""), 1)
extended.mark_logs("init")
bootstrap.serve(extended, handler, os.environ)
"""


@pytest.fixture
def python_with_extensions(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """python_with_extensions(app_source, extensions, handler="app.handler") -> Runtime: Python's
    runtime (`bootstrap`) over an `ExtensionChannel`, extensions from a directory of the test's."""
    pkg_root = tmp_path / "runtime-path"
    pkg_root.mkdir()
    (pkg_root / "snapfaas_runtime").symlink_to(RUNTIME_SRC, target_is_directory=True)
    started: list[Runtime] = []

    def _start(app: str, extensions: dict[str, str], handler: str = "app.handler") -> Runtime:
        task = tmp_path / f"task{len(started)}"
        exts = tmp_path / f"extensions{len(started)}"
        task.mkdir()
        exts.mkdir()
        (task / "app.py").write_text(textwrap.dedent(app))
        for name, source in extensions.items():
            write_executable(exts / name, f"#!{sys.executable}\n" + textwrap.dedent(source))
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{pkg_root}:{task}",
                   "_HANDLER": handler, "AWS_LAMBDA_FUNCTION_NAME": "py", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                   "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"}
        return spawn([sys.executable, "-c", PYTHON_DRIVER, str(exts)], task, environ, started)

    yield _start
    reap(started)


def test_python_runtime_with_extensions(python_with_extensions) -> None:  # type: ignore[no-untyped-def]
    rt = python_with_extensions("""
        import os
        def handler(event, context):
            if event.get("fail"):
                raise RuntimeError("handler failed")
            return {"api": os.environ["AWS_LAMBDA_RUNTIME_API"], "id": context.aws_request_id}
    """, {"watcher": EXTENSION})
    header, _ = rt.expect("ready")
    assert header["extensions"] == 1
    assert "EXTENSION\tName: watcher\tState: Ready\tEvents: [INVOKE,SHUTDOWN]\n" in rt.wait_mark("init")
    rt.invoke({}, "p1")
    header, payload = rt.expect("response")
    body = json.loads(payload)
    assert body["id"] == "p1" and body["api"].startswith("127.0.0.1:")
    assert "watcher got INVOKE p1" in rt.wait_mark("p1")
    rt.invoke({"fail": True}, "p2")
    header, payload = rt.expect("error")
    assert header["error_type"] == "RuntimeError" and json.loads(payload)["errorMessage"] == "handler failed"
    assert "watcher got INVOKE p2" in rt.wait_mark("p2")
    rt.send("shutdown", deadline_ms=int(time.time() * 1000) + 5000)
    rt.expect_eof()
    assert rt.wait_exit() == 0
    assert "watcher got SHUTDOWN spindown" in rt.log


def test_python_runtime_init_error_with_extensions(python_with_extensions) -> None:  # type: ignore[no-untyped-def]
    rt = python_with_extensions("import not_there\n", {"watcher": EXTENSION})
    header, payload = rt.expect("init_error")
    assert header["error_type"] == "Runtime.ImportModuleError"
    assert json.loads(payload)["errorMessage"].startswith("Unable to import module 'app'")


def test_malformed_requests_get_lambda_errors(supervise) -> None:  # type: ignore[no-untyped-def]
    rt = supervise("""
        import http.client, json, os
        from client import call, log
        host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
        for length in ("-5", "abc"):
            connection = http.client.HTTPConnection(host, int(port))
            connection.putrequest("POST", "/2018-06-01/runtime/init/error")
            connection.putheader("Content-Length", length)
            connection.endheaders()
            response = connection.getresponse()
            log("length", length, response.status, response.read().decode())
        log("put", call("PUT", "/2018-06-01/runtime/invocation/next")[0])
        log("post next", call("POST", "/2018-06-01/runtime/invocation/next", b"")[0])
        status, headers, body = call("GET", "/2018-06-01/runtime/invocation/next")
        call("POST", f"/2018-06-01/runtime/invocation/{headers['Lambda-Runtime-Aws-Request-Id']}/response", b"1")
    """)
    rt.expect("ready")
    log = rt.wait_mark("init")
    assert 'length -5 400 {"errorMessage":"Invalid request body","errorType":"InvalidRequestFormat"}' in log
    assert 'length abc 400 {"errorMessage":"Invalid request body","errorType":"InvalidRequestFormat"}' in log
    assert "put 404" in log and "post next 405" in log
    rt.invoke({}, "after")
    assert rt.expect("response")[1] == b"1"
