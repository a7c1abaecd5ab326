"""Lambda extensions from layers, through a real server and boto3: executables under
``extensions/`` in a layer run from ``/opt/extensions`` next to a custom runtime and next to
Python's runtime, register, see every invocation, and get a SHUTDOWN when the environment is
retired; a layer can also provide the ``bootstrap`` (``/opt/bootstrap``)."""

from __future__ import annotations


import pytest

from snapfaas.sandbox.interpreter import InterpreterRegistry
from tests.conftest import ROLE
from tests.e2e.test_custom_runtime import RAW_BOOTSTRAP, invoke, package
from tests.e2e.test_invoke import wait_for_log

EXTENSION = """#!/usr/bin/env python3
import json, os, sys, urllib.request
API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2020-01-01/extension"
name = os.path.basename(sys.argv[0])
request = urllib.request.Request(API + "/register", data=json.dumps({"events": ["INVOKE", "SHUTDOWN"]}).encode(),
                                 headers={"Lambda-Extension-Name": name}, method="POST")
with urllib.request.urlopen(request) as response:
    identifier = response.headers["Lambda-Extension-Identifier"]
while True:
    request = urllib.request.Request(API + "/event/next", headers={"Lambda-Extension-Identifier": identifier})
    with urllib.request.urlopen(request) as response:
        event = json.loads(response.read())
    print(f"[{name}] {event['eventType']} {event.get('requestId', event.get('shutdownReason'))}", file=sys.stderr, flush=True)
    if event["eventType"] == "SHUTDOWN":
        sys.exit(0)
"""
PYTHON_APP = """
import os

def handler(event, context):
    return {"api": os.environ.get("AWS_LAMBDA_RUNTIME_API"), "event": event}
"""


def python_runtime() -> str:
    """python3.12 where the host has it, else python3.11 (CI hosts may only have 3.11)."""
    found = InterpreterRegistry({}).available(("python3.12", "python3.11"))
    return next(r for r in ("python3.12", "python3.11") if not isinstance(found[r], str))


@pytest.fixture(scope="module")
def extension_layer(lam) -> str:  # type: ignore[no-untyped-def]
    published = lam.publish_layer_version(LayerName="watcher",
                                          Content={"ZipFile": package({"extensions/watcher": EXTENSION},
                                                                      executables=("extensions/watcher",))})
    return str(published["LayerVersionArn"])


def create_with_layers(lam, name: str, runtime: str, code: bytes, layers: list[str], handler: str = "app.handler") -> None:  # type: ignore[no-untyped-def]
    lam.create_function(FunctionName=name, Runtime=runtime, Role=ROLE, Handler=handler, Code={"ZipFile": code},
                        Layers=layers)
    lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})


def retire(lam, name: str) -> None:  # type: ignore[no-untyped-def]
    lam.update_function_configuration(FunctionName=name, Description="retire its environments")
    lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})


def check_lifecycle(lam, server, name: str) -> dict:  # type: ignore[no-untyped-def]
    response, body = invoke(lam, name, {"n": 1})
    assert "FunctionError" not in response, body
    request_id = response["ResponseMetadata"]["RequestId"]
    text = wait_for_log(server, name, [f"END RequestId: {request_id}"], deadline_s=30)
    assert "EXTENSION\tName: watcher\tState: Ready\tEvents: [INVOKE,SHUTDOWN]" in text
    assert text.index("EXTENSION\tName: watcher") < text.index(f"START RequestId: {request_id}")
    assert text.index(f"[watcher] INVOKE {request_id}") < text.index(f"END RequestId: {request_id}")
    retire(lam, name)
    wait_for_log(server, name, ["[watcher] SHUTDOWN spindown"], deadline_s=30)
    return body


def test_extension_next_to_a_custom_runtime(lam, server, extension_layer: str) -> None:  # type: ignore[no-untyped-def]
    create_with_layers(lam, "custom-ext", "provided.al2023", package({"bootstrap": RAW_BOOTSTRAP}), [extension_layer])
    body = check_lifecycle(lam, server, "custom-ext")
    assert body["api"] == "127.0.0.1:9002"


def test_extension_next_to_the_python_runtime(lam, server, extension_layer: str) -> None:  # type: ignore[no-untyped-def]
    create_with_layers(lam, "python-ext", python_runtime(), package({"app.py": PYTHON_APP}), [extension_layer])
    body = check_lifecycle(lam, server, "python-ext")
    assert body["api"] == "127.0.0.1:9002" and body["event"] == {"n": 1}


def test_bootstrap_from_a_layer(lam) -> None:  # type: ignore[no-untyped-def]
    layer = lam.publish_layer_version(LayerName="runtime-layer",
                                      Content={"ZipFile": package({"bootstrap": RAW_BOOTSTRAP})})["LayerVersionArn"]
    create_with_layers(lam, "layer-bootstrap", "provided.al2", package({"README": "no bootstrap here"}), [layer])
    response, body = invoke(lam, "layer-bootstrap", {})
    assert "FunctionError" not in response, body
    assert body["request_id"] == response["ResponseMetadata"]["RequestId"]
    assert body["wrong_id"][0] == 400
