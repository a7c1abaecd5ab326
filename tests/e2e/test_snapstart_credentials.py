"""Credentials of SnapStart environments through real boto3: the container-credentials endpoint
(AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN) gives every restored
environment its own temporary credentials, never the ones of init, and the SigV4 verifier of
the API authenticates them (as the function's principal, which may not call ListFunctions:
test_attack_control_plane.py covers authorization). Runtime python3.11: its interpreter has
boto3 installed.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config

from snapfaas.config import CREDENTIALS_PATH
from tests.conftest import ServerHandle, create, invoke_json
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, publish

APP = """
import json, os, time, urllib.request, uuid
import boto3
from snapshot_restore_py import register_after_restore

def endpoint_credentials():
    request = urllib.request.Request(os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
                                     headers={"Authorization": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)

# credentials during init: taken into the snapshot, and revoked once it is taken
INIT_TOKEN = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
INIT_KEY = boto3.Session().get_credentials().get_frozen_credentials().access_key
ENV = {}

@register_after_restore
def tag():
    ENV["id"] = uuid.uuid4().hex

def handler(event, context):
    time.sleep((event or {}).get("sleep", 0))
    credentials = boto3.Session().get_credentials()
    frozen = credentials.get_frozen_credentials()
    direct = endpoint_credentials()
    client = boto3.client("lambda")  # the endpoint comes from AWS_ENDPOINT_URL_LAMBDA
    try:
        client.list_functions()
        listing = "allowed"
    except client.exceptions.ClientError as exc:
        listing = exc.response["Error"]["Code"]
    return {
        "env_id": ENV.get("id"),
        "init_key": INIT_KEY,
        "init_token": INIT_TOKEN,
        "token_changed": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] != INIT_TOKEN,
        "key": frozen.access_key,
        "secret": frozen.secret_key,
        "session_token": frozen.token,
        "expiry": credentials._expiry_time.isoformat(),
        "endpoint": direct,
        "list_functions": listing,
    }
"""


@pytest.fixture(scope="module")
def restored(lam) -> list[dict]:  # type: ignore[no-untyped-def]
    """Two overlapping invokes of the published version: two restored environments."""
    create(lam, "creds", {"app.py": APP}, Runtime="python3.11", SnapStart=SNAPSTART, Timeout=30, MemorySize=512)
    publish(lam, "creds")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: invoke_json(lam, "creds", {"sleep": 1.5}, Qualifier="1", LogType="Tail"), range(2)))
    bodies = []
    for response, body in results:
        assert "FunctionError" not in response, body
        assert_restored(response["LogResult"])
        bodies.append(body)
    assert len({b["env_id"] for b in bodies} - {None}) == 2
    return bodies


def credentials_status(server: ServerHandle, token: str) -> int:
    """HTTP status of the credentials endpoint for an authorization token."""
    request = urllib.request.Request(server.endpoint + CREDENTIALS_PATH, headers={"Authorization": token})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def temporary_client(server: ServerHandle, key: str, secret: str, token: str):  # type: ignore[no-untyped-def]
    return boto3.client("lambda", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret, aws_session_token=token,
                        config=Config(retries={"max_attempts": 0}))


def test_each_restored_environment_gets_its_own_credentials(restored: list[dict]) -> None:
    first, second = restored
    assert first["init_key"] == second["init_key"]  # init ran once, in the snapshot
    assert first["key"] != second["key"]
    assert first["init_key"] not in (first["key"], second["key"])
    assert first["token_changed"] and second["token_changed"]
    for body in restored:
        assert body["key"].startswith("ASIA")
        assert body["endpoint"]["AccessKeyId"] == body["key"]  # botocore and the endpoint agree
        assert body["endpoint"]["Token"] == body["session_token"]
        expiry = dt.datetime.fromisoformat(body["expiry"])
        assert dt.timedelta(minutes=10) < expiry - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(hours=1, minutes=1)


def test_temporary_credentials_authenticate_as_the_function(restored: list[dict], server: ServerHandle) -> None:
    """Accepted by the SigV4 verifier (the error is authorization's, not authentication's)."""
    for body in restored:
        assert body["list_functions"] == "AccessDeniedException"  # the function's own attempt
        client = temporary_client(server, body["key"], body["secret"], body["session_token"])
        with pytest.raises(client.exceptions.ClientError) as denied:
            client.list_functions()
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
        assert "assumed-role/test/creds is not authorized to perform: lambda:ListFunctions" in denied.value.response["Error"]["Message"]
    first = restored[0]
    wrong_token = temporary_client(server, first["key"], first["secret"], restored[1]["session_token"])
    with pytest.raises(wrong_token.exceptions.ClientError) as unknown:
        wrong_token.list_functions()
    assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert unknown.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_init_credentials_are_revoked_and_unknown_tokens_get_404(restored: list[dict], server: ServerHandle, lam) -> None:  # type: ignore[no-untyped-def]
    assert credentials_status(server, "not-a-token") == 404
    assert credentials_status(server, restored[0]["init_token"]) == 404  # revoked after the snapshot
    response, body = invoke_json(lam, "creds", {}, Qualifier="1")  # a warm environment: its token still works
    assert body["key"] in {b["key"] for b in restored}
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.endpoint + CREDENTIALS_PATH, timeout=5)
    assert missing.value.code == 404  # no token at all
