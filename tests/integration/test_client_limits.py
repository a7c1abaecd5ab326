"""Slow and aborted clients against the daemon's real HTTP stack (`build_app` behind a
`GuardedRunner`, SigV4 on, real sockets), with short timeouts: trickled heads, stalled and
aborted bodies, idle keep-alive connections, and bodies over their route's limit.

The application runs in a thread of this process with no services behind it: the echo
route (the bench baseline) needs none. Nothing here asserts on timing: a closed connection
is awaited with a generous deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from snapfaas.api.app import build_app
from snapfaas.api.auth import SigV4Verifier
from snapfaas.api.bodies import CONTROL_REQUEST_BYTES, MAX_REQUEST_BYTES, SPOOL_THRESHOLD, route_limit
from snapfaas.api.connections import ClientTimeouts, GuardedRunner
from snapfaas.config import Limits
from tests.conftest import ACCESS_KEY, SECRET_KEY, free_port

DEADLINE_S = 30  # a guard against hanging forever, not a timing assertion
PAYLOAD_LIMIT = 4 * 1024 * 1024
ECHO = "/snapfaas/v1/echo"
READ_JSON = "/test/read-json"


async def _read_json(request: web.Request) -> web.Response:
    return web.json_response({"read": await request.json()})


@dataclasses.dataclass
class Listener:
    port: int
    spool: Path

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE_S)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    timeouts = ClientTimeouts(header_s=1.0, body_s=1.0, idle_s=2.0)
    app = build_app(object(), SigV4Verifier({ACCESS_KEY: SECRET_KEY}),  # type: ignore[arg-type]
                    limits=Limits(sync_payload_bytes=PAYLOAD_LIMIT), timeouts=timeouts, spool_dir=tmp_path)
    app.router.add_post(READ_JSON, _read_json)  # a handler using aiohttp's own request.json()
    loop = asyncio.new_event_loop()
    runner = GuardedRunner(app, timeouts, access_log=None)
    port = free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield Listener(port, tmp_path)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(DEADLINE_S)
    asyncio.run_coroutine_threadsafe(_cancel_leftovers(), loop).result(DEADLINE_S)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(DEADLINE_S)
    loop.close()


async def _cancel_leftovers() -> None:
    """Connections the test left draining (lingering) end with the loop."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def head(method: str, path: str, body: bytes = b"", length: int | None = None, extra: dict[str, str] | None = None,
         secret: str = SECRET_KEY) -> bytes:
    """A request head signed as botocore signs it over `body` (keep-alive); `length` overrides
    the Content-Length it declares."""
    request = AWSRequest(method=method, url=f"http://127.0.0.1{path}", data=body, headers=dict(extra or {}))
    SigV4Auth(Credentials(ACCESS_KEY, secret), "lambda", "us-east-1").add_auth(request)
    headers = {"Host": "127.0.0.1", **dict(request.headers.items())}
    if "Transfer-Encoding" not in headers:
        headers["Content-Length"] = str(len(body) if length is None else length)
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response from a keep-alive connection (status, lowercased headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def closed_by_server(sock: socket.socket) -> bool:
    """Wait (bounded) until the server closes `sock`: True when it did."""
    sock.settimeout(DEADLINE_S)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def wait_for_record(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    """The log records containing `text`, once there is one (the server thread logs them)."""
    deadline = time.monotonic() + DEADLINE_S
    while not records(caplog, text) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the server thread's log records
    return records(caplog, text)


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


# -- route limits (pure) --------------------------------------------------------------------------


def test_route_limits_follow_lambdas_caps() -> None:
    limits = Limits()
    assert route_limit("CreateFunction", limits).max_bytes == MAX_REQUEST_BYTES == 70_167_211
    assert route_limit("UpdateFunctionCode", limits).max_bytes == MAX_REQUEST_BYTES
    assert route_limit("InvokeFunction", limits).max_bytes == 6 * 1024 * 1024
    assert route_limit("UpdateFunctionConfiguration", limits).max_bytes == CONTROL_REQUEST_BYTES
    assert (route_limit("InvokeFunction", limits).refusal().message
            == "Request must be smaller than 6291456 bytes for the InvokeFunction operation")


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="header_s"):
        ClientTimeouts(header_s=0)


# -- request heads and idle connections -----------------------------------------------------------


def test_a_trickled_head_is_closed_with_one_log_line(listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sock = listener.connect()
    with sock:
        sock.sendall(b"GET /snapfaas/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + DEADLINE_S
        closed = False
        while not closed and time.monotonic() < deadline:  # one header line every 0.2 s, never the blank line
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            time.sleep(0.2)  # the client's own pace, not synchronization
        assert closed or closed_by_server(sock)
    lines = wait_for_record(caplog, "request head incomplete")
    assert len(lines) == 1 and "127.0.0.1:" in lines[0].getMessage()
    assert_no_traceback(caplog)


def test_the_head_clock_restarts_for_every_request_of_a_keep_alive_connection(listener: Listener,
                                                                                caplog: pytest.LogCaptureFixture) -> None:
    sock = listener.connect()
    with sock:
        for n in range(3):  # each complete head is served; the connection stays open in between
            sock.sendall(head("POST", ECHO, json.dumps({"n": n}).encode()) + json.dumps({"n": n}).encode())
            status, _, body = read_response(sock)
            assert (status, json.loads(body)) == (200, {"n": n})
        sock.sendall(b"GET /snapfaas/v1/health HTTP/1.1\r\n")  # a fourth head that never ends
        assert closed_by_server(sock)
    assert len(wait_for_record(caplog, "request head incomplete")) == 1


def test_an_idle_keep_alive_connection_is_closed(listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    sock = listener.connect()
    with sock:
        sock.sendall(b"GET /snapfaas/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert closed_by_server(sock)  # nothing more sent: the idle timeout closes it
    assert records(caplog, "request head incomplete") == []  # idle is not a slow head


def test_a_body_sent_after_its_head_is_not_taken_for_a_new_head(listener: Listener,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    body = b'{"late": true}'
    sock = listener.connect()
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head("POST", ECHO, body))
        time.sleep(0.2)  # the client's own pace: the body travels in a segment of its own
        sock.sendall(body)
        assert read_response(sock)[:1] == (200,)
        assert closed_by_server(sock)  # by the idle timeout
    assert records(caplog, "request head incomplete") == []


# -- bodies ----------------------------------------------------------------------------------------


def test_a_stalled_body_is_dropped_with_one_log_line(listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = b"x" * 10_000
    sock = listener.connect()
    with sock:
        sock.sendall(head("POST", ECHO, body) + body[:100])  # then nothing
        assert closed_by_server(sock)
    [line] = wait_for_record(caplog, "aborted upload")
    assert "POST /snapfaas/v1/echo, 100 of 10000 bytes received: no body data for 1 s" in line.getMessage()
    assert "127.0.0.1:" in line.getMessage()
    assert_no_traceback(caplog)
    assert list(listener.spool.iterdir()) == []


def test_an_aborted_upload_is_one_log_line(listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = b"y" * (3 * SPOOL_THRESHOLD)
    sock = listener.connect()
    sock.sendall(head("POST", ECHO, body) + body[: 2 * SPOOL_THRESHOLD])  # past the spool threshold
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close = RST
    sock.close()
    [line] = wait_for_record(caplog, "aborted upload")
    assert "POST /snapfaas/v1/echo" in line.getMessage() and "client disconnected" in line.getMessage()
    assert f"of {len(body)} bytes received" in line.getMessage()
    assert_no_traceback(caplog)
    assert list(listener.spool.iterdir()) == []  # an unlinked spool file: nothing left behind


def test_a_declared_length_over_the_limit_is_refused_before_the_body(listener: Listener) -> None:
    sock = listener.connect()
    with sock:
        sock.sendall(head("POST", ECHO, b"", length=PAYLOAD_LIMIT + 1))  # no body sent at all
        status, headers, body = read_response(sock)
    assert (status, headers["x-amzn-errortype"]) == (413, "RequestEntityTooLargeException")
    assert json.loads(body)["message"] == f"Request must be smaller than {PAYLOAD_LIMIT} bytes for the Echo operation"


def test_a_chunked_body_is_refused_as_it_crosses_the_limit(listener: Listener) -> None:
    chunk = b"z" * 65536
    sock = listener.connect()
    with sock:
        sock.sendall(head("POST", ECHO, b"", extra={"Transfer-Encoding": "chunked"}))
        for _ in range(PAYLOAD_LIMIT // len(chunk) + 1):  # one chunk past the limit, and the body never ends
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, headers, _ = read_response(sock)  # answered without waiting for the end (or the body timeout)
    assert (status, headers["x-amzn-errortype"]) == (413, "RequestEntityTooLargeException")


def test_a_large_signed_body_is_spooled_then_served(listener: Listener) -> None:
    body = json.dumps({"blob": "b" * (3 * SPOOL_THRESHOLD)}).encode()
    sock = listener.connect()
    with sock:
        sock.sendall(head("POST", ECHO, body) + body)
        status, _, echoed = read_response(sock)
    assert (status, echoed) == (200, body)
    assert list(listener.spool.iterdir()) == []


def test_handlers_may_still_read_the_body_with_aiohttp(listener: Listener) -> None:
    body = json.dumps({"blob": "r" * (2 * SPOOL_THRESHOLD)}).encode()  # spooled, then loaded
    sock = listener.connect()
    with sock:
        sock.sendall(head("POST", READ_JSON, body) + body)
        status, _, answer = read_response(sock)
    assert (status, json.loads(answer)) == (200, {"read": json.loads(body)})


def test_a_forged_signature_over_a_large_body_is_refused_and_nothing_kept(listener: Listener) -> None:
    body = b"f" * (2 * SPOOL_THRESHOLD)
    sock = listener.connect()
    with sock:
        sock.sendall(head("POST", ECHO, body, secret="not-the-secret") + body)
        status, headers, _ = read_response(sock)
    assert (status, headers["x-amzn-errortype"]) == (403, "InvalidSignatureException")
    assert list(listener.spool.iterdir()) == []


def test_an_unauthenticated_upload_is_answered_without_reading_its_body(listener: Listener) -> None:
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    authorization = (f"AWS4-HMAC-SHA256 Credential=SFIAUNKNOWN000000000/{amz_date[:8]}/us-east-1/lambda/aws4_request, "
                     f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}")
    sock = listener.connect()
    with sock:
        sock.sendall((f"POST {ECHO} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {60 * 1024 * 1024}\r\n"
                      f"X-Amz-Date: {amz_date}\r\nAuthorization: {authorization}\r\n\r\n").encode())
        status, headers, _ = read_response(sock)  # no body byte sent
        assert (status, headers["x-amzn-errortype"]) == (403, "UnrecognizedClientException")
        assert closed_by_server(sock)  # the unread body is waited for at most the body timeout
