"""OS-only runtimes (``provided.al2023`` / ``provided.al2``) through a real server and boto3.

The functions are zips with an executable ``bootstrap``: the real ``awslambdaric`` from PyPI
(vendored into the zip with ``pip install --target``, wheels for the sandbox's ``python3``,
cached per requirement list) started by a ``#!/bin/sh`` bootstrap, and a raw Runtime API client
written in Python with urllib. The in-sandbox supervisor serves the API at
``AWS_LAMBDA_RUNTIME_API`` on the environment's own loopback.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from snapfaas.sandbox.interpreter import InterpreterRegistry
from tests.conftest import ROLE
from tests.e2e.test_invoke import wait_for_log
from tests.vendor import vendored, zip_with

RIC = ["awslambdaric==4.2.2"]
SH_BOOTSTRAP = "#!/bin/sh\nexec python3 -m awslambdaric $_HANDLER\n"
APP = """
import os, sys

def handler(event, context):
    if event.get("fail"):
        raise ValueError("bad input: " + event["fail"])
    print("handled", context.aws_request_id)
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "invoked_arn": context.invoked_function_arn,
        "function_name": context.function_name,
        "remaining_positive": context.get_remaining_time_in_millis() > 0,
        "python": "%d.%d" % sys.version_info[:2],
        "environ": {k: os.environ.get(k) for k in ("AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "_HANDLER",
                                                   "AWS_EXECUTION_ENV", "PYTHONPATH", "_SNAPFAAS_RESPONSE_LIMIT")},
    }
"""
RAW_BOOTSTRAP = """#!/usr/bin/env python3
import json, os, urllib.error, urllib.request
API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"

