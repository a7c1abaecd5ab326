"""Invoke through real boto3 against a real server: addressing, invocation types, log tails,
function errors, request limits, and what a handler sees (context and environment).

Facts asserted here come from /work/notes/aws-shapes.md sections 3 and 5.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ServerHandle, create, invoke_json

ARN = "arn:aws:lambda:us-east-1:000000000000:function:"
REPORT_RE = re.compile(
    r"REPORT RequestId: (?P<id>[0-9a-f-]{36})\tDuration: \d+\.\d{2} ms\tBilled Duration: \d+ ms\t"
    r"Memory Size: (?P<mem>\d+) MB\tMax Memory Used: (?P<used>\d+) MB\t(?P<init>Init Duration: \d+\.\d{2} ms\t)?\n"
)

INTROSPECT = """
import os, uuid
ENV_ID = uuid.uuid4().hex
KEYS = ["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_REGION",
        "_HANDLER", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_INITIALIZATION_TYPE", "GREETING", "AWS_LAMBDA_LOG_GROUP_NAME"]

def handler(event, context):
    event = event or {}
    if "print" in event:
        print(event["print"])
    if event.get("none"):
        return None
    return {
        "env_id": ENV_ID,
        "event": event,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_arn": context.invoked_function_arn,
        "memory": context.memory_limit_in_mb,
        "log_group": context.log_group_name,
        "log_stream": context.log_stream_name,
        "remaining": context.get_remaining_time_in_millis(),
        "environ": {k: os.environ.get(k) for k in KEYS},
    }
"""


@pytest.fixture(scope="module")
def intro(lam) -> str:  # type: ignore[no-untyped-def]
    """A function that reports its context and environment; created once per module."""
    create(lam, "intro", {"app.py": INTROSPECT}, Timeout=7, MemorySize=192,
           Environment={"Variables": {"GREETING": "hello"}})
    return "intro"


def read_log(server: ServerHandle, name: str) -> str:
    server.flush_logs(name)
    path = Path(server.data_dir) / "logs" / f"{name}.log"
    return path.read_text() if path.exists() else ""


def wait_for_log(server: ServerHandle, name: str, needles: list[str], deadline_s: float = 20) -> str:
    """Poll the function's log file until every needle is present (or fail at the deadline)."""
    deadline = time.monotonic() + deadline_s
    text = ""
    while time.monotonic() < deadline:
        text = read_log(server, name)
        if all(n in text for n in needles):
            return text
        time.sleep(0.1)
    pytest.fail(f"log of {name} lacks {needles!r} after {deadline_s} s:\n{text[-3000:]}")


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, dict]:
    response = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response


# -- addressing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["intro", "000000000000:function:intro", ARN + "intro"])
def test_invoke_by_name_partial_and_full_arn(lam, intro: str, ref: str) -> None:
    response, body = invoke_json(lam, ref, {"k": ref})
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    assert body["event"] == {"k": ref}
    assert body["function_name"] == "intro"
    assert body["function_version"] == "$LATEST"
    assert body["invoked_arn"] == ARN + "intro"
    assert body["request_id"] == response["ResponseMetadata"]["RequestId"]


def test_qualifier_latest_is_in_invoked_arn(lam, intro: str) -> None:
    response, body = invoke_json(lam, intro, Qualifier="$LATEST")
    assert response["ExecutedVersion"] == "$LATEST"
    assert body["invoked_arn"] == ARN + "intro:$LATEST"
    assert body["function_version"] == "$LATEST"


