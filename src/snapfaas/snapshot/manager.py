"""SnapStart lifecycle: snapshot at publish, restore on scale-out, retention, deletion.

State machine of a published SnapStart version (Lambda's)::

    Pending --init + before-snapshot hooks + checkpoint ok--> Active (OptimizationStatus On)
       |                                                        |  not invoked for the retention
       +--import error / hook error / init timeout /            |  period, or its images broke
          unsupported socket / checkpoint failure --> Failed    v
    Pending <--invoke answers SnapStartNotReadyException--- Inactive

Init runs once per snapshot, in an environment started with
``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``; the runtime blocks at the restore barrier and
the checkpoint is taken while it waits. Images live in the chunk store (`snapfaas.store`:
deduplicated, encrypted, tiered); `SnapshotVault` keeps their plaintext restore-ready copy in RAM.
Deleting or expiring a snapshot schedules a garbage collection (in a thread) that removes its
chunks no other snapshot references, from every tier and the origin.

Leases (`leases`, in the registry's database; in a cluster, PostgreSQL shared by every node):

* A publish or re-creation is worked on by the holder of its ``publish`` lease only, renewed from
  a thread while it works. A node that does not get it leaves the version to its holder. Every
  `takeover_period` each node looks for Pending SnapStart versions and claims those whose lease
  is free or expired: a version whose node died mid-publish is redone from scratch elsewhere
  (the dead node's half-written snapshot is never referenced: garbage). A holder that lost its
  lease (taken over after a long stall) neither activates nor fails the version.
* Before its images go to the store, a publish takes an ``upload`` lease named by its snapshot
  id and waits until no ``gc`` lease is live; it releases the upload lease once the registry
  references the snapshot (or it is dropped). Garbage collection takes the ``gc`` lease, then
  reads the live upload leases, *then* the registry: every snapshot is in one of the two. A
  snapshot with an upload lease but no manifest yet is being written by a publish that may
  already have checked which chunks exist, so the collection deletes no chunk then (manifests
  only; chunks at the next run). Together: a chunk a publish relies on is never deleted, on any
  node, whatever the grace period. A node that does not get the gc lease cleans its local
  caches only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from snapfaas.cluster.leases import Claim, Keeper, Leases, OriginLeases
from snapfaas.errors import InvalidParameterValue, NotFound, ServiceUnavailable, SnapStartNotReady
from snapfaas.registry.db import Registry
from snapfaas.registry.model import FunctionVersion, State
from snapfaas.registry.packages import package_ids
from snapfaas.snapshot import engine, memory, sockets, timestamps
from snapfaas.snapshot.progress import Progresses
from snapfaas.snapshot.vault import CacheLease, SnapshotCorrupt, SnapshotVault, public_reason
from snapfaas.store import CollectReport
from snapfaas.worker.environment import Environment, EnvironmentDied, FrameStreamRejected, decode_error
from snapfaas.worker import platform_log
from snapfaas.worker.factory import EnvironmentFactory

logger = logging.getLogger(__name__)
MIN_INIT_TIMEOUT_S = 130.0
TOUCH_PERSIST_S = 3600.0  # last-invoked times are persisted at most this often per version
RECREATING = "The function's snapshot is being re-created."  # StateReason of a Pending re-creation
IDLE_REASON = "The function's snapshot was removed because the version was not invoked for the retention period."
FORCED_REASON = "The function's snapshot was removed by the operator (snapfaas snapshot expire)."
PUBLISH = "publish"  # lease kind (cluster/leases.py): who works on a version's snapshot
NOT_READY = "Lambda is initializing your function. It will be ready to invoke once your function state becomes ACTIVE."


class CodePackages(Protocol):
    """What the store collection asks of the code artifact store (registry/artifacts.py)."""

    def mark(self) -> int: ...
    def live_ids(self, mark: int | None = None) -> set[str]: ...
    def settle(self, mark: int) -> None: ...


def publish_key(version: FunctionVersion) -> str:
    """The key of a version's publish lease."""
    return f"{version.name}:{version.version}"


def needs_recreation(current: FunctionVersion, seen: FunctionVersion) -> bool:
    """Whether the version as stored now still needs the re-creation `seen` (the version as
    the caller saw it: Inactive, or Active with a broken snapshot) asked for."""
    if current.state == State.INACTIVE:
        return True
    if current.state == State.ACTIVE:
        return current.snapshot_id is not None and current.snapshot_id == seen.snapshot_id
    return current.state == State.PENDING and current.state_reason == RECREATING


