"""The Powertools + FastAPI + Mangum function (examples/powertools-fastapi) as users deploy it:
dependencies vendored into the zip with `pip install --target` (pinned; cached per requirement
list), answering an API Gateway HTTP API (payload v2) event on demand and, published with
SnapStart, after a restore. Its init leaves the X-Ray SDK's UDP emitter socket open (Powertools'
`Tracer()`), which the snapshot keeps. Real boto3, real server, real runc + CRIU.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.conftest import ServerHandle, create, invoke_json
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, assert_warm, function_log, publish
from tests.vendor import function_runtime, vendored, zip_with

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "powertools-fastapi"
REQUIREMENTS = ["aws-lambda-powertools==3.37.0", "aws-xray-sdk==2.15.0", "fastapi==0.163.2", "mangum==0.22.0"]


def http_api_event(path: str, query: str = "") -> dict:
    """An API Gateway HTTP API (payload format 2.0) request event."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "cookies": [],
        "headers": {"accept": "application/json", "host": "api.example.test", "user-agent": "snapfaas-test"},
        "queryStringParameters": dict(p.split("=", 1) for p in query.split("&")) if query else None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api1234567",
            "domainName": "api.example.test",
            "domainPrefix": "api",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.10",
                     "userAgent": "snapfaas-test"},
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "10/Mar/2026:12:00:00 +0000",
            "timeEpoch": 1773144000000,
        },
        "isBase64Encoded": False,
    }


@pytest.fixture(scope="module")
def code(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """(runtime, deployment zip) of the example with its dependencies vendored for that runtime."""
    assert (EXAMPLE / "requirements.txt").read_text().split() == REQUIREMENTS, "keep the example's pins in step"
    runtime = function_runtime()
    vendor = vendored(request.config, tmp_path_factory, REQUIREMENTS, runtime.removeprefix("python"))
    return runtime, zip_with(vendor, {"app.py": (EXAMPLE / "app.py").read_text()})


def check_hello(response: dict, body: object, init_type: str) -> None:
    assert "FunctionError" not in response, body
    assert isinstance(body, dict) and body["statusCode"] == 200, body
    assert body["headers"]["content-type"] == "application/json", body
    assert json.loads(body["body"]) == {"message": "hello, snap", "initialization_type": init_type}


def test_powertools_fastapi_function_on_demand_and_restored(lam, server: ServerHandle, code: tuple[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    runtime, zipped = code
    create(lam, "hello-api", {}, Runtime=runtime, Code={"ZipFile": zipped}, SnapStart=SNAPSTART, Timeout=30,
           MemorySize=512)
    response, body = invoke_json(lam, "hello-api", http_api_event("/hello", "name=snap"), LogType="Tail")
    check_hello(response, body, "on-demand")
    log = base64.b64decode(response["LogResult"]).decode()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(r.get("message") == "saying hello" and r.get("greeted") == "snap" for r in records), log  # Logger
    assert any(r.get("Greetings") == [1.0] and "_aws" in r for r in records), log  # Metrics, flushed as EMF

    publish(lam, "hello-api", timeout=180)
    response, body = invoke_json(lam, "hello-api", http_api_event("/hello", "name=snap"), Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    check_hello(response, body, "snap-start")
    response, body = invoke_json(lam, "hello-api", http_api_event("/hello", "name=snap"), Qualifier="1", LogType="Tail")
    assert_warm(response["LogResult"])
    check_hello(response, body, "snap-start")
    # an unknown route is FastAPI's 404, through the same restored environment
    _, missing = invoke_json(lam, "hello-api", http_api_event("/nope"), Qualifier="1")
    assert isinstance(missing, dict) and missing["statusCode"] == 404, missing
    # the platform named no failure and keeps serving: $LATEST still answers on demand
    assert not [m for v, _, m in function_log(server, "hello-api") if v == "1" and "Status: error" in m]
    response, body = invoke_json(lam, "hello-api", http_api_event("/hello", "name=snap"))
    check_hello(response, body, "on-demand")
