"""A container restored by driving CRIU directly (`criu swrk`), without a runc process.

`runc restore` is a Go process per restore (~26 ms of CPU here) plus `runc kill` and
`runc delete` at teardown; what it does around CRIU is done here instead, the same way
(runc 1.1 libcontainer's `Restore`, `criuSwrk`, `criuApplyCgroups`):

* cgroup (v1): the container's cgroup is created in every hierarchy with runc's settings
  (device allow-list, memory + swap and pids limits: `cgroup.create_v1`), and the CRIU
  process is moved into it before it restores anything, so every restored task starts there
  and CRIU's own CPU is charged to the environment (bench/cpu.py relies on that). Unlike
  runc, CRIU is asked to leave cgroups alone (`criu_rpc.RestoreRequest.manage_cgroups`):
  the restored tasks inherit CRIU's cgroups, which are the environment's in every hierarchy
  already; runc's "soft" mode re-did that move per hierarchy, mounted every hierarchy in a
  scratch yard and started a helper process, ~2 ms of each restore.
  Both steps run in a worker thread (the cgroup is made while the loop prepares and starts
  CRIU, which waits for its request meanwhile): cgroupfs writes block in the kernel
  (moving a task waits for the cgroup locks, ~8 ms here; creating ~6 ms across 9
  hierarchies), and on the event loop they held up every other restore of a burst.
* rootfs: the environment's private rootfs skeleton is bind-mounted onto itself (CRIU wants a
  mount point as root); bind mounts of the spec, /dev/null (masked paths) and runc's default
  devices are external mounts mapped to their host sources.
* network: the environment's prepared namespace is handed over as ``extRootNetNS``.
* stdio: our pipes are CRIU's stdin/stdout/stderr, which stand in for the pipes recorded in the
  images' descriptors.json (``--inherit-fd``).
* user namespace, seccomp, capabilities, no-new-privileges, mounts, /tmp: restored from the
  images, as under runc (runc passes nothing else for them either).
* lifecycle: ``rst_sibling`` makes the restored init our child; a pidfd is taken on it for
  kill (SIGKILL to a pid-namespace init ends the namespace), wait and reap; CRIU itself is
  waited for the same way (`ChildProcess`: a pidfd on the event loop, no watcher thread). A record under
  ``<data-dir>/restored/`` (`sandbox.restored`) lets a restarted daemon end what a crashed one
  restored.

Containers that start from scratch (on-demand environments, a publish's init) still run under
`runc run`: this class hands them to `Container`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from snapfaas import timeline
from snapfaas.errors import ServiceError
from snapfaas.sandbox import criu_rpc
from snapfaas.sandbox.cgroup import Limits, attach_v1, create_v1
from snapfaas.sandbox.cgroup import remove as remove_cgroup
from snapfaas.sandbox.container import RUNC_UMASK, STREAM_LIMIT, Container, PipeSink, Runc
from snapfaas.sandbox.mounts import remove_tree
from snapfaas.sandbox.restored import RestoredLedger, RestoredRecord, kill_cgroup

logger = logging.getLogger(__name__)
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 2
# the devices runc 1.1 creates in every container (bind mounts of the host's nodes in a user
# namespace): external mounts of the checkpoint, keyed by their path
DEFAULT_DEVICES = ("/dev/null", "/dev/random", "/dev/full", "/dev/tty", "/dev/zero", "/dev/urandom")
NETNS_KEY = "extRootNetNS"
CONFIG_ANNOTATION = "org.criu.config"
RESPONSE_MAX = 64 * 1024
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _mount_bind(source: str, target: str) -> None:
    if _libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"bind-mounting {source} on {target}: {os.strerror(errno)}")


def _unmount(target: str) -> None:
    _libc.umount2(target.encode(), MNT_DETACH)  # EINVAL (not mounted) is fine: already gone


async def _off_loop(action: Callable[[], T]) -> T:
    """Run blocking `action` in a worker thread. If the caller is cancelled meanwhile, `action`
    is still waited for before the cancellation goes on, so a teardown that follows never
    races it (a cgroup created after its removal would be left behind)."""
    future = asyncio.get_running_loop().run_in_executor(None, action)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


class ChildProcess:
    """A child process started with `subprocess.Popen` on the event loop's thread and waited for
    through a pidfd registered with the loop: no child-watcher thread per process and no
    subprocess transport, which asyncio's `create_subprocess_exec` adds (CRIU's stdio are
    descriptors the caller made; nothing is read from it here). Create it on the loop's
    thread; `wait` returns the exit code as `Popen.returncode` gives it."""

    def __init__(self, argv: list[str], **popen: Any) -> None:
        self._popen = subprocess.Popen(argv, **popen)
        self.pid = self._popen.pid
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = self._loop.create_future()
        self._pidfd: int | None = os.pidfd_open(self.pid)
        self._loop.add_reader(self._pidfd, self._exited)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _exited(self) -> None:
        if self._popen.poll() is None:  # woken early: not a zombie yet
            return
        self._close_pidfd()
        if not self._done.done():
            self._done.set_result(self._popen.returncode)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def kill(self) -> None:
        """SIGKILL it (through its pidfd, so a recycled pid is never signalled) unless reaped."""
        if self._pidfd is not None and self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)


def make_cgroup(cgroup: str, limits: Limits) -> None:
    """Create a restored container's cgroup with runc's settings (blocking; `begin_cgroup`)."""
    create_v1(cgroup, limits)
    timeline.mark("cgroup made [thread]")


def restore_request(config: Mapping[str, Any], images_fd: int, work_fd: int, root: str,
                    pipe_keys: list[str], netns_fd: int | None) -> criu_rpc.RestoreRequest:
    """The CRIU restore request for a container whose runc spec is `config` (pure).

    `pipe_keys`: the images' descriptors.json (stdin, stdout, stderr as recorded); each pipe
    among them is inherited from CRIU's own descriptor of the same number. `netns_fd`: CRIU's
    descriptor of the environment's network namespace (None: the spec has none to join).
    Cgroups are left to the caller, which moves CRIU into the container's before the request.
    """
    mounts = [(m["destination"], m["source"]) for m in config.get("mounts", []) if m.get("type") == "bind"]
    linux = config.get("linux", {})
    if linux.get("maskedPaths"):
        mounts.append(("/dev/null", "/dev/null"))
    mounts += [(dev, dev) for dev in DEFAULT_DEVICES]
    inherit = [(key, fd) for fd, key in enumerate(pipe_keys) if "pipe:" in key]
    if netns_fd is not None:
        inherit.append((NETNS_KEY, netns_fd))
    annotations = config.get("annotations", {})
    return criu_rpc.RestoreRequest(
        images_dir_fd=images_fd, work_dir_fd=work_fd, root=root,
        config_file=annotations.get(CONFIG_ANNOTATION),
        external_mounts=mounts, inherit_fds=inherit,
    )


def limits_of(config: Mapping[str, Any]) -> Limits:
    """runc's cgroup resources of a spec (`spec.render`'s memory, swap and pids)."""
    resources = config["linux"]["resources"]
    return Limits(int(resources["memory"]["limit"]), int(resources["memory"]["swap"]), int(resources["pids"]["limit"]))


def netns_path(config: Mapping[str, Any]) -> str | None:
    for ns in config.get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network":
            return ns.get("path")
    return None


def exit_status(wait_status: int) -> int:
    """A waitpid status as runc reports its container's: the exit code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class CriuEngine:
    """What every `CriuContainer` of a daemon shares: the CRIU binary and the records ledger."""

    def __init__(self, binary: str, ledger: RestoredLedger) -> None:
        self.binary = binary
        self.ledger = ledger