def test_version_and_alias_qualifiers(lam) -> None:
    create(lam, "versioned", {"app.py": INTROSPECT}, Environment={"Variables": {"GREETING": "v1"}})
    assert lam.publish_version(FunctionName="versioned")["Version"] == "1"
    lam.get_waiter("published_version_active").wait(FunctionName="versioned", Qualifier="1",
                                                    WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    lam.update_function_configuration(FunctionName="versioned", Environment={"Variables": {"GREETING": "latest"}})
    lam.get_waiter("function_updated_v2").wait(FunctionName="versioned", WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    lam.create_alias(FunctionName="versioned", Name="live", FunctionVersion="1")

    response, body = invoke_json(lam, "versioned", Qualifier="1")
    assert (response["ExecutedVersion"], body["function_version"]) == ("1", "1")
    assert body["invoked_arn"] == ARN + "versioned:1"
    assert body["environ"]["GREETING"] == "v1"
    assert body["environ"]["AWS_LAMBDA_FUNCTION_VERSION"] == "1"

    response, body = invoke_json(lam, "versioned", Qualifier="live")
    assert (response["ExecutedVersion"], body["function_version"]) == ("1", "1")
    assert body["invoked_arn"] == ARN + "versioned:live"
    assert body["environ"]["GREETING"] == "v1"

    response, body = invoke_json(lam, ARN + "versioned:live")
    assert response["ExecutedVersion"] == "1"
    assert body["invoked_arn"] == ARN + "versioned:live"

    response, body = invoke_json(lam, "versioned")
    assert response["ExecutedVersion"] == "$LATEST"
    assert body["environ"]["GREETING"] == "latest"


def test_missing_function_and_alias_are_404(lam, intro: str) -> None:
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName="does-not-exist", Payload=b"{}")
    status, code, response = error_of(exc)
    assert (status, code) == (404, "ResourceNotFoundException")
    assert response["Message"] == f"Function not found: {ARN}does-not-exist:$LATEST"
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName=intro, Qualifier="no-such-alias", Payload=b"{}")
    status, code, response = error_of(exc)
    assert (status, code) == (404, "ResourceNotFoundException")
    assert response["Message"] == f"Function not found: {ARN}intro:no-such-alias"


# -- invocation types ---------------------------------------------------------------------------


def test_request_response_returns_200_and_none_is_null(lam, intro: str) -> None:
    response = lam.invoke(FunctionName=intro, InvocationType="RequestResponse", Payload=b'{"none": true}')
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert response["Payload"].read() == b"null"


def test_event_is_accepted_and_really_runs(server: ServerHandle, lam, intro: str) -> None:
    marker = f"event-marker-{time.time_ns()}"
    response = lam.invoke(FunctionName=intro, InvocationType="Event", Payload=json.dumps({"print": marker}).encode())
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    assert "ExecutedVersion" not in response
    request_id = response["ResponseMetadata"]["RequestId"]
    text = wait_for_log(server, intro, [f"END RequestId: {request_id}", f"REPORT RequestId: {request_id}"])
    start = text.index(f"START RequestId: {request_id} Version: $LATEST")
    assert start < text.index(marker) < text.index(f"END RequestId: {request_id}")


def test_event_runs_the_qualified_version(server: ServerHandle, lam) -> None:
    """Depends on `versioned` from test_version_and_alias_qualifiers (version 1 behind alias live)."""
    response = lam.invoke(FunctionName="versioned", Qualifier="live", InvocationType="Event", Payload=b'{"print": "via-alias"}')
    assert response["StatusCode"] == 202
    request_id = response["ResponseMetadata"]["RequestId"]
    wait_for_log(server, "versioned", [f"START RequestId: {request_id} Version: 1\n", f"END RequestId: {request_id}"])


def test_event_with_zero_reserved_concurrency_is_still_accepted(lam) -> None:
    create(lam, "zeroevent", {"app.py": "def handler(e, c):\n    return 1\n"})
    lam.put_function_concurrency(FunctionName="zeroevent", ReservedConcurrentExecutions=0)
    response = lam.invoke(FunctionName="zeroevent", InvocationType="Event", Payload=b"{}")
    assert response["StatusCode"] == 202


def test_dry_run_validates_but_runs_nothing(server: ServerHandle, lam) -> None:
    create(lam, "dry", {"app.py": "print('module imported')\ndef handler(e, c):\n    return 1\n"})
    before = set(server.runc_containers())
    response = lam.invoke(FunctionName="dry", InvocationType="DryRun", Payload=b"{}")
    assert response["StatusCode"] == 204
    assert response["Payload"].read() == b""
    assert "ExecutedVersion" not in response
    assert set(server.runc_containers()) <= before
    assert read_log(server, "dry") == ""
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName="no-such-fn", InvocationType="DryRun", Payload=b"{}")
    assert error_of(exc)[:2] == (404, "ResourceNotFoundException")


def test_unknown_invocation_type_is_rejected(lam, intro: str) -> None:
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName=intro, InvocationType="Sometimes", Payload=b"{}")  # type: ignore[arg-type]
    status, code, _ = error_of(exc)
    assert status == 400 and code in ("ValidationException", "InvalidParameterValueException")


# -- log tail -----------------------------------------------------------------------------------


def decode_tail(response: dict) -> str:
    return base64.b64decode(response["LogResult"]).decode()


