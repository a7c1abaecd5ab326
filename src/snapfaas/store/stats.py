"""Read-only reports for operator tools and metrics (plain dataclasses, JSON-ready via
`dataclasses.asdict`)."""

from __future__ import annotations

import dataclasses

from snapfaas.store.tiers import TierCounters, TierUsage


@dataclasses.dataclass(frozen=True)
class SnapshotStats:
    """One snapshot. `raw_bytes`: file sizes added up (holes included); `hole_bytes`: all-zero
    chunks, never stored; `chunks`: distinct stored chunks; `stored_bytes`: their blob bytes at
    the origin; `shared_chunks`/`shared_bytes`: those of them some other snapshot references."""

    snapshot_id: str
    files: int
    raw_bytes: int
    hole_bytes: int
    chunk_refs: int
    chunks: int
    stored_bytes: int
    shared_chunks: int
    shared_bytes: int


@dataclasses.dataclass(frozen=True)
class StoreStats:
    """The whole store. `logical_bytes`: non-hole chunk bytes all manifests reference (each
    reference counted); `unique_bytes`: plaintext bytes of the distinct chunks;
    `stored_bytes`: their blob bytes (compressed + encrypted). `dedup_ratio` =
    logical / unique; `compression_ratio` = stored / unique; `counters` and `usage` per tier
    (``memory``, ``disk``, ``origin``)."""

    snapshots: int
    raw_bytes: int
    logical_bytes: int
    unique_chunks: int
    unique_bytes: int
    stored_bytes: int
    dedup_ratio: float
    compression_ratio: float
    usage: dict[str, TierUsage]
    counters: dict[str, TierCounters]


@dataclasses.dataclass(frozen=True)
class CollectReport:
    """What one `collect` removed: manifests, chunks and attachments at the origin, and cache
    entries (chunks, and the manifest and attachment copies of deleted snapshots)."""

    manifests_deleted: int
    chunks_deleted: int
    bytes_freed: int
    cache_entries_dropped: int
    chunks_kept: int
    attachments_deleted: int = 0
    chunks_deferred: bool = False  # no chunk was deleted: a snapshot being written elsewhere had no manifest yet
