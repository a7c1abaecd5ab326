"""AWS's SnapStart semantics and the operator's SnapStart tools, through a real server, real
restores and the real CLI:

- no reseed after restore by default (restored copies share RNG states, as on AWS), and
  ``--reseed-after-restore`` to turn it on;
- ``snapfaas snapstart verify``: findings (exit 1) for a function that captures entropy at init,
  none (exit 0) for a clean one; its copies never serve invokes and are gone afterwards;
- ``snapfaas snapshot expire``: Inactive now, SnapStartNotReadyException, re-created;
- AWS's SnapStart runtime list (python3.12+) and ephemeral storage limit on a default server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import ROLE, ProcessFactory, ServerHandle, create, invoke_json, make_zip, require_root, run_servers
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, publish, wait_state

ENTROPY_APP = """
import os, random, ssl, time, uuid

DRAWN = random.random()
TOKEN = uuid.uuid4()
STARTED = time.time()
LIMIT = 10
ssl.RAND_bytes(16)  # OpenSSL's DRBG is instantiated in the snapshot
# this environment's credentials (delivered either way), captured at init
AUTH_TOKEN = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN") or os.environ.get("AWS_SESSION_TOKEN")


def handler(event, context):
    return {"drawn": DRAWN, "now": random.random()}
"""
CLEAN_APP = """
import os, uuid

TABLE = "orders"


def handler(event, context):
    return {"id": uuid.uuid4().hex, "nonce": os.urandom(8).hex(), "table": TABLE}
"""
PLAIN_APP = """
import os
def handler(event, context):
    return {"init_type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"]}
"""


@pytest.fixture(scope="module")
def servers(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerHandle]]:
    """The module's three servers, started (and stopped) together."""
    require_root()
    specs = {"verify": (tmp_path_factory.mktemp("verify"), ["--keep-alive", "60"]),
             "reseed": (tmp_path_factory.mktemp("reseed"), ["--keep-alive", "60", "--reseed-after-restore"]),
             "awslist": (tmp_path_factory.mktemp("awslist"), ["--keep-alive", "30"])}
    yield from run_servers(processes, specs, aws_snapstart_runtimes=frozenset({"awslist"}))


@pytest.fixture(scope="module")
def server(servers: dict[str, ServerHandle]) -> ServerHandle:
    return servers["verify"]


@pytest.fixture(scope="module")
def reseeding(servers: dict[str, ServerHandle]) -> ServerHandle:
    return servers["reseed"]


@pytest.fixture(scope="module")
def aws_default(servers: dict[str, ServerHandle]) -> ServerHandle:
    """A server with the default SnapStart runtime list (AWS's)."""
    return servers["awslist"]


def cli(server: ServerHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "snapfaas", *args, "--endpoint-url", server.endpoint],
                          capture_output=True, text=True, env=server.env(), timeout=900)