def test_log_tail_cold_then_warm(lam) -> None:
    create(lam, "tailed", {"app.py": INTROSPECT})
    response, body = invoke_json(lam, "tailed", {"print": "hello from the handler"}, LogType="Tail")
    request_id = response["ResponseMetadata"]["RequestId"]
    tail = decode_tail(response)
    lines = tail.splitlines(keepends=True)
    assert lines[0] == f"START RequestId: {request_id} Version: $LATEST\n", tail
    assert "hello from the handler\n" in lines
    assert f"END RequestId: {request_id}\n" in lines
    assert "INIT_START" not in tail
    report = REPORT_RE.fullmatch(lines[-1])
    assert report is not None, lines[-1]
    assert report["id"] == request_id and report["mem"] == "128"
    assert report["init"] is not None, "cold start must report Init Duration"
    assert 1 <= int(report["used"]) <= 128

    again, body2 = invoke_json(lam, "tailed", {}, LogType="Tail")
    assert body2["env_id"] == body["env_id"]
    report = REPORT_RE.fullmatch(decode_tail(again).splitlines(keepends=True)[-1])
    assert report is not None and report["init"] is None, "warm start must not report Init Duration"
    assert report["id"] == again["ResponseMetadata"]["RequestId"]


def test_no_log_result_without_tail(lam, intro: str) -> None:
    response, _ = invoke_json(lam, intro)
    assert "LogResult" not in response


def test_log_tail_is_the_last_4_kb(lam, intro: str) -> None:
    noise = "".join(f"line {i:05d} " + "x" * 90 + "\n" for i in range(100))  # ~10 KB
    response, _ = invoke_json(lam, intro, {"print": noise}, LogType="Tail")
    raw = base64.b64decode(response["LogResult"])
    assert 4000 <= len(raw) <= 4096
    tail = raw.decode()
    assert tail.endswith("\t\n") and "REPORT RequestId: " in tail
    assert "line 00099" in tail and "line 00000" not in tail


# -- function errors ----------------------------------------------------------------------------

RAISES = """
class CustomError(Exception):
    pass

def handler(event, context):
    raise CustomError("something broke")
"""


def test_unhandled_exception(server: ServerHandle, lam) -> None:
    create(lam, "raiser", {"app.py": RAISES})
    response, body = invoke_json(lam, "raiser", LogType="Tail")
    request_id = response["ResponseMetadata"]["RequestId"]
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert response["ExecutedVersion"] == "$LATEST"
    assert list(body) == ["errorMessage", "errorType", "requestId", "stackTrace"]
    assert body["errorMessage"] == "something broke"
    assert body["errorType"] == "CustomError"
    assert body["requestId"] == request_id
    assert all(isinstance(frame, str) for frame in body["stackTrace"])
    assert any('File "/var/task/app.py", line 6, in handler' in frame for frame in body["stackTrace"])
    tail = decode_tail(response)
    assert "[ERROR] CustomError: something broke" in tail
    assert f"END RequestId: {request_id}" in tail
    # a handled-by-the-runtime error keeps the environment: the next call is warm
    again, _ = invoke_json(lam, "raiser", LogType="Tail")
    assert REPORT_RE.search(decode_tail(again))["init"] is None  # type: ignore[index]


def init_error(lam, name: str, files: dict[str, str], handler: str = "app.handler") -> tuple[dict, dict]:
    create(lam, name, files, handler=handler)
    response, body = invoke_json(lam, name, LogType="Tail")
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert response["ExecutedVersion"] == "$LATEST"
    return response, body


def test_import_module_error(lam) -> None:
    response, body = init_error(lam, "importerr", {"app.py": "import no_such_module_xyz\ndef handler(e, c):\n    return 1\n"})
    assert body == {
        "errorMessage": "Unable to import module 'app': No module named 'no_such_module_xyz'",
        "errorType": "Runtime.ImportModuleError",
        "requestId": "",
        "stackTrace": [],
    }
    tail = decode_tail(response)
    request_id = response["ResponseMetadata"]["RequestId"]
    assert "[ERROR] Runtime.ImportModuleError: Unable to import module 'app'" in tail
    assert f"END RequestId: {request_id}" in tail and f"REPORT RequestId: {request_id}" in tail


def test_missing_handler_module_is_accepted_and_fails_at_invoke(lam) -> None:
    """As on Lambda, CreateFunction accepts a handler naming a module the package lacks."""
    response, body = init_error(lam, "nomodule", {"other.py": "x = 1\n"}, handler="missing.handler")
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert body["errorMessage"] == "Unable to import module 'missing': No module named 'missing'"
    assert lam.get_function_configuration(FunctionName="nomodule")["State"] == "Active"


