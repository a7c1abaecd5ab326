"""`snapfaas serve`: assemble the platform, serve until SIGINT/SIGTERM, tear down cleanly.

Shutdown order: stop accepting requests, stop background work, then destroy every
environment the server started (no container outlives the daemon; containers left by a
crashed daemon are reaped at the next start).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from snapfaas import credentials
from snapfaas.errors import NotFound
from snapfaas.metrics import Metrics
from snapfaas.api.app import build_app
from snapfaas.api.sites import EnvironmentSites
from snapfaas.api.auth import SigV4Verifier
from snapfaas.api.connections import ClientTimeouts, GuardedRunner
from snapfaas.api.context import Services
from snapfaas.api.replay import ReplayCache
from snapfaas.cluster.membership import Membership, SingleNode
from snapfaas.cluster.node import ClusterNode
from snapfaas.cluster.nodes import NodeLoad, load_or_create_node_id
from snapfaas.database import open_engine
from snapfaas.config import SUPPORTED_RUNTIMES, ServerConfig
from snapfaas.errors import ServiceError
from snapfaas.cluster.leases import Leases
from snapfaas.cluster.usage import UsageBoard, UsageExchange
from snapfaas.hostpaths import private_dir, run_root, trusted_dir
from snapfaas.errors import ServiceUnavailable
from snapfaas.registry.artifacts import ArtifactStore
from snapfaas.registry.packages import PackageOrigin
from snapfaas.database import describe_target
from snapfaas.registry.changes import StaleEnvironments
from snapfaas.registry.db import Registry
from snapfaas.registry.service import ControlPlane
from snapfaas.sandbox import ids
from snapfaas.sandbox.cgroup import AttachPrimer, is_v1
from snapfaas.sandbox.container import Runc
from snapfaas.sandbox.criu_container import CriuEngine
from snapfaas.sandbox import restored
from snapfaas.sandbox.restored import RestoredLedger
from snapfaas.sandbox.interpreter import InterpreterRegistry
from snapfaas.sandbox.network import NetworkPool
from snapfaas.identity import EndpointCredentials, IdentityBroker
from snapfaas.scan import publish_scanner
from snapfaas.snapshot import engine, workingset
from snapfaas.snapshot.resident import ResidentPrograms
from snapfaas.snapshot.view import SnapshotView, clear_stale_mount
from snapfaas.snapshot.workingset import WorkingSetKeeper, WorkingSets
from snapfaas.transport import is_loopback, server_ssl_context
from snapfaas.snapshot.manager import SnapshotManager
from snapfaas.snapshot.catalog import COUNTERS_FILE
from snapfaas.snapshot.vault import SnapshotVault, remove_legacy
from snapfaas.store import ChunkStore, StoreError, load_or_create_secret, open_store
from snapfaas.worker.async_invocations import EventSettings
from snapfaas.worker.event_leases import LeaseTerms
from snapfaas.worker.backlog import EventTiming
from snapfaas.worker.factory import EnvironmentFactory
from snapfaas.worker.invoker import Invoker
from snapfaas.worker.logs import LogStore
from snapfaas.worker.pool import Worker
from snapfaas.snapshot.operations import SnapStartOperations

logger = logging.getLogger(__name__)


class Server:
    def __init__(self, config: ServerConfig, environ: dict[str, str], say: Callable[[str], None] = print) -> None:
        self.config = config
        self.environ = environ
        self.say = say
        self._stop = asyncio.Event()
        self.resident = ResidentPrograms()  # the restore engine's programs, locked in memory while serving

    def _keys(self) -> dict[str, str]:
        """The operator's keys. A generated secret is shown once, when it is created; later
        starts name the key id and the file only (the log must not carry the secret)."""
        if self.config.credentials:
            return dict(self.config.credentials)
        (akid, secret), created = credentials.load_or_create(self.config.data_dir)
        if created:
            self.say(f"Generated access keys (stored in {self.config.data_dir / credentials.FILE_NAME}; "
                     "the secret is shown this once):")
            self.say(credentials.snippet(self.config.endpoint_url, akid, secret, self.config.region))
        else:
            self.say(f"Access key id {akid} (secret in {self.config.data_dir / credentials.FILE_NAME})")
        return {akid: secret}

    def _metrics_token(self) -> str:
        """The bearer token of GET /metrics (created at first start, shown never: read the file)."""
        path = self.config.metrics_token_path
        token, created = credentials.load_or_create_token(path)
        self.say(f"{'Generated the' if created else 'The'} metrics token (Authorization: Bearer <token> on GET /metrics) "
                 f"is in {path}")
        return token

    def _transport(self) -> ssl.SSLContext | None:
        """The TLS context, if configured; a loud warning for a non-loopback bind without it."""
        cfg = self.config
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            return server_ssl_context(cfg.tls_cert, cfg.tls_key)
        if not is_loopback(cfg.host):
            self.say(
                f"WARNING: serving plain HTTP on non-loopback address {cfg.host}: requests, responses (code links, "
                "environment variables) and signatures travel in clear text and can be read and replayed. "
                "Use --tls-cert/--tls-key."
            )
        return None

    async def run(self) -> None:
        """Serve until stopped. Raises `ids.IdRangeConflict` before touching anything if the
        sandbox id range overlaps a host user's subordinate ids."""
        cfg = self.config
        id_range = cfg.id_range
        ids.check_host(id_range, cfg.subuid_file, cfg.subgid_file)
        self.say(f"sandbox id range: {id_range.describe()} (one slice per function; checked against "
                 f"{cfg.subuid_file} and {cfg.subgid_file})")
        private_dir(trusted_dir(cfg.data_dir, 0o700), 0o700)  # refuses a data dir another user owns or can write
        # the store's disk cache and a directory origin may live outside the data dir: the same check
        private_dir(trusted_dir(cfg.store_cache_path, 0o700), 0o700)
        if not cfg.store_origin_url.startswith("s3://"):
            private_dir(trusted_dir(Path(cfg.store_origin_url), 0o700), 0o700)
        trusted_dir(cfg.sandbox_dir, 0o711)
        run_root()
        for directory in (cfg.run_dir, cfg.snapshot_cache, cfg.bundles_dir.parent):
            private_dir(directory, 0o711)  # the sandboxes' mapped roots walk through to rootfs and images
        private_dir(cfg.network_lock_dir, 0o700)
        private_dir(cfg.uploads_dir, 0o700)
        ssl_context = self._transport()
        load_sources: dict[str, Any] = {}  # the worker and store, once built: what heartbeats report
        cluster = await self._cluster(load_sources)  # before the store: a node with another store secret stops here
        keys = self._keys() if cfg.auth else {}
        if not cfg.auth:
            self.say("WARNING: authentication is disabled (--no-auth); anyone who can reach the port can run code.")
        runc = Runc(cfg.data_dir / "runc", cfg.runc_binary)
        self.say(f"sandbox dir: {cfg.sandbox_dir}")
        self.say(f"runc: {runc.check()}")
        ledger = RestoredLedger(cfg.data_dir / restored.DIRECTORY)
        ended = ledger.reap_leftovers()  # before runc's cleanup removes the cgroups they run in
        if ended:
            self.say(f"Ended {len(ended)} restored container(s) left by a previous run.")
        leftovers = runc.reap_leftovers()
        if leftovers:
            self.say(f"Removed {len(leftovers)} container(s) left by a previous run.")
        interpreters = InterpreterRegistry(cfg.runtimes, self.environ)
        for name, found in interpreters.available(SUPPORTED_RUNTIMES).items():
            self.say(f"runtime {name}: {found.executable if not isinstance(found, str) else 'unavailable - ' + found}")
        os.umask(0o077)
        registry = Registry(cfg.registry_target, f"arn:aws:lambda:{cfg.region}:{cfg.account_id}:function:", id_range.slices)
        self.say(f"registry: {describe_target(cfg.registry_target)}")
        store = self._store()
        # code and layer zips live in the store's origin; <data-dir>/code is this node's cache of them
        artifacts = ArtifactStore(cfg.data_dir / "code", cfg.sandbox_dir / "code", cfg.limits,
                                  owner_of=lambda index: id_range.host_id(index, cfg.sandbox_uid),
                                  packages=PackageOrigin(store), cache_bytes=cfg.code_cache_bytes)
        logs = LogStore(cfg.data_dir / "logs", max_bytes=cfg.log_max_bytes)
        identity = IdentityBroker()
        credentials_env = EndpointCredentials(identity, cfg.credentials_uri, cfg.account_id)
        factory = EnvironmentFactory(cfg, runc, artifacts, interpreters, logs, registry.id_slice)
        factory.restored_ledger = ledger
        factory.attach_primer = AttachPrimer()
        worker = Worker(factory, cfg.max_environments, cfg.keep_alive_s, credentials=credentials_env,
                        admission_wait_s=cfg.admission_wait_s)
        worker.account_limit = cfg.account_concurrency
        # leases (publish, upload, gc) live in the registry's database: the cluster's, or state.db
        node_id = cluster.node_id
        leases = await asyncio.to_thread(Leases, registry.engine, node_id, cfg.lease_ttl_s)
        usage: UsageExchange | None = None
        if cfg.clustered:  # reserved and account concurrency hold across the nodes (cluster/usage.py)
            board = await asyncio.to_thread(UsageBoard, registry.engine, node_id)
            usage = UsageExchange(board, lambda: dict(worker.inflight), worker.set_remote)
        control = ControlPlane(registry, artifacts, interpreters, worker.retire)
        control.snapstart_runtimes = cfg.snapstart_runtimes
        worker.reseed_after_restore = cfg.reseed_after_restore
        snapshots = self._snapshots(registry, factory, credentials_env, store)
        snapshots.code = artifacts  # packages share the store: its collection keeps the ones in use
        control.collect_store = snapshots.collect_soon
        snapshots.leases = leases
        snapshots.scanner = publish_scanner(artifacts, logs, cfg.scan_block_on)
        worker.snapshots = snapshots
        worker.snapstart_connections = snapshots.connections = cfg.snapstart_connections
        snapshots.shared_network = cfg.sandbox_network == "host"
        working_sets = WorkingSetKeeper(WorkingSets(snapshots.vault.store), view=snapshots.vault.view)  # attachments of the snapshots
        if snapshots.status.binary:  # CRIU runs at every restore, whichever engine drives it
            # the engine's programs stay in memory (snapshot/resident.py); any that could not be
            # locked are read ahead whole at each restore instead
            engines = [snapshots.status.binary]
            if cfg.restore_engine == "runc" or factory.criu_engine is None:
                engines.append(shutil.which(cfg.runc_binary) or cfg.runc_binary)
            for program in engines:
                self.say(await asyncio.to_thread(self.resident.hold_program, program))
            working_sets.platform = workingset.whole_files(
                path for path in engines if os.path.realpath(path) not in self.resident.locked_paths)
        if cfg.restore_prefetch:
            worker.working_sets = working_sets
        snapshots.environment_slot = worker.environment_slot  # publishes count against --max-environments
        control.publishers["PublishedVersions"] = snapshots.publish
        control.dropped = snapshots.drop
        control.slice_in_use = lambda index: (artifacts.holds(index) or snapshots.vault.holds(index)
                                              or ids.slice_has_processes(id_range, index))
        node_id = cluster.node_id
        invoker = Invoker(registry, worker, cfg.limits, cfg.events_db, logs,
                          EventSettings(cfg.event_queue_max, EventTiming(cfg.event_retry_base_s),
                                        cfg.data_dir / "destinations", node_id, LeaseTerms(cfg.event_lease_s)))
        if cfg.registry_url is not None:
            self.say(f"node {node_id}: asynchronous events from the cluster's shared queue (PostgreSQL, "
                     f"claim lease {cfg.event_lease_s:g} s)")
        removed = await asyncio.to_thread(remove_legacy, cfg.data_dir)
        if removed:
            self.say(f"Removed {removed} snapshot(s) of the previous storage format; their versions re-create them when invoked.")
        removed = await asyncio.to_thread(workingset.remove_legacy, cfg.data_dir)
        if removed:
            self.say(f"Removed {removed} working set(s) of the previous storage format (now kept in the snapshot store); "
                     f"they are recorded again at their snapshots' next restore.")
        try:
            migrated = await asyncio.to_thread(artifacts.migrate, registry.referenced_digests())
            if migrated:
                self.say(f"Uploaded {migrated} code package(s) of this data dir to the store origin "
                         f"{store.origin.describe()} (packages now live there; {cfg.data_dir / 'code'} is a cache).")
        except ServiceUnavailable as exc:  # serving goes on from the local copies; the next start retries
            self.say(f"WARNING: uploading this data dir's code packages to the store origin failed: {exc.message}")
        try:
            await snapshots.collect_garbage(startup=True)
        except StoreError as exc:  # e.g. the origin is unreachable: serving goes on, the next collection retries
            self.say(f"WARNING: snapshot garbage collection at start-up failed: {exc.message}")
        control.collect_garbage()  # code, then the id slices of deleted functions
        load_sources["worker"], load_sources["store"] = worker, snapshots.vault.store
        metrics = Metrics()
        worker.metrics = metrics
        registry.observers.append(functools.partial(forget_deleted, registry, metrics))
        services = Services(cfg, control, invoker, logs, identity=identity, snapstart=SnapStartOperations(invoker, snapshots),
                            cluster=cluster, metrics=metrics, metrics_token=self._metrics_token() if cfg.auth else None)
        verifier = SigV4Verifier(keys, temporary=identity.session) if cfg.auth else None
        timeouts = ClientTimeouts(cfg.client_header_timeout_s, cfg.client_body_timeout_s, cfg.client_idle_timeout_s)
        app = build_app(services, verifier, ReplayCache() if cfg.replay_cache and cfg.auth else None,
                        limits=cfg.limits, timeouts=timeouts, spool_dir=cfg.uploads_dir,
                        dashboard_keys=keys if cfg.auth else None, invoke_timeline=cfg.invoke_timeline)
        runner = GuardedRunner(app, timeouts, access_log=None, handle_signals=False)
        await runner.setup()
        # what functions reach inside their own network namespace: always authenticated
        env_runner = GuardedRunner(build_app(services, SigV4Verifier(keys, temporary=identity.session),
                                             limits=cfg.limits, timeouts=timeouts, spool_dir=cfg.uploads_dir,
                                             with_dashboard=False),
                                   timeouts, access_log=None, handle_signals=False)
        await env_runner.setup()
        network: NetworkPool | None = None
        if cfg.sandbox_network == "isolated":
            network = NetworkPool(cfg.network_lock_dir, ready_target=min(cfg.max_environments, 16))
            self.say(await asyncio.to_thread(network.setup))
            factory.network_pool = network
            factory.services = EnvironmentSites(env_runner)
        else:
            self.say("WARNING: --sandbox-network host: functions share the host's network namespace and reach every "
                     "loopback service, the API port and link-local addresses (benchmarks and debugging only)")
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True, ssl_context=ssl_context)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        # Mirror/prepare runtimes in a thread: serving starts at once, first invokes wait for it.
        prepared = asyncio.create_task(asyncio.to_thread(factory.prepare, list(SUPPORTED_RUNTIMES)))
        try:
            await site.start()
            if network is not None:
                network.start()
            worker.start()
            snapshots.start()
            if usage is not None:
                usage.start()
            await invoker.start()
            registry.remote_observers.append(StaleEnvironments(registry, worker))
            registry.listen(loop)  # PostgreSQL: other nodes' changes reach this node's observers
            control.resume()
            await cluster.start()
            self.say(f"snapfaas listening on {cfg.endpoint_url} (data dir {cfg.data_dir})")
            await self._stop.wait()
            self.say("shutting down: stopping the API, then every environment")
        finally:
            await cluster.leave()  # the other nodes stop forwarding here
            # Environments first: in-flight invokes then end at once (Runtime.ExitError)
            # instead of holding the HTTP shutdown for up to their timeout.
            await site.stop()
            await prepared
            await control.close()
            await working_sets.close()  # before the store closes; no prefetch or recording after it
            await snapshots.close()
            self.resident.release()  # no restore runs any more
            await invoker.close()
            if usage is not None:
                await usage.close()
            await worker.close()
            await snapshots.close_store()
            if network is not None:
                await network.close()
            await env_runner.cleanup()
            await runner.cleanup()
            await cluster.close()
            await asyncio.to_thread(logs.close)
            registry.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        self.say("stopped")

    async def _cluster(self, sources: dict[str, Any]) -> ClusterNode:
        """This node's identity and, with a PostgreSQL ``--registry``, its membership, joined
        (tables, cluster key, store secret fingerprint checked) before anything uses the store;
        it becomes live with its first heartbeat, once the API listens. `sources` gets the
        worker and the store later; until then the load is empty."""
        cfg = self.config
        try:
            node_id = cfg.node_id or load_or_create_node_id(cfg.data_dir)
        except ValueError as exc:
            raise ServiceError(f"the start failed at step 'node id': {exc}") from exc

        def load() -> NodeLoad:
            worker, store = sources.get("worker"), sources.get("store")
            if worker is None or store is None:
                return NodeLoad(capacity=cfg.max_environments)
            busy = sum(len(p.busy) for p in worker.pools.values())
            idle = sum(len(p.idle) for p in worker.pools.values())
            cached = store.disk.usage().bytes if store.disk is not None else 0
            return NodeLoad(busy, idle, cfg.max_environments, sum(worker.inflight.values()), cached)

        if not cfg.clustered:
            return ClusterNode(SingleNode(node_id, cfg.node_url, load), load)
        assert cfg.registry_url is not None
        node = ClusterNode(Membership(open_engine(cfg.registry_url), node_id, cfg.node_url), load)
        await node.join(load_or_create_secret(cfg.store_secret_path))
        self.say(f"cluster node {node_id} ({cfg.node_url}): joined; other live nodes: "
                 + (", ".join(n.node_id for n in node.membership.live_nodes() if n.node_id != node_id) or "none"))
        return node

    def _store(self) -> ChunkStore:
        """The chunk store: snapshots, code and layer packages."""
        cfg = self.config
        store = open_store(cfg.store_origin_url, cfg.store_secret_path, s3_endpoint_url=cfg.store_s3_endpoint_url,
                           cache_dir=cfg.store_cache_path, cache_bytes=cfg.store_cache_bytes,
                           memory_bytes=cfg.store_memory_bytes)
        self.say(f"snapshot store: origin {store.origin.describe()}, disk cache {cfg.store_cache_path} "
                 f"({cfg.store_cache_bytes} bytes), chunk memory tier {cfg.store_memory_bytes} bytes; "
                 f"code cache {cfg.data_dir / 'code'} ({cfg.code_cache_bytes} bytes)")
        return store

    def _snapshots(self, registry: Registry, factory: EnvironmentFactory, creds: EndpointCredentials,
                   store: ChunkStore) -> SnapshotManager:
        cfg = self.config
        status = engine.probe(cfg.criu_binary) if cfg.snapstart else engine.CriuStatus(False, None, None, "disabled with --no-snapstart")
        if cfg.sandbox_network == "isolated":
            status = status.requiring_netns_patches()
        self.say(status.describe() if status.available else f"WARNING: {status.describe()} - SnapStart versions will fail to publish; everything else works")
        if status.available and status.binary:
            self.say(engine.prime_kernel_cache(status.binary))
            if cfg.restore_engine == "criu":
                if is_v1():
                    factory.criu_engine = CriuEngine(status.binary, factory.restored_ledger)
                    self.say("restore engine: criu (the daemon drives CRIU directly, no runc process per restore)")
                else:
                    self.say("WARNING: --restore-engine criu sets up cgroup v1 only; this host has cgroup v2: restores use runc")
            if cfg.restore_memory == "map" and not status.maps_pages:
                self.say("WARNING: this CRIU lacks snapfaas's map-pages patch (scripts/install-system-deps.sh builds it): "
                         "restores copy every page of memory")
        factory.store_secret = load_or_create_secret(cfg.store_secret_path)  # per-function hash seeds of SnapStart inits
        if not cfg.snapshot_init_aslr and factory.fixed_layout_launcher is None:
            self.say("WARNING: setarch (util-linux) is missing: SnapStart inits keep ASLR, so versions of a function "
                     "share few snapshot chunks")
        view = None
        if cfg.restore_loading == "lazy":
            view = SnapshotView(store, cfg.snapshot_view)
            try:
                view.start()
                self.say(f"snapshot view (lazy restores): {cfg.snapshot_view}")
            except RuntimeError as exc:  # no FUSE here: restores still work, eagerly
                view = None
                self.say(f"WARNING: {exc}; SnapStart restores are eager (as with --restore-loading eager)")
        if view is None:
            clear_stale_mount(cfg.snapshot_view)
        vault = SnapshotVault(store, cfg.snapshot_cache, image_owner=0, group_of=cfg.id_range.slice_base,
                              cache_bytes=cfg.snapshot_cache_budget(), grace_seconds=cfg.store_grace_s,
                              counters_path=cfg.data_dir / COUNTERS_FILE, view=view)
        manager = SnapshotManager(registry, factory, vault, status, cfg.snapshot_retention_s,
                                  functools.partial(creds.environ, snap_start=True), creds.retire,
                                  restore_memory=cfg.restore_memory)
        manager.min_init_timeout_s = cfg.snapshot_init_floor_s
        return manager

    def stop(self) -> None:
        self._stop.set()


def forget_deleted(registry: Registry, metrics: Metrics, function: str) -> None:
    """Registry observer: a deleted function's metric series go with it."""
    try:
        registry.function_info(function)
    except NotFound:
        metrics.forget(function)
