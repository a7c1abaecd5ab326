"""Slow clients cost nothing (issue 9, item 3), on a real daemon with short client timeouts.

50 connections each declare a 60 MB CreateFunction body and send 8 MB of it (400 MB in all,
far beyond the memory bound), then stall or abort; unauthenticated (unknown key) and signed
(the operator's key id, current date, forged signature: passes every header check) variants.
The daemon's RSS (``VmRSS`` of its process) must not grow by more than `RSS_BOUND`, stalled
connections must be closed by the server, a function must keep answering meanwhile, and the
daemon log must hold one line per aborted upload and no traceback. A trickled request head is
closed with one log line. Invariants only: deadlines are guards, not timing assertions.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from snapfaas.bench.clients import (SCENARIOS, UNKNOWN_KEY, RssSampler, Scenario, rss_bytes, start_uploads, upload_head,
                                    wait_closed)
from tests.conftest import ACCESS_KEY, ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server

MIB = 1024 * 1024
RSS_BOUND = 100 * MIB  # a memory invariant (400 MB arrive), not a measurement
SENT = 8 * MIB
UPLOADS = 50
DEADLINE_S = 180  # guard against hanging forever
ECHO = {"app.py": "def handler(event, context):\n    return event\n"}


@pytest.fixture(scope="module")
def slow_server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    base = tmp_path_factory.mktemp("slow-clients")
    yield from run_server(processes, base, ["--keep-alive", "60", "--client-header-timeout", "2",
                                            "--client-body-timeout", "2", "--client-idle-timeout", "10"])


@pytest.fixture(scope="module")
def echo(slow_server: ServerHandle) -> str:
    lam = slow_server.client()
    create(lam, "slow-echo", ECHO)
    for _ in range(3):  # warm: the invoke path's memory belongs to the baseline
        assert invoke_json(lam, "slow-echo", {"warm": 1})[1] == {"warm": 1}
    return "slow-echo"


def log_lines(server: ServerHandle, text: str) -> list[str]:
    return [line for line in server.log_path.read_text(errors="replace").splitlines() if text in line]


def wait_for_lines(server: ServerHandle, text: str, count: int) -> list[str]:
    """The daemon log's lines containing `text`, once there are `count` (or the deadline passed)."""
    deadline = time.monotonic() + DEADLINE_S
    while len(log_lines(server, text)) < count and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the daemon's log file
    return log_lines(server, text)


def spool_files(server: ServerHandle) -> list[str]:
    return [p.name for p in (server.data_dir / "uploads").iterdir()]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.label.replace(", ", "-"))
def test_stalled_and_aborted_uploads_leave_memory_flat(slow_server: ServerHandle, echo: str, scenario: Scenario) -> None:
    assert slow_server.proc is not None
    pid = slow_server.proc.pid
    lam = slow_server.client()
    logged_before = len(log_lines(slow_server, "aborted upload from"))
    baseline = rss_bytes(pid)
    with RssSampler(pid) as sampler:
        stalled, sent = start_uploads(slow_server.port, ACCESS_KEY if scenario.signed else UNKNOWN_KEY, scenario.ending,
                                      UPLOADS, SENT)
        assert invoke_json(lam, echo, {"during": scenario.label})[1] == {"during": scenario.label}  # still serving
        closed = wait_closed(stalled, DEADLINE_S)
    assert closed == len(stalled)  # every stalled connection closed by the server
    if scenario.ending == "stall":
        assert len(stalled) == UPLOADS
    if scenario.signed:
        assert sent == UPLOADS * SENT  # the daemon read them all (to check their signatures)...
    assert sampler.peak - baseline < RSS_BOUND, f"RSS {baseline / MIB:.0f} -> {sampler.peak / MIB:.0f} MB"  # ...not into memory
    assert invoke_json(lam, echo, {"after": 1})[1] == {"after": 1}
    if scenario.signed:  # a read upload that stopped is one line; unauthenticated ones were never read
        expected = logged_before + (UPLOADS if scenario.ending == "stall" else 1)
        lines = wait_for_lines(slow_server, "aborted upload from", expected)[logged_before:]
        assert 1 <= len(lines) <= UPLOADS
        if scenario.ending == "stall":
            assert len(lines) == UPLOADS
        assert all("POST /2015-03-31/functions" in line and f"of {60 * MIB} bytes received" in line for line in lines)
    assert "Traceback" not in slow_server.log_path.read_text(errors="replace")
    deadline = time.monotonic() + DEADLINE_S
    while spool_files(slow_server) and time.monotonic() < deadline:
        time.sleep(0.1)  # aborted uploads close their spool files as their handlers end
    assert spool_files(slow_server) == []


def test_a_trickled_request_head_is_closed_with_one_log_line(slow_server: ServerHandle) -> None:
    before = len(log_lines(slow_server, "request head incomplete"))
    sock = socket.create_connection(("127.0.0.1", slow_server.port), timeout=DEADLINE_S)
    with sock:
        sock.sendall(b"POST /2015-03-31/functions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + DEADLINE_S
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"X-Trickle: one line a second\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            time.sleep(1)  # the slow client's own pace, not synchronization
        assert closed
    lines = wait_for_lines(slow_server, "request head incomplete", before + 1)[before:]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0]
    with urllib.request.urlopen(slow_server.endpoint + "/snapfaas/v1/health", timeout=DEADLINE_S) as health:
        assert health.status == 200  # still serving


TRICKLER = '''
import os, socket, time
from urllib.parse import urlsplit

def handler(event, context):
    url = urlsplit(os.environ["AWS_ENDPOINT_URL_LAMBDA"])
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    sock.sendall(b"GET /2015-03-31/functions HTTP/1.1\\r\\nHost: x\\r\\n")
    for _ in range(60):  # one header line a second, never the blank line
        try:
            sock.sendall(b"X-Trickle: 1\\r\\n")
        except OSError:
            return "closed by the daemon"
        time.sleep(1)
    return "still open"
'''


def test_an_environment_listener_closes_a_trickled_head_too(slow_server: ServerHandle) -> None:
    lam = slow_server.client()
    create(lam, "trickler", {"app.py": TRICKLER}, Timeout=90)
    before = len(log_lines(slow_server, "request head incomplete"))
    response, body = invoke_json(lam, "trickler")
    assert "FunctionError" not in response, body
    assert body == "closed by the daemon"
    lines = wait_for_lines(slow_server, "request head incomplete", before + 1)[before:]
    assert len(lines) == 1


def test_an_invoke_declaring_more_than_6_mb_is_refused_before_its_body(slow_server: ServerHandle, echo: str) -> None:
    head = upload_head(slow_server.port, ACCESS_KEY).replace(b"POST /2015-03-31/functions ",
                                                             f"POST /2015-03-31/functions/{echo}/invocations ".encode())
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=DEADLINE_S) as sock:
        sock.sendall(head)  # declares 60 MB, sends none of it
        response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
        response.begin()
        body = json.loads(response.read())
    assert (response.status, response.getheader("x-amzn-ErrorType")) == (413, "RequestEntityTooLargeException")
    assert body["message"] == "Request must be smaller than 6291456 bytes for the InvokeFunction operation"