def test_handler_without_a_dot_is_accepted_and_fails_at_invoke(lam) -> None:
    _, body = init_error(lam, "nodot", {"app.py": "def handler(e, c):\n    return 1\n"}, handler="handler")
    assert body["errorType"] == "Runtime.MalformedHandlerName"
    assert body["errorMessage"].startswith("Bad handler 'handler'")


def test_handler_not_found(lam) -> None:
    _, body = init_error(lam, "nohandler", {"app.py": "def handler(e, c):\n    return 1\n"}, handler="app.missing")
    assert body["errorType"] == "Runtime.HandlerNotFound"
    assert body["errorMessage"] == "Handler 'missing' missing on module 'app'"
    assert body["requestId"] == ""


def test_exception_at_import_time(lam) -> None:
    _, body = init_error(lam, "initboom", {"app.py": "raise RuntimeError('Runtime startup fails')\ndef handler(e, c):\n    return 1\n"})
    assert list(body) == ["errorMessage", "errorType", "requestId", "stackTrace"]
    assert body["errorMessage"] == "Runtime startup fails"
    assert body["errorType"] == "RuntimeError"
    assert body["requestId"] == ""
    assert any('File "/var/task/app.py", line 1, in <module>' in frame for frame in body["stackTrace"])


def test_init_error_is_retried_on_the_next_invoke(lam) -> None:
    """A failed init leaves no environment behind: every invoke re-runs init (and fails again)."""
    response, body = invoke_json(lam, "initboom")
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "RuntimeError"


def test_result_that_is_not_json_is_a_marshal_error(lam) -> None:
    create(lam, "marshal", {"app.py": "def handler(e, c):\n    return {'s': {1, 2}} if e else 'fine'\n"})
    response, body = invoke_json(lam, "marshal", {"bad": True})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.MarshalError"
    assert body["errorMessage"] == "Unable to marshal response: Object of type set is not JSON serializable"
    assert body["requestId"] == response["ResponseMetadata"]["RequestId"]
    response, body = invoke_json(lam, "marshal", {})
    assert "FunctionError" not in response and body == "fine"


RAW_STDOUT = """
import os, subprocess
def handler(event, context):
    subprocess.run(["echo", "from-a-subprocess"], check=True)
    os.write(1, b"raw-fd1-without-newline")  # straight to the runtime's fd 1, right before the frame
    return "still-framed"
"""


def test_output_written_to_fd_1_is_logged_and_does_not_break_the_response(lam) -> None:
    create(lam, "rawout", {"app.py": RAW_STDOUT}, Timeout=5)
    for _ in range(2):  # the second call proves the channel is still in sync
        response, body = invoke_json(lam, "rawout", LogType="Tail")
        assert "FunctionError" not in response, body
        assert body == "still-framed"
        tail = decode_tail(response)
        assert "raw-fd1-without-newline" in tail and "from-a-subprocess" in tail


def test_subprocess_reading_stdin_gets_eof_not_the_channel(lam) -> None:
    """Like on Lambda, stdin is empty: a subprocess that reads it must not block on (or eat)
    the runtime's invoke channel."""
    app = "import subprocess\ndef handler(e, c):\n    return subprocess.run(['cat'], capture_output=True, timeout=3).stdout.decode()\n"
    create(lam, "stdinreader", {"app.py": app}, Timeout=10)
    for _ in range(2):
        response, body = invoke_json(lam, "stdinreader")
        assert "FunctionError" not in response, body
        assert body == ""


def test_response_over_6_mb_is_a_function_error(lam) -> None:
    create(lam, "bigresponse", {"app.py": "def handler(e, c):\n    return 'x' * e['n']\n"}, MemorySize=512)
    response, body = invoke_json(lam, "bigresponse", {"n": 6 * 1024 * 1024 + 99})  # + 2 quotes: 1 byte too many
    assert response["FunctionError"] == "Unhandled"
    assert list(body.items()) == [
        ("errorMessage", "Response payload size exceeded maximum allowed payload size (6291556 bytes)."),
        ("errorType", "Function.ResponseSizeTooLarge"),
    ]
    response, body = invoke_json(lam, "bigresponse", {"n": 6 * 1024 * 1024 + 98})  # exactly at the limit
    assert "FunctionError" not in response and len(body) == 6 * 1024 * 1024 + 98


# -- request limits -----------------------------------------------------------------------------


def test_sync_payload_over_6_mb_is_413(lam, intro: str) -> None:
    payload = json.dumps({"blob": "x" * (6 * 1024 * 1024)}).encode()
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName=intro, Payload=payload)
    status, code, _ = error_of(exc)
    assert (status, code) == (413, "RequestEntityTooLargeException")


