"""The fence between garbage collection and snapshots being written, within one process.

A `put_tree` opens a *write* and, before it looks whether the origin already has a chunk (and
so may skip uploading it), *protects* that chunk's name. A collection *begins* (taking every
name and snapshot id open writes have protected so far) and, until it *ends*, every name a
write protects is held as well, even after that write finishes: a manifest written during a
collection may not be in the collector's list of live snapshots. The collector deletes a chunk
only through `deletable`, under the fence's lock, so "protect, then check the origin" and
"check the fence, then delete" cannot interleave badly:

* protect first: the collector sees the name held and keeps the chunk;
* delete first: the writer's existence check, which comes after protect, finds the chunk
  gone and uploads it again.

Across processes (several hosts sharing an S3 origin) this fence does not reach: there the
collector's grace window (chunks and manifests younger than it are kept) covers uploads, and
a fleet-wide lease on publish/GC (future work) must cover the rest.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator


class ReferenceFence:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._open: dict[int, tuple[str, set[str]]] = {}
        self._collecting = False
        self._held_names: set[str] = set()
        self._held_ids: set[str] = set()

    def open(self, snapshot_id: str) -> int:
        """Start a write of `snapshot_id`; returns its token."""
        with self._lock:
            token = next(self._tokens)
            self._open[token] = (snapshot_id, set())
            if self._collecting:
                self._held_ids.add(snapshot_id)
            return token

    def protect(self, token: int, name: str) -> None:
        """Keep chunk `name` from collection while the write is open (and, if a collection runs,
        until it ends). Call *before* checking whether the origin already holds it."""
        with self._lock:
            self._open[token][1].add(name)
            if self._collecting:
                self._held_names.add(name)

    def close(self, token: int) -> None:
        with self._lock:
            self._open.pop(token, None)

    def begin_collection(self) -> None:
        with self._lock:
            if self._collecting:
                raise RuntimeError("a collection is already running")
            self._collecting = True
            self._held_ids = {snapshot_id for snapshot_id, _ in self._open.values()}
            self._held_names = set().union(*(names for _, names in self._open.values()))

    def end_collection(self) -> None:
        with self._lock:
            self._collecting = False
            self._held_names = set()
            self._held_ids = set()

    def held_ids(self) -> set[str]:
        """Snapshot ids written since the collection began (or still being written)."""
        with self._lock:
            return set(self._held_ids)

    @contextlib.contextmanager
    def deletable(self, name: str) -> Iterator[bool]:
        """Whether chunk `name` may be deleted now; the fence stays locked while the caller
        deletes it, so no write can protect it in between."""
        with self._lock:
            yield name not in self._held_names

    @contextlib.contextmanager
    def manifest_deletable(self, snapshot_id: str) -> Iterator[bool]:
        with self._lock:
            yield snapshot_id not in self._held_ids
