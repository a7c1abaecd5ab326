"""`Environment` as its container's `OutputSink`: frames decoded in the read callback, handed
to `next_frame` without a queue hop, back-pressure at `FRAME_QUEUE`, rejected frames, EOF,
log lines and marks; and `Container`'s sink protocol on a real process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from snapfaas.registry.model import FunctionVersion
from snapfaas.runtime import protocol
from snapfaas.sandbox.container import _SinkProtocol
from snapfaas.worker.environment import FRAME_QUEUE, Environment, FrameStreamRejected


class FakeContainer:
    """Feeds its output (as `Container` does when `output` is set); records pauses."""

    def __init__(self) -> None:
        self.output: Any = None
        self.feeds_output = True
        self.pauses: list[bool] = []

    def pause_output(self, fd: int, paused: bool) -> None:
        assert fd == 1
        self.pauses.append(paused)

    async def wait(self) -> int:
        return 0


class FakeLogs:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def append(self, function: str, stream: str, lines: list[str]) -> None:
        self.lines.extend(lines)


def make_env(max_frame_bytes: int = 1024) -> tuple[Environment, FakeContainer, FakeLogs]:
    version = FunctionVersion(name="f", version="$LATEST", runtime="python3.12", handler="app.handler",
                              role="arn:aws:iam::000000000000:role/r", code_digest="d", code_sha256="s", code_size=1)
    container, logs = FakeContainer(), FakeLogs()
    env = Environment("e1", version, container, logs, "/snapfaas/test/none", max_frame_bytes=max_frame_bytes)  # type: ignore[arg-type]
    assert container.output is env
    env.start_readers()
    return env, container, logs


def test_a_frame_split_across_reads_reaches_the_waiting_invoke() -> None:
    async def scenario() -> None:
        env, _, logs = make_env()
        data = b"stray output\n" + protocol.encode("response", b'{"ok": true}')
        loop = asyncio.get_running_loop()  # the reads arrive once next_frame waits (as the loop's callbacks)
        loop.call_soon(env.output_received, 1, data[:20])
        loop.call_soon(env.output_received, 1, data[20:])
        frame = await env.next_frame(5)
        assert (frame.kind, frame.payload) == ("response", b'{"ok": true}')
        assert logs.lines == ["stray output\n"]
        env.output_received(2, b"a log line\n" + protocol.LOG_MARK.encode() + b"req-1\n")
        await env.wait_mark("req-1")
        assert logs.lines[-1] == "a log line\n"

    asyncio.run(scenario())


def test_stdout_pauses_at_the_frame_bound_and_resumes_when_one_is_taken() -> None:
    async def scenario() -> None:
        env, container, _ = make_env()
        env.output_received(1, b"".join(protocol.encode("response", b"%d" % i) for i in range(FRAME_QUEUE)))
        assert container.pauses == [True]
        assert (await env.next_frame(1)).payload == b"0"
        assert container.pauses == [True, False]
        for i in range(1, FRAME_QUEUE):
            assert (await env.next_frame(1)).payload == str(i).encode()

    asyncio.run(scenario())


def test_a_rejected_frame_ends_the_stream_and_the_rest_is_discarded() -> None:
    async def scenario() -> None:
        env, _, _ = make_env(max_frame_bytes=10)
        env.output_received(1, protocol.encode("response", b"x" * 11))
        with pytest.raises(FrameStreamRejected) as rejected:
            await env.next_frame(1)
        assert rejected.value.oversized
        env.output_received(1, protocol.encode("response", b"late"))  # discarded
        with pytest.raises(FrameStreamRejected):  # sticky
            await env.next_frame(1)

    asyncio.run(scenario())


def test_eof_is_sticky_and_the_timeout_is_a_timeout_error() -> None:
    async def scenario() -> None:
        env, _, logs = make_env()
        with pytest.raises(TimeoutError):
            await env.next_frame(0.01)
        env.output_received(1, b"no newline at the end")
        env.output_ended(2, None)
        env.output_ended(1, None)
        assert logs.lines == ["no newline at the end\n"]
        for _ in range(2):
            with pytest.raises(Exception) as died:
                await env.next_frame(1)
            assert type(died.value).__name__ == "EnvironmentDied"

    asyncio.run(scenario())


def test_sink_protocol_delivers_a_real_process_output(tmp_path: Path) -> None:
    class Sink:
        def __init__(self) -> None:
            self.data: dict[int, bytes] = {1: b"", 2: b""}
            self.ended: list[int] = []

        def output_received(self, fd: int, data: bytes) -> None:
            self.data[fd] += data

        def output_ended(self, fd: int, exc: Exception | None) -> None:
            self.ended.append(fd)

    async def scenario() -> Sink:
        loop = asyncio.get_running_loop()
        sink = Sink()
        transport, proto = await loop.subprocess_exec(
            lambda: _SinkProtocol(sink, 1024, loop), "sh", "-c", "cat; echo err >&2",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        process = asyncio.subprocess.Process(transport, proto, loop)
        assert process.stdin is not None
        process.stdin.write(b"hello")
        process.stdin.close()
        assert await process.wait() == 0
        return sink

    sink = asyncio.run(scenario())
    assert sink.data == {1: b"hello", 2: b"err\n"}
    assert sorted(sink.ended) == [1, 2]
