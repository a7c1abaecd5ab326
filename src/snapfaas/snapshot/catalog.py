"""The operator's view of the snapshot store, read from a data dir without the server:
`snapfaas snapshot ls|inspect` and `snapfaas store stats|gc` (cli.py).

* The store is opened with the data dir's deployment secret (``<data-dir>/store.secret``) and
  the same origin and disk cache settings the server takes. A running server holds the disk
  cache's lock: then the cache is only looked at (which chunks it holds), never written.
* Which snapshots are live comes from the registry (``state.db``, or the server's
  ``--registry`` PostgreSQL database), only read: no migration, no lock, no write.
* Tier counters (hits, misses, bytes fetched, corrupt copies, evictions) live in the server
  process; it writes them to ``<data-dir>/store-counters.json`` after each garbage collection,
  periodically and at shutdown, and `stats` reports that file with its time.
* `collect` is the store's garbage collection: unreferenced manifests and chunks go from the
  origin (and the disk cache when no server holds it). Another process may be publishing, so
  objects younger than `grace_seconds` (default 10 minutes) are spared. Code and layer
  packages live in the same store (registry/packages.py): those the registry references are
  live too, and they are not listed as snapshots.
  Given `leases` (the
  registry's database: the cluster's PostgreSQL, or the data dir's state.db) it runs as a
  server's collection does (`cluster.leases.OriginLeases`): holding the ``gc`` lease (refused
  while a server's collection runs), sparing snapshots being uploaded anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.exc import SQLAlchemyError

from snapfaas.cluster.leases import GC, GC_KEY, Leases, OriginLeases
from snapfaas.config import STORE_SHARED_GRACE_S, store_secret_for
from snapfaas.database import open_engine, unavailable
from snapfaas.durable import write_atomic
from snapfaas.registry import schema
from snapfaas.snapshot.workingset import WorkingSets
from snapfaas.errors import ServiceError
from snapfaas.registry.packages import digest_of, package_ids
from snapfaas.store import ChunkStore, StoreError, TierCounters, origin_from_url
from snapfaas.store.codec import load_or_create_secret

COUNTERS_FILE = "store-counters.json"


class CatalogError(ServiceError):
    """An operator query failed (no store secret, an unknown NAME:VERSION, ...)."""


def write_counters(path: Path, counters: dict[str, TierCounters]) -> None:
    """The server's tier counters, for `snapfaas store stats` (atomic replace)."""
    body = {"written": time.time(), "counters": {tier: dataclasses.asdict(c) for tier, c in counters.items()}}
    write_atomic(path, json.dumps(body, sort_keys=True).encode())


