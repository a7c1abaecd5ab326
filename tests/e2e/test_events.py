"""Asynchronous invocations end to end: retries under throttling and not-ready versions, function
errors and MaximumRetryAttempts, event age, destinations (file and function), the queue cap,
fairness between functions, the event invoke config API and a daemon SIGKILL.

Runs are counted in the function's own log (one ``START RequestId: <id>`` line per run): it is
written by the daemon, outside the sandbox, whatever the sandbox's network can reach. The
server runs with ``--event-retry-base 0.05`` (every retry delay is 1/20 of Lambda's: 3 s and
6 s between function-error retries, backoff from 50 ms to 15 s) and a queue cap of 60 events.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import sqlite3
import time
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, run_server
from tests.e2e.snapstart_support import SNAPSTART, wait_for

ARN = "arn:aws:lambda:us-east-1:000000000000:function:"
FILE_ARN = "arn:aws:snapfaas:us-east-1:000000000000:file/"
QUEUE_MAX = 60
AGED_S = 45  # how much of its 60 s maximum age the aged event spends with the server down
APP = """
import json, time

def handler(event, context):
    event = event or {}
    print("event", json.dumps(event))
    time.sleep(event.get("sleep", 0))
    if event.get("fail"):
        raise RuntimeError("failing on purpose: " + str(event.get("fail")))
    return {"ok": event.get("n")}