def call(method, path, body=None, headers=None):
    request = urllib.request.Request(API + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()

while True:
    status, headers, body = call("GET", "/invocation/next")
    request_id = headers["Lambda-Runtime-Aws-Request-Id"]
    event = json.loads(body)
    if event.get("error"):
        error = {"errorMessage": "custom failure", "errorType": "CustomError", "stackTrace": ["bootstrap line 1"]}
        call("POST", f"/invocation/{request_id}/error", json.dumps(error).encode(),
             {"Lambda-Runtime-Function-Error-Type": "Function.CustomError"})
        continue
    wrong = call("POST", "/invocation/00000000-0000-0000-0000-000000000000/response", b"{}")
    restore = call("GET", "/restore/next")
    unknown = call("GET", "/invocation/nope")
    reply = {"request_id": request_id, "deadline_ms": headers["Lambda-Runtime-Deadline-Ms"],
             "arn": headers["Lambda-Runtime-Invoked-Function-Arn"], "api": os.environ["AWS_LAMBDA_RUNTIME_API"],
             "wrong_id": [wrong[0], json.loads(wrong[2])], "restore_next": restore[0], "unknown": unknown[0]}
    call("POST", f"/invocation/{request_id}/response", json.dumps(reply).encode())
"""


def sandbox_python_version() -> str:
    """The version of the ``python3`` a provided.* sandbox runs (what the wheels must fit)."""
    interpreter = InterpreterRegistry({}).resolve("provided.al2023")
    out = subprocess.run([interpreter.executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def ric(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """awslambdaric (and its dependencies) installed for the sandbox's python3 (cached)."""
    return vendored(request.config, tmp_path_factory, RIC, sandbox_python_version())


def package(files: dict[str, str], executables: tuple[str, ...] = ("bootstrap",), tree: Path | None = None) -> bytes:
    """A zip with `files` (those named in `executables` with mode 0755) and `tree`'s contents."""
    return zip_with(tree, files, executables)


def create_custom(lam, name: str, code: bytes, runtime: str = "provided.al2023", handler: str = "app.handler",  # type: ignore[no-untyped-def]
                  **kwargs: object) -> dict:
    response = lam.create_function(FunctionName=name, Runtime=runtime, Role=ROLE, Handler=handler,
                                   Code={"ZipFile": code}, **kwargs)
    lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    return response


def invoke(lam, name: str, payload: object, **kwargs: object) -> tuple[dict, object]:  # type: ignore[no-untyped-def]
    response = lam.invoke(FunctionName=name, Payload=json.dumps(payload).encode(), **kwargs)
    return response, json.loads(response["Payload"].read())


@pytest.fixture(scope="module")
def ric_function(lam, ric: Path) -> str:  # type: ignore[no-untyped-def]
    create_custom(lam, "ric", package({"bootstrap": SH_BOOTSTRAP, "app.py": APP}, tree=ric), Timeout=10)
    return "ric"


def test_awslambdaric_answers_invokes(lam, ric_function: str) -> None:  # type: ignore[no-untyped-def]
    response, body = invoke(lam, ric_function, {"hello": "world"}, LogType="Tail")
    assert "FunctionError" not in response, body
    assert body["event"] == {"hello": "world"}
    assert body["request_id"] == response["ResponseMetadata"]["RequestId"]
    assert body["invoked_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:ric"
    assert body["function_name"] == "ric" and body["remaining_positive"] is True
    assert body["python"] == sandbox_python_version()
    environ = body["environ"]
    assert environ["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9002"
    assert environ["LAMBDA_TASK_ROOT"] == "/var/task" and environ["_HANDLER"] == "app.handler"
    assert environ["AWS_EXECUTION_ENV"] is None  # not defined for OS-only runtimes
    assert environ["PYTHONPATH"] is None and environ["_SNAPFAAS_RESPONSE_LIMIT"] is None  # the supervisor's own
    tail = base64.b64decode(response["LogResult"]).decode()
    assert f"handled {body['request_id']}" in tail
    assert f"END RequestId: {body['request_id']}" in tail
    again, second = invoke(lam, ric_function, {"n": 2})  # the warm environment serves the next one
    assert second["event"] == {"n": 2} and second["request_id"] == again["ResponseMetadata"]["RequestId"]


def test_awslambdaric_reports_handler_errors(lam, ric_function: str) -> None:  # type: ignore[no-untyped-def]
    response, body = invoke(lam, ric_function, {"fail": "nope"})
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    assert body["errorMessage"] == "bad input: nope" and body["errorType"] == "ValueError"
    assert body["requestId"] == response["ResponseMetadata"]["RequestId"]
    assert any("raise ValueError" in line for line in body["stackTrace"]), body["stackTrace"]
    _, ok = invoke(lam, ric_function, {"after": "error"})  # the environment stays usable
    assert ok["event"] == {"after": "error"}


def test_awslambdaric_init_error(lam, ric: Path) -> None:  # type: ignore[no-untyped-def]
    create_custom(lam, "ric-broken", package({"bootstrap": SH_BOOTSTRAP, "app.py": APP}, tree=ric),
                  handler="missing.handler", runtime="provided.al2")
    response, body = invoke(lam, "ric-broken", {}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert body["errorMessage"] == "Unable to import module 'missing': No module named 'missing'"
    tail = base64.b64decode(response["LogResult"]).decode()
    assert "Status: error\tError Type: Runtime.ImportModuleError" in tail


def test_raw_bootstrap_protocol(lam) -> None:  # type: ignore[no-untyped-def]
    create_custom(lam, "raw", package({"bootstrap": RAW_BOOTSTRAP}), handler="anything")
    response, body = invoke(lam, "raw", {})
    assert "FunctionError" not in response, body
    assert body["request_id"] == response["ResponseMetadata"]["RequestId"]
    assert body["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:raw"
    assert body["wrong_id"] == [400, {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"}]
    assert body["restore_next"] == 404  # on-demand: no restore routes, as RAPID registers them
    assert body["unknown"] == 404
    response, body = invoke(lam, "raw", {"error": True})
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorMessage": "custom failure", "errorType": "CustomError", "stackTrace": ["bootstrap line 1"]}


def test_missing_bootstrap_is_an_invalid_entrypoint(lam) -> None:  # type: ignore[no-untyped-def]
    create_custom(lam, "no-bootstrap", package({"app.py": APP}))
    response, body = invoke(lam, "no-bootstrap", {})
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Runtime.InvalidEntrypoint",
                    "errorMessage": "Couldn't find valid bootstrap(s): [/var/task/bootstrap /opt/bootstrap]"}


def test_bootstrap_that_cannot_be_executed_is_an_invalid_entrypoint(lam) -> None:  # type: ignore[no-untyped-def]
    create_custom(lam, "not-executable", package({"bootstrap": "#!/bin/sh\nexit 0\n"}, executables=()))
    response, body = invoke(lam, "not-executable", {})
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Runtime.InvalidEntrypoint", "errorMessage": "fork/exec /var/task/bootstrap: permission denied"}


def test_bootstrap_that_exits_is_a_runtime_exit_error(lam) -> None:  # type: ignore[no-untyped-def]
    create_custom(lam, "exits", package({"bootstrap": "#!/bin/sh\necho leaving >&2\nexit 7\n"}))
    response, body = invoke(lam, "exits", {}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].endswith("Error: Runtime exited with error: exit status 7")
    assert "leaving" in base64.b64decode(response["LogResult"]).decode()


def test_snap_start_is_refused_for_os_only_runtimes(lam) -> None:  # type: ignore[no-untyped-def]
    code = package({"bootstrap": RAW_BOOTSTRAP})
    with pytest.raises(ClientError) as raised:
        lam.create_function(FunctionName="snap-provided", Runtime="provided.al2023", Role=ROLE, Handler="x",
                            Code={"ZipFile": code}, SnapStart={"ApplyOn": "PublishedVersions"})
    error = raised.value.response["Error"]
    assert error["Code"] == "InvalidParameterValueException"
    assert error["Message"] == "provided.al2023 is not supported for SnapStart enabled functions."
    create_custom(lam, "later-snap", code)
    with pytest.raises(ClientError) as raised:
        lam.update_function_configuration(FunctionName="later-snap", SnapStart={"ApplyOn": "PublishedVersions"})
    assert raised.value.response["Error"]["Message"] == "provided.al2023 is not supported for SnapStart enabled functions."
    assert lam.get_function_configuration(FunctionName="later-snap")["Runtime"] == "provided.al2023"


INTERNAL_EXTENSION_BOOTSTRAP = """#!/usr/bin/env python3
import json, os, signal, sys, threading, urllib.request
API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"]

def on_term(signum, frame):
    print("runtime got SIGTERM", file=sys.stderr, flush=True)
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)
request = urllib.request.Request(API + "/2020-01-01/extension/register", data=b'{"events": ["INVOKE"]}', method="POST",
                                 headers={"Lambda-Extension-Name": "in-process"})
identifier = urllib.request.urlopen(request).headers["Lambda-Extension-Identifier"]

def extension():
    while True:
        request = urllib.request.Request(API + "/2020-01-01/extension/event/next",
                                         headers={"Lambda-Extension-Identifier": identifier})
        with urllib.request.urlopen(request) as response:
            event = json.loads(response.read())
        print("extension saw", event["eventType"], event["requestId"], file=sys.stderr, flush=True)

threading.Thread(target=extension, daemon=True).start()
while True:
    with urllib.request.urlopen(API + "/2018-06-01/runtime/invocation/next") as response:
        request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
        event = response.read()
    urllib.request.urlopen(urllib.request.Request(
        API + f"/2018-06-01/runtime/invocation/{request_id}/response", data=event, method="POST"))
"""


def test_extension_gates_invocations_and_gets_a_shutdown_phase(lam, server) -> None:  # type: ignore[no-untyped-def]
    create_custom(lam, "internal-ext", package({"bootstrap": INTERNAL_EXTENSION_BOOTSTRAP}))
    response, body = invoke(lam, "internal-ext", {"ping": 1})
    assert body == {"ping": 1}
    request_id = response["ResponseMetadata"]["RequestId"]
    text = wait_for_log(server, "internal-ext", [f"END RequestId: {request_id}"], deadline_s=30)
    assert "EXTENSION\tName: in-process\tState: Ready\tEvents: [INVOKE]" in text
    assert text.index(f"extension saw INVOKE {request_id}") < text.index(f"END RequestId: {request_id}")
    lam.update_function_configuration(FunctionName="internal-ext", Description="retire the environment")
    lam.get_waiter("function_updated_v2").wait(FunctionName="internal-ext", WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    wait_for_log(server, "internal-ext", ["runtime got SIGTERM"], deadline_s=30)  # the Shutdown phase's SIGTERM
