"""`snapfaas serve`: assemble the platform, serve until SIGINT/SIGTERM, tear down cleanly.

Shutdown order: stop accepting requests, stop background work, then destroy every
environment the server started (no container outlives the daemon; containers left by a
crashed daemon are reaped at the next start).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from aiohttp import web

from snapfaas import credentials
from snapfaas.api.app import build_app
from snapfaas.api.auth import SigV4Verifier
from snapfaas.api.context import Services
from snapfaas.config import SUPPORTED_RUNTIMES, ServerConfig
from snapfaas.registry.artifacts import ArtifactStore
from snapfaas.registry.db import Registry
from snapfaas.registry.service import ControlPlane
from snapfaas.sandbox.container import Runc
from snapfaas.sandbox.interpreter import InterpreterRegistry
from snapfaas.identity import EndpointCredentials, IdentityBroker
from snapfaas.scan import publish_scanner
from snapfaas.snapshot import engine
from snapfaas.snapshot.manager import SnapshotManager
from snapfaas.snapshot.vault import SnapshotVault
from snapfaas.worker.factory import EnvironmentFactory
from snapfaas.worker.invoker import Invoker
from snapfaas.worker.logs import LogStore
from snapfaas.worker.pool import Worker

logger = logging.getLogger(__name__)


class Server:
    def __init__(self, config: ServerConfig, environ: dict[str, str], say: Callable[[str], None] = print) -> None:
        self.config = config
        self.environ = environ
        self.say = say
        self._stop = asyncio.Event()

    def _keys(self) -> dict[str, str]:
        if self.config.credentials:
            return dict(self.config.credentials)
        (akid, secret), created = credentials.load_or_create(self.config.data_dir)
        if created:
            self.say(f"Generated access keys (stored in {self.config.data_dir / credentials.FILE_NAME}):")
            self.say(credentials.snippet(self.config.endpoint_url, akid, secret, self.config.region))
        else:
            self.say(f"Access key id {akid} (secret in {self.config.data_dir / credentials.FILE_NAME})")
        return {akid: secret}

    async def run(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.data_dir, 0o700)
        keys = self._keys() if cfg.auth else {}
        if not cfg.auth:
            self.say("WARNING: authentication is disabled (--no-auth); anyone who can reach the port can run code.")
        runc = Runc(cfg.data_dir / "runc")
        self.say(f"sandbox dir: {cfg.sandbox_dir}")
        self.say(f"runc: {runc.check()}")
        leftovers = runc.reap_leftovers()
        if leftovers:
            self.say(f"Removed {len(leftovers)} container(s) left by a previous run.")
        interpreters = InterpreterRegistry(cfg.runtimes, self.environ)
        for name, found in interpreters.available(SUPPORTED_RUNTIMES).items():
            self.say(f"runtime {name}: {found.executable if not isinstance(found, str) else 'unavailable - ' + found}")
        os.umask(0o077)
        registry = Registry(cfg.db_path, f"arn:aws:lambda:{cfg.region}:{cfg.account_id}:function:")
        cfg.sandbox_dir.mkdir(parents=True, exist_ok=True)
        artifacts = ArtifactStore(cfg.data_dir / "code", cfg.sandbox_dir / "code", cfg.limits,
                                  owner=cfg.host_id_base + cfg.sandbox_uid)
        logs = LogStore(cfg.data_dir / "logs", max_bytes=cfg.log_max_bytes)
        identity = IdentityBroker()
        credentials_env = EndpointCredentials(identity, cfg.credentials_uri)
        factory = EnvironmentFactory(cfg, runc, artifacts, interpreters, logs)
        worker = Worker(factory, cfg.max_environments, cfg.keep_alive_s, credentials=credentials_env)
        control = ControlPlane(registry, artifacts, interpreters, worker.retire)
        snapshots = self._snapshots(registry, factory, credentials_env)
        snapshots.scanner = publish_scanner(artifacts, logs, cfg.scan_block_on)
        worker.snapshots = snapshots
        snapshots.environment_slot = worker.environment_slot  # publishes count against --max-environments
        control.publishers["PublishedVersions"] = snapshots.publish
        control.dropped = snapshots.drop
        invoker = Invoker(registry, worker, cfg.limits, cfg.data_dir / "events.db")
        artifacts.collect_garbage(registry.referenced_digests())
        snapshots.collect_garbage()
        services = Services(cfg, control, invoker, logs, identity=identity)
        verifier = SigV4Verifier(keys, temporary=identity.secret_for) if cfg.auth else None
        app = build_app(services, verifier)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        # Mirror/prepare runtimes in a thread: serving starts at once, first invokes wait for it.
        prepared = asyncio.create_task(asyncio.to_thread(factory.prepare, list(SUPPORTED_RUNTIMES)))
        try:
            await site.start()
            worker.start()
            snapshots.start()
            invoker.start()
            control.resume()
            self.say(f"snapfaas listening on {cfg.endpoint_url} (data dir {cfg.data_dir})")
            await self._stop.wait()
            self.say("shutting down: stopping the API, then every environment")
        finally:
            # Environments first: in-flight invokes then end at once (Runtime.ExitError)
            # instead of holding the HTTP shutdown for up to their timeout.
            await site.stop()
            await prepared
            await control.close()
            await snapshots.close()
            await invoker.close()
            await worker.close()
            await runner.cleanup()
            await asyncio.to_thread(logs.close)
            registry.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        self.say("stopped")

    def _snapshots(self, registry: Registry, factory: EnvironmentFactory, creds: EndpointCredentials) -> SnapshotManager:
        cfg = self.config
        status = engine.probe() if cfg.snapstart else engine.CriuStatus(False, None, None, "disabled with --no-snapstart")
        self.say(status.describe() if status.available else f"WARNING: {status.describe()} - SnapStart versions will fail to publish; everything else works")
        if status.available and status.binary:
            self.say(engine.prime_kernel_cache(status.binary))
            if cfg.restore_memory == "map" and not status.maps_pages:
                self.say("WARNING: this CRIU lacks snapfaas's map-pages patch (scripts/install-system-deps.sh builds it): "
                         "restores copy every page of memory")
        vault = SnapshotVault(cfg.data_dir / "snapshots", cfg.snapshot_cache, cfg.data_dir / "snapshot.key",
                              image_owner=0, image_group=cfg.host_id_base, cache_bytes=cfg.snapshot_cache_budget())
        manager = SnapshotManager(registry, factory, vault, status, cfg.snapshot_retention_s, creds.environ, creds.revoke,
                                  restore_memory=cfg.restore_memory)
        manager.min_init_timeout_s = cfg.snapshot_init_floor_s
        return manager

    def stop(self) -> None:
        self._stop.set()
