"""Cache tiers above the origin: process memory and a local disk directory, each LRU under a
byte budget, plus the per-tier counters.

* `MemoryTier` holds *plaintext* chunks (``bytes``, immutable) by name, each marked whether
  `ChunkStore` verified that very copy against its content address (`put(..., verified=True)`
  when it decoded the chunk from a verified blob or sealed it itself; `mark_verified` after
  hashing a copy put unverified). A restore reading from it pays no decryption.
* `DiskTier` holds *sealed* blobs (encrypted, as at the origin) as files
  ``<root>/<name[0:2]>/<name>``; plaintext never reaches persistent disk. Writes go to a unique
  temporary sibling and are renamed into place, so a reader sees a whole blob or none. The LRU
  order lives in memory, seeded from file mtimes at start-up (a hit bumps the mtime, so the
  order survives restarts). One cache directory belongs to one `DiskTier` at a time (an
  exclusive ``flock`` on ``<root>/.lock`` until `close`); a second user gets a clear error.

Both are thread-safe: one lock guards each tier's index; file reads happen outside it (a blob
evicted meanwhile is simply a miss). A chunk larger than a tier's whole budget is not cached
there. The tiers do not verify anything: `ChunkStore` does, and calls `discard` on a blob that
fails.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from snapfaas.store.errors import StoreError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TierCounters:
    """What one tier served since start: ready to export as metrics. `bytes_read` counts bytes
    served from this tier (plaintext for memory, blob bytes below it); `corrupt` counts blobs
    that failed verification here; `evictions` counts budget evictions."""

    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    corrupt: int = 0
    evictions: int = 0

    def copy(self) -> TierCounters:
        return dataclasses.replace(self)


@dataclasses.dataclass(frozen=True)
class TierUsage:
    """A tier's occupancy: chunks held, their bytes, and its budget (None = unbounded)."""

    chunks: int
    bytes: int
    budget: int | None


class MemoryTier:
    """Plaintext chunks in process memory, least recently used evicted past `budget` bytes."""

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError("the memory tier budget must be >= 0")
        self.budget = budget
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._verified: set[str] = set()  # names whose current copy was verified (see the module docstring)
        self._bytes = 0
        self.evictions = 0

    def get(self, name: str) -> bytes | None:
        found = self.lookup(name)
        return None if found is None else found[0]

    def lookup(self, name: str) -> tuple[bytes, bool] | None:
        """(the copy held under `name`, whether that copy is marked verified), or None."""
        with self._lock:
            data = self._entries.get(name)
            if data is None:
                return None
            self._entries.move_to_end(name)
            return data, name in self._verified

    def put(self, name: str, data: bytes, verified: bool = False) -> None:
        """Hold `data` under `name` (replacing any copy); `verified`: the caller checked this
        very copy against the chunk's content address."""
        if len(data) > self.budget:
            return
        with self._lock:
            old = self._entries.pop(name, None)
            if old is not None:
                self._bytes -= len(old)
            self._entries[name] = data
            if verified:
                self._verified.add(name)
            else:
                self._verified.discard(name)
            self._bytes += len(data)
            while self._bytes > self.budget:
                evicted_name, evicted = self._entries.popitem(last=False)
                self._verified.discard(evicted_name)
                self._bytes -= len(evicted)
                self.evictions += 1

    def mark_verified(self, name: str, data: bytes) -> None:
        """Mark the copy under `name` verified if it is still `data` (the object just hashed)."""
        with self._lock:
            if self._entries.get(name) is data:
                self._verified.add(name)

    def discard(self, name: str) -> None:
        with self._lock:
            old = self._entries.pop(name, None)
            self._verified.discard(name)
            if old is not None:
                self._bytes -= len(old)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def usage(self) -> TierUsage:
        with self._lock:
            return TierUsage(len(self._entries), self._bytes, self.budget)


class DiskTier:
    """Sealed blobs in a local directory, least recently used evicted past `budget` bytes."""

    def __init__(self, root: Path, budget: int) -> None:
        if budget < 0:
            raise ValueError("the disk cache budget must be >= 0")
        self.root = root
        self.budget = budget
        self._lock = threading.Lock()
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._bytes = 0
        self.evictions = 0
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd: int | None = os.open(root / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreError(f"snapshot store failed at step 'open disk cache': {root} is in use by another store") from None
        self._load()

    def close(self) -> None:
        """Release the directory (idempotent); the cached blobs stay for the next user."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def _load(self) -> None:
        """Index what an earlier run left, oldest first; drop temporaries of interrupted writes."""
        found: list[tuple[float, str, int]] = []
        for path in self._walk():
            if ".tmp" in path.name:
                path.unlink(missing_ok=True)
                continue
            st = path.stat()
            found.append((st.st_mtime, path.name, st.st_size))
        for _, name, size in sorted(found):
            self._sizes[name] = size
            self._bytes += size
        with self._lock:
            self._evict_locked()

    def _walk(self) -> Iterator[Path]:
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                yield from (path for path in sub.iterdir() if path.is_file())

    def get(self, name: str) -> bytes | None:
        path = self._path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self._forget_locked(name)
            return None
        with self._lock:
            if name in self._sizes:
                self._sizes.move_to_end(name)
        try:
            os.utime(path)  # the LRU order survives a restart
        except FileNotFoundError:
            pass  # evicted since the read: the bytes read are still whole
        return data

    def put(self, name: str, blob: bytes) -> None:
        if len(blob) > self.budget:
            return
        directory = self.root / name[:2]
        directory.mkdir(exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=name + ".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
            os.replace(tmp, self._path(name))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._forget_locked(name)
            self._sizes[name] = len(blob)
            self._bytes += len(blob)
            self._evict_locked()

    def discard(self, name: str) -> None:
        with self._lock:
            self._forget_locked(name)
            self._path(name).unlink(missing_ok=True)

    def _forget_locked(self, name: str) -> None:
        size = self._sizes.pop(name, None)
        if size is not None:
            self._bytes -= size

    def _evict_locked(self) -> None:
        while self._bytes > self.budget and self._sizes:
            name, size = self._sizes.popitem(last=False)
            self._bytes -= size
            self._path(name).unlink(missing_ok=True)
            self.evictions += 1

    def names(self) -> list[str]:
        with self._lock:
            return list(self._sizes)

    def usage(self) -> TierUsage:
        with self._lock:
            return TierUsage(len(self._sizes), self._bytes, self.budget)
