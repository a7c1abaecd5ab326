"""One execution environment: a sandbox running the runtime for one function version.

State machine (checked on every move; anything else is a bug)::

    STARTING --ready--> IDLE <--release-- BUSY
        |                 \\--acquire-->  /
        +--init error / crash / kill--> DEAD (terminal, from any state)

An environment that raised anything is destroyed (OpenLambda's destroy-on-error): a DEAD
environment never serves again. `destroy` is idempotent.

Output is read where the event loop reads it: the environment is its container's
`OutputSink`, so each chunk of stdout goes through the `FrameDecoder` and each chunk of stderr
through the `LineSplitter` in the loop's read callback, and a complete frame wakes the invoke
waiting in `next_frame` directly (no reader task, no stream buffer or queue hop in between).
A container that does not feed its output that way (`Container.feeds_output` False) is read
by one task per stream that hands the chunks to the same methods.

Memory the daemon spends on one environment is bounded whatever the function writes (see
`channel`): stdout is decoded in chunks by a `FrameDecoder` (a frame over the response limit or
with a malformed header ends the frame stream: `next_frame` raises `FrameStreamRejected`), stderr by a
`LineSplitter`; the LogType=Tail capture and the output held during a restore are
`TailBuffer`s; the log-mark queue is bounded, and once `FRAME_QUEUE` frames are unread, stdout
is not read any more until the worker takes one (the runtime's writes then block).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import enum
import json
import logging
import signal
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from snapfaas.registry.model import FunctionVersion
from snapfaas.runtime import protocol
from snapfaas.sandbox.cgroup import MemoryStats, PeakMemory, memory_stats
from snapfaas.sandbox.cgroup import remove as remove_cgroup
from snapfaas.sandbox.container import Container
from snapfaas.worker.channel import Frame, FrameDecoder, FrameRejected, LineSplitter, TailBuffer
from snapfaas.worker import platform_log
from snapfaas.worker.logs import LogStore

logger = logging.getLogger(__name__)
MARK_WAIT_S = 2.0
READ_CHUNK = 64 * 1024  # bytes per read of the environment's stdout / stderr
FRAME_QUEUE = 8  # frames read ahead of the worker; beyond that the reader stops reading stdout
MARK_QUEUE = 64  # log marks kept unconsumed (a function can forge marks; the oldest go first)
HELD_OUTPUT_CHARS = 64 * 1024  # stderr kept while a restore runs (runc's and CRIU's errors)
DEFAULT_TAIL_CHARS = 4096
LOG_MARK_BYTES = protocol.LOG_MARK.encode()
SHUTDOWN_MS = 2000  # Lambda's Shutdown phase with external extensions registered


class EnvState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"


MOVES = {
    EnvState.STARTING: {EnvState.IDLE, EnvState.BUSY, EnvState.DEAD},
    EnvState.IDLE: {EnvState.BUSY, EnvState.DEAD},
    EnvState.BUSY: {EnvState.IDLE, EnvState.DEAD},
    EnvState.DEAD: {EnvState.DEAD},
}


class EnvironmentDied(Exception):
    """The environment's process exited (crash, OOM kill, or our own kill)."""

    def __init__(self, exit_status: int | None, oom: bool) -> None:
        super().__init__(f"exit status {exit_status}")
        self.exit_status = exit_status
        self.oom = oom

    def describe(self) -> str:
        """Lambda's wording, which follows Go's os.ProcessState: "signal: killed", "exit status 1"."""
        status = self.exit_status
        if status == 0:
            return "Runtime exited without providing a reason"
        # runc reports a container killed by signal N as 128+N; runc itself killed by N is -N
        signal_number = status - 128 if status is not None and status > 128 else (-status if status is not None and status < 0 else None)
        if signal_number in SIGNAL_WORDS:
            return f"Runtime exited with error: signal: {SIGNAL_WORDS[signal_number]}"
        return f"Runtime exited with error: exit status {status}"


SIGNAL_WORDS = {9: "killed", 6: "aborted", 11: "segmentation fault", 15: "terminated", 7: "bus error", 8: "floating point exception"}


class FrameStreamRejected(EnvironmentDied):
    """The runtime sent a frame the worker refused to read (`channel.FrameRejected`): the
    frame stream is over and the environment must be destroyed, though its process may run."""

    def __init__(self, rejected: FrameRejected) -> None:
        super().__init__(None, False)
        self.rejected = rejected

    @property
    def oversized(self) -> bool:
        return self.rejected.oversized

    def describe(self) -> str:
        return f"Runtime sent {self.rejected.reason}"


