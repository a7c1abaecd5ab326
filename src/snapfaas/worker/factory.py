"""Builds and boots execution environments for a function version."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from snapfaas.config import ServerConfig, is_custom
from snapfaas.errors import ServiceError, SnapfaasError
from snapfaas.registry.artifacts import ArtifactStore
from snapfaas.registry.model import FunctionVersion
from snapfaas.runtime import custom, init
from snapfaas.sandbox import etc
from snapfaas import timeline
from snapfaas.sandbox.cgroup import AttachPrimer, Limits, container_cgroup, environment_cgroup
from snapfaas.sandbox.cgroup import remove as remove_cgroup
from snapfaas.sandbox.container import CHANNEL_FDS, CHANNEL_FDS_VARIABLE, CONTAINER_PREFIX, Container, Runc
from snapfaas.sandbox.criu_container import CriuContainer, CriuEngine, make_cgroup
from snapfaas.sandbox.restored import RestoredLedger
from snapfaas.sandbox.mounts import remove_tree, unmount_below
from snapfaas.sandbox.network import NetworkPool, PreparedNet
from snapfaas.sandbox.interpreter import InterpreterRegistry, mirror_source
from snapfaas.snapshot import determinism, engine
from snapfaas.sandbox.spec import HOSTNAME, OPT_DIR, RUNTIME_DIR, RUNTIME_PACKAGE, TASK_ROOT, SandboxSpec, make_private_rootfs, prepare_rootfs, render
from snapfaas.sandbox.spec import limits as spec_limits
from snapfaas.worker.environment import Environment
from snapfaas.worker.logs import LogStore

logger = logging.getLogger(__name__)
COMPILE_TIMEOUT_S = 120  # byte-compiling the runtime package with one interpreter
RUNTIME_SOURCE = Path(__file__).resolve().parent.parent / "runtime"


def _layer_paths(runtime: str) -> str:
    """Layer directories on a Python runtime's path, after /var/task (the working directory) and
    in the order of Lambda's Python runtime: the layers' site-packages, then /opt/python."""
    if is_custom(runtime):
        return ""
    return f"{OPT_DIR}/python/lib/{runtime}/site-packages:{OPT_DIR}/python:"


def lambda_environ(config: ServerConfig, version: FunctionVersion, init_type: str, stream: str) -> dict[str, str]:
    """Lambda's reserved variables, then the user's (validation keeps them from colliding).

    As on Lambda: the log group and stream variables only for on-demand initialization
    (SnapStart functions do not get them); ``AWS_LAMBDA_LOG_FORMAT``/``AWS_LAMBDA_LOG_LEVEL``
    (the ``ApplicationLogLevel``) only with the JSON log format."""
    environ = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": _layer_paths(version.runtime) + f"{RUNTIME_DIR}:{RUNTIME_DIR}/{RUNTIME_PACKAGE}/provided",
        "_HANDLER": version.handler,
        "LAMBDA_TASK_ROOT": TASK_ROOT,
        "LAMBDA_RUNTIME_DIR": RUNTIME_DIR,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{version.runtime}",
        "AWS_REGION": config.region,
        "AWS_DEFAULT_REGION": config.region,
        "AWS_LAMBDA_FUNCTION_NAME": version.name,
        "AWS_LAMBDA_FUNCTION_VERSION": version.version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(version.memory_size),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(version.timeout),
        "AWS_LAMBDA_INITIALIZATION_TYPE": init_type,
        "AWS_ENDPOINT_URL_LAMBDA": config.function_api_url,  # boto3.client("lambda") in the function
    }
    if init_type != "snap-start":
        environ["AWS_LAMBDA_LOG_GROUP_NAME"] = version.log_group_name
        environ["AWS_LAMBDA_LOG_STREAM_NAME"] = stream
    if version.log_format == "JSON":
        environ["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
        environ["AWS_LAMBDA_LOG_LEVEL"] = version.application_log_level or "INFO"
    if is_custom(version.runtime):
        del environ["AWS_EXECUTION_ENV"]  # not defined for OS-only runtimes, as on Lambda
        environ[custom.RESPONSE_LIMIT_VAR] = str(config.limits.response_bytes)  # read by the supervisor only
    environ.update(version.environment)
    return environ


NATIVE_INIT = "snapfaas-init"  # the native pid 1, built by `make` from runtime/init.c into the runtime package


def runtime_argv(runtime: str, executable: str, native_init: bool) -> list[str]:
    """The container process's argv: with `native_init` the native pid 1 (``runtime/init.c``)
    exec'ing the interpreter on the runtime's entry point (`runtime.start`), else the
    interpreter as the Python init (`runtime.init`); either runs Python's runtime, or the
    Runtime API supervisor of a custom runtime."""
    mode = [init.CUSTOM] if is_custom(runtime) else []
    if native_init:
        return [f"{RUNTIME_DIR}/{RUNTIME_PACKAGE}/{NATIVE_INIT}", executable, "-m", f"{RUNTIME_PACKAGE}.start", *mode]
    return [executable, "-m", RUNTIME_PACKAGE, *mode]


class EnvironmentServices(Protocol):
    """Serves the daemon's per-environment endpoints (credentials, Lambda API) on a listening
    socket that lives in one environment's network namespace (implemented by `api/`)."""

    async def open(self, listener: socket.socket) -> Any: ...

    async def close(self, handle: Any) -> None: ...


