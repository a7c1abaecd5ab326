"""`snapfaas logs` against a real server: --follow prints lines written after it started,
--request-id/--version/--since select, and a follow ends cleanly when the server stops."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ProcessFactory, ServerHandle, create, run_server
from tests.e2e.snapstart_support import wait_for

APP = """
def handler(event, context):
    print("marker", event["marker"], context.aws_request_id)
    return {"ok": True}
"""
NAME = "chatty"


@pytest.fixture(scope="module")
def own_server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from run_server(processes, tmp_path_factory.mktemp("logs-server"), ["--keep-alive", "60"])


@pytest.fixture(scope="module")
def fn(own_server: ServerHandle) -> str:
    create(own_server.client(), NAME, {"app.py": APP}, Runtime="python3.11")
    return NAME


def cli(server: ServerHandle, *args: str) -> list[str]:
    return [sys.executable, "-m", "snapfaas", "logs", *args, "--endpoint-url", server.endpoint]


def printed(out: Path, needle: str) -> str:
    """The output once it holds `needle` (fails after 30 s)."""
    return wait_for(lambda: needle in out.read_text() and out.read_text(), 30, f"the follow to print {needle!r}")


def invoke(server: ServerHandle, marker: str, qualifier: str | None = None) -> str:
    extra = {"Qualifier": qualifier} if qualifier else {}
    response = server.client().invoke(FunctionName=NAME, Payload=f'{{"marker": "{marker}"}}'.encode(), **extra)
    response["Payload"].read()
    return response["ResponseMetadata"]["RequestId"]


def test_follow_prints_a_line_written_after_it_started(own_server: ServerHandle, fn: str, processes: ProcessFactory,
                                                        tmp_path: Path) -> None:
    invoke(own_server, "old-line")
    out = tmp_path / "follow.out"
    proc = processes.start(cli(own_server, fn, "--follow", "-n", "0", "--since", "10m"), out, own_server.env())
    # the follow is connected once the old line was printed (it is selected by --since)
    wait_for(lambda: "marker old-line" in out.read_text(), 30, "the follow to print the existing line")
    marker = uuid.uuid4().hex
    request_id = invoke(own_server, marker)
    printed(out, f"marker {marker} {request_id}")
    text = printed(out, f"REPORT RequestId: {request_id}")
    assert proc.poll() is None, text  # still following
    processes.stop(proc)


def test_request_id_and_version_select(own_server: ServerHandle, fn: str) -> None:
    first = invoke(own_server, "first-of-two")
    second = invoke(own_server, "second-of-two")
    result = subprocess.run(cli(own_server, fn, "--request-id", first, "-n", "0"), capture_output=True, text=True,
                            env=own_server.env(), timeout=60, check=True)
    assert f"START RequestId: {first}" in result.stdout and "marker first-of-two" in result.stdout
    assert f"REPORT RequestId: {first}" in result.stdout
    assert second not in result.stdout and "second-of-two" not in result.stdout
    none = subprocess.run(cli(own_server, fn, "--version", "7", "-n", "0"), capture_output=True, text=True,
                          env=own_server.env(), timeout=60, check=True)
    assert none.stdout == ""
    latest = subprocess.run(cli(own_server, fn, "--version", "$LATEST", "-n", "3"), capture_output=True, text=True,
                            env=own_server.env(), timeout=60, check=True)
    assert len(latest.stdout.splitlines()) == 3 and f"REPORT RequestId: {second}" in latest.stdout


def test_bad_since_is_a_clear_error(own_server: ServerHandle, fn: str) -> None:
    result = subprocess.run(cli(own_server, fn, "--since", "yesterday"), capture_output=True, text=True,
                            env=own_server.env(), timeout=60)
    assert result.returncode != 0
    assert "400" in result.stderr and "expected a duration like 30s" in result.stderr


def test_a_follow_ends_when_the_server_stops(own_server: ServerHandle, fn: str, processes: ProcessFactory,
                                             tmp_path: Path) -> None:
    out = tmp_path / "ending.out"
    proc = processes.start(cli(own_server, fn, "--follow", "-n", "1"), out, own_server.env())
    wait_for(lambda: out.read_text().strip(), 30, "the follow to print the last line")
    own_server.stop()  # a follower must not hold the shutdown
    assert proc.wait(60) == 0