class CriuContainer(Container):
    """A `Container` whose restores are CRIU's alone (see the module docstring); `start`
    without images runs `runc run` as `Container` does."""

    def __init__(self, runc: Runc, container_id: str, bundle: Path, engine: CriuEngine) -> None:
        super().__init__(runc, container_id, bundle)
        self.engine = engine
        self.config: dict[str, Any] | None = None
        self.pid: int | None = None  # the restored init's host pid
        self._restoring = False
        self._criu: ChildProcess | None = None
        self._pidfd: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self._streams: tuple[asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamReader] | None = None
        self._read_transports: dict[int, asyncio.ReadTransport] = {}  # stdout/stderr when `output` is fed
        self._root_mounted: str | None = None
        self._settling: asyncio.Future[None] | None = None  # `_settle_host` after a restore, in a worker thread
        # the environment's cgroup, being made in a worker thread since the restore was decided
        # (`begin_cgroup`): None if `start` makes it
        self._cgroup_made: asyncio.Future[None] | None = None
        self._cgroup_limits: Limits | None = None

    @property
    def cgroup(self) -> str:
        assert self.config is not None
        return str(self.config["linux"]["cgroupsPath"])

    @property
    def log_read_directly(self) -> bool:
        """A restored container's stderr is our own pipe (CRIU gives the restored process
        our ends' peers; nothing relays them) when `output` is fed from it."""
        if self._restoring:
            return 2 in self._read_transports
        return super().log_read_directly

    @property
    def stdin(self) -> asyncio.StreamWriter:
        return self._streams[0] if self._streams is not None else super().stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        if self._streams is not None and self._streams[1] is not None:
            return self._streams[1]
        return super().stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        if self._streams is not None and self._streams[2] is not None:
            return self._streams[2]
        return super().stderr

    def write_config(self, config: dict[str, Any]) -> None:
        """Keep the spec and make the bundle directory; its ``config.json`` (which a CRIU restore
        does not read: it records the environment for operators and tests) is written by
        `start`, for a restore in the worker thread that makes the cgroup meanwhile."""
        self.bundle.mkdir(parents=True, exist_ok=True)
        self.bundle.chmod(0o711)  # a private rootfs inside must be reachable by the mapped root
        self.config = config

    def _write_config_file(self) -> None:
        assert self.config is not None
        (self.bundle / "config.json").write_text(json.dumps(self.config))

    def begin_cgroup(self, made: asyncio.Future[None], limits: Limits) -> None:
        """The environment's cgroup (`cgroup`, with `limits`) is being made in a worker thread
        (`made`, from `make_cgroup`), started when the restore was decided so that its cgroupfs
        work (~1.5 ms of CPU; its mkdirs wait for the cgroup lock a concurrent attach or priming
        holds, 2-8 ms here) runs while the code, network, images and bundle are prepared. `start`
        waits for it before CRIU joins the cgroup and makes it again if the spec's limits differ;
        `kill` waits for it before removing the cgroup."""
        self._cgroup_made = made
        self._cgroup_limits = limits

    async def _cgroup_settled(self) -> None:
        """Wait for a `begin_cgroup` thread, if any, whatever its outcome."""
        if self._cgroup_made is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._cgroup_made)

    def _prepare_host(self) -> None:
        """The container's record (`sandbox.restored`), the environment's cgroup with the
        container's settings unless `begin_cgroup` makes it, and ``config.json`` (blocking)."""
        assert self.config is not None
        self.engine.ledger.write(RestoredRecord(self.id, self.cgroup, str(self.bundle)))
        timeline.mark("record written [thread]")
        if self._cgroup_made is None:
            create_v1(self.cgroup, limits_of(self.config))
            timeline.mark("cgroup made [thread]")
        self._write_config_file()
        timeline.mark("config.json written [thread]")

    async def start(self, restore_from: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
        """`Container.start` for a fresh container; for a restore, CRIU restores the images in
        `restore_from` (its environment: ours plus `environ`) and this returns once the
        restored process runs, or once CRIU failed (the container then reads as exited, with
        CRIU's exit status, and its log is ``restore.log`` in the bundle, as with runc)."""
        if restore_from is None:
            self._write_config_file()  # runc reads it
            await super().start(None, environ)
            return
        if self._killed:
            raise ServiceError(f"sandbox start failed at step 'restore' for {self.id}: the container was already killed")
        assert self.config is not None, "write_config comes first"
        self._restoring = True
        self._exited = asyncio.get_running_loop().create_future()
        try:
            await self._restore(restore_from, environ or {})
        except BaseException:
            await self._settled()
            self._abort()
            raise
        if self._killed:
            await self._settled()
            self._abort()
            raise ServiceError(f"sandbox start failed at step 'restore' for {self.id}: killed while restoring")

    async def _restore(self, images: Path, environ: Mapping[str, str]) -> None:
        assert self.config is not None and self._exited is not None
        loop = asyncio.get_running_loop()
        to_close: list[int] = []
        ours: list[int] = []
        # the record and the cgroup are made in a worker thread while the loop prepares and
        # starts CRIU, which waits for its request: CRIU joins the cgroup (below) before it
        # restores anything. Files written in threads are waited for before this returns or
        # raises, so a teardown never races them.
        cgroup_made = loop.run_in_executor(None, timeline.carried(self._prepare_host))
        moved: asyncio.Future[None] | None = None  # CRIU's move into the cgroup, in a worker thread
        restored_pid: int | None = None
        try:
            step = "rootfs"
            root = str(self.config["root"]["path"])
            _mount_bind(root, root)
            self._root_mounted = root
            timeline.mark("rootfs bind-mounted")
            step = "images"
            pipe_keys = json.loads((images / "descriptors.json").read_text())
            images_fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            to_close.append(images_fd)
            work_fd = os.open(self.bundle, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            to_close.append(work_fd)
            step = "network"
            netns = netns_path(self.config)
            netns_fd = None
            if netns is not None:
                netns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                to_close.append(netns_fd)
            step = "stdio"
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
            stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
            stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
            to_close += [stdin_r, stdout_w, stderr_w]
            ours += [stdin_w, stdout_r, stderr_r]
            client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            to_close.append(server.detach())
            client.setblocking(False)
            timeline.mark("images, netns, pipes opened")
            step = "exec criu"
            server_fd = to_close[-1]
            self._criu = ChildProcess(
                [self.engine.binary, "swrk", str(server_fd)],
                stdin=stdin_r, stdout=stdout_w, stderr=stderr_w,
                pass_fds=(server_fd, *([netns_fd] if netns_fd is not None else [])),
                start_new_session=True, umask=RUNC_UMASK, env={**os.environ, **environ},
            )
            timeline.mark("criu spawned")
            move_criu = timeline.carried(functools.partial(attach_v1, self.cgroup, self._criu.pid))
            if self._cgroup_made is not None:
                step = "cgroup"
                await asyncio.shield(self._cgroup_made)  # raises what making it raised
                # CRIU joins the cgroup now, while the record and config.json are written: the
                # move can wait a grace period for the cgroup attach lock (10-20 ms, more under
                # load, whenever the last move or priming is older than one; on a cold host the
                # host preparation alone outlasts it), so it no longer waits after them
                moved = loop.run_in_executor(None, move_criu)
            step = "record, cgroup and config.json"
            await asyncio.shield(cgroup_made)
            if self._cgroup_made is not None and self._cgroup_limits != limits_of(self.config):
                step = "cgroup"  # not the spec's settings: make it so
                await _off_loop(functools.partial(create_v1, self.cgroup, limits_of(self.config)))
            timeline.mark("host prepared (awaited)")
            step = "move criu into the cgroup"
            if moved is None:
                moved = loop.run_in_executor(None, move_criu)
            await asyncio.shield(moved)
            timeline.mark("criu moved into the cgroup")
            request = restore_request(self.config, images_fd, work_fd, root, pipe_keys, netns_fd)
            for fd in (stdin_r, stdout_w, stderr_w, server_fd):  # CRIU holds them now
                os.close(fd)
                to_close.remove(fd)
            step = "criu swrk"
            with client:
                await loop.sock_sendall(client, request.encode())
                timeline.mark("criu request sent")
                answer = await loop.sock_recv(client, RESPONSE_MAX)
                timeline.mark("criu answered")
            response = criu_rpc.decode_response(answer) if answer else None
            restored_pid = response.pid if response is not None and response.success and response.pid else None
            if restored_pid is not None:
                # the restored tasks run once CRIU answers: neither CRIU's exit (its clean-up,
                # 1-3 ms; `ChildProcess` reaps it, `kill` waits for it) nor `_settle_host` is
                # waited for here
                self._pidfd = os.pidfd_open(restored_pid)
                self.pid = restored_pid
                loop.add_reader(self._pidfd, self._reap)
                root_mounted, self._root_mounted = self._root_mounted, None
                self._settling = loop.run_in_executor(None, self._settle_host, root_mounted, restored_pid)
            else:
                status = await self._criu.wait()
                why = (f"errno {response.errno}: {response.errmsg}" if response is not None else "no answer")
                logger.info("container %s: CRIU restore failed (%s, exit %s)", self.id, why, status)
                self._exited.set_result(status or 1)
        except OSError as exc:
            raise ServiceError(f"sandbox start failed at step '{step}' for {self.id}: {exc}") from exc
        except criu_rpc.RpcDecodeError as exc:
            raise ServiceError(f"sandbox start failed at step 'criu swrk' for {self.id}: {exc}") from exc
        finally:
            if not cgroup_made.done():  # a step before it failed or was cancelled: never race the teardown
                with contextlib.suppress(Exception):
                    await asyncio.shield(cgroup_made)
            elif not cgroup_made.cancelled():
                cgroup_made.exception()  # retrieved: a failure is reported by the step that awaited it
            if moved is not None:  # never race the teardown's removal of the cgroup either
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(moved)
            await self._cgroup_settled()
            for fd in to_close:
                os.close(fd)
            if self._root_mounted is not None:  # the restored mount namespace holds its own copy
                _unmount(self._root_mounted)
                self._root_mounted = None
        await self._open_stdio(*ours)

    def _settle_host(self, root_mounted: str | None, restored_pid: int) -> None:
        """After a restore, off its critical path (blocking): unmount CRIU's root bind (the
        restored mount namespace holds its own copy; ~0.1 ms here, at times several ms) and
        add the restored pid to the container's record (informational: a restarted
        daemon ends a container by its cgroup, recorded before CRIU ran). Failures are logged."""
        if root_mounted is not None:
            _unmount(root_mounted)
        try:
            self.engine.ledger.write(RestoredRecord(self.id, self.cgroup, str(self.bundle), restored_pid))
        except OSError as exc:
            logger.warning("container %s: recording the restored pid failed: %s", self.id, exc)

    async def _settled(self) -> None:
        """Wait for `_settle_host`, if it was started: a teardown must not race its record."""
        if self._settling is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._settling)

    async def _open_stdio(self, stdin_w: int, stdout_r: int, stderr_r: int) -> None:
        """Our ends of the container's stdio: stdin as a stream writer; stdout and stderr fed to
        `output` from the loop's read callbacks when it is set (`feeds_output`), else as stream
        readers."""
        loop = asyncio.get_running_loop()
        readers: list[asyncio.StreamReader] = []
        sink = self.output
        for number, fd in ((1, stdout_r), (2, stderr_r)):
            pipe = open(fd, "rb", 0)
            if sink is not None:
                transport, _ = await loop.connect_read_pipe(lambda n=number: PipeSink(sink, n), pipe)
                self._read_transports[number] = transport
            else:
                reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
                await loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r, loop=loop), pipe)
                readers.append(reader)
        self.feeds_output = sink is not None
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, open(stdin_w, "wb", 0))
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self._streams = (writer, *readers) if readers else (writer, None, None)  # type: ignore[assignment]

    def pause_output(self, fd: int, paused: bool) -> None:
        """`Container.pause_output` for a restored container's pipes."""
        if not self._restoring:
            super().pause_output(fd, paused)
            return
        transport = self._read_transports.get(fd)
        if transport is None or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _reap(self) -> None:
        """The pidfd is readable: the restored init exited; reap it."""
        assert self._pidfd is not None and self.pid is not None and self._exited is not None
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8  # reaped elsewhere: its status is lost
        if pid == 0:
            return
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(exit_status(status))

    def init_pid(self) -> int | None:
        return self.pid if self._restoring else super().init_pid()

    async def wait(self) -> int:
        if not self._restoring:
            return await super().wait()
        assert self._exited is not None
        return await asyncio.shield(self._exited)

    async def kill(self) -> None:
        """SIGKILL the container and wait until it is gone, its cgroup and bundle removed; idempotent."""
        await self._cgroup_settled()  # made in a thread since the restore was decided: never removed before
        if not self._restoring:
            await super().kill()
            return
        if self._killed:
            return
        self._killed = True
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        if self._criu is not None and self._criu.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._criu.kill()
        if self._exited is not None and self.pid is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), timeout=10)
            except TimeoutError:
                logger.warning("container %s: pid %s did not exit within 10 s of SIGKILL", self.id, self.pid)
        if self._criu is not None:
            await self._criu.wait()
        await self._settled()
        await asyncio.to_thread(self._teardown)

    def _abort(self) -> None:
        """A restore that raised (or was killed meanwhile): end CRIU and whatever it restored."""
        self._killed = True
        if self._criu is not None and self._criu.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._criu.kill()
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        if self._exited is not None and not self._exited.done() and self.pid is None:
            self._exited.set_result(1)
        self._teardown()

    def _teardown(self) -> None:
        """Kill what is left in the container's cgroup, remove the cgroup, the bundle and the record."""
        if self._root_mounted is not None:
            _unmount(self._root_mounted)
            self._root_mounted = None
        survivors = kill_cgroup(self.cgroup, reap_except=frozenset([self._criu.pid] if self._criu is not None else []))
        if survivors:
            logger.warning("container %s: pids %s survived SIGKILL", self.id, survivors)
        failures = remove_cgroup(self.cgroup)
        for failure in failures:
            logger.warning("container %s: cgroup cleanup failed at step %s", self.id, failure)
        if not failures:
            self.removed_cgroup = self.cgroup
        try:
            remove_tree(self.bundle)
        except OSError as exc:
            logger.warning("container %s: bundle cleanup failed: %s", self.id, exc)
        if not survivors:
            self.engine.ledger.remove(self.id)