@dataclasses.dataclass
class NetworkLease:
    """An environment's network namespace and the services listening inside it; `close`
    (idempotent) stops the services and gives the namespace back for removal. Call it only
    once the environment's container is gone."""

    net: PreparedNet
    pool: NetworkPool
    services: EnvironmentServices | None
    handle: Any = None
    closed: bool = False
    starting_done: bool = False

    @property
    def path(self) -> Path:
        return self.net.slot.path

    def started(self) -> None:
        """The environment runs (or gave up starting): background namespace work may resume."""
        if not self.starting_done:
            self.starting_done = True
            self.pool.started()

    async def close(self) -> None:
        self.started()
        if self.closed:
            return
        self.closed = True
        try:
            if self.services is not None and self.handle is not None:
                await self.services.close(self.handle)
        finally:
            self.pool.release(self.net)


@dataclasses.dataclass
class EarlyCgroup:
    """A restored environment's id and cgroup, the cgroup being made in a worker thread since
    the restore was decided (`EnvironmentFactory.begin_restore`)."""

    env_id: str
    cgroup: str
    limits: Limits
    made: asyncio.Future[None]
    taken: bool = False  # handed to an environment's container, which owns it from then on

    async def discard(self) -> None:
        """Not taken by an environment (its build failed): wait for the thread, remove the cgroup."""
        if self.taken:
            return
        self.taken = True
        with contextlib.suppress(Exception):
            await asyncio.shield(self.made)
        for failure in await asyncio.to_thread(remove_cgroup, self.cgroup):
            logger.warning("environment %s: cgroup cleanup failed at step %s", self.env_id, failure)


