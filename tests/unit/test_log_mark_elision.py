"""The log mark an invocation can do without: the runtime answers ``logs_read`` instead of
writing a mark only when the invoke frame said ``log_direct`` and its log pipe is empty once
flushed; the worker honours ``logs_read`` only on a channel whose log pipe it reads itself."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator
from typing import Any

import pytest

from snapfaas.runtime import protocol
from snapfaas.runtime.bootstrap import Channel, serve
from snapfaas.worker.channel import Frame
from snapfaas.worker.environment import InvokeRequest

from tests.unit.test_environment_output import make_env


@pytest.fixture
def log_pipe() -> Iterator[tuple[int, Any]]:
    """(read end, text writer on the write end) of a real pipe: the runtime's log."""
    r, w = os.pipe()
    log = open(w, "w", buffering=1)
    try:
        yield r, log
    finally:
        log.close()
        os.close(r)


def run_one(log: Any, handler: Any, **fields: Any) -> dict[str, Any]:
    """Serve one invoke frame (with `fields` in its header); the header of the answer."""
    inbound = io.BytesIO(protocol.encode("invoke", b"{}", id="req-1", deadline_ms=2**40, **fields))
    outbound = io.BytesIO()
    serve(Channel(inbound, outbound, log), handler, {})
    frames = outbound.getvalue().split(protocol.MAGIC + b" ")[1:]
    header = protocol.parse_header(protocol.MAGIC + b" " + frames[-1].split(b"\n", 1)[0] + b"\n")
    assert header is not None
    return header


def test_an_empty_log_pipe_on_a_direct_channel_needs_no_mark(log_pipe: tuple[int, Any]) -> None:
    r, log = log_pipe
    header = run_one(log, lambda event, context: {"ok": True}, log_direct=True)
    assert header["t"] == "response" and header["logs_read"] is True
    os.set_blocking(r, False)
    with pytest.raises(BlockingIOError):  # nothing was written to the log: no mark
        os.read(r, 100)


def test_unread_log_output_is_followed_by_a_mark(log_pipe: tuple[int, Any]) -> None:
    r, log = log_pipe

    def handler(event: Any, context: Any) -> Any:
        print("a line the worker has not read yet", file=log)
        return {"ok": True}

    header = run_one(log, handler, log_direct=True)
    assert header["t"] == "response" and "logs_read" not in header
    assert os.read(r, 1000).endswith((protocol.LOG_MARK + "req-1\n").encode())


def test_without_log_direct_the_runtime_always_marks(log_pipe: tuple[int, Any]) -> None:
    r, log = log_pipe
    header = run_one(log, lambda event, context: None)
    assert "logs_read" not in header
    assert os.read(r, 1000) == (protocol.LOG_MARK + "req-1\n").encode()


class Sent:
    """The channel to the runtime: records what is written."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


@pytest.mark.parametrize("direct", [False, True])
def test_the_worker_honours_logs_read_only_on_a_channel_it_reads_itself(direct: bool) -> None:
    env, container, _ = make_env()
    container.stdin = Sent()  # type: ignore[attr-defined]
    if direct:
        container.log_read_directly = True  # type: ignore[attr-defined]
    request = InvokeRequest("req-1", b"{}", "arn:aws:lambda:us-east-1:000000000000:function:f", 3.0)
    asyncio.run(env.send_invoke(request, 2**40))
    header = protocol.parse_header(container.stdin.data.split(b"\n", 1)[0])  # type: ignore[attr-defined]
    assert header is not None and header.get("log_direct", False) is direct
    assert env.logs_read(Frame("response", {"t": "response", "n": 0, "logs_read": True}, b"")) is direct
    assert not env.logs_read(Frame("response", {"t": "response", "n": 0}, b""))


def test_an_unfinished_line_is_logged_before_the_invocation_ends() -> None:
    env, container, logs = make_env()
    container.stdin = Sent()  # type: ignore[attr-defined]
    container.log_read_directly = True  # type: ignore[attr-defined]
    request = InvokeRequest("req-1", b"{}", "arn:aws:lambda:us-east-1:000000000000:function:f", 3.0)
    asyncio.run(env.send_invoke(request, 2**40))
    env.output_received(2, b"whole line\nno newline")
    assert logs.lines == ["whole line\n"]
    assert env.logs_read(Frame("response", {"t": "response", "n": 0, "logs_read": True}, b""))
    assert logs.lines == ["whole line\n", "no newline\n"]