def test_sync_payload_just_under_6_mb_runs(lam) -> None:
    create(lam, "sizer", {"app.py": "def handler(e, c):\n    return len(e['blob'])\n"}, MemorySize=512)
    size = 6 * 1024 * 1024 - 100
    response, body = invoke_json(lam, "sizer", {"blob": "y" * (size - 12)})
    assert "FunctionError" not in response, body
    assert body == size - 12


def test_event_payload_over_256_kb_is_413(lam, intro: str) -> None:
    payload = json.dumps({"blob": "x" * (256 * 1024)}).encode()
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName=intro, InvocationType="Event", Payload=payload)
    status, code, _ = error_of(exc)
    assert (status, code) == (413, "RequestEntityTooLargeException")
    small = json.dumps({"blob": "x" * (200 * 1024)}).encode()
    assert lam.invoke(FunctionName=intro, InvocationType="Event", Payload=small)["StatusCode"] == 202


@pytest.mark.parametrize("payload", [b"{not json", b"\x87\x9e\xe9", b'{"a": 1} trailing'])
def test_malformed_json_is_400(lam, intro: str, payload: bytes) -> None:
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName=intro, Payload=payload)
    status, code, response = error_of(exc)
    assert (status, code) == (400, "InvalidRequestContentException")
    assert response["Type"] == "User"
    assert response["message"].startswith("Could not parse request body into json: Could not parse payload into json: ")


# -- what the handler sees ----------------------------------------------------------------------


def test_context_attributes(lam, intro: str) -> None:
    response, body = invoke_json(lam, intro)
    assert body["request_id"] == response["ResponseMetadata"]["RequestId"]
    assert body["function_name"] == "intro"
    assert body["function_version"] == "$LATEST"
    assert body["memory"] == "192"  # a str, as on Lambda
    assert body["log_group"] == "/aws/lambda/intro"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]+", body["log_stream"]), body["log_stream"]
    assert 0 < body["remaining"] <= 7000
    assert body["remaining"] > 5000, "the deadline must be counted from the start of this invocation"


def test_client_context_reaches_the_handler(lam) -> None:
    app = "def handler(e, c):\n    return {'custom': c.client_context.custom, 'env': c.client_context.env}\n"
    create(lam, "clientctx", {"app.py": app})
    raw = base64.b64encode(json.dumps({"custom": {"k": "v"}, "env": {"platform": "test"}}).encode()).decode()
    response, body = invoke_json(lam, "clientctx", ClientContext=raw)
    assert "FunctionError" not in response, body
    assert body == {"custom": {"k": "v"}, "env": {"platform": "test"}}


def test_lambda_environment_variables(lam, intro: str) -> None:
    _, body = invoke_json(lam, intro)
    assert body["environ"] == {
        "AWS_LAMBDA_FUNCTION_NAME": "intro",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "192",
        "AWS_REGION": "us-east-1",
        "_HANDLER": "app.handler",
        "LAMBDA_TASK_ROOT": "/var/task",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "GREETING": "hello",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/intro",
    }


def test_single_node_names_itself_and_refuses_internal_cluster_requests(server: ServerHandle, lam) -> None:  # type: ignore[no-untyped-def]
    """Without --registry the server is a cluster of one: invokes run here and name this node
    (its id kept in <data-dir>/node-id); the internal forwarding route answers 403 to anyone,
    the operator included; the operator's cluster view shows this node alone."""
    import urllib.error

    from snapfaas.client import Connection
    from tests.conftest import ACCESS_KEY, SECRET_KEY

    create(lam, "single-node", {"app.py": "def handler(e, c):\n    return 1\n"})
    response, body = invoke_json(lam, "single-node")
    node_id = (server.data_dir / "node-id").read_text().strip()
    assert body == 1 and response["ResponseMetadata"]["HTTPHeaders"]["x-snapfaas-node"] == node_id
    conn = Connection(server.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)
    with pytest.raises(urllib.error.HTTPError) as refused:
        conn.signed_request("POST", "/snapfaas/v1/cluster/functions/single-node/invocations", b"{}")
    assert refused.value.code == 403 and "not a cluster node" in refused.value.read().decode()
    view = json.loads(conn.signed_get("/snapfaas/v1/cluster-status"))
    assert view["NodeId"] == node_id and not view["Clustered"]
    assert [(n["NodeId"], n["State"], n["Capacity"]) for n in view["Nodes"]] == [(node_id, "live", 32)]