class EnvironmentFactory:
    """Creates containers for versions. Owns the shared rootfs, the synthesized /etc and the
    runtime mount. Every environment of a function runs in that function's host id slice
    (`slice_of(function name)`, see sandbox/ids.py)."""

    def __init__(
        self,
        config: ServerConfig,
        runc: Runc,
        artifacts: ArtifactStore,
        interpreters: InterpreterRegistry,
        logs: LogStore,
        slice_of: Callable[[str], int],
    ) -> None:
        self.config = config
        self.runc = runc
        self.artifacts = artifacts
        self.interpreters = interpreters
        self.logs = logs
        self.slice_of = slice_of
        self.id_range = config.id_range
        self.rootfs = config.sandbox_dir / "rootfs"
        self.bundles = config.bundles_dir
        self.runtime_mount = config.sandbox_dir / "runtime"
        self.native_init = False  # whether the native pid 1 was built (`_install_runtime`)
        self.network_pool: NetworkPool | None = None  # set by the server: every environment gets its own netns
        self.services: EnvironmentServices | None = None
        self.criu_engine: CriuEngine | None = None  # set by the server under --restore-engine criu: restores without runc
        self.restored_ledger: RestoredLedger | None = None  # records of containers restored by CRIU directly
        self.attach_primer: AttachPrimer | None = None  # set by the server: see `prime_cgroup_attach`
        self.store_secret: bytes | None = None  # the deployment secret (set by the server): per-function hash seeds
        self.fixed_layout_launcher: list[str] | None = None if config.snapshot_init_aslr else determinism.fixed_layout_launcher()
        self._sources: dict[str, dict[str, str]] = {}
        self._prepare_lock = threading.Lock()
        self._clear_bundles()
        self._install_runtime()
        self.etc_dir = etc.build(config.sandbox_dir, config.sandbox_uid, HOSTNAME, templates=etc.LINK_TEMPLATES)
        self.criu_dump_config, self.criu_restore_config = engine.write_configs(config.sandbox_dir / "criu")

    def _clear_bundles(self) -> None:
        """Drop bundles a crashed daemon left behind. Contract: created after
        `Runc.reap_leftovers`, so no container uses any of them."""
        try:
            unmount_below(self.config.sandbox_dir)  # binds leaked by a restore that died half-way
            unmount_below(self.bundles)
            remove_tree(self.bundles)
        except OSError as exc:  # e.g. a symlink planted where the bundles go
            raise ServiceError(f"sandbox setup failed at step 'clear bundles': {exc}") from exc
        self.bundles.mkdir(parents=True)
        for directory in (self.bundles.parent, self.bundles):  # the mapped root walks to each rootfs
            os.chmod(directory, 0o711)

    def _install_runtime(self) -> None:
        """Copy the runtime package to ``<sandbox-dir>/runtime/snapfaas_runtime`` (world-readable)."""
        target = self.runtime_mount / RUNTIME_PACKAGE
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(RUNTIME_SOURCE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp"))
        _world_readable(self.runtime_mount)
        self.native_init = (target / NATIVE_INIT).is_file()
        if not self.native_init:
            logger.warning("the native sandbox init %s was not built (run make): sandboxes run the Python init "
                           "(runtime/init.py), with a second interpreter to checkpoint and restore", RUNTIME_SOURCE / NATIVE_INIT)
        path = self.config.sandbox_dir
        while path != path.parent:
            if path.exists():
                path.chmod(path.stat().st_mode | 0o111)
            if path == Path("/var/lib"):
                break
            path = path.parent

    def prepare(self, runtimes: list[str]) -> None:
        """Prepare runtimes ahead of the first invoke (mirroring a pyenv tree the first time on a host takes seconds);
        meant to run in a thread at startup. Unavailable runtimes are skipped. The per-daemon
        mirrors of earlier versions (``<sandbox-dir>/interpreters``, now host-wide:
        `snapfaas.sandbox.mirrors`) are deleted first."""
        legacy = self.config.sandbox_dir / "interpreters"
        try:
            remove_tree(legacy)
        except OSError as exc:
            logger.warning("deleting the previous per-daemon interpreter mirrors %s failed: %s", legacy, exc)
        for runtime in runtimes:
            try:
                self._prepare(runtime)
            except SnapfaasError as exc:
                logger.info("runtime %s not prepared: %s", runtime, exc.message)

    def _prepare(self, runtime: str) -> dict[str, str]:
        """Rootfs mount points and reachable bind sources for `runtime` (once per daemon).
        Thread-safe: a caller arriving while another prepares the runtime waits for it."""
        with self._prepare_lock:
            return self._prepare_locked(runtime)

    def _prepare_locked(self, runtime: str) -> dict[str, str]:
        if runtime not in self._sources:
            interp = self.interpreters.resolve(runtime)
            self._compile_runtime(interp.executable)
            prepare_rootfs(self.rootfs, [interp])
            mirrors = self.config.interpreter_mirrors
            self._sources[runtime] = {p: mirror_source(p, mirrors) for p in interp.mount_sources()}
        return self._sources[runtime]

    def _compile_runtime(self, executable: str) -> None:
        """Byte-compile the runtime package with `executable` (its ``__pycache__/*.cpython-3X.pyc``,
        world-readable), so an on-demand init imports the runtime's modules instead of compiling
        them (~50 ms of CPU for the whole package; the sandbox cannot write bytecode). A failure
        only costs that time and is logged."""
        package = self.runtime_mount / RUNTIME_PACKAGE
        try:
            done = subprocess.run([executable, "-m", "compileall", "-q", str(package)], capture_output=True, text=True,
                                  timeout=COMPILE_TIMEOUT_S, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("byte-compiling the runtime with %s failed: %s", executable, exc)
            return
        if done.returncode != 0:
            logger.warning("byte-compiling the runtime with %s failed: %s", executable, done.stdout.strip()[-300:])
        _world_readable(package)

    def prime_cgroup_attach(self) -> None:
        """An environment is about to be made: let the grace period its container's first cgroup
        move waits for (`cgroup.prime_attach`) pass while the rest is prepared."""
        if self.attach_primer is not None:
            self.attach_primer.start()

    async def network(self) -> NetworkLease | None:
        """A fresh network namespace for one environment, with the daemon's services listening
        inside it; None when the server runs without a network pool (unit tests)."""
        if self.network_pool is None:
            return None
        net = await self.network_pool.acquire()
        lease = NetworkLease(net, self.network_pool, self.services)
        if self.services is not None:
            try:
                lease.handle = await self.services.open(net.listener)
            except BaseException:
                await lease.close()
                raise
        return lease

    @contextlib.asynccontextmanager
    async def network_for_new_environment(self) -> AsyncIterator[NetworkLease | None]:
        """`network()` for the environment built in the block: closed again if the block
        raises; otherwise the environment built with it owns it (`Environment.destroy`)."""
        lease = await self.network()
        try:
            yield lease
        except BaseException:
            if lease is not None:
                await lease.close()
            raise

    async def stage_code(self, version: FunctionVersion, slice_index: int | None = None) -> None:
        """Make the version's code tree and merged layers exist for its id slice (`slice_index`,
        looked up if None), in a worker
        thread: on a node that has not run the version yet the packages come from the store
        origin. Raises `CodeUnavailable` (missing or corrupt there: Invoke answers Lambda's
        InvalidZipFileException) or `ServiceUnavailable` (the origin cannot be reached)."""
        if slice_index is None:
            slice_index = self.slice_of(version.name)
        # the common case, trees already here, costs one lstat each: no thread hand-off for it
        if not self.artifacts.has_tree(version.code_digest, slice_index):
            await asyncio.to_thread(self.artifacts.tree, version.code_digest, slice_index)
        if version.opt_tree is not None and not self.artifacts.has_merged(version.opt_tree, slice_index):
            await asyncio.to_thread(self.artifacts.merged, version.opt_tree, version.layer_digests, slice_index)

    def create(self, version: FunctionVersion, init_type: str = "on-demand",
               extra_environ: Mapping[str, str] | None = None, network: NetworkLease | None = None) -> Environment:
        """A new, not yet started environment for `version`, in `network` (the environment
        owns it from here: `Environment.destroy` closes it).

        ``init_type="snap-start"`` prepares it for a checkpoint (CRIU dump options) and makes its
        init deterministic (`snapshot.determinism`: the function's hash seed, and unless
        ``--snapshot-init-aslr`` no ASLR and no tcache); the `extra_environ` variables (e.g. the
        credentials endpoint) are added to Lambda's.
        """
        environ = dict(extra_environ or {})
        launcher: list[str] = []
        if init_type == "snap-start":
            fixed = self.fixed_layout_launcher is not None
            seed = guard = canary = None
            if self.store_secret is not None:
                seed = determinism.hash_seed(self.store_secret, version.name)
                guard = determinism.pointer_guard(self.store_secret, version.name)
                canary = determinism.stack_canary(self.store_secret, version.name)
            environ.update(determinism.init_environ(seed, fixed, version.environment, guard, canary))
            launcher = list(self.fixed_layout_launcher or [])
        direct = init_type == "on-demand" and not is_custom(version.runtime)  # never checkpointed: see Container.direct_channel
        if direct:
            environ[CHANNEL_FDS_VARIABLE] = ",".join(map(str, CHANNEL_FDS))
        env = self._build(version, init_type, environ, self.criu_dump_config, network=network)
        env.container.launcher = launcher
        env.container.direct_channel = direct
        return env

    def begin_restore(self, version: FunctionVersion) -> EarlyCgroup | None:
        """A restore of `version` is decided: under the criu engine, pick the environment's id
        and start making its cgroup in a worker thread (`restored` hands it to the container;
        if no environment takes it, `EarlyCgroup.discard`). None under the runc engine (runc
        makes its container's cgroup). Call on the event loop."""
        if self.criu_engine is None:
            return None
        env_id = secrets.token_hex(8)
        cgroup = environment_cgroup(self.runc.cgroup, env_id)
        limits = spec_limits(version.memory_size)
        made = asyncio.get_running_loop().run_in_executor(None, timeline.carried(functools.partial(make_cgroup, cgroup, limits)))
        return EarlyCgroup(env_id, cgroup, limits, made)

    def restored(self, version: FunctionVersion, images: Path, network: NetworkLease | None = None,
                 slice_index: int | None = None, early: EarlyCgroup | None = None) -> Environment:
        """A new, not yet started environment that `start` will restore from `images`, in id
        slice `slice_index` (the function's, looked up if None); `early`: its id and cgroup
        from `begin_restore` (the environment owns that cgroup once this returns).

        The bundle repeats the checkpointed container's mounts and namespaces (CRIU requires
        the same layout) under a new container id and cgroup; the process, its environment
        and /tmp come from the images.
        """
        env = self._build(version, "snap-start", {}, self.criu_restore_config, private_rootfs=True, network=network,
                          slice_index=slice_index, early=early)
        env.restore_from = images
        return env

    def _build(self, version: FunctionVersion, init_type: str, extra_environ: Mapping[str, str],
               criu_config: Path, private_rootfs: bool = False, network: NetworkLease | None = None,
               slice_index: int | None = None, early: EarlyCgroup | None = None) -> Environment:
        """`private_rootfs`: `runc restore` bind-mounts the container's mounts onto its rootfs
        in the host's mount namespace while CRIU works, so concurrent restores must not share
        one rootfs directory (the skeleton is a few empty directories and links).

        A container CRIU restores directly (`CriuContainer`) runs in the environment's cgroup
        itself: the daemon creates and removes that cgroup, so there is no runc-made container
        cgroup below it that the environment must outlive (one level to create and remove per
        hierarchy instead of two)."""
        sources = self._prepare(version.runtime)
        if slice_index is None:
            slice_index = self.slice_of(version.name)
        env_id = early.env_id if early is not None else secrets.token_hex(8)
        cgroup = environment_cgroup(self.runc.cgroup, env_id)
        container_id, bundle = CONTAINER_PREFIX + env_id, self.bundles / env_id
        container = (CriuContainer(self.runc, container_id, bundle, self.criu_engine)
                     if private_rootfs and self.criu_engine is not None else Container(self.runc, container_id, bundle))
        if early is not None and isinstance(container, CriuContainer):
            early.taken = True
            container.begin_cgroup(early.made, early.limits)
        limits = self.config.limits
        env = Environment(env_id, version, container, self.logs, cgroup,
                          max_frame_bytes=limits.response_bytes, tail_chars=limits.log_tail_bytes)
        env.network = network
        env.id_slice = slice_index
        interp = self.interpreters.resolve(version.runtime)
        spec = SandboxSpec(
            env_id=env_id,
            code_dir=self.artifacts.tree(version.code_digest, slice_index),
            runtime_dir=self.runtime_mount,
            interpreter=interp,
            environ={**lambda_environ(self.config, version, init_type, env.stream), **extra_environ},
            memory_mb=version.memory_size,
            tmp_mb=version.ephemeral_storage,
            uid=self.config.sandbox_uid,
            host_id_base=self.id_range.slice_base(slice_index),
            cgroup=cgroup if isinstance(container, CriuContainer) else container_cgroup(cgroup),
            netns=network.path if network is not None else None,
            host_network=self.config.sandbox_network == "host",
            etc_dir=self.etc_dir,
            mount_sources=sources,
            annotations={engine.CONFIG_ANNOTATION: str(criu_config)},
            opt_dir=(self.artifacts.merged(version.opt_tree, version.layer_digests, slice_index)
                     if version.opt_tree is not None else None),
        )
        rootfs = self.rootfs
        if private_rootfs:
            rootfs = container.bundle / "rootfs"
            make_private_rootfs(rootfs, [interp])
        container.write_config(render(spec, rootfs, runtime_argv(version.runtime, interp.executable, self.native_init)))
        return env


def _world_readable(tree: Path) -> None:
    """Directories 0755 and files 0644 below (and at) `tree`: what the sandbox's users read;
    the native init (`NATIVE_INIT`) 0755: what they run."""
    for dirpath, _, filenames in os.walk(tree):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o755 if name == NATIVE_INIT else 0o644)
