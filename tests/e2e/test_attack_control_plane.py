"""Attacker suite: the control plane from inside a function, with the environment's own credentials.

A real function (runtime python3.11, whose interpreter has boto3) calls the API the way any
handler would: ``boto3.client("lambda")`` with no arguments, which finds the API through
``AWS_ENDPOINT_URL_LAMBDA`` and its temporary credentials through the container-credentials
endpoint. Every control-plane call is refused with Lambda's AccessDeniedException and changes
nothing; invoking another function works only while the operator's AddPermission grants it
(and again not after RemovePermission). Done for an on-demand environment and for an
environment restored from a SnapStart snapshot; the platform keeps serving throughout.
"""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ROLE, create, invoke_json
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, publish

ACCOUNT = "000000000000"
PREFIX = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:"
ATTACKER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/attacker-role"
VICTIM = "victim"
VICTIM_CODE = {"app.py": "import os\n\ndef handler(event, context):\n    return {'victim': True, 'secret': os.environ['SECRET'], 'event': event}\n"}

ATTACKER_APP = """
import io, json, os, urllib.error, urllib.request, zipfile
import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

def signed(method, path, body=b""):
    \"\"\"A snapfaas-only route, signed with the environment's credentials.\"\"\"
    url = os.environ["AWS_ENDPOINT_URL_LAMBDA"] + path
    request = AWSRequest(method=method, url=url, data=body)
    SigV4Auth(boto3.Session().get_credentials().get_frozen_credentials(), "lambda", os.environ["AWS_REGION"]).add_auth(request)
    sent = urllib.request.Request(url, data=body or None, method=method, headers=dict(request.headers.items()))
    try:
        with urllib.request.urlopen(sent, timeout=30) as response:
            return {"ok": True, "status": response.status, "result": response.read().decode()}
    except urllib.error.HTTPError as exc:
        return {"ok": False, "status": exc.code, "code": exc.headers.get("x-amzn-ErrorType"),
                "message": json.loads(exc.read()).get("Message")}

RAW = {
    "logs": lambda t: signed("GET", "/snapfaas/v1/logs/" + t),
    "echo": lambda t: signed("POST", "/snapfaas/v1/echo", b'{"echo": 1}'),
}

def evil_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", "def handler(event, context):\\n    return 'owned'\\n")
    return buf.getvalue()

ATTEMPTS = {
    "list_functions": lambda c, t: c.list_functions(),
    "get_function": lambda c, t: c.get_function(FunctionName=t),
    "get_function_configuration": lambda c, t: c.get_function_configuration(FunctionName=t),
    "update_function_code": lambda c, t: c.update_function_code(FunctionName=t, ZipFile=evil_zip()),
    "update_function_configuration": lambda c, t: c.update_function_configuration(FunctionName=t, Timeout=9),
    "delete_function": lambda c, t: c.delete_function(FunctionName=t),
    "add_permission_self": lambda c, t: c.add_permission(
        FunctionName=os.environ["AWS_LAMBDA_FUNCTION_NAME"], StatementId="self", Action="lambda:*", Principal="*"),
    "get_policy": lambda c, t: c.get_policy(FunctionName=t),
    "invoke": lambda c, t: json.loads(c.invoke(FunctionName=t, Payload=b'{"from": "attacker"}')["Payload"].read()),
}

def handler(event, context):
    client = boto3.client("lambda", config=Config(retries={"total_max_attempts": 1}, read_timeout=60))
    out = {"endpoint": client.meta.endpoint_url, "env_endpoint": os.environ.get("AWS_ENDPOINT_URL_LAMBDA")}
    for name in event["attempts"]:
        if name in RAW:
            out[name] = RAW[name](event["target"])
            continue
        try:
            out[name] = {"ok": True, "result": ATTEMPTS[name](client, event["target"])}
        except client.exceptions.ClientError as exc:
            out[name] = {"ok": False, "code": exc.response["Error"]["Code"], "message": exc.response["Error"]["Message"],
                         "status": exc.response["ResponseMetadata"]["HTTPStatusCode"]}
    return json.loads(json.dumps(out, default=str))
"""
CONTROL_PLANE = ["list_functions", "get_function", "get_function_configuration", "update_function_code",
                 "update_function_configuration", "delete_function", "add_permission_self", "get_policy", "logs", "echo"]