"""


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    base = tmp_path_factory.mktemp("events")
    yield from run_server(processes, base, ["--keep-alive", "60", "--max-environments", "8",
                                            "--event-retry-base", "0.05", "--event-queue-max", str(QUEUE_MAX)])


@pytest.fixture(scope="module")
def lam(server: ServerHandle):  # type: ignore[no-untyped-def]
    return server.client()


# -- helpers ------------------------------------------------------------------------------------
def log_text(server: ServerHandle, name: str) -> str:
    server.flush_logs(name)
    path = server.data_dir / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def runs(server: ServerHandle, name: str, request_id: str) -> int:
    return log_text(server, name).count(f"START RequestId: {request_id} ")


def stored(server: ServerHandle, sql: str = "SELECT COUNT(*) FROM events", *args: object) -> int:
    db = sqlite3.connect(f"file:{server.data_dir / 'events.db'}?mode=ro", uri=True)
    try:
        return int(db.execute(sql, args).fetchone()[0] or 0)
    finally:
        db.close()


def send(lam, name: str, payload: object, qualifier: str | None = None) -> str:  # type: ignore[no-untyped-def]
    kwargs = {"Qualifier": qualifier} if qualifier else {}
    response = lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(payload).encode(), **kwargs)
    assert response["StatusCode"] == 202
    return str(response["ResponseMetadata"]["RequestId"])


def records(server: ServerHandle, name: str) -> list[dict]:
    path = server.data_dir / "destinations" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_all_ran_once(server: ServerHandle, name: str, ids: list[str], timeout: float = 120) -> None:
    wait_for(lambda: all(runs(server, name, rid) >= 1 for rid in ids), timeout, f"every event of {name} to run")
    wait_for(lambda: stored(server, "SELECT COUNT(*) FROM events WHERE function=?", name) == 0, 30,
             f"{name}'s events to leave the queue")
    assert [runs(server, name, rid) for rid in ids] == [1] * len(ids)


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, dict]:
    response = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response


# -- the event invoke config API ------------------------------------------------------------------
def test_event_invoke_config_lifecycle(server: ServerHandle, lam) -> None:
    create(lam, "cfg", {"app.py": APP})
    create(lam, "cfgsink", {"app.py": APP})
    version = lam.publish_version(FunctionName="cfg")["Version"]
    lam.create_alias(FunctionName="cfg", Name="live", FunctionVersion=version)
    put = lam.put_function_event_invoke_config(FunctionName="cfg", MaximumRetryAttempts=1,
                                               DestinationConfig={"OnFailure": {"Destination": FILE_ARN + "cfg"}})
    assert put["FunctionArn"] == f"{ARN}cfg:$LATEST"
    assert put["MaximumRetryAttempts"] == 1 and "MaximumEventAgeInSeconds" not in put
    assert put["DestinationConfig"] == {"OnSuccess": {}, "OnFailure": {"Destination": FILE_ARN + "cfg"}}
    assert abs(put["LastModified"].timestamp() - time.time()) < 600
    updated = lam.update_function_event_invoke_config(FunctionName="cfg", MaximumEventAgeInSeconds=600)
    assert (updated["MaximumRetryAttempts"], updated["MaximumEventAgeInSeconds"]) == (1, 600)
    assert updated["DestinationConfig"]["OnFailure"] == {"Destination": FILE_ARN + "cfg"}
    lam.put_function_event_invoke_config(FunctionName=f"cfg:{version}", MaximumEventAgeInSeconds=120)
    lam.put_function_event_invoke_config(FunctionName="cfg", Qualifier="live",
                                         DestinationConfig={"OnSuccess": {"Destination": ARN + "cfgsink"}})
    got = lam.get_function_event_invoke_config(FunctionName=f"{ARN}cfg:live")
    assert got["DestinationConfig"]["OnSuccess"] == {"Destination": ARN + "cfgsink"}
    listed = lam.list_function_event_invoke_configs(FunctionName="cfg")["FunctionEventInvokeConfigs"]
    assert [c["FunctionArn"] for c in listed] == [f"{ARN}cfg:$LATEST", f"{ARN}cfg:{version}", f"{ARN}cfg:live"]
    page = lam.list_function_event_invoke_configs(FunctionName="cfg", MaxItems=2)
    assert len(page["FunctionEventInvokeConfigs"]) == 2 and page["NextMarker"]
    lam.delete_function_event_invoke_config(FunctionName="cfg", Qualifier="live")
    with pytest.raises(ClientError) as exc:
        lam.get_function_event_invoke_config(FunctionName="cfg", Qualifier="live")
    assert error_of(exc)[:2] == (404, "ResourceNotFoundException")
    assert error_of(exc)[2]["Error"]["Message"] == f"The function {ARN}cfg:live doesn't have an EventInvokeConfig"
    lam.delete_function(FunctionName="cfg")  # configs go with the function
    create(lam, "cfg", {"app.py": APP})
    assert lam.list_function_event_invoke_configs(FunctionName="cfg")["FunctionEventInvokeConfigs"] == []


def test_event_invoke_config_errors_are_lambdas(server: ServerHandle) -> None:
    raw = server.client(parameter_validation=False)
    cases = [
        (dict(FunctionName="cfgsink", MaximumRetryAttempts=3), 400, "ValidationException",
         "1 validation error detected: Value '3' at 'maximumRetryAttempts' failed to satisfy constraint: "
         "Member must have value less than or equal to 2"),
        (dict(FunctionName="cfgsink", MaximumEventAgeInSeconds=30), 400, "ValidationException",
         "1 validation error detected: Value '30' at 'maximumEventAgeInSeconds' failed to satisfy constraint: "
         "Member must have value greater than or equal to 60"),
        (dict(FunctionName="nosuch"), 400, "InvalidParameterValueException",
         "You must specify at least one of error handling or destination setting."),
        (dict(FunctionName="nosuch", MaximumRetryAttempts=1), 404, "ResourceNotFoundException",
         "The function doesn't exist."),
        (dict(FunctionName="cfgsink", DestinationConfig={"OnSuccess": {"Destination": ARN + "cfgsink"}}), 400,
         "InvalidParameterValueException", "You can't specify the function as a destination for itself."),
        (dict(FunctionName="cfgsink", DestinationConfig={"OnSuccess": {"Destination": ARN + "doesnotexist"}}), 400,
         "InvalidParameterValueException", f"The destination ARN {ARN}doesnotexist is invalid."),
        (dict(FunctionName="cfgsink", DestinationConfig={"OnFailure": {"Destination": FILE_ARN + "../../etc/x"}}),
         400, "InvalidParameterValueException", None),
        (dict(FunctionName="cfgsink:1", Qualifier="$LATEST", MaximumRetryAttempts=1), 400,
         "InvalidParameterValueException", "The derived qualifier from the function name does not match the specified qualifier."),
    ]
    for kwargs, status, code, message in cases:
        with pytest.raises(ClientError) as exc:
            raw.put_function_event_invoke_config(**kwargs)
        got_status, got_code, response = error_of(exc)
        assert (got_status, got_code) == (status, code), kwargs
        if message is not None:
            assert response["Error"]["Message"] == message
    assert not (server.data_dir / "destinations").exists()
    with pytest.raises(ClientError) as exc:
        raw.update_function_event_invoke_config(FunctionName="cfgsink", MaximumRetryAttempts=0)
    assert error_of(exc)[2]["Error"]["Message"] == f"The function {ARN}cfgsink:$LATEST doesn't have an EventInvokeConfig"
    assert invoke_json(raw, "cfgsink", {"n": 1})[1] == {"ok": 1}  # still serving


# -- retries ----------------------------------------------------------------------------------------
def test_events_throttled_by_a_busy_reserved_slot_run_once_when_it_frees(server: ServerHandle, lam) -> None:
    create(lam, "slot", {"app.py": APP}, Timeout=60)
    lam.put_function_concurrency(FunctionName="slot", ReservedConcurrentExecutions=1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(invoke_json, lam, "slot", {"sleep": 6, "n": "blocker"})
        wait_for(lambda: "START RequestId" in log_text(server, "slot"), 60, "the blocking invocation to start")
        ids = [send(lam, "slot", {"n": i}) for i in range(4)]
        # throttled and retried (the stored retry count grows), not run, not dropped
        wait_for(lambda: stored(server, "SELECT MAX(retries) FROM events WHERE function='slot'") >= 2, 30,
                 "the queued events to be throttled and retried")
        assert all(runs(server, "slot", rid) == 0 for rid in ids)
        assert blocker.result(timeout=90)[1] == {"ok": "blocker"}
    wait_all_ran_once(server, "slot", ids)
    assert "EVENT_DROPPED" not in log_text(server, "slot")


def test_a_big_throttled_backlog_does_not_hold_up_another_function(server: ServerHandle, lam) -> None:
    create(lam, "flood", {"app.py": APP})
    create(lam, "prompt", {"app.py": APP})
    lam.put_function_concurrency(FunctionName="flood", ReservedConcurrentExecutions=0)
    flood = [send(lam, "flood", {"n": i}) for i in range(30)]
    prompt = [send(lam, "prompt", {"n": i}) for i in range(3)]
    wait_all_ran_once(server, "prompt", prompt)
    assert stored(server, "SELECT COUNT(*) FROM events WHERE function='flood'") == 30
    assert all(runs(server, "flood", rid) == 0 for rid in flood)
    lam.delete_function_concurrency(FunctionName="flood")
    wait_all_ran_once(server, "flood", flood, timeout=180)


def test_events_for_a_pending_snapstart_version_run_once_it_is_active(server: ServerHandle, lam) -> None:
    slow_init = APP + "\ntime.sleep(4)  # init (snapshotted) outlasts the sends below\n"
    create(lam, "snappy", {"app.py": slow_init}, SnapStart=SNAPSTART, Timeout=30)
    published = lam.publish_version(FunctionName="snappy")
    assert published["State"] == "Pending"
    ids = [send(lam, "snappy", {"n": i}, qualifier=published["Version"]) for i in range(3)]
    config = lam.get_function_configuration(FunctionName="snappy", Qualifier=published["Version"])
    assert config["State"] == "Pending", "test premise: the events were accepted while the version was Pending"
    wait_all_ran_once(server, "snappy", ids, timeout=240)
    assert lam.get_function_configuration(FunctionName="snappy", Qualifier="1")["State"] == "Active"
    for rid in ids:
        assert f"START RequestId: {rid} Version: 1\n" in log_text(server, "snappy")


def test_function_errors_are_retried_then_recorded_in_the_file_destination(server: ServerHandle, lam) -> None:
    create(lam, "failing", {"app.py": APP})
    lam.put_function_event_invoke_config(FunctionName="failing",
                                         DestinationConfig={"OnFailure": {"Destination": FILE_ARN + "failures"}})
    rid = send(lam, "failing", {"fail": "always", "n": 7})
    wait_for(lambda: any(r["requestContext"]["requestId"] == rid for r in records(server, "failures")), 120,
             "the failure record")
    assert runs(server, "failing", rid) == 3  # MaximumRetryAttempts (default 2) + 1
    [record] = [r for r in records(server, "failures") if r["requestContext"]["requestId"] == rid]
    assert record["version"] == "1.0" and record["timestamp"].endswith("Z")
    assert record["requestContext"] == {"requestId": rid, "functionArn": f"{ARN}failing:$LATEST",
                                        "condition": "RetriesExhausted", "approximateInvokeCount": 3}
    assert record["requestPayload"] == {"fail": "always", "n": 7}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    assert record["responsePayload"]["errorMessage"] == "failing on purpose: always"
    drop = [line for line in log_text(server, "failing").splitlines() if "EVENT_DROPPED" in line]
    assert len(drop) == 1 and f"RequestId: {rid}" in drop[0] and "Reason: RetriesExhausted" in drop[0]
    assert "Attempts: 3" in drop[0]
    daemon_log = server.log_path.read_text()
    assert f"event {rid} for failing:$LATEST dropped (RetriesExhausted)" in daemon_log


def test_failure_and_success_records_go_to_a_destination_function(server: ServerHandle, lam) -> None:
    create(lam, "sink", {"app.py": APP})
    create(lam, "once", {"app.py": APP})
    lam.put_function_event_invoke_config(FunctionName="once", MaximumRetryAttempts=0,
                                         DestinationConfig={"OnFailure": {"Destination": ARN + "sink"},
                                                            "OnSuccess": {"Destination": FILE_ARN + "successes"}})
    failed = send(lam, "once", {"fail": "once"})
    succeeded = send(lam, "once", {"n": 1})
    wait_for(lambda: f'"requestId": "{failed}"' in log_text(server, "sink"), 60, "the record's run in the sink")
    assert runs(server, "once", failed) == 1
    line = next(l for l in log_text(server, "sink").splitlines() if f'"requestId": "{failed}"' in l)
    record = json.loads(line.split("event ", 1)[1])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["requestPayload"] == {"fail": "once"}
    wait_for(lambda: records(server, "successes"), 60, "the success record")
    [success] = records(server, "successes")
    assert success["requestContext"]["requestId"] == succeeded
    assert success["requestContext"]["condition"] == "Success"
    assert success["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert success["responsePayload"] == {"ok": 1}


def test_an_event_too_old_is_dropped_logged_and_recorded(server: ServerHandle, lam) -> None:
    create(lam, "aged", {"app.py": APP})
    lam.put_function_concurrency(FunctionName="aged", ReservedConcurrentExecutions=0)
    lam.put_function_event_invoke_config(FunctionName="aged", MaximumEventAgeInSeconds=60,
                                         DestinationConfig={"OnFailure": {"Destination": FILE_ARN + "aged"}})
    rid = send(lam, "aged", {"n": "old"})
    # rather than wait out most of the 60 s, the event ages while the server is down: its stored
    # enqueue time (which a restart keeps, as it keeps the event) is moved back by AGED_S, so it
    # reaches its maximum age after the remaining seconds of real throttled retries
    server.stop()
    db = sqlite3.connect(server.data_dir / "events.db")
    try:
        with db:
            moved = db.execute("UPDATE events SET enqueued_at = ? WHERE request_id = ?", (time.time() - AGED_S, rid))
            assert moved.rowcount == 1, "the event is stored while the server is down"
    finally:
        db.close()
    server.start()
    wait_for(lambda: records(server, "aged"), 180, "the EventAgeExceeded record")
    [record] = records(server, "aged")
    assert record["requestContext"] == {"requestId": rid, "functionArn": f"{ARN}aged:$LATEST",
                                        "condition": "EventAgeExceeded", "approximateInvokeCount": 0}
    assert record["requestPayload"] == {"n": "old"} and "responseContext" not in record
    assert runs(server, "aged", rid) == 0
    [drop] = [line for line in log_text(server, "aged").splitlines() if "EVENT_DROPPED" in line]
    assert f"RequestId: {rid}\tReason: EventAgeExceeded\tAttempts: 0\t" in drop
    # retried with exponential backoff (50 ms doubling: about eight probes in the last 15 s), not
    # hammered (every 50 ms would be some 300)
    retries = int(drop.split("Retries: ")[1].split("\t")[0])
    assert 2 <= retries <= 40, drop
    assert f"event {rid} for aged:$LATEST dropped (EventAgeExceeded)" in server.log_path.read_text()


# -- the cap, deletion, a crash -------------------------------------------------------------------
def test_the_queue_cap_answers_429_and_deleting_the_function_drops_its_events(server: ServerHandle, lam) -> None:
    create(lam, "capped", {"app.py": APP})
    lam.put_function_concurrency(FunctionName="capped", ReservedConcurrentExecutions=0)
    wait_for(lambda: stored(server) == 0, 60, "the queue to drain from earlier tests")
    accepted = [send(lam, "capped", {"n": i}) for i in range(QUEUE_MAX)]
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName="capped", InvocationType="Event", Payload=b'{"n": "over"}')
    status, code, response = error_of(exc)
    assert (status, code) == (429, "TooManyRequestsException")
    assert response["Reason"] == "CallerRateLimitExceeded"
    assert "queue" in response["message"] and str(QUEUE_MAX) in response["message"]
    assert stored(server) == QUEUE_MAX  # the refused event was not stored
    assert invoke_json(lam, "prompt", {"n": "sync"})[1] == {"ok": "sync"}  # synchronous invokes still served
    lam.delete_function(FunctionName="capped")
    wait_for(lambda: stored(server) == 0, 30, "the deleted function's events to be dropped")
    daemon_log = server.log_path.read_text()
    assert all(f"event {rid} for capped:$LATEST dropped (FunctionDeleted)" in daemon_log for rid in accepted)
    assert send(lam, "prompt", {"n": "after"})  # room again


def test_queued_events_survive_sigkill_and_run_once(server: ServerHandle, lam) -> None:
    create(lam, "durable", {"app.py": APP})
    lam.put_function_concurrency(FunctionName="durable", ReservedConcurrentExecutions=0)
    ids = [send(lam, "durable", {"n": i}) for i in range(5)]
    server.restart(signal.SIGKILL)
    lam = server.client()
    assert stored(server, "SELECT COUNT(*) FROM events WHERE function='durable'") == 5
    assert all(runs(server, "durable", rid) == 0 for rid in ids)
    lam.delete_function_concurrency(FunctionName="durable")
    wait_all_ran_once(server, "durable", ids)
