"""The worker against one shared server: scale-out, warm reuse, reserved concurrency, timeouts,
crashes, and the execution log as the CLI shows it.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ACCESS_KEY, SECRET_KEY, ServerHandle, create, invoke_json, make_zip

SLEEPER = """
import os, signal, time, uuid
ENV_ID = uuid.uuid4().hex

def handler(event, context):
    event = event or {}
    if event.get("exit") is not None:
        print("exiting now", flush=True)
        os._exit(event["exit"])
    if event.get("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(event.get("sleep", 0))
    return {"env_id": ENV_ID, "request_id": context.aws_request_id}
"""
INIT_RE = re.compile(r"\tInit Duration: \d+\.\d{2} ms\t")


def tail_of(response: dict) -> str:
    return base64.b64decode(response["LogResult"]).decode()


def parallel(calls: list, workers: int | None = None) -> list:  # type: ignore[type-arg]
    """Run zero-argument callables at once; return each result or the exception it raised."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        out = []
        for future in futures:
            try:
                out.append(future.result(timeout=120))
            except ClientError as exc:
                out.append(exc)
        return out


def healthy(server: ServerHandle) -> bool:
    with urllib.request.urlopen(server.endpoint + "/snapfaas/v1/health", timeout=5) as response:
        return response.status == 200


# -- scale-out and reuse ------------------------------------------------------------------------


def test_parallel_invokes_scale_out_to_distinct_environments(server: ServerHandle, lam) -> None:
    create(lam, "fanout", {"app.py": SLEEPER})
    results = parallel([lambda: invoke_json(lam, "fanout", {"sleep": 1.5}) for _ in range(8)])
    bodies = [body for response, body in results]
    assert all("FunctionError" not in response for response, _ in results), bodies
    assert len({b["env_id"] for b in bodies}) == 8
    assert len({b["request_id"] for b in bodies}) == 8
    assert len(server.runc_containers()) >= 8, "idle environments are kept warm after the burst"
    # the warm pool now serves a second burst without new environments
    again = parallel([lambda: invoke_json(lam, "fanout", {"sleep": 0.5}) for _ in range(4)])
    assert {b["env_id"] for _, b in again} <= {b["env_id"] for b in bodies}


def test_serial_invokes_reuse_one_warm_environment(lam) -> None:
    create(lam, "serial", {"app.py": SLEEPER})
    env_ids, inits = set(), []
    for _ in range(4):
        response, body = invoke_json(lam, "serial", {}, LogType="Tail")
        env_ids.add(body["env_id"])
        inits.append(bool(INIT_RE.search(tail_of(response))))
    assert len(env_ids) == 1
    assert inits == [True, False, False, False]


def test_updating_code_retires_the_warm_environment(lam) -> None:
    create(lam, "updated", {"app.py": SLEEPER})
    _, before = invoke_json(lam, "updated")
    lam.update_function_code(FunctionName="updated", ZipFile=make_zip({"app.py": SLEEPER + "\nVERSION_TAG = 2\n"}))
    lam.get_waiter("function_updated_v2").wait(FunctionName="updated", WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    _, after = invoke_json(lam, "updated")
    assert after["env_id"] != before["env_id"]


# -- reserved concurrency -----------------------------------------------------------------------


def assert_throttled(exc: object, reason: str) -> None:
    assert isinstance(exc, ClientError), exc
    response = exc.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert response["Error"]["Code"] == "TooManyRequestsException"
    assert response["Reason"] == reason
    assert response["Type"] == "User"
    assert response["message"] == "Rate Exceeded."


def test_reserved_concurrency_one_throttles_the_second_parallel_invoke(lam) -> None:
    create(lam, "reserved1", {"app.py": SLEEPER})
    lam.put_function_concurrency(FunctionName="reserved1", ReservedConcurrentExecutions=1)
    invoke_json(lam, "reserved1")  # warm up so both calls overlap inside the handler
    results = parallel([lambda: invoke_json(lam, "reserved1", {"sleep": 2}) for _ in range(2)])
    errors = [r for r in results if isinstance(r, ClientError)]
    assert len(errors) == 1, results
    assert_throttled(errors[0], "ReservedFunctionConcurrentInvocationLimitExceeded")
    lam.delete_function_concurrency(FunctionName="reserved1")
    results = parallel([lambda: invoke_json(lam, "reserved1", {"sleep": 1}) for _ in range(2)])
    assert not [r for r in results if isinstance(r, ClientError)], results


def test_reserved_concurrency_zero_always_throttles(lam) -> None:
    create(lam, "reserved0", {"app.py": SLEEPER})
    lam.put_function_concurrency(FunctionName="reserved0", ReservedConcurrentExecutions=0)
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            lam.invoke(FunctionName="reserved0", Payload=b"{}")
        assert_throttled(exc.value, "ReservedFunctionConcurrentInvocationLimitExceeded")


def test_throttle_does_not_leak_a_concurrency_slot(lam) -> None:
    """After many throttled calls, a function with reserved concurrency 1 can still run."""
    create(lam, "noleak", {"app.py": SLEEPER})
    lam.put_function_concurrency(FunctionName="noleak", ReservedConcurrentExecutions=1)
    results = parallel([lambda: invoke_json(lam, "noleak", {"sleep": 1}) for _ in range(5)])
    assert sum(isinstance(r, ClientError) for r in results) >= 1
    for _ in range(3):
        response, body = invoke_json(lam, "noleak")
        assert "FunctionError" not in response, body


# -- timeouts and crashes -----------------------------------------------------------------------


def test_timeout_kills_the_environment(server: ServerHandle, lam) -> None:
    create(lam, "slowpoke", {"app.py": SLEEPER}, Timeout=1)
    _, warm = invoke_json(lam, "slowpoke")
    response, body = invoke_json(lam, "slowpoke", {"sleep": 5}, LogType="Tail")
    request_id = response["ResponseMetadata"]["RequestId"]
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Sandbox.Timedout",
                    "errorMessage": f"RequestId: {request_id} Error: Task timed out after 1.00 seconds"}
    tail = tail_of(response)
    assert f"END RequestId: {request_id}" in tail and f"REPORT RequestId: {request_id}" in tail
    duration = float(re.search(r"\tDuration: (\d+\.\d{2}) ms", tail).group(1))  # type: ignore[union-attr]
    assert 1000 <= duration < 2500
    response, after = invoke_json(lam, "slowpoke", {}, LogType="Tail")
    assert "FunctionError" not in response
    assert after["env_id"] != warm["env_id"], "a timed-out environment must not be reused"
    assert INIT_RE.search(tail_of(response)), "the invoke after a timeout is a cold start"


@pytest.mark.parametrize(("event", "wording"), [
    ({"exit": 3}, "Runtime exited with error: exit status 3"),
    ({"kill": True}, "Runtime exited with error: signal: killed"),
    ({"exit": 0}, "Runtime exited without providing a reason"),
])
def test_crash_mid_invoke_is_an_exit_error(server: ServerHandle, lam, event: dict, wording: str) -> None:
    name = "crasher"
    try:
        lam.get_function(FunctionName=name)
    except ClientError:
        create(lam, name, {"app.py": SLEEPER})
    _, warm = invoke_json(lam, name)
    response, body = invoke_json(lam, name, event, LogType="Tail")
    request_id = response["ResponseMetadata"]["RequestId"]
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Runtime.ExitError", "errorMessage": f"RequestId: {request_id} Error: {wording}"}
    tail = tail_of(response)
    assert f"END RequestId: {request_id}" in tail
    if "exit" in event:
        assert tail.index("exiting now") < tail.index(f"END RequestId: {request_id}"), "output before a crash is kept"
    assert healthy(server)
    response, after = invoke_json(lam, name)
    assert "FunctionError" not in response
    assert after["env_id"] != warm["env_id"]


def test_environment_that_dies_while_idle_is_not_reused(server: ServerHandle, lam) -> None:
    """A background thread kills the runtime after it answered; the next call gets a fresh one."""
    app = SLEEPER + """
import threading
def late_exit(event, context):
    threading.Timer(0.2, os._exit, args=(7,)).start()
    return {"env_id": ENV_ID}
"""
    create(lam, "idledeath", {"app.py": app}, Handler="app.late_exit")
    before = set(server.runc_containers())
    _, first = invoke_json(lam, "idledeath")
    with_it = set(server.runc_containers())
    assert len(with_it - before) == 1
    deadline = time.monotonic() + 10
    while with_it - before <= set(server.runc_containers()) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for the container to exit on its own
    assert not (with_it - before) <= set(server.runc_containers()), "test premise: the runtime exited while idle"
    response, second = invoke_json(lam, "idledeath")
    assert "FunctionError" not in response, second
    assert second["env_id"] != first["env_id"]


# -- logs through the CLI -----------------------------------------------------------------------


def test_cli_logs_show_the_execution_log(server: ServerHandle, lam) -> None:
    create(lam, "logged", {"app.py": "def handler(e, c):\n    print('cli-visible-line', e['n'])\n    return e\n"})
    ids = [invoke_json(lam, "logged", {"n": n})[0]["ResponseMetadata"]["RequestId"] for n in range(2)]
    env = dict(os.environ, SNAPFAAS_ACCESS_KEY_ID=ACCESS_KEY, SNAPFAAS_SECRET_ACCESS_KEY=SECRET_KEY)
    cli = str(Path(sys.executable).with_name("snapfaas"))
    out = subprocess.run([cli, "logs", "logged", "--endpoint-url", server.endpoint],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    for n, request_id in enumerate(ids):
        assert f"START RequestId: {request_id} Version: $LATEST" in out.stdout
        assert f"END RequestId: {request_id}" in out.stdout
        assert f"cli-visible-line {n}" in out.stdout
    stream = re.search(r"\t(\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]+)\tSTART", out.stdout)
    assert stream is not None, out.stdout
    out = subprocess.run([cli, "logs", "logged", "-n", "2", "--endpoint-url", server.endpoint],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2
    assert out.stdout.splitlines()[-1].split("\t")[2].startswith(f"REPORT RequestId: {ids[-1]}")
    bad = dict(env, SNAPFAAS_SECRET_ACCESS_KEY="wrong")
    out = subprocess.run([cli, "logs", "logged", "--endpoint-url", server.endpoint],
                         capture_output=True, text=True, env=bad, timeout=60)
    assert out.returncode != 0 and "403" in out.stderr


def test_server_log_has_no_tracebacks(server: ServerHandle) -> None:
    assert "Traceback" not in server.log_path.read_text()


def test_invoke_payload_round_trips_unicode_and_size(lam) -> None:
    create(lam, "echo", {"app.py": "def handler(e, c):\n    return e\n"})
    event = {"text": "héllo ✓ " * 1000, "nested": {"list": list(range(100))}}
    response, body = invoke_json(lam, "echo", event)
    assert body == event
    raw = lam.invoke(FunctionName="echo", Payload=json.dumps(event).encode())["Payload"].read()
    assert json.loads(raw) == event
