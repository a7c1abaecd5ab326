"""The Python runtime as Lambda's: the root logging handler (Text and JSON formats, levels),
`print` and logging both in the function's log, LoggingConfig through boto3, the variables of
an on-demand environment (key variables, log group/stream), the nice value of a first and a
warm invocation, and its REPORT billing (Init billed).
Logs are read back through the log API and the `snapfaas logs` CLI.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from snapfaas.client import Connection
from snapfaas.runtime.bootstrap import INVOKE_NICE
from tests.conftest import ACCESS_KEY, SECRET_KEY, ServerHandle, create, invoke_json
from tests.e2e.snapstart_support import report

APP = '''
import json, logging, os
import boto3

logger = logging.getLogger(__name__)
logging.warning("init warning")  # before any invoke: no request id yet

def handler(event, context):
    event = event or {}
    if event.get("lower"):
        logging.getLogger().setLevel(logging.INFO)
    print("printed", context.aws_request_id)
    logging.info("info %s", context.aws_request_id)
    logger.warning("warning from %s", __name__)
    logger.debug("debug line")
    try:
        raise ValueError("broken")
    except ValueError:
        logger.exception("caught\\nover two lines")
    logging.getLogger("svc").error("with extra", extra={"order_id": 42})
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
             "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_FORMAT", "AWS_LAMBDA_LOG_LEVEL")
    out = {"env": {name: os.environ.get(name) for name in names}, "log_stream": context.log_stream_name,
           "log_group": context.log_group_name, "nice": os.getpriority(os.PRIO_PROCESS, 0)}
    if event.get("call"):
        client = boto3.client("lambda")  # key variables: botocore's environment provider
        try:
            client.get_function(FunctionName=context.function_name)
            out["get_function"] = "allowed"
        except client.exceptions.ClientError as exc:
            out["get_function"] = exc.response["Error"]["Code"]
        out["caller_key"] = client._request_signer._credentials.access_key
    return out
'''


def connection(server: ServerHandle) -> Connection:
    return Connection(server.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)


def log_entries(server: ServerHandle, name: str) -> list[str]:
    """The function's log through the log API: one message per entry (timestamp and stream cut)."""
    text = connection(server).signed_get(f"/snapfaas/v1/logs/{name}").decode()
    return [line.split("\t", 2)[2] for line in text.split("\n") if line]


def entries_of(entries: list[str], request_id: str) -> list[str]:
    return [e for e in entries if request_id in e]


@pytest.fixture(scope="module")
def text_function(lam) -> tuple[dict, dict, dict, dict]:  # type: ignore[no-untyped-def]
    """Two invokes of a Text-format function: the cold one at the default level, a warm one after
    lowering the root level to INFO."""
    create(lam, "pylog", {"app.py": APP}, Runtime="python3.11", Timeout=30)
    cold, cold_body = invoke_json(lam, "pylog", {"call": True}, LogType="Tail")
    warm, warm_body = invoke_json(lam, "pylog", {"lower": True}, LogType="Tail")
    assert "FunctionError" not in cold and "FunctionError" not in warm, (cold_body, warm_body)
    return cold, cold_body, warm, warm_body  # type: ignore[return-value]


def text_entry(request_id: str) -> str:
    """Lambda's Text line of a logging record, for `request_id`."""
    return r"\[(?P<level>[A-Z]+)\]\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\t" + re.escape(request_id) + r"\t(?P<message>.*)"