@dataclasses.dataclass
class InvokeRequest:
    request_id: str
    payload: bytes
    invoked_arn: str
    timeout_s: float
    client_context: str | None = None
    trace_id: str | None = None


def log_stream_name(version: str, env_id: str) -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y/%m/%d/") + f"[{version}]{env_id}"


class Environment:
    """Owns one `Container` and the two reader tasks on its stdout (frames) and stderr (logs)."""

    def __init__(
        self,
        env_id: str,
        version: FunctionVersion,
        container: Container,
        logs: LogStore,
        cgroup: str,
        clock: Callable[[], float] = time.monotonic,
        max_frame_bytes: int = 6 * 1024 * 1024 + 100,
        tail_chars: int = DEFAULT_TAIL_CHARS,
    ) -> None:
        """`max_frame_bytes`: the largest frame payload read from the runtime (the response
        limit); `tail_chars`: how much of an invocation's log the LogType=Tail capture keeps."""
        self.id = env_id
        self.version = version
        self.container = container
        self.logs = logs
        self.cgroup = cgroup
        self._peak = PeakMemory(cgroup)
        self.clock = clock
        self.state = EnvState.STARTING
        self.stream = log_stream_name(version.version, env_id)
        self.last_used = clock()
        self.invocations = 0
        self.max_frame_bytes = max_frame_bytes
        self.tail_chars = tail_chars
        self._frames: collections.deque[Frame | None] = collections.deque()  # None: the stream ended
        self._frame_waiter: asyncio.Future[None] | None = None  # `next_frame` waiting for one
        self._decoder = FrameDecoder(max_frame_bytes)
        self._stray = LineSplitter()  # stdout output that is not a frame, logged by lines
        self._log_lines = LineSplitter()  # stderr
        self._runc_output: dict[int, LineSplitter] = {}  # runc's own output, with a direct channel
        self._stdout_paused = False  # FRAME_QUEUE frames unread: stdout is not read
        self._room = asyncio.Event()  # set while stdout may be read (the reader task's back-pressure)
        self._room.set()
        self._marks: collections.deque[str] = collections.deque(maxlen=MARK_QUEUE)
        self._mark_arrived = asyncio.Event()
        self._rejected: FrameRejected | None = None
        self._discarding = False  # set by `destroy`: frames read from now on are dropped
        self._capture: TailBuffer | None = None
        self._held: TailBuffer | None = None  # stderr lines held back while a restore runs
        self._readers: list[asyncio.Task[None]] = []  # only for a container that does not feed its output
        self._reading = False  # `start_readers` ran
        self._logs_ended = asyncio.Event()  # stderr reached EOF
        self._stream_ended = False
        container.output = self  # stdout/stderr arrive in `output_received` once it starts
        self.restore_from: Path | None = None  # images, for an environment restored from a snapshot
        self.id_slice: int | None = None  # the host id slice it runs in (set by the factory)
        self.release_images: Callable[[], None] = lambda: None  # unpins `restore_from` in the cache (idempotent)
        self.on_destroy: list[Callable[[], None]] = []  # e.g. revoke its credentials
        self.credentials_expire_at: float | None = None  # epoch s; on-demand credentials variables expire then
        self.network: Any = None  # its `NetworkLease`, closed once the container is gone
        self.extensions = 0  # extensions its runtime reported at init (custom runtimes): they get a Shutdown phase
        self._log_direct = False  # the last invoke frame said ``log_direct`` (`send_invoke`)

    def __repr__(self) -> str:
        return f"<Environment {self.id} {self.version.name}:{self.version.version} {self.state.value} invocations={self.invocations}>"

    @property
    def alive(self) -> bool:
        """False once the runtime's frame stream ended: it exited, crashed or was killed."""
        return not self._stream_ended

    def move(self, state: EnvState) -> None:
        if state not in MOVES[self.state]:
            raise RuntimeError(f"environment {self.id}: illegal move {self.state.value} -> {state.value}")
        self.state = state

    # -- logging ---------------------------------------------------------------------------
    def log(self, *lines: str) -> None:
        """Log the platform's (system) lines, in the function's log format (`platform_log`)."""
        self._append(platform_log.render(lines, self.version))

    def _append(self, lines: list[str]) -> None:
        """Log lines as they are (the function's own output)."""
        if self._capture is not None:
            self._capture.extend(lines)
        self.logs.append(self.version.name, self.stream, lines)

    def begin_capture(self) -> None:
        """Start keeping the tail of the log (the last `tail_chars` characters) for LogType=Tail."""
        self._capture = TailBuffer(self.tail_chars)

    def hold_output(self) -> None:
        """Hold back stderr lines instead of logging them, until `release_output`. A restoring
        container's stderr is runc's too: until the runtime says it runs again, what arrives
        there is runc's and CRIU's (host paths included), not the function's."""
        self._held = TailBuffer(HELD_OUTPUT_CHARS)

    def release_output(self, to_function_log: bool) -> list[str]:
        """Stop holding; the held lines (the last `HELD_OUTPUT_CHARS` characters of them) go
        to the function's log if `to_function_log`. Returns them."""
        lines, self._held = (self._held.lines() if self._held else []), None
        if to_function_log and lines:
            self._append(lines)
        return lines

    def end_capture(self) -> list[str]:
        """The captured tail, as lines whose total length is at most `tail_chars`."""
        lines, self._capture = (self._capture.lines() if self._capture else []), None
        return lines

    # -- output: frames on stdout, log lines on stderr ----------------------------------------
    def start_readers(self) -> None:
        """Start reading the container's output (call right after `Container.start`). Nothing
        to start when the container feeds it to `output_received` from the loop's read
        callbacks; otherwise one task per stream hands its chunks to the same methods."""
        self._reading = True
        if getattr(self.container, "feeds_output", False):
            return
        self._readers = [asyncio.create_task(self._pump(1, self.container.stdout), name=f"{self.id}-frames"),
                         asyncio.create_task(self._pump(2, self.container.stderr), name=f"{self.id}-logs")]

    async def _pump(self, fd: int, stream: asyncio.StreamReader) -> None:
        """Read `stream` in chunks into `output_received`, then `output_ended` (the reader task
        of a container that does not feed its output); stdout waits while frames are unread."""
        failure: Exception | None = None
        try:
            while chunk := await stream.read(READ_CHUNK):
                self.output_received(fd, chunk)
                if fd == 1:
                    await self._room.wait()
        except ConnectionError as exc:
            failure = exc
        self.output_ended(fd, failure)

    def output_received(self, fd: int, data: bytes) -> None:
        """`OutputSink`: a chunk of the runtime's frames (1) or log (2), or with a direct
        channel of what runc itself wrote (`RUNC_STDOUT`, `RUNC_STDERR`), on the loop."""
        if fd == 1:
            self._stdout_received(data)
        elif fd == 2:
            self._stderr_lines(self._log_lines.feed(data))
        else:
            self._log_raw(self._runc_lines(fd).feed(data))

    def _runc_lines(self, fd: int) -> LineSplitter:
        return self._runc_output.setdefault(fd, LineSplitter())

    def output_ended(self, fd: int, exc: Exception | None) -> None:
        """`OutputSink`: stdout (1) or stderr (2) reached EOF (or failed with `exc`)."""
        if fd == 1:
            if exc is not None:
                logger.info("environment %s: frame stream ended: %s", self.id, exc)
            elif self._rejected is None:
                self._log_raw(self._stray.flush())
            self._finish_frames()
        elif fd == 2:
            if exc is not None:
                logger.info("environment %s: log stream ended: %s", self.id, exc)
            self._stderr_lines(self._log_lines.flush())
            self._logs_ended.set()
        else:
            self._log_raw(self._runc_lines(fd).flush())

    def _stdout_received(self, data: bytes) -> None:
        """Decode stdout into frames (for `next_frame`) and stray output (logged by lines).

        After a rejected frame (or once `destroy` began) the rest of stdout is read and
        discarded until EOF: asyncio reports a subprocess's exit only once its pipes are
        closed, so a pipe left unread would keep `Container.kill` waiting forever."""
        if self._rejected is not None:
            return
        try:
            items = self._decoder.feed(data)
        except FrameRejected as exc:
            self._rejected = exc
            logger.warning("environment %s: frame stream ended: the runtime sent %s", self.id, exc.reason)
            self._finish_frames()
            self._pause_stdout(False)
            return
        for item in items:
            if isinstance(item, Frame):
                self._log_raw(self._stray.flush())  # output right before a frame is a line of its own
                if item.kind == "ready" and isinstance(item.header.get("extensions"), int):
                    self.extensions = item.header["extensions"]
                if not self._discarding:
                    self._frames.append(item)
                    self._wake_frame_waiter()
                    if len(self._frames) >= FRAME_QUEUE:
                        self._pause_stdout(True)
            else:
                self._log_raw(self._stray.feed(item))

    def _pause_stdout(self, paused: bool) -> None:
        """Stop (or resume) reading stdout: back-pressure once `FRAME_QUEUE` frames are unread."""
        if paused == self._stdout_paused:
            return
        self._stdout_paused = paused
        if paused:
            self._room.clear()
        else:
            self._room.set()
        if getattr(self.container, "feeds_output", False):
            self.container.pause_output(1, paused)

    def _wake_frame_waiter(self) -> None:
        waiter = self._frame_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish_frames(self) -> None:
        if not self._stream_ended:
            self._stream_ended = True
            self._end_frames()

    def _end_frames(self) -> None:
        """Queue the end-of-stream marker, dropping the oldest unread frames beyond the bound."""
        while len(self._frames) >= FRAME_QUEUE:
            self._frames.popleft()
        self._frames.append(None)
        self._wake_frame_waiter()

    def _log_raw(self, lines: list[bytes]) -> None:
        if lines:
            self._append([line.decode(errors="replace") for line in lines])

    def _stderr_lines(self, lines: list[bytes]) -> None:
        """Log stderr lines (or hold them back during a restore); marks (`protocol.LOG_MARK`)
        go to `wait_mark`."""
        if not lines:
            return
        mark = LOG_MARK_BYTES
        text: list[str] = []
        for line in lines:
            if line.startswith(mark):
                self._marks.append(line[len(mark) :].decode(errors="replace").strip())
                self._mark_arrived.set()
            else:
                text.append(line.decode(errors="replace"))
        if text:
            if self._held is not None:
                self._held.extend(text)
            else:
                self._append(text)

    async def next_frame(self, timeout: float | None) -> Frame:
        """The next frame from the runtime; raises EnvironmentDied (`FrameStreamRejected` if
        the runtime sent a frame the worker refused to read) or TimeoutError. One caller at a
        time (the environment's invoke)."""
        if not self._frames:
            loop = asyncio.get_running_loop()
            waiter = self._frame_waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
            try:
                await waiter
            finally:
                self._frame_waiter = None
                if timer is not None:
                    timer.cancel()
        frame = self._frames.popleft()
        if frame is None:
            self._frames.appendleft(None)  # keep EOF sticky
            if self._rejected is not None:
                raise FrameStreamRejected(self._rejected)
            raise await self._death()
        if self._stdout_paused and len(self._frames) < FRAME_QUEUE and not self._stream_ended:
            self._pause_stdout(False)
        return frame

    async def wait_mark(self, tag: str) -> None:
        """Wait (bounded) until all log output of phase `tag` has been read (usually it has:
        the runtime writes the mark before its response frame, so no timer is set then)."""
        while self._marks:
            if self._marks.popleft() == tag:
                return
        try:
            async with asyncio.timeout(MARK_WAIT_S):
                while True:
                    while self._marks:
                        if self._marks.popleft() == tag:
                            return
                    self._mark_arrived.clear()
                    await self._mark_arrived.wait()
        except TimeoutError:
            logger.warning("environment %s: log mark %s did not arrive", self.id, tag)

    async def _death(self) -> EnvironmentDied:
        """Why the container is gone: its exit status and whether the OOM killer fired.

        Reads the environment's own cgroup, which outlives the container's (see `cgroup`).
        """
        try:
            status = await asyncio.wait_for(self.container.wait(), 10)
        except TimeoutError:
            status = None
        if self._reading:  # keep what the runtime logged right before it died
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._logs_ended.wait(), MARK_WAIT_S)
        stats = memory_stats(self.cgroup)
        return EnvironmentDied(status, self._oom_killed(status, stats))

    def _oom_killed(self, status: int | None, stats: MemoryStats | None) -> bool:
        """True if the OOM killer ended the container.

        cgroup v2 counts the container's OOM kills in our (parent) cgroup too; cgroup v1 does
        not, so there a SIGKILL after the memory peak reached the limit counts as one.
        """
        if stats is None:
            return False
        limit = self.version.memory_size * 1024 * 1024
        return stats.oom_killed or (status == 128 + signal.SIGKILL and stats.peak_bytes >= limit)

    def max_memory_mb(self) -> int:
        """Peak memory in MB (rounded up), never more than MemorySize (charge batching can
        push the cgroup's watermark a few pages past the limit); 0 when unknown. One pread
        of the environment's cgroup (`PeakMemory`)."""
        peak = self._peak.bytes()
        if peak is None:
            return 0
        return min((peak + (1 << 20) - 1) // (1 << 20), self.version.memory_size)

    # -- protocol --------------------------------------------------------------------------
    async def send(self, kind: str, payload: bytes = b"", **fields: Any) -> None:
        try:
            self.container.stdin.write(protocol.encode(kind, payload, **fields))
            await self.container.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise await self._death() from exc

    async def send_invoke(self, request: InvokeRequest, deadline_ms: int) -> None:
        """Send an invocation. When this process reads the runtime's log pipe itself, the
        frame says ``log_direct``: the runtime may then answer with ``logs_read`` instead of
        writing a log mark (`logs_read`)."""
        self._log_direct = getattr(self.container, "log_read_directly", False)
        await self.send(
            "invoke",
            request.payload,
            id=request.request_id,
            arn=request.invoked_arn,
            deadline_ms=deadline_ms,
            client_context=request.client_context,
            trace_id=request.trace_id,
            **_LOG_DIRECT if self._log_direct else {},
        )

    def logs_read(self, frame: Frame) -> bool:
        """Whether the invocation's answer `frame` says the runtime's log pipe was empty when
        it was sent, on a channel whose log pipe this process reads itself (`send_invoke`):
        everything the invocation logged has then been read and no mark follows. An
        unfinished last line (written without a newline) is then logged as it is."""
        if not (self._log_direct and frame.header.get("logs_read") is True):
            return False
        self._stderr_lines(self._log_lines.flush())
        return True

    async def destroy(self) -> None:
        """Kill the container, stop the readers and remove the environment's cgroup; idempotent.
        An idle environment whose runtime has extensions first gets Lambda's Shutdown phase
        (`shut_down`)."""
        graceful = self.state is EnvState.IDLE and self.extensions > 0 and self.alive
        if self.state is not EnvState.DEAD:
            self.move(EnvState.DEAD)
        while self.on_destroy:
            self.on_destroy.pop()()
        self._discarding = True  # frames are dropped from now on: stdout must be read to EOF
        self._frames.clear()
        self._pause_stdout(False)
        if graceful:
            await self.shut_down()
        await self.container.kill()
        if self.network is not None:
            await self.network.close()
        self._peak.close()
        # rmdir across every cgroup hierarchy blocks in the kernel for a few ms: off the loop;
        # a container restored by CRIU runs in this cgroup and its kill removed it already
        if getattr(self.container, "removed_cgroup", None) != self.cgroup:
            for failure in await asyncio.to_thread(remove_cgroup, self.cgroup):
                logger.warning("environment %s: cgroup cleanup failed at step %s", self.id, failure)
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # reader teardown must not mask the kill
                pass


    async def shut_down(self) -> None:
        """Send ``shutdown`` (SHUTDOWN to the extensions, SIGTERM to the runtime) and wait, up
        to the deadline plus a second, for the runtime supervisor to exit by itself."""
        deadline_ms = int(time.time() * 1000) + SHUTDOWN_MS
        try:
            await self.send("shutdown", deadline_ms=deadline_ms)
            await asyncio.wait_for(self.container.wait(), SHUTDOWN_MS / 1000 + 1)
        except (TimeoutError, EnvironmentDied) as exc:  # it is killed next either way
            logger.info("environment %s: shutdown phase ended early: %s", self.id, exc)


_LOG_DIRECT = {"log_direct": True}


def _time_out(waiter: asyncio.Future[None]) -> None:
    """`next_frame`'s deadline (a bare timer: cheaper per invoke than `asyncio.timeout`)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def decode_error(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
        return value if isinstance(value, dict) else {"errorMessage": str(value)}
    except ValueError:
        return {"errorMessage": payload.decode(errors="replace")}