class _Settled(Exception):
    """The version left Pending while this node worked on it (another node settled it)."""


@dataclasses.dataclass(frozen=True)
class PublishFailure:
    code: str  # Lambda StateReasonCode
    reason: str  # StateReason: what failed, in words


class SnapshotManager:
    def __init__(
        self,
        registry: Registry,
        factory: EnvironmentFactory,
        vault: SnapshotVault,
        status: engine.CriuStatus,
        retention_s: float,
        environ_for: Callable[[str, str, str], dict[str, str]],
        revoke: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        restore_memory: str = "copy",
    ) -> None:
        """`environ_for(env_id, function, role)` gives the publish's init environment its
        credentials variables (the container-credentials endpoint); `revoke` withdraws its token
        once the snapshot is taken (the credentials init fetched stay valid until they expire,
        as on Lambda). `restore_memory` ("map" / "copy") is the
        server's setting; each snapshot records the mode its restores use (`memory.choose`)."""
        self.registry = registry
        self.factory = factory
        self.vault = vault
        self.status = status
        self.retention_s = retention_s
        self.min_init_timeout_s = MIN_INIT_TIMEOUT_S  # Lambda's floor; lowered only by tests
        self.environ_for = environ_for
        self.revoke = revoke
        self.clock = clock
        self.restore_memory = restore_memory
        # init-time sockets (snapshot/sockets.py): how restored copies see TCP connections
        # (--snapstart-connections), whether copies share the host's network, the kernel's version
        self.connections = sockets.DEFAULT_CONNECTION_MODE
        self.shared_network = False
        self.kernel = sockets.kernel_version(os.uname().release)
        self._memory_modes: dict[str, str] = {}  # snapshot id -> "map" / "copy"
        self._scanned: dict[memory.FileKey, str | None] = {}  # mapped files already searched for jemalloc
        self.scanner: Callable[[FunctionVersion], Awaitable[list[str]]] | None = None
        self.progress = Progresses()  # where each publish this server runs is (snapshot/progress.py)
        # a slot among --max-environments for the init environment (`Worker.environment_slot`); None: unbounded
        self.environment_slot: Callable[[], AbstractAsyncContextManager[None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._creating: set[tuple[str, str]] = set()
        self._broken: set[str] = set()  # snapshot ids already sent for re-creation
        self._dropped_copies: dict[str, int] = {}  # snapshot id -> materializations when its cached copy was dropped
        self._gc_task: asyncio.Task[None] | None = None
        self._gc_again = False
        self._reaper: asyncio.Task[None] | None = None
        self.code: CodePackages | None = None  # the server's ArtifactStore: packages being ingested
        self.leases: Leases | None = None  # set by the server; None: no coordination (tests, tools)
        self.takeover_period: float | None = None  # None: half the lease TTL
        self._uploads: dict[str, Claim] = {}  # snapshot id -> upload lease, until the registry references it

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reaper = asyncio.create_task(self._retention_loop(), name="snapshot-retention")
        if self.leases is not None:
            self._spawn(self._takeover_loop(), "snapshot-takeover")
        self.vault.on_unpinned_doomed = lambda _snapshot_id: loop.call_soon_threadsafe(self.collect_soon)

    def _lazy_failure(self, version: FunctionVersion) -> str | None:
        """Why the snapshot view could not serve a read of `version`'s snapshot (a chunk
        missing or corrupt at the origin, the origin unreachable), as the reason its snapshot
        is unusable; None if every read was served (or restores are eager)."""
        view = self.vault.view
        error = view.failure(version.snapshot_id) if view is not None and version.snapshot_id else None
        return None if error is None else f"snapshot {version.snapshot_id} failed at step 'load lazily': {public_reason(error)}"

    def environment_died(self, version: FunctionVersion) -> None:
        """An environment restored from `version`'s snapshot died (e.g. of SIGBUS on a page
        whose chunk the view could not serve). If a read of the snapshot failed, the snapshot
        is re-created; any other death is the function's own doing and changes nothing."""
        reason = self._lazy_failure(version)
        if reason is not None:
            self._unusable(version, reason)

    async def close(self) -> None:
        """Stop publishing and retention (publishes in flight are cancelled, not failed). The
        vault stays open: restored environments may still read the snapshot view until the
        worker has destroyed them; then `close_store`."""
        tasks = [*self._tasks, *([self._reaper] if self._reaper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close_store(self) -> None:
        """Close the vault (the view, then the store); after every environment is gone."""
        await asyncio.to_thread(self.vault.close)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- publish ---------------------------------------------------------------------------
    async def publish(self, version: FunctionVersion) -> None:
        """Create the snapshot of a Pending version and move it to Active or Failed; with
        `leases`, only as the holder of its publish lease (held by another node: nothing)."""
        key = (version.name, version.version)
        if key in self._creating:
            return
        self._creating.add(key)
        try:
            await self._publish(version, None)
        finally:
            self._creating.discard(key)

    async def _publish(self, version: FunctionVersion, claim: Claim | None) -> None:
        """`publish` with `_creating` held; `claim` is the version's publish lease if the
        caller took it already (None: take it here)."""
        if claim is None and self.leases is not None:
            claim = await self._claim(PUBLISH, publish_key(version))
            if claim is None:
                return  # another node works on it (or the database is away: the takeover loop retries)
            try:
                version = self.registry.get_version(version.name, version.version)
            except NotFound:
                pass  # deleted meanwhile: the snapshot is taken and dropped at activation, as on a single host
            if version.state != State.PENDING:
                await self._release(claim)  # finished by the node that held it before
                return
        keeper = Keeper(self.leases, [claim]) if self.leases is not None and claim is not None else None
        key = (version.name, version.version)
        self.progress.begin(*key)  # this node runs the publish (snapshot/progress.py)
        try:
            with keeper if keeper is not None else contextlib.nullcontext():
                try:
                    failure = await self._create(version, keeper, claim)
                except Exception as exc:  # any platform fault must end in Failed, never a stuck Pending
                    logger.exception("snapshot of %s:%s failed", version.name, version.version)
                    failure = PublishFailure("InternalError", f"Snapshot creation failed: {type(exc).__name__}: {exc}")
            if failure is not None and await self._still_ours(claim, keeper):
                self._log(version, f"SnapStart publish failed: {failure.reason}")
                self._set(version, lambda v: v.move_to(State.FAILED, failure.reason, failure.code))
            self.progress.end(*key, "failed" if failure is not None else "done", failure.reason if failure else None)
        finally:
            if claim is not None:
                await self._release(claim)

    async def _claim(self, kind: str, key: str) -> Claim | None:
        assert self.leases is not None
        try:
            return await asyncio.to_thread(self.leases.claim, kind, key)
        except ServiceUnavailable as exc:
            logger.warning("lease %s %s not taken: %s", kind, key, exc.message)
            return None

    async def _release(self, claim: Claim) -> None:
        assert self.leases is not None
        try:
            await asyncio.to_thread(self.leases.release, claim)
        except ServiceUnavailable as exc:  # it expires by itself
            logger.warning("lease %s %s not released (it expires after its TTL): %s", claim.kind, claim.key, exc.message)

    async def _still_ours(self, claim: Claim | None, keeper: Keeper | None) -> bool:
        """Whether this node may still settle the version: no lease in use, or it still holds it."""
        if claim is None or self.leases is None:
            return True
        if keeper is not None and keeper.lost.is_set():
            return False
        try:
            return await asyncio.to_thread(self.leases.held, claim)
        except ServiceUnavailable as exc:
            logger.warning("lease %s %s cannot be checked; leaving the version to its holder: %s",
                           claim.kind, claim.key, exc.message)
            return False

    async def _takeover_loop(self) -> None:
        """Claim Pending SnapStart versions nobody works on (their node died mid-publish)."""
        assert self.leases is not None
        period = self.takeover_period if self.takeover_period is not None else max(1.0, self.leases.ttl_s / 2)
        seen: set[tuple[str, str]] = set()
        while True:
            await asyncio.sleep(period)  # a periodic timer, not synchronization
            try:
                pending = {(v.name, v.version): v for v in self.registry.list_all_versions()
                           if v.state == State.PENDING and not v.is_latest and v.snap_start == "PublishedVersions"}
            except ServiceUnavailable as exc:
                logger.warning("takeover scan skipped: %s", exc.message)
                continue
            # a version Pending at two scans in a row, and not worked on here: a fresh publish is
            # left to the control plane that started it (which checks readiness first)
            for key in (pending.keys() & seen) - self._creating:
                version = pending[key]
                self._spawn(self.publish(version), f"snapshot-{version.name}:{version.version}")
            seen = set(pending)

    async def _create(self, version: FunctionVersion, keeper: Keeper | None = None,
                      claim: Claim | None = None) -> PublishFailure | None:
        if not self.status.available:
            return PublishFailure("InternalError", f"SnapStart is unavailable on this server: {self.status.reason}")
        key = (version.name, version.version)
        if self.scanner is not None:
            self.progress.enter(*key, "scan")
            blocking = await self.scanner(version)
            if blocking:
                return PublishFailure("FunctionError", "Snapshot safety scan blocked the publish: " + "; ".join(blocking))
        # the init environment counts against --max-environments: wait (queued) for a slot
        self.progress.enter(*key, "queued")
        async with (self.environment_slot() if self.environment_slot else contextlib.nullcontext()):
            taken = await self._snapshot(version, keeper)
        if isinstance(taken, PublishFailure):
            return taken
        snapshot_id = taken

        def activate(v: FunctionVersion) -> None:
            if v.state != State.PENDING:
                raise _Settled(v.state.value)
            v.snapshot_id = snapshot_id
            v.last_invoked = self.clock()
            v.move_to(State.ACTIVE)

        try:
            # the manifest is in the origin (`seal` wrote it last) before the version turns Active
            ours = await self._still_ours(claim, keeper)
            try:
                activated = ours and self._set(version, activate)
            except _Settled as settled:
                logger.info("snapshot %s of %s:%s not used: the version is %s", snapshot_id, version.name, version.version, settled)
                activated = False
            if not activated:
                self.vault.delete(snapshot_id)  # deleted while we worked, or another node took the publish over
                self.collect_soon()
        finally:
            await self._end_upload(snapshot_id, keeper)  # the registry references it now (or it is dropped)
        return None

    async def _begin_upload(self, snapshot_id: str, keeper: Keeper | None) -> None:
        """Announce that `snapshot_id` is being written (upload lease, renewed by `keeper`) and
        wait until no garbage collection runs anywhere (`OriginLeases`)."""
        if self.leases is None:
            return
        self._uploads[snapshot_id] = await asyncio.to_thread(OriginLeases(self.leases).begin_upload, snapshot_id, keeper)

    async def _end_upload(self, snapshot_id: str, keeper: Keeper | None) -> None:
        upload = self._uploads.pop(snapshot_id, None)
        if upload is None or self.leases is None:
            return
        try:
            await asyncio.to_thread(OriginLeases(self.leases).end_upload, upload, keeper)
        except ServiceUnavailable as exc:  # it expires by itself; until then collections defer chunk deletion
            logger.warning("upload lease of %s not released (it expires after its TTL): %s", snapshot_id, exc.message)

    async def _snapshot(self, version: FunctionVersion, keeper: Keeper | None = None) -> PublishFailure | str:
        """Run init in a snap-start environment and checkpoint it: the new snapshot's id, or
        why it failed. The environment is destroyed before this returns."""
        identity = "snapshot-" + secrets.token_hex(6)  # its token is withdrawn right after
        await self.factory.stage_code(version)  # off the event loop: the code may come from the store origin
        async with self.factory.network_for_new_environment() as network:
            env = self.factory.create(version, "snap-start", self.environ_for(identity, version.name, version.role), network)
        init_timeout = max(self.min_init_timeout_s, float(version.timeout))
        started = time.monotonic()
        key = (version.name, version.version)
        self.progress.enter(*key, "init")
        env.log(f"INIT_START Runtime Version: {version.runtime}.snapfaas\tPhase: snapshot\n")
        try:
            await env.container.start()
            env.start_readers()
            if env.network is not None:
                env.network.started()  # a publish's init may take minutes: do not hold background namespace work
            try:
                frame = await env.next_frame(init_timeout)
                if frame.kind == "hooks":  # init code done; the hooks count against the same timeout
                    self.progress.enter(*key, "hooks")
                    frame = await env.next_frame(max(0.0, init_timeout - (time.monotonic() - started)))
                await env.wait_mark("init")
            except TimeoutError:
                env.log(platform_log.init_report(init_timeout * 1000, "timeout"))
                return PublishFailure("FunctionError.InitTimeout", f"Init did not finish within {init_timeout:.0f} seconds.")
            except FrameStreamRejected as rejected:
                return PublishFailure("FunctionError", f"{rejected.describe()} during init")
            except EnvironmentDied as died:
                return PublishFailure("FunctionError", f"Runtime exited during init: {died.describe()}")
            init_ms = (time.monotonic() - started) * 1000
            if frame.kind == "init_error":
                error = decode_error(frame.payload)
                error_type = frame.header.get("error_type") or error.get("errorType", "Runtime.Unknown")
                env.log(platform_log.init_report(init_ms, "error", error_type))
                code = "FunctionError.InvalidEntryPoint" if error_type in ("Runtime.HandlerNotFound", "Runtime.MalformedHandlerName") else "FunctionError.RuntimeInitError"
                return PublishFailure(code, f"{error_type}: {error.get('errorMessage', '')}".strip())
            if frame.kind != "restore_ready":
                return PublishFailure("FunctionError", f"runtime answered {frame.kind!r} instead of reaching the restore barrier")
            for peer in frame.header.get("closed") or []:
                env.log(sockets.connection_warning(peer, self.connections))
            refused = sockets.unsupported(frame.header.get("kept") or [], self.status.patches, self.kernel, self.shared_network)
            if refused:
                env.log(platform_log.init_report(init_ms, "error", sockets.UNSUPPORTED_SOCKET))
                return PublishFailure("FunctionError.RuntimeInitError", f"{sockets.UNSUPPORTED_SOCKET}: {refused}")
            env.log(platform_log.init_report(init_ms))
            decision = await self._memory_decision(env)
            if decision.reason:
                env.log(f"WARNING SnapStart: restores of this version copy memory: {decision.reason}\n")
            snapshot_id = f"{version.name}-{version.version}-{secrets.token_hex(6)}"
            work = self.vault.work_dir(snapshot_id)
            self.progress.enter(*key, "checkpoint")
            if env.container.launcher:  # a deterministic init (snapshot/determinism.py): its tmpfs images too
                await asyncio.to_thread(self._settle_timestamps, env)
            try:
                dump_s = await engine.checkpoint(self.factory.runc.argv(), env.container.id, work,
                                                 engine.checkpoint_environ(self.status, decision.mode))
            except engine.CheckpointFailed as exc:
                self.vault.delete(snapshot_id)
                return PublishFailure("FunctionError", f"Checkpoint failed: {exc.detail}")
            self.progress.enter(*key, "upload")
            try:
                await self._begin_upload(snapshot_id, keeper)
                manifest = await asyncio.to_thread(
                    self.vault.seal, snapshot_id, work,
                    {"function": version.name, "function_version": version.version, "runtime": version.runtime,
                     "code_sha256": version.code_sha256, "init_ms": round(init_ms, 2), "checkpoint_ms": round(dump_s * 1000, 2),
                     "restore_memory": decision.mode},
                    env.id_slice,
                )
            except BaseException:
                self.vault.delete(snapshot_id)  # whatever reached the store goes at the next collection
                await asyncio.shield(self._end_upload(snapshot_id, keeper))
                self.collect_soon()
                raise
            self._memory_modes[snapshot_id] = decision.mode
            size = sum(f["size"] for f in manifest["files"])
            progress = self.progress.get(*key)
            if progress is not None:
                progress.snapshot_bytes = size
            env.log(f"SNAPSHOT_REPORT Snapshot: {snapshot_id}\tSize: {size / 1e6:.1f} MB\tCheckpoint Duration: {dump_s * 1000:.2f} ms\n")
        finally:
            self.revoke(identity)
            await env.destroy()
        return snapshot_id

    @staticmethod
    def _settle_timestamps(env: Environment) -> None:
        """Fixed mtimes for the container's empty tmpfs mounts before the checkpoint
        (`snapshot.timestamps`); a failure costs only dedup, so it is logged, not raised."""
        pid = env.container.init_pid()
        if pid is None:
            return
        try:
            timestamps.settle(pid)
        except OSError as exc:
            logger.warning("tmpfs timestamps of %s not settled before its checkpoint: %s", env.container.id, exc)

    async def _memory_decision(self, env: Environment) -> memory.MemoryDecision:
        """How restores of the snapshot about to be taken of `env` bring memory back."""
        def scan() -> str | None:
            pid = env.container.init_pid()
            return None if pid is None else memory.find_zero_assuming_allocator(memory.container_pids(pid), self._scanned)

        wanted = self.restore_memory == "map" and self.status.maps_pages
        finding = await asyncio.to_thread(scan) if wanted else None
        return memory.choose(self.restore_memory, self.status.maps_pages, finding)

    def restore_environ(self, version: FunctionVersion) -> Mapping[str, str]:
        """What `runc restore` of the version's snapshot adds to its environment (CRIU's
        memory mode, as recorded when the snapshot was taken; "copy" if it was not)."""
        snapshot_id = version.snapshot_id or ""
        if snapshot_id not in self._memory_modes:
            try:
                self._memory_modes[snapshot_id] = str(self.vault.manifest(snapshot_id).get("restore_memory", "copy"))
            except SnapshotCorrupt:
                self._memory_modes[snapshot_id] = "copy"
        return engine.restore_environ(self.status, self._memory_modes[snapshot_id])

    def _set(self, version: FunctionVersion, change: Callable[[FunctionVersion], None]) -> bool:
        try:
            self.registry.update_version(version.name, version.version, change)
            return True
        except NotFound:
            return False

    def _log(self, version: FunctionVersion, line: str) -> None:
        self.factory.logs.append(version.name, f"snapshot/[{version.version}]", [line])

    # -- restore-side bookkeeping -----------------------------------------------------------
    def check_invocable(self, version: FunctionVersion) -> None:
        """An Inactive version answers SnapStartNotReady and starts re-creating its snapshot;
        so does a version whose snapshot is being re-created (Pending again after Inactive or a
        broken snapshot), until it is Active. A first publish still Pending is left to the
        caller (ResourceConflictException, as for any Pending version)."""
        if version.state == State.INACTIVE:
            self.recreate(version, "Inactive")
            raise SnapStartNotReady(NOT_READY)
        if version.state == State.PENDING and version.state_reason == RECREATING:
            raise SnapStartNotReady(NOT_READY)

    async def images(self, version: FunctionVersion, slice_index: int | None = None) -> CacheLease:
        """The version's snapshot images for a restore into id slice `slice_index` (the
        function's, looked up if None), pinned in the RAM cache until the caller releases
        the lease (cache, or materialized from the store in a thread; the manifest is
        authenticated every time);
        a broken or tampered snapshot sends the version back to Pending for re-creation and
        raises SnapStartNotReady. Runs on the event loop: `broken` schedules the re-creation there."""
        try:
            if version.snapshot_id is None:
                raise SnapshotCorrupt("the version has no snapshot")
            # restores run in the function's id slice; a snapshot from another one is re-created
            if slice_index is None:
                slice_index = self.registry.id_slice(version.name)
            lease = await asyncio.to_thread(self.vault.lease, version.snapshot_id, slice_index)
        except SnapshotCorrupt as exc:
            self._unusable(version, str(exc))
            raise SnapStartNotReady(NOT_READY) from exc
        self._memory_modes[lease.snapshot_id] = str(lease.manifest.get("restore_memory", "copy"))
        return lease

    def broken(self, version: FunctionVersion, detail: str) -> None:
        """A restore failed in a way that points at the snapshot's images. The RAM cache's
        copy is not re-verified on a hit, so it may be what is damaged: the first time, only that
        copy is dropped (the next restore reads the snapshot again from the store, where every
        chunk is verified). If a copy read afresh fails as well, the snapshot is re-created."""
        snapshot_id = version.snapshot_id
        if snapshot_id in self._broken:
            return  # concurrent restores of one snapshot all fail; handle it once
        lazy = self._lazy_failure(version)
        if lazy is not None:  # a chunk the restore read could not be had: no copy to blame
            self._unusable(version, lazy)
            return
        if snapshot_id:
            fills = self.vault.materializations(snapshot_id)
            dropped_at = self._dropped_copies.get(snapshot_id)
            if dropped_at is None:
                self._dropped_copies[snapshot_id] = fills
                self.vault.evict(snapshot_id)
                logger.warning("restore of %s:%s from the cached images of %s failed (%s); dropped that copy",
                               version.name, version.version, snapshot_id, detail)
                self._log(version, f"SnapStart restore failed ({detail}); the cached images were dropped and "
                                   "will be read again from the snapshot store")
                return
            if fills == dropped_at:
                return  # another restore from the copy already dropped
        self._unusable(version, detail)

    def _unusable(self, version: FunctionVersion, detail: str) -> None:
        """The snapshot itself is unusable: drop it and re-create it."""
        if version.snapshot_id in self._broken:
            return  # concurrent restores of one snapshot all fail; handle it once
        if version.snapshot_id:
            self._broken.add(version.snapshot_id)
            self._dropped_copies.pop(version.snapshot_id, None)
        logger.warning("snapshot of %s:%s is unusable (%s); re-creating it", version.name, version.version, detail)
        self._log(version, f"SnapStart restore failed ({detail}); the snapshot is being re-created")
        if version.snapshot_id:
            self.vault.delete(version.snapshot_id)
            self.collect_soon()
        self.recreate(version, "Restoring")

    def recreate(self, version: FunctionVersion, why: str) -> None:
        """Send `version` (Inactive, or with a broken snapshot) back to Pending and re-create
        its snapshot; with `leases`, only as the holder of its publish lease, so two nodes that
        both see it Inactive do not both re-create it."""
        key = (version.name, version.version)
        if key in self._creating:
            return

        def pending(v: FunctionVersion) -> None:
            v.snapshot_id = None
            v.move_to(State.PENDING, RECREATING, "Restoring" if why == "Restoring" else "Creating")

        if self.leases is None:
            if self._set(version, pending):
                self._spawn(self.publish(self.registry.get_version(version.name, version.version)),
                            f"snapshot-{version.name}:{version.version}")
            return

        def pending_if_needed(v: FunctionVersion) -> None:
            if not needs_recreation(v, version):
                raise _Settled(v.state.value)
            pending(v)

        # Pending at once (the caller answers SnapStartNotReady: the next read must not see the
        # broken snapshot Active); then only the holder of the publish lease re-creates it
        try:
            if not self._set(version, pending_if_needed):
                return
        except _Settled:
            return  # another node re-created it meanwhile
        self._creating.add(key)
        self._spawn(self._recreate(version), f"snapshot-{version.name}:{version.version}")

    async def _recreate(self, seen: FunctionVersion) -> None:
        try:
            claim = await self._claim(PUBLISH, publish_key(seen))
            if claim is None:
                return  # another node re-creates it
            try:
                current = self.registry.get_version(seen.name, seen.version)
            except NotFound:
                await self._release(claim)
                return
            if current.state != State.PENDING or current.state_reason != RECREATING:
                await self._release(claim)  # re-created by another node meanwhile
                return
            await self._publish(current, claim)
        finally:
            self._creating.discard((seen.name, seen.version))

    def touch(self, version: FunctionVersion) -> None:
        """Record an invoke (for retention); persisted coarsely to stay off the hot path."""
        now = self.clock()
        if version.last_invoked is not None and now - version.last_invoked < min(TOUCH_PERSIST_S, self.retention_s / 10):
            return
        self._set(version, lambda v: setattr(v, "last_invoked", now))

    # -- retention and deletion ------------------------------------------------------------
    def expire(self) -> list[FunctionVersion]:
        """Versions whose snapshot outlived the retention period: snapshot dropped, Inactive."""
        now = self.clock()
        expired = [v for v in self.registry.list_all_versions()
                   if v.state == State.ACTIVE and v.snapshot_id and (now - (v.last_invoked or 0)) > self.retention_s
                   and self._deactivate(v, IDLE_REASON)]
        if expired:
            self.collect_soon()
        return expired

    def force_expire(self, version: FunctionVersion) -> FunctionVersion:
        """``snapfaas snapshot expire``: what the retention period does to an idle version, now
        (snapshot dropped, Inactive; the next invoke answers SnapStartNotReadyException and
        re-creates it). Only an Active SnapStart version with a snapshot can expire; anything
        else is refused naming its state. The caller retires its warm environments."""
        if version.snapshot_id is None or version.state != State.ACTIVE:
            raise InvalidParameterValue(
                f"Version {version.version} of {version.name} has no active SnapStart snapshot to expire "
                f"(state {version.state.value}).")
        if not self._deactivate(version, FORCED_REASON):
            raise NotFound(f"Function not found: {self.registry.function_arn(version.name, version.version)}")
        self.collect_soon()
        return self.registry.get_version(version.name, version.version)

    def _deactivate(self, version: FunctionVersion, reason: str) -> bool:
        """Active -> Inactive (StateReasonCode Idle, as Lambda reports it) and delete the
        snapshot; False if the version is gone."""
        snapshot_id = version.snapshot_id

        def deactivate(rec: FunctionVersion) -> None:
            rec.snapshot_id = None
            rec.move_to(State.INACTIVE, reason, "Idle")

        if not self._set(version, deactivate):
            return False
        if snapshot_id:
            self.vault.delete(snapshot_id)
        return True

    async def _retention_loop(self) -> None:
        period = max(1.0, min(self.retention_s / 4, 60.0))
        while True:
            await asyncio.sleep(period)  # a periodic timer, not synchronization
            await asyncio.to_thread(self.vault.save_counters)
            try:
                expired = self.expire()
            except ServiceUnavailable as exc:  # a cluster registry is down: the next period tries again
                logger.warning("snapshot retention failed at step 'expire': %s", exc.message)
                continue
            for v in expired:
                logger.info("snapshot of %s:%s expired (retention %.0f s)", v.name, v.version, self.retention_s)

    def drop(self, versions: list[FunctionVersion]) -> None:
        """Delete the snapshots of deleted versions (their chunks go at the collection this
        schedules)."""
        dropped = False
        for v in versions:
            if v.snapshot_id:
                self.vault.delete(v.snapshot_id)
                dropped = True
        if dropped:
            self.collect_soon()

    async def collect_garbage(self, startup: bool = False) -> CollectReport:
        """Delete snapshots no version references (deleted, expired, broken, or left by a crash
        mid-publish) and every chunk no remaining snapshot needs, in a thread. The registry is
        read here, on the event loop; publishes in flight are protected by the vault (this
        process) and by the lease protocol (other nodes; module docstring): without the ``gc``
        lease only this node's caches are cleaned.

        The store holds code and layer packages too (registry/packages.py): those the registry
        references and those `code` is ingesting and has not seen recorded yet are live, so a
        chunk a snapshot and a package share stays while either needs it. What else
        `ControlPlane.collect_garbage` removes is node-local."""
        code = self.code
        mark = code.mark() if code is not None else 0  # before the registry read (see `ArtifactStore.settle`)
        also_live = functools.partial(code.live_ids, mark) if code is not None else None
        origin = OriginLeases(self.leases) if self.leases is not None else None
        collection = None
        if origin is not None:
            try:
                collection = await asyncio.to_thread(origin.open_collection)
            except ServiceUnavailable as exc:
                logger.warning("snapshot garbage collection: no gc lease (%s); cleaning local caches only", exc.message)
        try:
            referenced = {v.snapshot_id for v in self.registry.list_all_versions() if v.snapshot_id}  # after the leases
            live = referenced | package_ids(self.registry.referenced_digests())
            if origin is None:
                report = await asyncio.to_thread(self.vault.collect_garbage, live, startup, also_live)
            elif collection is None:
                logger.info("snapshot garbage collection: another node holds the gc lease; cleaning local caches only")
                report = await asyncio.to_thread(self.vault.collect_garbage, live, startup, also_live, origin=False)
            else:
                report = await asyncio.to_thread(self.vault.collect_garbage, live | collection.uploads, startup, also_live,
                                                 pending=collection.uploads, still_held=collection.still_held)
        finally:
            if collection is not None and origin is not None:
                await asyncio.to_thread(origin.close_collection, collection)
        if code is not None:
            code.settle(mark)
        return self._collected(referenced, report)

    def _collected(self, referenced: set[str], report: CollectReport) -> CollectReport:
        """Forget dropped-copy bookkeeping of snapshots gone from the registry (event loop)."""
        for snapshot_id in set(self._dropped_copies) - referenced:
            del self._dropped_copies[snapshot_id]
        return report

    def collect_soon(self) -> None:
        """Run `collect_garbage` in the background (once more if one is already running)."""
        if self._gc_task is not None and not self._gc_task.done():
            self._gc_again = True
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (offline use): the next start-up collects
        self._gc_task = asyncio.ensure_future(self._collect_pending())
        self._gc_task.set_name("snapshot-gc")
        self._tasks.add(self._gc_task)
        self._gc_task.add_done_callback(self._tasks.discard)

    async def _collect_pending(self) -> None:
        while True:
            self._gc_again = False
            try:
                report = await self.collect_garbage()
                logger.info("snapshot garbage collection: %s", report)
            except Exception:  # a failed collection deletes nothing more; the next one retries
                logger.exception("snapshot garbage collection failed")
            if not self._gc_again:
                return