def verify(server: ServerHandle, target: str, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    run = cli(server, "snapstart", "verify", target, "--json", *extra)
    assert run.returncode in (0, 1), run.stderr + run.stdout
    return run.returncode, json.loads(run.stdout)


def deploy(lam, name: str, code: str) -> None:  # type: ignore[no-untyped-def]
    create(lam, name, {"app.py": code}, Runtime="python3.11", SnapStart=SNAPSTART, Timeout=15)
    publish(lam, name)


def findings(report: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {f["Name"]: f["Kind"] for f in report["Findings"]}


# -- verify and reseeding --------------------------------------------------------------------
def test_verify_reports_entropy_captured_in_the_snapshot(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    deploy(lam, "entropy", ENTROPY_APP)
    before = set(server.runc_containers())
    code, report = verify(server, "entropy:1", "--copies", "3")
    assert code == 1, report
    assert (report["FunctionName"], report["Version"], report["Copies"]) == ("entropy", "1", 3)
    assert report["ReseedAfterRestore"] is False and report["Problems"] == [], report
    assert findings(report) == {
        "random (global state)": "random-state",  # the handler's random.random() is the same in every copy
        "OpenSSL (ssl.RAND_bytes)": "openssl",
        "response": "response",
        "app.DRAWN": "value", "app.TOKEN": "uuid", "app.STARTED": "timestamp", "app.AUTH_TOKEN": "credential",
    }, report  # LIMIT (a constant) is identical everywhere by design: not a finding
    # every copy is gone, and none was handed to an invoke: the next one restores its own environment
    assert set(server.runc_containers()) <= before
    response, body = invoke_json(lam, "entropy", {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])


def test_reseed_after_restore_makes_rng_state_findings_disappear(reseeding: ServerHandle) -> None:
    lam = reseeding.client()
    deploy(lam, "entropy", ENTROPY_APP)
    code, report = verify(reseeding, "entropy:1", "--copies", "3")
    assert code == 1 and report["ReseedAfterRestore"] is True, report
    # the handler's draws now differ per copy; values captured at init are still the snapshot's
    assert findings(report) == {"app.DRAWN": "value", "app.TOKEN": "uuid", "app.STARTED": "timestamp",
                                "app.AUTH_TOKEN": "credential"}, report


def test_verify_of_a_clean_function_exits_0_and_prints_a_table(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    deploy(lam, "clean", CLEAN_APP)
    code, report = verify(server, "clean:1")
    assert code == 0 and report["Findings"] == [] and report["Problems"] == [], json.dumps(report)
    assert report["Copies"] == 3 and report["Checked"] > 0
    table = cli(server, "snapstart", "verify", "entropy:1", "--copies", "2")
    assert table.returncode == 1, table.stderr
    assert "random (global state)" in table.stdout and "app.TOKEN" in table.stdout


def test_verify_refuses_what_is_not_a_snapstart_version(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "ondemand", {"app.py": PLAIN_APP}, Runtime="python3.11")
    lam.publish_version(FunctionName="ondemand")
    for target, words in (("ondemand:1", "does not use SnapStart"), ("ondemand", "published version"),
                          ("missing:1", "Function not found")):
        run = cli(server, "snapstart", "verify", target)
        assert run.returncode not in (0, 1), run.stdout
        assert words in run.stderr, run.stderr


# -- expire ----------------------------------------------------------------------------------
def test_snapshot_expire_makes_the_version_inactive_until_recreated(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    deploy(lam, "expiring", PLAIN_APP)
    response, body = invoke_json(lam, "expiring", {}, Qualifier="1")
    assert body == {"init_type": "snap-start"}  # warm environment left in the pool

    run = cli(server, "snapshot", "expire", "expiring:1")
    assert run.returncode == 0, run.stderr
    assert "Inactive" in run.stdout
    config = lam.get_function_configuration(FunctionName="expiring", Qualifier="1")
    assert (config["State"], config["StateReasonCode"]) == ("Inactive", "Idle")
    # the warm environment was retired: the invoke is refused the way AWS refuses an Inactive version
    with pytest.raises(lam.exceptions.SnapStartNotReadyException) as not_ready:
        invoke_json(lam, "expiring", {}, Qualifier="1")
    assert not_ready.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    final = wait_state(lam, "expiring", "1", ("Active", "Failed"), timeout=60)
    assert final["State"] == "Active" and final["SnapStart"]["OptimizationStatus"] == "On"
    response, body = invoke_json(lam, "expiring", {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    assert body == {"init_type": "snap-start"}
    # only an Active SnapStart version can expire
    again = cli(server, "snapshot", "expire", "expiring")
    assert again.returncode != 0 and "published version" in again.stderr, again.stderr


# -- AWS's SnapStart restrictions on a default server -------------------------------------------
def test_default_server_refuses_snapstart_on_python311_with_aws_message(aws_default: ServerHandle) -> None:
    lam = aws_default.client()
    message = "python3.11 is not supported for SnapStart enabled functions."
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as refused:
        lam.create_function(FunctionName="old", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                            Code={"ZipFile": make_zip({"app.py": PLAIN_APP})}, SnapStart=SNAPSTART)
    assert refused.value.response["Error"]["Message"] == message
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert lam.list_functions()["Functions"] == []  # nothing stored

    create(lam, "later", {"app.py": PLAIN_APP}, Runtime="python3.11")  # without SnapStart: fine
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as refused:
        lam.update_function_configuration(FunctionName="later", SnapStart=SNAPSTART)
    assert refused.value.response["Error"]["Message"] == message
    assert lam.get_function_configuration(FunctionName="later")["SnapStart"]["ApplyOn"] == "None"


def test_snapstart_refuses_ephemeral_storage_above_512_mb(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as refused:
        lam.create_function(FunctionName="bigtmp", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                            Code={"ZipFile": make_zip({"app.py": PLAIN_APP})}, SnapStart=SNAPSTART,
                            EphemeralStorage={"Size": 1024})
    assert "is not supported for SnapStart enabled functions" in refused.value.response["Error"]["Message"]
    create(lam, "bigtmp", {"app.py": PLAIN_APP}, Runtime="python3.11", EphemeralStorage={"Size": 1024})
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.update_function_configuration(FunctionName="bigtmp", SnapStart=SNAPSTART)
    lam.update_function_configuration(FunctionName="bigtmp", SnapStart=SNAPSTART, EphemeralStorage={"Size": 512})