def test_text_format_lines_reach_the_log_like_lambdas(text_function, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    cold, _, warm, _ = text_function
    entries = log_entries(server, "pylog")
    cold_id, warm_id = cold["ResponseMetadata"]["RequestId"], warm["ResponseMetadata"]["RequestId"]
    init = [e for e in entries if e.startswith("[WARNING]") and e.endswith("\tinit warning")]
    assert len(init) == 1 and re.fullmatch(text_entry(""), init[0])  # init: empty request id
    cold_lines = entries_of(entries, cold_id)
    assert f"printed {cold_id}" in cold_lines  # print still reaches the log
    assert not any(f"info {cold_id}" in e for e in cold_lines)  # root stays at WARNING by default
    assert any(re.fullmatch(text_entry(cold_id), e) and e.endswith("\twarning from app") for e in cold_lines)
    assert not any("debug line" in e for e in entries)
    # logger.exception: one entry holding the message's second line and the traceback
    [exception] = [e for e in cold_lines if "\tcaught" in e]
    assert exception.startswith("[ERROR]\t") and "\rover two lines\rTraceback (most recent call last):\r" in exception
    assert exception.endswith("\rValueError: broken")
    warm_lines = entries_of(entries, warm_id)
    assert any(re.fullmatch(text_entry(warm_id), e) and e.endswith(f"\tinfo {warm_id}") for e in warm_lines)
    # the CLI shows the same entries, with an entry's inner lines as lines
    cli = subprocess.run([sys.executable, "-m", "snapfaas", "logs", "pylog", "-n", "200", "--endpoint-url", server.endpoint],
                         capture_output=True, text=True, env={**os.environ, "SNAPFAAS_ACCESS_KEY_ID": ACCESS_KEY,
                                                               "SNAPFAAS_SECRET_ACCESS_KEY": SECRET_KEY}, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert f"printed {cold_id}" in cli.stdout and "\nover two lines\nTraceback (most recent call last):\n" in cli.stdout


def test_on_demand_environment_gets_key_variables_and_log_names(text_function, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    _, body, _, warm_body = text_function
    env = body["env"]
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIA") and env["AWS_SECRET_ACCESS_KEY"] and env["AWS_SESSION_TOKEN"]
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] is None and env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] is None
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/pylog" == body["log_group"]
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\]\w+", env["AWS_LAMBDA_LOG_STREAM_NAME"])
    assert body["log_stream"] == env["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert env["AWS_LAMBDA_LOG_FORMAT"] is None and env["AWS_LAMBDA_LOG_LEVEL"] is None  # Text format
    # the key variables authenticate as the function (authorization then denies GetFunction)
    assert body["caller_key"] == env["AWS_ACCESS_KEY_ID"]
    assert body["get_function"] == "AccessDeniedException"
    # the first invocation runs at the worker's priority, warm ones below it (bootstrap.lower_priority)
    assert body["nice"] == os.getpriority(os.PRIO_PROCESS, 0)
    assert warm_body["nice"] == max(INVOKE_NICE, os.getpriority(os.PRIO_PROCESS, 0))


def test_report_bills_init_on_a_cold_start(text_function) -> None:  # type: ignore[no-untyped-def]
    cold, _, warm, _ = text_function
    fields = report(cold["LogResult"])
    duration, init = float(fields["Duration"].split()[0]), float(fields["Init Duration"].split()[0])
    assert fields["Billed Duration"] == f"{max(1, math.ceil(duration + init))} ms"
    warm_fields = report(warm["LogResult"])
    assert "Init Duration" not in warm_fields
    assert warm_fields["Billed Duration"] == f"{max(1, math.ceil(float(warm_fields['Duration'].split()[0])))} ms"


def test_json_format_with_levels(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    created = create(lam, "pyjson", {"app.py": APP}, Runtime="python3.11", Timeout=30,
                     LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "INFO"})
    assert created["LoggingConfig"] == {"LogFormat": "JSON", "ApplicationLogLevel": "INFO", "SystemLogLevel": "INFO",
                                        "LogGroup": "/aws/lambda/pyjson"}
    response, body = invoke_json(lam, "pyjson", {})
    request_id = response["ResponseMetadata"]["RequestId"]
    assert body["env"]["AWS_LAMBDA_LOG_FORMAT"] == "JSON" and body["env"]["AWS_LAMBDA_LOG_LEVEL"] == "INFO"
    entries = log_entries(server, "pyjson")
    records = [json.loads(e) for e in entries if e.startswith("{")]
    app = [r for r in records if "level" in r]
    by_message = {r["message"]: r for r in app}
    assert by_message["init warning"]["requestId"] == ""
    info = by_message[f"info {request_id}"]  # INFO passes the application level (the root level is set)
    assert (info["level"], info["logger"], info["requestId"]) == ("INFO", "root", request_id)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["timestamp"])
    assert not any(r["message"] == "debug line" for r in app)  # below INFO
    caught = by_message["caught\nover two lines"]
    assert (caught["errorType"], caught["errorMessage"]) == ("ValueError", "broken") and caught["stackTrace"]
    assert by_message["with extra"]["order_id"] == 42
    assert f"printed {request_id}" in entries  # print stays plain text
    system = {r["type"]: r["record"] for r in records if "type" in r}
    assert system["platform.start"] == {"requestId": request_id, "version": "$LATEST"}
    assert system["platform.initStart"]["initializationType"] == "on-demand"
    metrics = system["platform.report"]["metrics"]
    assert system["platform.report"]["status"] == "success"
    assert metrics["billedDurationMs"] == max(1, math.ceil(metrics["durationMs"] + metrics["initDurationMs"]))
    assert not any(e.startswith(("START ", "END ", "REPORT ")) for e in entries)

    # stricter levels: WARN application logs, WARN system logs (no lifecycle records)
    lam.update_function_configuration(FunctionName="pyjson", LoggingConfig={"ApplicationLogLevel": "WARN", "SystemLogLevel": "WARN"})
    lam.get_waiter("function_updated_v2").wait(FunctionName="pyjson", WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    config = lam.get_function_configuration(FunctionName="pyjson")["LoggingConfig"]
    assert config == {"LogFormat": "JSON", "ApplicationLogLevel": "WARN", "SystemLogLevel": "WARN", "LogGroup": "/aws/lambda/pyjson"}
    response, body = invoke_json(lam, "pyjson", {})
    request_id = response["ResponseMetadata"]["RequestId"]
    assert body["env"]["AWS_LAMBDA_LOG_LEVEL"] == "WARN"
    later = [json.loads(e) for e in entries_of(log_entries(server, "pyjson"), request_id) if e.startswith("{")]
    assert {r.get("level") for r in later} == {"WARNING", "ERROR"}
    assert not any("type" in r for r in later)


def test_logging_config_validation_and_round_trip(lam) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as refused:
        create(lam, "pybad", {"app.py": APP}, Runtime="python3.11", LoggingConfig={"LogFormat": "Text", "ApplicationLogLevel": "DEBUG"})
    assert refused.value.response["Error"]["Message"] == (
        'LogLevel is not supported when LogFormat is set to "Text". Remove LogLevel from your request or change the '
        'LogFormat to "JSON" and try again.')
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    created = create(lam, "pyround", {"app.py": APP}, Runtime="python3.11", LoggingConfig={"LogGroup": "/custom/group"})
    assert created["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": "/custom/group"}
    lam.update_function_configuration(FunctionName="pyround", LoggingConfig={"LogFormat": "JSON", "SystemLogLevel": "DEBUG"})
    lam.get_waiter("function_updated_v2").wait(FunctionName="pyround", WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    assert lam.get_function(FunctionName="pyround")["Configuration"]["LoggingConfig"] == {
        "LogFormat": "JSON", "ApplicationLogLevel": "INFO", "SystemLogLevel": "DEBUG", "LogGroup": "/custom/group"}
    lam.update_function_configuration(FunctionName="pyround", LoggingConfig={"LogFormat": "Text"})
    lam.get_waiter("function_updated_v2").wait(FunctionName="pyround", WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    assert lam.get_function_configuration(FunctionName="pyround")["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": "/custom/group"}
    _, body = invoke_json(lam, "pyround", {})
    assert body["env"]["AWS_LAMBDA_LOG_GROUP_NAME"] == "/custom/group"
    assert lam.publish_version(FunctionName="pyround")["LoggingConfig"]["LogFormat"] == "Text"