class Catalog:
    def __init__(self, store: ChunkStore, data_dir: Path, cache_dir: Path, cache_locked: bool,
                 registry_url: str | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.cache_locked = cache_locked  # a running server holds the disk cache
        self.registry_url = registry_url  # the server's --registry; None: <data-dir>/state.db

    @classmethod
    def open(cls, data_dir: Path, origin: str | None = None, s3_endpoint_url: str | None = None,
             cache_dir: Path | None = None, registry_url: str | None = None) -> Catalog:
        secret_path = store_secret_for(data_dir)
        if not secret_path.exists():
            raise CatalogError(f"snapshot catalog failed at step 'open store': {secret_path} does not exist "
                               f"(no server has used data dir {data_dir})")
        secret = load_or_create_secret(secret_path)
        cache = cache_dir if cache_dir is not None else data_dir / "store-cache"
        url = origin if origin is not None else str(data_dir / "store")
        try:
            return cls(ChunkStore(origin_from_url(url, s3_endpoint_url), secret, cache_dir=cache, memory_bytes=0),
                       data_dir, cache, False, registry_url)
        except StoreError as exc:
            if "in use" not in exc.message:
                raise
        return cls(ChunkStore(origin_from_url(url, s3_endpoint_url), secret, cache_dir=None, memory_bytes=0),
                   data_dir, cache, True, registry_url)

    def close(self) -> None:
        self.store.close()

    # -- registry --------------------------------------------------------------------------
    def versions(self) -> dict[str, tuple[str, str, str]]:
        """snapshot id -> (function, version, state) of every version the registry gives one."""
        rows = self._version_records()
        out = {}
        for (data,) in rows:
            record = json.loads(data)
            if record.get("snapshot_id"):
                out[record["snapshot_id"]] = (record.get("name", ""), record.get("version", ""), record.get("state", ""))
        return out

    def package_ids(self) -> set[str]:
        """Store ids of every code and layer package the registry references (what
        `Registry.referenced_digests` gives a running server)."""
        digests: set[str] = set()
        for (data,) in self._version_records():
            record = json.loads(data)
            digests.add(str(record.get("code_digest", "")))
            digests.update(str(layer.get("digest", "")) for layer in record.get("layers") or [])
        digests.update(str(json.loads(data).get("digest", "")) for (data,) in self._registry_rows(schema.layer_versions))
        return package_ids(digests)

    def _version_records(self) -> list[tuple[str]]:
        """Every version's record (JSON) in the registry; none if it has no versions table yet."""
        return self._registry_rows(schema.versions)

    def _registry_rows(self, table: sqlalchemy.Table) -> list[tuple[str]]:
        """The ``data`` column of every row of `table` in the registry (none if the table or the
        registry does not exist yet), read-only."""
        if self.registry_url is None:
            db_path = self.data_dir / "state.db"
            if not db_path.exists():
                return []
            engine = sqlalchemy.create_engine(f"sqlite:///file:{db_path}?mode=ro&uri=true")
        else:
            engine = open_engine(self.registry_url)
        try:
            with unavailable("read the registry"), engine.connect() as conn:
                if not sqlalchemy.inspect(conn).has_table(table.name):
                    return []
                return [(r[0],) for r in conn.execute(sqlalchemy.select(table.c.data))]
        except SQLAlchemyError as exc:
            raise CatalogError(f"snapshot catalog failed at step 'read the registry': {exc}") from exc
        finally:
            engine.dispose()

    # -- queries -----------------------------------------------------------------------------
    def snapshots(self) -> list[dict[str, Any]]:
        """Every snapshot at the origin: id, function, version, created, raw bytes, whether the
        registry references it (an unreferenced one awaits garbage collection)."""
        live = self.versions()
        out = []
        for snapshot_id in self.store.snapshots():
            if digest_of(snapshot_id) is not None:
                continue  # a code package, not a snapshot
            try:
                manifest = self.store.manifest(snapshot_id)
            except StoreError as exc:
                out.append({"snapshot": snapshot_id, "error": exc.message})
                continue
            meta = manifest.meta
            out.append({
                "snapshot": snapshot_id, "function": meta.get("function"), "version": meta.get("function_version"),
                "created": manifest.created, "raw_bytes": manifest.raw_bytes,
                "restore_memory": meta.get("restore_memory"), "referenced": snapshot_id in live,
            })
        return out

    def find(self, target: str) -> str:
        """The snapshot id of ``NAME:VERSION`` (the one the registry references, else the newest)."""
        name, sep, version = target.partition(":")
        if not sep or not name or not version:
            raise CatalogError(f"snapshot catalog failed at step 'parse target': {target!r} is not NAME:VERSION")
        for snapshot_id, (function, number, _) in self.versions().items():
            if (function, number) == (name, version):
                return snapshot_id
        candidates = [s for s in self.snapshots() if (s.get("function"), s.get("version")) == (name, version)]
        if not candidates:
            raise CatalogError(f"snapshot catalog failed at step 'find snapshot': {target} has no snapshot in the store")
        return max(candidates, key=lambda s: s["created"])["snapshot"]

    def inspect(self, target: str) -> dict[str, Any]:
        """Raw and stored size, chunks, chunks shared with other snapshots, bytes per tier, and
        the recorded working set (the store attachment; None if none is recorded)."""
        snapshot_id = self.find(target)
        stats = self.store.snapshot_stats(snapshot_id)
        manifest = self.store.manifest(snapshot_id)
        distinct = {ref.name: ref for ref in manifest.chunk_refs() if ref.name is not None}
        on_disk = [ref for name, ref in distinct.items() if (self.cache_dir / name[:2] / name).is_file()]
        return {
            **dataclasses.asdict(stats),
            "function": manifest.meta.get("function"), "version": manifest.meta.get("function_version"),
            "created": manifest.created, "restore_memory": manifest.meta.get("restore_memory"),
            "referenced": snapshot_id in self.versions(),
            "tiers": {
                "disk": {"chunks": len(on_disk), "bytes": sum(ref.stored for ref in on_disk)},
                "origin": {"chunks": len(distinct), "bytes": stats.stored_bytes},
            },
            "working_set": self.working_set(snapshot_id),
        }

    def working_set(self, snapshot_id: str) -> dict[str, Any] | None:
        """The snapshot's recorded working set: its sections, and the host files and bytes its
        ``files`` section reads ahead; None if none is recorded (or it is unreadable)."""
        document = WorkingSets(self.store).get(snapshot_id)
        if document is None:
            return None
        out: dict[str, Any] = {"version": document.version, "sections": sorted(document.sections)}
        if document.supported:
            try:
                files = document.files
            except ValueError as exc:
                out["error"] = f"files section: {exc}"
            else:
                if files is not None:
                    out.update(files=len(files.files), bytes=files.bytes)
        return out

    def stats(self) -> dict[str, Any]:
        """Bytes per tier, dedup and compression ratios, and the server's last tier counters."""
        stats = dataclasses.asdict(self.store.stats())
        packages = sum(1 for store_id in self.store.snapshots() if digest_of(store_id) is not None)
        stats["snapshots"] -= packages  # the store's manifests: snapshots and code packages
        stats["code_packages"] = packages
        if self.cache_locked:  # the server holds the cache: count its files instead
            blobs = [p for p in self.cache_dir.glob("??/*") if p.is_file()]
            stats["usage"]["disk"] = {"chunks": len(blobs), "bytes": sum(p.stat().st_size for p in blobs), "budget": None}
        stats["usage"].pop("memory", None)  # the server's memory: not visible from here
        stats.pop("counters", None)
        counters_path = self.data_dir / COUNTERS_FILE
        try:
            saved = json.loads(counters_path.read_text())
        except FileNotFoundError:
            saved = None
        stats["server_counters"] = saved
        stats["origin"] = self.store.origin.describe()
        return stats

    def collect(self, grace_seconds: float = STORE_SHARED_GRACE_S, leases: Leases | None = None) -> dict[str, Any]:
        if leases is None:
            report = self.store.collect((set(self.versions()) | self.package_ids()), grace_seconds=grace_seconds)
            return {**dataclasses.asdict(report), "disk_cache_collected": not self.cache_locked}
        with OriginLeases(leases).collection() as collection:
            if collection is None:
                holder = leases.holder(GC, GC_KEY)
                raise CatalogError("snapshot catalog failed at step 'take the gc lease': node "
                                   f"{holder.holder if holder else '?'} is collecting the origin's garbage; try again later")
            referenced = (set(self.versions()) | self.package_ids()) | collection.uploads  # the registry after the upload leases
            report = self.store.collect(referenced, grace_seconds=grace_seconds, pending=collection.uploads,
                                        still_held=collection.still_held)
        return {**dataclasses.asdict(report), "disk_cache_collected": not self.cache_locked}