ACTIONS = {
    "list_functions": ("lambda:ListFunctions", PREFIX + "*"),
    "get_function": ("lambda:GetFunction", PREFIX + VICTIM),
    "get_function_configuration": ("lambda:GetFunctionConfiguration", PREFIX + VICTIM),
    "update_function_code": ("lambda:UpdateFunctionCode", PREFIX + VICTIM),
    "update_function_configuration": ("lambda:UpdateFunctionConfiguration", PREFIX + VICTIM),
    "delete_function": ("lambda:DeleteFunction", PREFIX + VICTIM),
    "add_permission_self": ("lambda:AddPermission", None),  # resource: the attacker itself
    "get_policy": ("lambda:GetPolicy", PREFIX + VICTIM),
    "logs": ("snapfaas:GetFunctionLogs", PREFIX + VICTIM),
    "echo": ("snapfaas:Echo", PREFIX + "*"),
}


def denial(caller: str, action: str, resource: str, kind: str = "identity") -> str:
    return (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/attacker-role/{caller} is not authorized to perform: {action} "
            f"on resource: {resource} because no {kind}-based policy allows the {action} action")


@pytest.fixture(scope="module")
def victim(lam) -> dict:  # type: ignore[no-untyped-def]
    create(lam, VICTIM, VICTIM_CODE, Environment={"Variables": {"SECRET": "victim-secret"}})
    return lam.get_function(FunctionName=VICTIM)


@pytest.fixture(scope="module")
def on_demand(lam, victim) -> str:  # type: ignore[no-untyped-def]
    create(lam, "attacker", {"app.py": ATTACKER_APP}, Runtime="python3.11", Role=ATTACKER_ROLE, Timeout=60, MemorySize=256)
    return "attacker"


@pytest.fixture(scope="module")
def snapstart(lam, victim) -> str:  # type: ignore[no-untyped-def]
    create(lam, "attacker-snap", {"app.py": ATTACKER_APP}, Runtime="python3.11", Role=ATTACKER_ROLE, Timeout=60,
           MemorySize=512, SnapStart=SNAPSTART)
    publish(lam, "attacker-snap")
    return "attacker-snap"


def attack(lam, caller: str, attempts: list[str], qualifier: str | None = None) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    kwargs = {"Qualifier": qualifier} if qualifier else {}
    response, body = invoke_json(lam, caller, {"target": VICTIM, "attempts": attempts}, LogType="Tail", **kwargs)
    assert "FunctionError" not in response, body
    return response, body


def assert_victim_untouched(lam, victim: dict, server) -> None:  # type: ignore[no-untyped-def]
    now = lam.get_function(FunctionName=VICTIM)
    assert now["Configuration"]["CodeSha256"] == victim["Configuration"]["CodeSha256"]
    assert now["Configuration"]["Timeout"] == victim["Configuration"]["Timeout"]
    assert now["Configuration"]["RevisionId"] == victim["Configuration"]["RevisionId"]
    with pytest.raises(ClientError) as none:
        lam.get_policy(FunctionName=VICTIM)
    assert none.value.response["Error"]["Code"] == "ResourceNotFoundException"
    _, body = invoke_json(lam, VICTIM, {"from": "operator"})  # the platform keeps serving
    assert body == {"victim": True, "secret": "victim-secret", "event": {"from": "operator"}}


