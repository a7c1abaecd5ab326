"""Credentials of SnapStart environments through real boto3: the container-credentials endpoint
(AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN, no key variables)
gives every restored environment its own temporary credentials, a module-level client keeps
the init ones (valid until they expire, as on AWS), and the SigV4 verifier of
the API authenticates them (as the function's principal, which may not call ListFunctions:
test_attack_control_plane.py covers authorization). Runtime python3.11: its interpreter has
boto3 installed.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import math
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config

from snapfaas.config import CREDENTIALS_PATH
from tests.conftest import ROLE, ServerHandle, create, invoke_json
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

# credentials during init: taken into the snapshot; the token is withdrawn once it is taken,
# the credentials fetched with it stay valid until they expire (as on AWS)
INIT_TOKEN = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
INIT_KEY = boto3.Session().get_credentials().get_frozen_credentials().access_key
CLIENT = boto3.client("lambda")  # module level: built (credentials fetched) during init
INIT_ENV = {name: os.environ.get(name) for name in (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_LAMBDA_INITIALIZATION_TYPE")}
ENV = {}

@register_after_restore
def tag():
    ENV["id"] = uuid.uuid4().hex

def handler(event, context):
    time.sleep((event or {}).get("sleep", 0))
    if (event or {}).get("target"):  # the module-level client, after the restore
        response = CLIENT.invoke(FunctionName=event["target"], Payload=b"{}")
        return {"status": response["StatusCode"], "payload": json.loads(response["Payload"].read()),
                "key": CLIENT._request_signer._credentials.get_frozen_credentials().access_key, "init_key": INIT_KEY}
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
        "init_env": INIT_ENV,
        "env": {name: os.environ.get(name) for name in INIT_ENV},
        "context_log": [context.log_group_name, context.log_stream_name],
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
    for response, body in results:
        body["report"] = assert_restored(response["LogResult"])
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


def test_snapstart_environments_get_the_endpoint_and_no_log_names(restored: list[dict]) -> None:
    """AWS: SnapStart functions get container credentials instead of the key variables, and
    no AWS_LAMBDA_LOG_GROUP_NAME / AWS_LAMBDA_LOG_STREAM_NAME; the initialization type stays
    snap-start after the restore."""
    for body in restored:
        for env in (body["init_env"], body["env"]):
            assert env == {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
                           "AWS_LAMBDA_LOG_GROUP_NAME": None, "AWS_LAMBDA_LOG_STREAM_NAME": None,
                           "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}
        assert body["context_log"] == [None, None]


def test_restore_bills_only_the_runtime_part(restored: list[dict]) -> None:
    """Billed Duration = ceil(Duration) + Billed Restore Duration; the billed restore (runtime
    load + after-restore hooks) is a part of the Restore Duration, not all of it."""
    for body in restored:
        fields = body["report"]
        duration = float(fields["Duration"].split()[0])
        billed_restore = int(fields["Billed Restore Duration"].split()[0])
        assert int(fields["Billed Duration"].split()[0]) == max(1, math.ceil(duration)) + billed_restore
        assert billed_restore <= math.ceil(float(fields["Restore Duration"].split()[0]))


def test_module_level_client_keeps_working_after_restore(restored: list[dict], lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """A boto3 client built at init (credentials cached in the snapshot) calls the API after a
    restore: the init credentials stay valid until their expiry, as on AWS."""
    create(lam, "creds-target", {"app.py": "def handler(event, context):\n    return {'target': True}\n"},
           Runtime="python3.11")
    lam.add_permission(FunctionName="creds-target", StatementId="from-creds", Action="lambda:InvokeFunction",
                       Principal=ROLE)
    response, body = invoke_json(lam, "creds", {"target": "creds-target"}, Qualifier="1")
    assert "FunctionError" not in response, body
    assert body["status"] == 200 and body["payload"] == {"target": True}
    assert body["key"] == body["init_key"] == restored[0]["init_key"]  # the snapshot's credentials, still valid
    init_token_client = temporary_client(server, restored[0]["init_key"], "wrong-secret", "wrong-token")
    with pytest.raises(init_token_client.exceptions.ClientError):  # valid only with its own secret and token
        init_token_client.invoke(FunctionName="creds-target")


def test_init_token_is_withdrawn_and_unknown_tokens_get_404(restored: list[dict], server: ServerHandle, lam) -> None:  # type: ignore[no-untyped-def]
    assert credentials_status(server, "not-a-token") == 404
    assert credentials_status(server, restored[0]["init_token"]) == 404  # withdrawn after the snapshot
    response, body = invoke_json(lam, "creds", {}, Qualifier="1")  # a warm environment: its token still works
    assert body["key"] in {b["key"] for b in restored}
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.endpoint + CREDENTIALS_PATH, timeout=5)
    assert missing.value.code == 404  # no token at all
