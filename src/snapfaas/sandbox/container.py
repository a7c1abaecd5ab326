"""One runc container: start it in the foreground, kill it, clean up after it.

`runc run` stays in the foreground as the container's parent: the container's stdio are the
pipes we give runc (non-terminal mode passes them straight through), and runc's exit status is
the container's. `Container.kill` is idempotent; after it returns nothing of the container is
left (runc deletes a foreground container when it exits; `_force_delete` covers the rest).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from snapfaas.errors import ServiceError
from snapfaas.sandbox.mounts import remove_tree
from snapfaas.sandbox.cgroup import daemon_cgroup
from snapfaas.sandbox.cgroup import remove as remove_cgroup

logger = logging.getLogger(__name__)
# The environment's readers read stdout/stderr in chunks (worker.channel bounds what they keep);
# this bounds what asyncio buffers ahead of them: it stops reading a pipe at twice this much.
STREAM_LIMIT = 256 * 1024
# runc and CRIU create mount points and images that the sandbox's mapped uids must read; the
# daemon's own umask (0077, for its state) would make them unreadable, so children get 0022.
RUNC_UMASK = 0o022
CONTAINER_PREFIX = "sf-"  # container id = prefix + environment id
# runc is a Go program that drives one container and mostly waits; with one P the Go runtime
# starts fewer threads and schedules less. Measured: ~10% less CPU in a burst of 8 restores
# on 2 CPUs (what bounds the burst's p99). Passed to `runc run` / `runc restore` only.
RUNC_ENVIRON = {"GOMAXPROCS": "1"}


class OutputSink(Protocol):
    """Receives a container's stdout (fd 1) and stderr (fd 2) in the event loop's read
    callbacks (`Container.output`): no reader task, no stream buffer in between."""

    def output_received(self, fd: int, data: bytes) -> None: ...

    def output_ended(self, fd: int, exc: Exception | None) -> None: ...


# With a direct channel (`Container.direct_channel`) the runtime's frames and log reach the sink
# as fds 1 and 2, and what runc itself writes to its stdout/stderr (its fatal errors) as these:
RUNC_STDOUT, RUNC_STDERR = 11, 12
CHANNEL_FDS = (3, 4, 5)  # in the container: channel in (worker -> runtime), channel out, log
CHANNEL_FDS_VARIABLE = "_SNAPFAAS_CHANNEL_FDS"  # tells the runtime (it removes it) to use them


class _SinkProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's subprocess protocol, except that stdout and stderr data go to a sink as the
    loop reads them, as the sink fds `fds` maps them to (the process's ``stdout``/``stderr``
    readers only ever see EOF)."""

    def __init__(self, sink: OutputSink, limit: int, loop: asyncio.AbstractEventLoop,
                 fds: Mapping[int, int] | None = None) -> None:
        super().__init__(limit=limit, loop=loop)
        self._sink = sink
        self._fds = fds or {1: 1, 2: 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd in (1, 2):
            self._sink.output_received(self._fds[fd], data)
        else:
            super().pipe_data_received(fd, data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in (1, 2):
            self._sink.output_ended(self._fds[fd], exc)
        super().pipe_connection_lost(fd, exc)


class PipeSink(asyncio.Protocol):
    """A read pipe whose data goes to an `OutputSink` as fd `fd`, in the loop's read callback
    (direct channel pipes here, a restored container's stdio in `criu_container`)."""

    def __init__(self, sink: OutputSink, fd: int) -> None:
        self._sink = sink
        self._fd = fd

    def data_received(self, data: bytes) -> None:
        self._sink.output_received(self._fd, data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._sink.output_ended(self._fd, exc)


def runc_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every runc run or restore gets: ours, `RUNC_ENVIRON`, then `extra`
    (runc passes it on to CRIU)."""
    return {**os.environ, **RUNC_ENVIRON, **(extra or {})}


class Runc:
    """The runc binary with its own state directory (`--root`), shared by all containers, and
    the daemon's cgroup subtree (`cgroup`) every environment cgroup lives in."""

    def __init__(self, state_dir: Path, binary: str = "runc") -> None:
        self.state_dir = state_dir
        self.binary = shutil.which(binary) or binary
        state_dir.mkdir(parents=True, exist_ok=True)
        self.cgroup = daemon_cgroup(state_dir)

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state_dir), *args]

    def reap_leftovers(self) -> list[str]:
        """Kill and delete containers left by a previous daemon (crash or SIGKILL), then remove
        its cgroup subtree (environments whose containers exited on their own leave theirs)."""
        out = subprocess.run(self.argv("list", "--format", "json"), capture_output=True, text=True)
        ids = [c["id"] for c in json.loads(out.stdout or "null") or []] if out.returncode == 0 else []
        for cid in ids:
            subprocess.run(self.argv("delete", "--force", cid), capture_output=True)
        self.remove_cgroups()
        return ids

    def remove_cgroups(self) -> None:
        """Remove the daemon's cgroup subtree; call only when none of its containers runs."""
        for failure in remove_cgroup(self.cgroup):
            logger.warning("cgroup cleanup failed at step %s", failure)

    def check(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        if out.returncode != 0:
            raise ServiceError(f"runc --version failed: {out.stderr.strip()}")
        return out.stdout.splitlines()[0]


class Container:
    def __init__(self, runc: Runc, container_id: str, bundle: Path) -> None:
        self.runc = runc
        self.id = container_id
        self.bundle = bundle
        self.process: asyncio.subprocess.Process | None = None
        # Set before `start` to receive stdout/stderr in the loop's read callbacks (`OutputSink`)
        # instead of through the `stdout`/`stderr` stream readers; `feeds_output` tells whether
        # `start` did so (a subclass that starts its process otherwise leaves it False, and its
        # readers are used).
        self.output: OutputSink | None = None
        self.feeds_output = False
        # Set before `start` (with `output`, for `runc run`): the runtime's channel and log go
        # over pipes passed straight into the container (``runc run --preserve-fds``, fds
        # `CHANNEL_FDS`) instead of the container's stdio, which a foreground runc copies
        # through its own process (three process hops per invoke). Not for a container that
        # will be checkpointed: runc re-attaches only stdio at restore.
        self.direct_channel = False
        self._direct: tuple[asyncio.StreamWriter, list[asyncio.ReadTransport]] | None = None
        self._transport: asyncio.SubprocessTransport | None = None  # when `output` is fed
        self._killed = False
        self.removed_cgroup: str | None = None  # a cgroup `kill` removed (with all below it), if it did
        # argv prefix for `runc run` (not restore), e.g. `setarch ... --addr-no-randomize`: runc
        # and the container's process inherit the personality (snapshot/determinism.py)
        self.launcher: list[str] = []

    def __repr__(self) -> str:
        state = "killed" if self._killed else ("running" if self.process else "new")
        return f"<Container {self.id} {state}>"

    @property
    def runc_log(self) -> Path:
        """runc's own log for this container (see `start`)."""
        return self.bundle / "runc.log"

    @property
    def log_read_directly(self) -> bool:
        """Whether the runtime's log pipe is read by this process itself with nothing relaying
        it (the direct channel): a byte the runtime wrote there is then either still in the
        pipe or already handed to `output`."""
        return self._direct is not None

    @property
    def stdin(self) -> asyncio.StreamWriter:
        """The channel to the runtime (the direct channel's pipe, or the container's stdin)."""
        if self._direct is not None:
            return self._direct[0]
        assert self.process is not None and self.process.stdin is not None
        return self.process.stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.process is not None and self.process.stdout is not None
        return self.process.stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        assert self.process is not None and self.process.stderr is not None
        return self.process.stderr

    def write_config(self, config: dict[str, Any]) -> None:
        self.bundle.mkdir(parents=True, exist_ok=True)
        self.bundle.chmod(0o711)  # a private rootfs inside must be reachable by the mapped root
        (self.bundle / "config.json").write_text(json.dumps(config))

    async def start(self, restore_from: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
        """Launch `runc run` (or `runc restore` from the images in `restore_from`) in the
        foreground with piped stdio; returns once runc is spawned. runc's environment is
        `runc_environ(environ)`.

        A restored container gets our pipes as its stdio: runc re-attaches the pipes recorded
        at checkpoint to the restorer's own stdio. Raises `ServiceError` if `kill` ran before
        or while runc was being spawned (the container is then torn down here, so a killed
        container never keeps running).
        """
        if self._killed:
            raise ServiceError(f"sandbox start failed at step 'exec runc' for {self.id}: the container was already killed")
        # runc's log messages go to a file in the bundle, not to the stderr it shares with the
        # container: they name host paths, which do not belong in the function's log. (runc
        # still prints a fatal error to stderr too; the worker holds a restore's stderr back.)
        log = ("--log", str(self.runc_log))
        if restore_from is None:
            argv = [*self.launcher, *self.runc.argv(*log, "run", "--bundle", str(self.bundle), self.id)]
        else:
            argv = self.runc.argv(*log, "restore", "--image-path", str(restore_from), "--work-path", str(self.bundle),
                                  "--bundle", str(self.bundle), self.id)
        try:
            if restore_from is None and self.direct_channel and self.output is not None:
                argv = [*self.launcher, *self.runc.argv(*log, "run", "--preserve-fds", str(len(CHANNEL_FDS)),
                                                        "--bundle", str(self.bundle), self.id)]
                self.process = await self._spawn_direct(argv, runc_environ(environ), self.output)
            else:
                self.process = await self._spawn(argv, runc_environ(environ))
        except OSError as exc:
            raise ServiceError(f"sandbox start failed at step 'exec runc' for {self.id}: {exc}") from exc
        if self._killed:
            await self._terminate()
            raise ServiceError(f"sandbox start failed at step 'exec runc' for {self.id}: killed while starting")

    async def _spawn(self, argv: list[str], environ: dict[str, str]) -> asyncio.subprocess.Process:
        """runc with piped stdio; stdout/stderr go to `output` when set (see `OutputSink`)."""
        pipes: dict[str, Any] = dict(stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                     stderr=asyncio.subprocess.PIPE, start_new_session=True, umask=RUNC_UMASK,
                                     env=environ)
        sink = self.output
        if sink is None:
            return await asyncio.create_subprocess_exec(*argv, limit=STREAM_LIMIT, **pipes)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(lambda: _SinkProtocol(sink, STREAM_LIMIT, loop), *argv, **pipes)
        self._transport, self.feeds_output = transport, True
        return asyncio.subprocess.Process(transport, protocol, loop)

    async def _spawn_direct(self, argv: list[str], environ: dict[str, str], sink: OutputSink) -> asyncio.subprocess.Process:
        """runc with the direct channel: three pipes whose container ends become fds
        `CHANNEL_FDS` of runc (bash moves them there: a spawned process's fds beyond stdio keep
        their numbers) and are preserved into the container; their worker ends are read into
        `sink` as fds 1 (frames) and 2 (log), and written as `stdin`. runc's own stdout and
        stderr reach the sink as `RUNC_STDOUT` and `RUNC_STDERR`."""
        loop = asyncio.get_running_loop()
        ours: list[int] = []
        theirs: list[int] = []
        try:
            for reader_is_ours in (False, True, True):  # channel in, channel out, log
                r, w = os.pipe()
                ours.append(r if reader_is_ours else w)
                theirs.append(w if reader_is_ours else r)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in theirs]
            for fd in theirs:
                os.close(fd)
            theirs = high
            moves = " ".join(f"{target}{'<' if i == 0 else '>'}&{fd} {fd}<&-"
                             for i, (target, fd) in enumerate(zip(CHANNEL_FDS, theirs)))
            wrapper = ["bash", "-c", f'exec {moves}; exec "$@"', "bash"]
            transport, protocol = await loop.subprocess_exec(
                lambda: _SinkProtocol(sink, STREAM_LIMIT, loop, {1: RUNC_STDOUT, 2: RUNC_STDERR}),
                *wrapper, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, umask=RUNC_UMASK, env=environ, pass_fds=theirs)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        self._transport, self.feeds_output = transport, True
        channel_in, frames, logs = (os.fdopen(fd, "wb" if i == 0 else "rb", buffering=0) for i, fd in enumerate(ours))
        readers: list[asyncio.ReadTransport] = []
        for fd, pipe in ((1, frames), (2, logs)):
            reader, _ = await loop.connect_read_pipe(lambda fd=fd: PipeSink(sink, fd), pipe)
            readers.append(reader)  # type: ignore[arg-type]
        writer_transport, writer_protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop), channel_in)  # type: ignore[attr-defined]
        self._direct = (asyncio.StreamWriter(writer_transport, writer_protocol, None, loop), readers)
        return asyncio.subprocess.Process(transport, protocol, loop)

    def pause_output(self, fd: int, paused: bool) -> None:
        """Stop (or resume) reading stdout (1) or stderr (2) when `output` receives it: the
        sink's back-pressure (the process's writes block once the pipe is full)."""
        if self._direct is not None:
            pipe: Any = self._direct[1][0] if fd == 1 else self._direct[1][1]
        elif self._transport is not None:
            pipe = self._transport.get_pipe_transport(fd)
        else:
            return
        if not isinstance(pipe, asyncio.ReadTransport) or pipe.is_closing():
            return
        if paused:
            pipe.pause_reading()
        else:
            pipe.resume_reading()

    def init_pid(self) -> int | None:
        """The host pid of the container's first process (from `runc state`), or None."""
        out = subprocess.run(self.runc.argv("state", self.id), capture_output=True, text=True)
        try:
            return int(json.loads(out.stdout)["pid"]) if out.returncode == 0 else None
        except (ValueError, KeyError, TypeError):
            return None

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL the container and wait for runc to exit; idempotent."""
        if self._killed:
            return
        self._killed = True
        await self._terminate()

    async def _terminate(self) -> None:
        """SIGKILL the container if runc runs, wait for runc, then delete what is left."""
        if self.process is not None and self.process.returncode is None:
            proc = await asyncio.create_subprocess_exec(
                *self.runc.argv("kill", self.id, "KILL"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await proc.wait()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._direct is not None:
            self._direct[0].close()  # the readers close at EOF, once the container's processes are gone
        await self._force_delete()

    async def _force_delete(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.runc.argv("delete", "--force", self.id),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()
        remove_tree(self.bundle)