def check_control_plane_denied(body: dict, caller: str) -> None:
    assert body["endpoint"] == body["env_endpoint"]  # boto3 found the API through AWS_ENDPOINT_URL_LAMBDA
    for name in CONTROL_PLANE:
        outcome = body[name]
        assert not outcome["ok"], (name, outcome)
        action, resource = ACTIONS[name]
        assert (outcome["status"], outcome["code"]) == (403, "AccessDeniedException"), (name, outcome)
        assert outcome["message"] == denial(caller, action, resource or PREFIX + caller), name
    assert body["invoke"]["code"] == "AccessDeniedException"
    assert body["invoke"]["message"] == denial(caller, "lambda:InvokeFunction", PREFIX + VICTIM, "resource")


def grant_then_revoke(lam, caller: str, qualifier: str | None) -> None:  # type: ignore[no-untyped-def]
    statement = json.loads(lam.add_permission(FunctionName=VICTIM, StatementId=f"allow-{caller}",
                                              Action="lambda:InvokeFunction", Principal=ATTACKER_ROLE)["Statement"])
    assert statement == {"Sid": f"allow-{caller}", "Effect": "Allow", "Principal": {"AWS": ATTACKER_ROLE},
                         "Action": "lambda:InvokeFunction", "Resource": PREFIX + VICTIM}
    _, body = attack(lam, caller, ["invoke", "list_functions"], qualifier)
    assert body["invoke"] == {"ok": True, "result": {"victim": True, "secret": "victim-secret", "event": {"from": "attacker"}}}
    assert body["list_functions"]["code"] == "AccessDeniedException"  # the grant is for Invoke only
    lam.remove_permission(FunctionName=VICTIM, StatementId=f"allow-{caller}")
    _, body = attack(lam, caller, ["invoke"], qualifier)
    assert body["invoke"]["code"] == "AccessDeniedException"


def test_on_demand_environment_is_denied_the_control_plane(lam, server, victim, on_demand) -> None:  # type: ignore[no-untyped-def]
    _, body = attack(lam, on_demand, [*CONTROL_PLANE, "invoke"])
    check_control_plane_denied(body, on_demand)
    assert_victim_untouched(lam, victim, server)
    with pytest.raises(ClientError):
        lam.get_policy(FunctionName=on_demand)  # its AddPermission on itself wrote nothing
    assert {VICTIM, on_demand} <= {f["FunctionName"] for f in lam.list_functions()["Functions"]}


def test_on_demand_invoke_works_only_while_granted(lam, server, victim, on_demand) -> None:  # type: ignore[no-untyped-def]
    grant_then_revoke(lam, on_demand, None)
    assert_victim_untouched(lam, victim, server)


def test_restored_environment_is_denied_the_control_plane(lam, server, victim, snapstart) -> None:  # type: ignore[no-untyped-def]
    response, body = attack(lam, snapstart, [*CONTROL_PLANE, "invoke"], qualifier="1")
    assert_restored(response["LogResult"])
    check_control_plane_denied(body, snapstart)
    assert_victim_untouched(lam, victim, server)


def test_restored_invoke_works_only_while_granted(lam, server, victim, snapstart) -> None:  # type: ignore[no-untyped-def]
    grant_then_revoke(lam, snapstart, "1")
    assert_victim_untouched(lam, victim, server)


def test_other_roles_grant_does_not_help(lam, server, victim, on_demand) -> None:  # type: ignore[no-untyped-def]
    """A grant to another role (or one with a condition a direct call cannot meet) is no grant."""
    lam.add_permission(FunctionName=VICTIM, StatementId="other-role", Action="lambda:InvokeFunction", Principal=ROLE)
    lam.add_permission(FunctionName=VICTIM, StatementId="conditional", Action="lambda:InvokeFunction", Principal="*",
                       SourceAccount=ACCOUNT)
    try:
        _, body = attack(lam, on_demand, ["invoke"])
        assert body["invoke"]["code"] == "AccessDeniedException"
    finally:
        lam.remove_permission(FunctionName=VICTIM, StatementId="other-role")
        lam.remove_permission(FunctionName=VICTIM, StatementId="conditional")
    assert_victim_untouched(lam, victim, server)
