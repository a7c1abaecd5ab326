"""Authentication (SigV4 on, and ``--no-auth``) and the AWS CLI as a client."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import ACCESS_KEY, ROLE, SECRET_KEY, ServerHandle, create, invoke_json, make_zip, require_root, run_server
from tests.e2e.test_control_plane import assert_error, echo_code, sha256_b64

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key "
    "and signing method. Consult the service documentation for details."
)
AWS_CLI = Path(sys.executable).with_name("aws")


def raw_request(url: str, method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """An unsigned HTTP request; returns (status, headers, body) for success and error alike."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def function_names(lam) -> list[str]:  # type: ignore[no-untyped-def]
    return [f["FunctionName"] for page in lam.get_paginator("list_functions").paginate() for f in page["Functions"]]


def create_body(name: str) -> bytes:
    return json.dumps({"FunctionName": name, "Runtime": "python3.12", "Role": ROLE, "Handler": "app.handler",
                       "Code": {"ZipFile": base64.b64encode(make_zip(echo_code())).decode()}}).encode()


# -- SigV4 -------------------------------------------------------------------------------------


def test_wrong_secret_is_rejected_and_changes_nothing(server, lam) -> None:
    intruder = server.client(secret="not-the-secret")
    with pytest.raises(ClientError) as exc:
        intruder.list_functions()
    assert_error(exc, 403, "InvalidSignatureException", SIGNATURE_MISMATCH)
    with pytest.raises(ClientError) as exc:
        create(intruder, "intruder", echo_code(), wait=False)
    assert_error(exc, 403, "InvalidSignatureException", SIGNATURE_MISMATCH)
    assert "intruder" not in function_names(lam)


def test_unknown_access_key_is_unrecognized(server, lam) -> None:
    stranger = server.client(key="AKIAUNKNOWNKEY000000")
    with pytest.raises(ClientError) as exc:
        stranger.get_function(FunctionName="anything")
    assert_error(exc, 403, "UnrecognizedClientException", "The security token included in the request is invalid.")


def test_unsigned_requests_are_forbidden(server, lam) -> None:
    status, headers, body = raw_request(server.endpoint + "/2015-03-31/functions/")
    assert (status, headers["x-amzn-ErrorType"]) == (403, "MissingAuthenticationTokenException")
    assert json.loads(body)["message"] == "Missing Authentication Token"
    status, _, _ = raw_request(server.endpoint + "/2015-03-31/functions", "POST", create_body("unsigned"),
                               {"Content-Type": "application/json"})
    assert status == 403
    assert "unsigned" not in function_names(lam)


def test_tampered_body_fails_signature_check(server, lam) -> None:
    """A signed request whose body was changed in flight (same length) is rejected."""
    url = server.endpoint + "/2015-03-31/functions"
    signed_body, sent_body = create_body("tamper-a"), create_body("tamper-b")
    request = AWSRequest(method="POST", url=url, data=signed_body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "lambda", "us-east-1").add_auth(request)
    status, headers, _ = raw_request(url, "POST", sent_body, dict(request.headers.items()))
    assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    assert not {"tamper-a", "tamper-b"} & set(function_names(lam))


def test_code_location_link_is_its_own_credential(server, lam) -> None:
    package = make_zip(echo_code("linked"))
    lam.create_function(FunctionName="linked", Runtime="python3.12", Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": package})
    location = lam.get_function(FunctionName="linked")["Code"]["Location"]
    status, _, body = raw_request(location)
    assert (status, sha256_b64(body)) == (200, sha256_b64(package))
    forged = location[:-4] + ("0000" if not location.endswith("0000") else "1111")
    status, headers, _ = raw_request(forged)
    assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")


# -- --no-auth -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_server(processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:  # type: ignore[no-untyped-def]
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("noauth"), ["--no-auth", "--keep-alive", "30"])


def test_no_auth_server_accepts_unsigned_requests(open_server: ServerHandle) -> None:
    status, _, body = raw_request(open_server.endpoint + "/2015-03-31/functions/")
    assert (status, json.loads(body)) == (200, {"Functions": []})
    status, _, body = raw_request(open_server.endpoint + "/2015-03-31/functions", "POST", create_body("open"),
                                  {"Content-Type": "application/json"})
    assert (status, json.loads(body)["FunctionName"]) == (201, "open")
    anyone = open_server.client(secret="whatever", key="ANYKEY")
    anyone.get_waiter("function_active_v2").wait(FunctionName="open", WaiterConfig={"Delay": 0.1, "MaxAttempts": 300})
    assert invoke_json(anyone, "open", {"x": 1})[1]["event"] == {"x": 1}


# -- AWS CLI ---------------------------------------------------------------------------------


def aws(server: ServerHandle, home: Path, *args: str) -> Any:  # type: ignore[no-untyped-def]
    """Run ``aws lambda ARGS --endpoint-url ...`` with the suite's keys; returns parsed JSON stdout."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
           "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials")}
    done = subprocess.run([str(AWS_CLI), "lambda", *args, "--endpoint-url", server.endpoint, "--output", "json"],
                          capture_output=True, text=True, env=env, timeout=60, cwd=home)
    assert done.returncode == 0, f"aws lambda {args[0]} failed:\n{done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip() else None


def raw_payload_flag() -> list[str]:
    """CLI v2 base64-decodes blob arguments unless told otherwise; v1 (PyPI awscli) sends them raw
    and does not know the flag."""
    version = subprocess.run([str(AWS_CLI), "--version"], capture_output=True, text=True, timeout=30)
    return ["--cli-binary-format", "raw-in-base64-out"] if "aws-cli/2" in version.stdout + version.stderr else []


def test_aws_cli_creates_publishes_and_invokes(server, tmp_path: Path) -> None:
    package = make_zip(echo_code("cli"))
    (tmp_path / "fn.zip").write_bytes(package)
    created = aws(server, tmp_path, "create-function", "--function-name", "cli-fn", "--runtime", "python3.12",
                  "--role", ROLE, "--handler", "app.handler", "--zip-file", "fileb://fn.zip",
                  "--environment", "Variables={ENV_A=from-cli}")
    assert (created["FunctionName"], created["State"], created["CodeSha256"]) == ("cli-fn", "Pending", sha256_b64(package))
    aws(server, tmp_path, "wait", "function-active-v2", "--function-name", "cli-fn")
    published = aws(server, tmp_path, "publish-version", "--function-name", "cli-fn")
    assert (published["Version"], published["State"]) == ("1", "Active")
    invoked = aws(server, tmp_path, "invoke", "--function-name", "cli-fn", "--qualifier", "1", "--payload", '{"a":1}',
                  *raw_payload_flag(), "out.json")
    assert (invoked["StatusCode"], invoked["ExecutedVersion"]) == (200, "1")
    result = json.loads((tmp_path / "out.json").read_text())
    assert (result["event"], result["env"], result["tag"]) == ({"a": 1}, "from-cli", "cli")
    listed = aws(server, tmp_path, "list-versions-by-function", "--function-name", "cli-fn")
    assert [v["Version"] for v in listed["Versions"]] == ["$LATEST", "1"]
