"""`ChunkStore`: snapshots in, files and byte ranges out, through memory → disk → origin.

Contracts:

* `put_tree(snapshot_id, directory)` cuts every regular file into chunks of at most 512 KiB
  (`layout`: CRIU page images along the memory they hold, small files packed several to a
  shared chunk, other files at fixed 512 KiB offsets), records
  all-zero chunks as holes, seals the rest (`codec`), uploads those the origin lacks, and
  writes the manifest last: a snapshot without a manifest does not exist, so a crash mid-way
  leaves only unreferenced chunks for `collect`. Directories and symlinks are recorded;
  any other file type fails the put. Ownership is not recorded (the caller chowns).
* `materialize(snapshot_id, dest)` rebuilds the tree in a hidden sibling of `dest` (which
  must not exist) and renames it into place, so `dest` is complete or absent. Files are
  created at full size first (so holes stay sparse) and chunks fetched by a small thread pool
  write themselves at their offsets.
* `read(snapshot_id, path, offset, length)` returns exactly the bytes of that range (short at
  end of file) through the tiers: the basis of lazy restore.
* A chunk comes from the first tier that holds a *verified* copy. Disk and origin blobs are
  authenticated and hashed by `ChunkCodec.open`. A memory-tier copy is verified once: the
  store puts a chunk there only from a blob it just verified (or from the bytes it just
  sealed), marked verified; a copy put there any other way is hashed at its first hit
  (``verify_memory``) and marked once it matches. A marked copy (immutable ``bytes``) is
  trusted on later hits: re-hashing every hit cost ~0.4 ms per 512 KiB here, ~30 ms of daemon
  CPU per torch restore with a cold page cache (the working-set push re-reads ~200 chunks). A cache tier's bad copy is evicted (counted as ``corrupt``) and
  the chunk read from below; a hit below promotes it into every tier above. At the origin a
  missing or bad chunk raises `ChunkUnavailable` naming the snapshot, file and chunk; a bad
  one (twice in a row) is also deleted there, so re-creating the snapshot uploads it afresh
  instead of deduplicating against it. Several threads wanting one absent chunk share one
  fetch.
* Manifests are read from the origin; a copy of each (sealed, as at the origin) is kept in the
  disk cache's ``manifests/`` directory and used only when the origin cannot be reached
  (`OriginError`), so a restarted host restores from a warm cache with its origin down. An
  origin that answers "no such manifest" wins: the copy is dropped.
* Attachments (`put_attachment`, `get_attachment`; format in `attachment`) are a snapshot's
  small named documents, such as its recorded working set: sealed under a key of their own
  with the snapshot id and the name as associated data, stored at the origin beside the
  manifest and copied into the disk cache's ``attachments/<snapshot-id>/`` directory. Only a
  snapshot with a manifest takes one (`SnapshotMissing` otherwise). A write replaces the whole
  attachment atomically (last writer wins). A read goes to the origin; the disk cache's copy
  is used only while the origin cannot be reached, and an origin that has none wins (the copy
  goes). An attachment that fails authentication (tampered, moved from another snapshot or
  name, another secret) reads as absent, with a warning; never as data.
* `delete(snapshot_id)` removes the manifest, then the snapshot's attachments, from the origin
  and the disk cache; its chunks go at the next `collect`.
* `collect(referenced_snapshot_ids)` deletes manifests not referenced (with their
  attachments), then chunks no kept manifest references, from the origin and both caches;
  also attachments whose manifest is gone (orphans: a crash between the two deletions, an
  attach racing a delete, another host's delete) at the origin and in the disk cache, where
  manifest copies of such snapshots go too. Manifests and origin chunks younger
  than ``grace_seconds`` are kept (the gap between a publish's `put_tree` and its caller
  recording the snapshot id; other hosts' uploads). Writes in this process are fenced exactly
  (`fence`), so a concurrent `put_tree` never loses a chunk. A kept manifest that cannot be
  read aborts the collection before anything is deleted.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from snapfaas.store import layout
from snapfaas.store.attachment import AttachmentInvalid, check_name, open_sealed, seal
from snapfaas.store.codec import CHUNK_SIZE, ChunkCodec, load_or_create_secret
from snapfaas.store.errors import (
    ChunkCorrupt,
    ChunkUnavailable,
    ManifestInvalid,
    SnapshotExists,
    SnapshotMissing,
    StoreError,
)
from snapfaas.store.fence import ReferenceFence
from snapfaas.store.manifest import DIR, FILE, SYMLINK, ChunkRef, FileEntry, Manifest, check_snapshot_id, decode, encode
from snapfaas.store.origin import Origin, OriginError, origin_from_url, write_atomic
from snapfaas.store.stats import CollectReport, SnapshotStats, StoreStats
from snapfaas.store.tiers import DiskTier, MemoryTier, TierCounters, TierUsage

logger = logging.getLogger(__name__)
ZERO = bytes(CHUNK_SIZE)
MAX_PAGEMAP = 64 << 20  # a bigger pagemap image is not read for the layout (its pages image is cut fixed)
MANIFEST_CACHE = 1024
TIERS = ("memory", "disk", "origin")


class _OriginFault(Exception):
    """A chunk could not be had from the origin; becomes `ChunkUnavailable` with context."""


class ChunkStore:
    def __init__(self, origin: Origin, secret: bytes, *, cache_dir: Path | None = None, cache_bytes: int = 4 << 30,
                 memory_bytes: int = 512 << 20, workers: int = 4, verify_memory: bool = True) -> None:
        self.origin = origin
        self.codec = ChunkCodec(secret)
        self.memory = MemoryTier(memory_bytes)
        self.disk = DiskTier(cache_dir, cache_bytes) if cache_dir is not None else None
        self._manifest_copies = cache_dir / "manifests" if cache_dir is not None else None
        self._attachment_copies = cache_dir / "attachments" if cache_dir is not None else None
        for copies in (self._manifest_copies, self._attachment_copies):
            if copies is not None:
                copies.mkdir(mode=0o700, exist_ok=True)
        self.verify_memory = verify_memory
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="store")
        self._workers = max(1, workers)
        self._lock = threading.Lock()
        self._counters = {tier: TierCounters() for tier in TIERS}
        self._inflight: dict[str, concurrent.futures.Future[bytes]] = {}
        self._manifests: collections.OrderedDict[str, Manifest] = collections.OrderedDict()
        self._fence = ReferenceFence()
        self._gc_lock = threading.Lock()

    def close(self) -> None:
        """Stop the worker threads and release the disk cache directory."""
        self._pool.shutdown(wait=True)
        if self.disk is not None:
            self.disk.close()

    # ---- counters -------------------------------------------------------------------------

    def _count(self, tier: str, **deltas: int) -> None:
        with self._lock:
            counters = self._counters[tier]
            for key, delta in deltas.items():
                setattr(counters, key, getattr(counters, key) + delta)

    def counters(self) -> dict[str, TierCounters]:
        """A copy of every tier's counters (``memory``, ``disk``, ``origin``)."""
        with self._lock:
            out = {tier: counters.copy() for tier, counters in self._counters.items()}
        out["memory"].evictions = self.memory.evictions
        if self.disk is not None:
            out["disk"].evictions = self.disk.evictions
        return out

    # ---- manifests ------------------------------------------------------------------------

    def manifest(self, snapshot_id: str) -> Manifest:
        """The verified manifest of `snapshot_id` (cached: manifests never change)."""
        check_snapshot_id(snapshot_id)
        with self._lock:
            cached = self._manifests.get(snapshot_id)
            if cached is not None:
                self._manifests.move_to_end(snapshot_id)
                return cached
        try:
            data = self.origin.get_manifest(snapshot_id)
        except OriginError as exc:
            data = self._manifest_copy(snapshot_id)
            if data is None:
                raise
            logger.warning("store: origin unreachable (%s); using the cached manifest of snapshot %s", exc, snapshot_id)
        else:
            if data is None:
                self._drop_manifest_copy(snapshot_id)
                raise SnapshotMissing(f"snapshot store failed at step 'read manifest': snapshot {snapshot_id} "
                                      f"has no manifest at origin {self.origin.describe()}")
            self._keep_manifest_copy(snapshot_id, data)
        manifest = decode(snapshot_id, data, self.codec.manifest_key)  # authenticates a cached copy too
        with self._lock:
            self._manifests[snapshot_id] = manifest
            while len(self._manifests) > MANIFEST_CACHE:
                self._manifests.popitem(last=False)
        return manifest

    def snapshots(self) -> list[str]:
        """Snapshot ids with a manifest at the origin."""
        return sorted(info.key for info in self.origin.list_manifests())

    def _forget_manifest(self, snapshot_id: str) -> None:
        with self._lock:
            self._manifests.pop(snapshot_id, None)
        self._drop_manifest_copy(snapshot_id)

    def _manifest_copy(self, snapshot_id: str) -> bytes | None:
        if self._manifest_copies is None:
            return None
        try:
            return (self._manifest_copies / snapshot_id).read_bytes()
        except FileNotFoundError:
            return None

    def _keep_manifest_copy(self, snapshot_id: str, data: bytes) -> None:
        if self._manifest_copies is not None and not (self._manifest_copies / snapshot_id).exists():
            write_atomic(self._manifest_copies / snapshot_id, data)

    def _drop_manifest_copy(self, snapshot_id: str) -> None:
        if self._manifest_copies is not None:
            (self._manifest_copies / snapshot_id).unlink(missing_ok=True)

    # ---- writing --------------------------------------------------------------------------

    def put_tree(self, snapshot_id: str, directory: Path, meta: dict[str, Any] | None = None,
                 warm_cache: bool = False, replace: bool = False) -> Manifest:
        """Store the tree under `directory` as `snapshot_id` (see the module contract).
        `meta` is kept in the manifest for the caller; `warm_cache` also puts the sealed
        chunks into the disk cache and their plaintext into the memory tier (the publishing host
        is likely to restore soon).

        `replace`: an id that already has a manifest is written again instead of refused (for
        content-addressed ids, whose tree is the same every time: code packages). The write
        is fenced like any other, every chunk is checked (and uploaded if the origin lost it)
        and the manifest is rewritten, so its age at the origin restarts: a collection running
        meanwhile in this process keeps it (`fence`), and one on another host spares it for its
        grace period."""
        check_snapshot_id(snapshot_id)
        if not replace and self.origin.get_manifest(snapshot_id) is not None:
            raise SnapshotExists(f"snapshot store failed at step 'put tree': snapshot {snapshot_id} already exists")
        token = self._fence.open(snapshot_id)
        outstanding: collections.deque[concurrent.futures.Future[ChunkRef]] = collections.deque()
        try:
            files: list[tuple[FileEntry, list[_Pending]]] = []
            small: list[tuple[int, bytes]] = []  # (index in files, bytes) of the files to pack
            tree = _walk(directory)  # checks that `directory` is one
            pieces = _page_image_plan(directory)
            for rel, path, st in tree:
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    files.append((FileEntry(rel, DIR, mode=mode), []))
                elif stat.S_ISLNK(st.st_mode):
                    files.append((FileEntry(rel, SYMLINK, target=os.readlink(path)), []))
                elif stat.S_ISREG(st.st_mode):
                    refs: list[_Pending] = []
                    size = 0
                    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as source:
                        if rel not in pieces and st.st_size <= layout.PACK_MAX:
                            whole = source.read(layout.PACK_MAX + 1)
                            if 0 < len(whole) <= layout.PACK_MAX:
                                files.append((FileEntry(rel, FILE, mode=mode, size=len(whole)), refs))
                                small.append((len(files) - 1, whole))
                                continue
                            source.seek(0)
                        for data in _pieces(source, pieces.get(rel)):
                            if data == ZERO[:len(data)]:
                                refs.append(ChunkRef(size, len(data), None, None, 0))
                            else:
                                future = self._pool.submit(self._put_chunk, token, data, size, warm_cache)
                                refs.append(future)
                                outstanding.append(future)
                                while len(outstanding) > 2 * self._workers:  # bounds the bytes in flight
                                    outstanding.popleft().result()
                            size += len(data)
                    files.append((FileEntry(rel, FILE, mode=mode, size=size), refs))
                else:
                    raise StoreError(f"snapshot store failed at step 'read tree' of snapshot {snapshot_id}: {rel} is "
                                     f"neither a regular file, a directory nor a symlink")
            for group in layout.pack_groups([len(data) for _, data in small]):
                blob = b"".join(small[member][1] for member in group)
                shared = None
                if blob != ZERO[:len(blob)]:
                    shared = self._pool.submit(self._put_chunk, token, blob, 0, warm_cache)
                    outstanding.append(shared)
                at = 0
                for member in group:
                    index, data = small[member]
                    files[index][1].append(ChunkRef(0, len(data), None, None, 0) if shared is None
                                           else _Slice(shared, at, len(data), len(group) > 1))
                    at += len(data)
            entries = []
            for entry, refs in files:
                if entry.type == FILE:
                    entry = FileEntry(entry.path, FILE, mode=entry.mode, size=entry.size, chunks=[_resolve(ref) for ref in refs])
                entries.append(entry)
            manifest = Manifest(snapshot_id, entries, meta=dict(meta or {}), created=time.time())
            sealed_manifest = encode(manifest, self.codec.manifest_key)
            self.origin.put_manifest(snapshot_id, sealed_manifest)
            if replace:
                self._drop_manifest_copy(snapshot_id)
            self._keep_manifest_copy(snapshot_id, sealed_manifest)
            with self._lock:
                self._manifests[snapshot_id] = manifest
            return manifest
        except BaseException:
            for future in outstanding:
                future.cancel()
            concurrent.futures.wait(outstanding)
            raise
        finally:
            self._fence.close(token)

    def _put_chunk(self, token: int, data: bytes, offset: int, warm_cache: bool) -> ChunkRef:
        sealed = self.codec.seal(data)
        self._fence.protect(token, sealed.name)  # before the existence check: see `fence`
        if not self.origin.has_chunk(sealed.name):
            self.origin.put_chunk(sealed.name, sealed.blob)
            self._count("origin", bytes_written=len(sealed.blob))
        if warm_cache and self.disk is not None:
            self.disk.put(sealed.name, sealed.blob)
            self._count("disk", bytes_written=len(sealed.blob))
        if warm_cache:
            self.memory.put(sealed.name, data, verified=True)  # the publishing host restores it next (LRU-bounded)
        return ChunkRef(offset, len(data), sealed.name, sealed.digest, len(sealed.blob))

    def delete(self, snapshot_id: str) -> None:
        """Remove the snapshot's manifest, then its attachments (its chunks go at the next
        `collect`). Idempotent."""
        check_snapshot_id(snapshot_id)
        self._forget_manifest(snapshot_id)
        self.origin.delete_manifest(snapshot_id)
        self._delete_attachments(snapshot_id)

    # ---- attachments ----------------------------------------------------------------------

    def put_attachment(self, snapshot_id: str, name: str, data: bytes) -> None:
        """Store `data` as attachment `name` of `snapshot_id`, replacing any earlier one (see
        the module contract). `SnapshotMissing` if the snapshot has no manifest at the origin."""
        check_snapshot_id(snapshot_id)
        check_name(name)
        envelope = seal(snapshot_id, name, data, self.codec.attachment_key)
        if self.origin.get_manifest(snapshot_id) is None:
            raise SnapshotMissing(f"snapshot store failed at step 'put attachment' {name}: snapshot {snapshot_id} "
                                  f"has no manifest at origin {self.origin.describe()}")
        self.origin.put_attachment(snapshot_id, name, envelope)
        self._keep_attachment_copy(snapshot_id, name, envelope)

    def get_attachment(self, snapshot_id: str, name: str) -> bytes | None:
        """The data of attachment `name` of `snapshot_id`, or None if there is none or the one
        stored fails authentication (logged). `OriginError` if the origin cannot be reached
        and the disk cache holds no copy."""
        check_snapshot_id(snapshot_id)
        check_name(name)
        try:
            envelope = self.origin.get_attachment(snapshot_id, name)
        except OriginError as exc:
            envelope = self._attachment_copy(snapshot_id, name)
            if envelope is None:
                raise
            logger.warning("store: origin unreachable (%s); using the cached attachment %s of snapshot %s",
                           exc, name, snapshot_id)
            cached = True
        else:
            if envelope is None:
                self._drop_attachment_copy(snapshot_id, name)
                return None
            cached = False
        try:
            data = open_sealed(snapshot_id, name, envelope, self.codec.attachment_key)
        except AttachmentInvalid as exc:
            where = "the disk cache's copy" if cached else f"origin {self.origin.describe()}"
            logger.warning("store: attachment %s of snapshot %s at %s is invalid (%s); treated as absent",
                           name, snapshot_id, where, exc)
            self._drop_attachment_copy(snapshot_id, name)
            return None
        if not cached:
            self._keep_attachment_copy(snapshot_id, name, envelope)
        return data

    def attachments(self, snapshot_id: str) -> list[str]:
        """The names of the snapshot's attachments at the origin."""
        check_snapshot_id(snapshot_id)
        return sorted(info.name for info in self.origin.list_attachments(snapshot_id))

    def delete_attachment(self, snapshot_id: str, name: str) -> None:
        """Remove one attachment from the origin and the disk cache. Idempotent."""
        check_snapshot_id(snapshot_id)
        check_name(name)
        self.origin.delete_attachment(snapshot_id, name)
        self._drop_attachment_copy(snapshot_id, name)

    def _delete_attachments(self, snapshot_id: str) -> int:
        """Every attachment of the snapshot, from the origin and the disk cache; how many went
        at the origin."""
        deleted = 0
        for info in list(self.origin.list_attachments(snapshot_id)):
            self.origin.delete_attachment(snapshot_id, info.name)
            deleted += 1
        self._drop_attachment_copies(snapshot_id)
        return deleted

    def _attachment_copy(self, snapshot_id: str, name: str) -> bytes | None:
        if self._attachment_copies is None:
            return None
        try:
            return (self._attachment_copies / snapshot_id / name).read_bytes()
        except FileNotFoundError:
            return None

    def _keep_attachment_copy(self, snapshot_id: str, name: str, envelope: bytes) -> None:
        if self._attachment_copies is None or self._attachment_copy(snapshot_id, name) == envelope:
            return
        try:
            write_atomic(self._attachment_copies / snapshot_id / name, envelope)
        except OSError as exc:  # a full or broken cache disk must not fail the caller
            logger.warning("store: could not cache attachment %s of snapshot %s on disk: %s", name, snapshot_id, exc)

    def _drop_attachment_copy(self, snapshot_id: str, name: str) -> None:
        if self._attachment_copies is not None:
            (self._attachment_copies / snapshot_id / name).unlink(missing_ok=True)

    def _drop_attachment_copies(self, snapshot_id: str) -> int:
        if self._attachment_copies is None:
            return 0
        directory = self._attachment_copies / snapshot_id
        try:
            dropped = sum(1 for path in directory.iterdir() if ".tmp" not in path.name)
        except FileNotFoundError:
            return 0
        shutil.rmtree(directory, ignore_errors=True)
        return dropped

    # ---- reading --------------------------------------------------------------------------

    def read(self, snapshot_id: str, path: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of file `path` (fewer at end of file)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        entry = self._file(snapshot_id, path)
        end = min(offset + length, entry.size)
        parts: list[bytes | memoryview] = []
        for index, ref in entry.covering(offset, length):
            lo, hi = max(offset, ref.offset) - ref.offset, min(end, ref.offset + ref.length) - ref.offset
            if ref.is_hole:
                parts.append(bytes(hi - lo))
            else:
                parts.append(memoryview(self.chunk(snapshot_id, path, index, ref))[lo:hi])
        return b"".join(parts)

    def _file(self, snapshot_id: str, path: str) -> FileEntry:
        entry = self.manifest(snapshot_id).file(path)
        if entry is None or entry.type != FILE:
            raise StoreError(f"snapshot store failed at step 'find file': snapshot {snapshot_id} has no file {path!r}")
        return entry

    def materialize(self, snapshot_id: str, dest: Path) -> Manifest:
        """Rebuild the snapshot's tree at `dest` (absent before; complete or absent after)."""
        manifest = self.manifest(snapshot_id)
        if dest.exists() or dest.is_symlink():
            raise StoreError(f"snapshot store failed at step 'materialize' of snapshot {snapshot_id}: {dest} exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_name(f".{dest.name}.partial-{secrets.token_hex(4)}")
        staging.mkdir(mode=0o700)
        fds: list[int] = []
        futures: list[concurrent.futures.Future[None]] = []
        try:
            for entry in manifest.files:
                target = staging / entry.path
                if entry.type == DIR:
                    target.mkdir(mode=0o700)
                elif entry.type == SYMLINK:
                    os.symlink(entry.target, target)
                else:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                    fds.append(fd)
                    os.ftruncate(fd, entry.size)  # holes stay holes
                    for index, ref in enumerate(entry.chunks):
                        if not ref.is_hole:
                            futures.append(self._pool.submit(self._write_chunk, fd, snapshot_id, entry.path, index, ref))
            done, pending = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in done:
                future.result()
            for entry, fd in zip((e for e in manifest.files if e.type == FILE), fds):
                os.fchmod(fd, entry.mode)
            for entry in reversed(manifest.files):
                if entry.type == DIR:
                    os.chmod(staging / entry.path, entry.mode)
            for fd in fds:
                os.close(fd)
            fds = []
            os.rename(staging, dest)
            return manifest
        finally:
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)  # no write may land on a closed (or reused) fd
            for fd in fds:
                os.close(fd)
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _write_chunk(self, fd: int, snapshot_id: str, path: str, index: int, ref: ChunkRef) -> None:
        data = self.chunk(snapshot_id, path, index, ref)
        written = os.pwrite(fd, data, ref.offset)
        if written != len(data):
            raise StoreError(f"snapshot store failed at step 'write file' of snapshot {snapshot_id}: short write to {path}")

    def chunk(self, snapshot_id: str, path: str, index: int, ref: ChunkRef) -> bytes:
        """The verified plaintext of one stored chunk (`ref`, chunk `index` of `path` in the
        manifest of `snapshot_id`), from the highest tier that has it; raises `ChunkUnavailable`.
        For a packed reference: its slice of the shared chunk (the tiers hold the whole chunk)."""
        assert ref.name is not None and ref.digest is not None
        if ref.packed:
            return ref.cut(self.chunk(snapshot_id, path, index, ref.whole()))
        plain = self._from_memory(ref)
        if plain is not None:
            return plain
        with self._lock:
            future = self._inflight.get(ref.name)
            owner = future is None
            if future is None:
                future = self._inflight[ref.name] = concurrent.futures.Future()
        try:
            if not owner:
                return future.result()
            try:
                # a fetch that finished between our memory miss and taking ownership left it there
                plain = self._from_memory(ref, count=False) or self._from_below(ref)
            except BaseException as exc:
                future.set_exception(exc)
                raise
            future.set_result(plain)
            return plain
        except _OriginFault as fault:
            raise ChunkUnavailable(
                f"snapshot store failed at step 'fetch chunk' for snapshot {snapshot_id}, file {path}, chunk {index} "
                f"(offset {ref.offset}, name {ref.name}): {fault}",
                snapshot_id, path, index, ref.offset, ref.name) from fault
        finally:
            if owner:
                with self._lock:
                    self._inflight.pop(ref.name, None)

    def _from_memory(self, ref: ChunkRef, count: bool = True) -> bytes | None:
        assert ref.name is not None
        found = self.memory.lookup(ref.name)
        if found is None:
            if count:
                self._count("memory", misses=1)
            return None
        data, verified = found
        check = self.verify_memory and not verified
        if len(data) != ref.length or (check and hashlib.sha256(data).digest() != ref.digest):
            logger.warning("store: memory copy of chunk %s failed verification; evicted, reading from below", ref.name)
            self.memory.discard(ref.name)
            self._count("memory", misses=1, corrupt=1)
            return None
        if check:
            self.memory.mark_verified(ref.name, data)
        if count:
            self._count("memory", hits=1, bytes_read=len(data))
        return data

    def _from_below(self, ref: ChunkRef) -> bytes:
        assert ref.name is not None and ref.digest is not None
        if self.disk is not None:
            blob = self.disk.get(ref.name)
            if blob is None:
                self._count("disk", misses=1)
            else:
                try:
                    plain = self.codec.open(ref.name, ref.digest, ref.length, blob)
                except ChunkCorrupt as exc:
                    logger.warning("store: disk cache copy of chunk %s is corrupt (%s); evicted, reading from the origin", ref.name, exc)
                    self.disk.discard(ref.name)
                    self._count("disk", misses=1, corrupt=1)
                else:
                    self._count("disk", hits=1, bytes_read=len(blob))
                    self.memory.put(ref.name, plain, verified=True)
                    return plain
        blob, plain = self._from_origin(ref)
        self._count("origin", hits=1, bytes_read=len(blob))
        if self.disk is not None:
            try:
                self.disk.put(ref.name, blob)
                self._count("disk", bytes_written=len(blob))
            except OSError as exc:  # a full or broken cache disk must not fail a restore
                logger.warning("store: could not cache chunk %s on disk: %s", ref.name, exc)
        self.memory.put(ref.name, plain, verified=True)
        return plain

    def _from_origin(self, ref: ChunkRef) -> tuple[bytes, bytes]:
        """(blob, verified plaintext) from the origin. A blob that fails verification twice in
        a row is deleted there: no snapshot can use it, and while it stays every `put_tree` of
        that content would skip the upload (the name exists) and so never heal it."""
        assert ref.name is not None and ref.digest is not None
        failure: ChunkCorrupt | None = None
        for _ in range(2):
            try:
                blob = self.origin.get_chunk(ref.name)
            except OriginError as exc:
                self._count("origin", misses=1)
                raise _OriginFault(str(exc)) from exc
            if blob is None:
                self._count("origin", misses=1)
                raise _OriginFault(f"missing at origin {self.origin.describe()}")
            try:
                return blob, self.codec.open(ref.name, ref.digest, ref.length, blob)
            except ChunkCorrupt as exc:
                failure = exc  # read it once more: a transfer error is not worth a deletion
        self._count("origin", misses=1, corrupt=1)
        try:
            self.origin.delete_chunk(ref.name)
            removed = "removed it so that the next put of this content uploads it again"
        except OriginError as exc:
            removed = f"could not remove it ({exc})"
        logger.warning("store: chunk %s is corrupt at origin %s (%s); %s", ref.name, self.origin.describe(), failure, removed)
        raise _OriginFault(f"corrupt at origin {self.origin.describe()}: {failure}; {removed}")

    # ---- garbage collection ---------------------------------------------------------------

    def collect(self, referenced_snapshot_ids: Iterable[str], grace_seconds: float = 600.0, *,
                pending: set[str] | None = None, still_held: Callable[[], bool] | None = None) -> CollectReport:
        """Delete what no live snapshot needs (see the module contract). One at a time.

        `referenced_snapshot_ids` must name every live snapshot of this origin (prefix): a
        manifest not named and older than `grace_seconds` is deleted with its unique chunks.

        Across hosts (`snapshot.manager`'s lease protocol): `pending` names snapshots other
        processes are writing; if one of them has no manifest yet, its chunks are unknown, so no
        chunk is deleted this time (``chunks_deferred`` in the report). `still_held` is asked
        before every deletion: once it answers False (the collector's lease was lost) the
        collection stops with a `StoreError`."""
        with self._gc_lock:
            self._fence.begin_collection()
            try:
                return self._collect(set(referenced_snapshot_ids), grace_seconds, set(pending or ()),
                                     still_held or (lambda: True))
            finally:
                self._fence.end_collection()

    def _collect(self, referenced: set[str], grace: float, pending: set[str],
                 still_held: Callable[[], bool]) -> CollectReport:
        for snapshot_id in referenced:
            check_snapshot_id(snapshot_id)
        now = time.time()
        listed = list(self.origin.list_manifests())
        keep = {info.key for info in listed if info.key in referenced or now - info.mtime < grace}
        live: set[str] = set()
        for snapshot_id in sorted(keep):
            try:
                live |= self.manifest(snapshot_id).names()
            except (ManifestInvalid, SnapshotMissing, OriginError) as exc:
                raise StoreError(f"snapshot store failed at step 'collect: read live manifest' of snapshot "
                                 f"{snapshot_id}; nothing was deleted: {exc}") from exc
        for snapshot_id in sorted(referenced - {info.key for info in listed}):
            logger.info("store: referenced snapshot %s has no manifest (being written, or lost)", snapshot_id)
        unwritten = sorted(pending - {info.key for info in listed})
        if unwritten:
            logger.info("store: snapshots %s are being written elsewhere and have no manifest yet: "
                        "no chunk is deleted this time", ", ".join(unwritten))

        def check_lease() -> None:
            if not still_held():
                raise StoreError("snapshot store failed at step 'collect: hold the gc lease': the lease was lost "
                                 "(taken over by another node); stopped")
        manifests_deleted = attachments_deleted = 0
        for info in listed:
            if info.key in keep:
                continue
            check_lease()
            with self._fence.manifest_deletable(info.key) as ok:
                if ok:
                    self._forget_manifest(info.key)
                    self.origin.delete_manifest(info.key)
                    manifests_deleted += 1
            if ok:
                attachments_deleted += self._delete_attachments(info.key)
        attachments_deleted, orphan_copies = self._collect_orphan_attachments(attachments_deleted)
        chunks_deleted = kept = freed = 0
        if unwritten:
            kept = sum(1 for _ in self.origin.list_chunks())
            logger.info("store: collected %d manifests, %d attachments; chunk deletion deferred", manifests_deleted,
                        attachments_deleted)
            return CollectReport(manifests_deleted, 0, 0, orphan_copies, kept, attachments_deleted, chunks_deferred=True)
        for info in self.origin.list_chunks():
            if info.key in live or now - info.mtime < grace:
                kept += 1
                continue
            check_lease()
            with self._fence.deletable(info.key) as ok:
                if ok:
                    self.origin.delete_chunk(info.key)
                    chunks_deleted += 1
                    freed += info.size
                else:
                    kept += 1
        dropped = orphan_copies
        for tier in (self.memory, self.disk):
            if tier is None:
                continue
            for name in tier.names():
                if name in live:
                    continue
                with self._fence.deletable(name) as ok:
                    if ok:
                        tier.discard(name)
                        dropped += 1
        logger.info("store: collected %d manifests, %d attachments, %d chunks (%d bytes), %d cache entries; "
                    "kept %d chunks", manifests_deleted, attachments_deleted, chunks_deleted, freed, dropped, kept)
        return CollectReport(manifests_deleted, chunks_deleted, freed, dropped, kept, attachments_deleted)

    def _collect_orphan_attachments(self, deleted: int) -> tuple[int, int]:
        """Delete attachments whose snapshot has no manifest, at the origin and in the disk
        cache (with the cache's manifest copies of such snapshots); returns (attachments
        deleted so far at the origin, cache copies dropped).

        The attachments are listed *before* the manifests: an attachment is only ever written
        after its manifest, so one listed whose snapshot is missing from the later manifest
        listing lost its manifest for good. Snapshots written in this process since the
        collection began are spared too (`fence`)."""
        at_origin = list(self.origin.list_attachments())
        cached = self._cached_snapshot_ids()
        present = {info.key for info in self.origin.list_manifests()} | self._fence.held_ids()
        for info in at_origin:
            if info.snapshot_id not in present:
                logger.info("store: attachment %s of snapshot %s has no manifest; deleting it", info.name, info.snapshot_id)
                self.origin.delete_attachment(info.snapshot_id, info.name)
                deleted += 1
        dropped = 0
        for snapshot_id in sorted(cached - present):
            dropped += self._drop_attachment_copies(snapshot_id)
            if self._manifest_copy(snapshot_id) is not None:
                self._drop_manifest_copy(snapshot_id)
                dropped += 1
        return deleted, dropped

    def _cached_snapshot_ids(self) -> set[str]:
        """Snapshot ids with a manifest or attachment copy in the disk cache."""
        found: set[str] = set()
        for copies in (self._manifest_copies, self._attachment_copies):
            if copies is None:
                continue
            try:
                found |= {path.name for path in copies.iterdir() if ".tmp" not in path.name}
            except FileNotFoundError:
                continue  # the cache directory was removed under us: nothing to drop there
        return found

    # ---- reports --------------------------------------------------------------------------

    def _all_manifests(self) -> dict[str, Manifest]:
        out: dict[str, Manifest] = {}
        for info in self.origin.list_manifests():
            try:
                out[info.key] = self.manifest(info.key)
            except (ManifestInvalid, SnapshotMissing) as exc:
                logger.warning("store: skipping snapshot %s in statistics: %s", info.key, exc)
        return out

    def snapshot_stats(self, snapshot_id: str) -> SnapshotStats:
        manifest = self.manifest(snapshot_id)
        others: set[str] = set()
        for other_id, other in self._all_manifests().items():
            if other_id != snapshot_id:
                others |= other.names()
        refs = manifest.chunk_refs()
        distinct = {ref.name: ref for ref in refs}
        shared = [ref for name, ref in distinct.items() if name in others]
        holes = sum(ref.length for entry in manifest.files for ref in entry.chunks if ref.is_hole)
        return SnapshotStats(
            snapshot_id=snapshot_id,
            files=sum(1 for entry in manifest.files if entry.type == FILE),
            raw_bytes=manifest.raw_bytes,
            hole_bytes=holes,
            chunk_refs=len(refs),
            chunks=len(distinct),
            stored_bytes=sum(ref.stored for ref in distinct.values()),
            shared_chunks=len(shared),
            shared_bytes=sum(ref.stored for ref in shared),
        )

    def stats(self) -> StoreStats:
        manifests = self._all_manifests()
        logical = 0
        distinct: dict[str | None, ChunkRef] = {}
        for manifest in manifests.values():
            for ref in manifest.chunk_refs():
                logical += ref.length
                distinct.setdefault(ref.name, ref)
        unique = sum(ref.chunk_length for ref in distinct.values())
        stored = sum(ref.stored for ref in distinct.values())
        origin_chunks = list(self.origin.list_chunks())
        usage = {
            "memory": self.memory.usage(),
            "disk": self.disk.usage() if self.disk is not None else TierUsage(0, 0, 0),
            "origin": TierUsage(len(origin_chunks), sum(info.size for info in origin_chunks), None),
        }
        return StoreStats(
            snapshots=len(manifests),
            raw_bytes=sum(manifest.raw_bytes for manifest in manifests.values()),
            logical_bytes=logical,
            unique_chunks=len(distinct),
            unique_bytes=unique,
            stored_bytes=stored,
            dedup_ratio=logical / unique if unique else 1.0,
            compression_ratio=stored / unique if unique else 1.0,
            usage=usage,
            counters=self.counters(),
        )


def open_store(origin: str, secret_path: Path, *, s3_endpoint_url: str | None = None, cache_dir: Path | None = None,
               cache_bytes: int = 4 << 30, memory_bytes: int = 512 << 20, workers: int = 4) -> ChunkStore:
    """A store from server settings: `origin` is a directory or ``s3://bucket/prefix``
    (`s3_endpoint_url` for a non-AWS service; credentials from boto3's standard chain); the
    deployment secret lives at `secret_path` (created if absent; every host sharing the origin
    needs the same one)."""
    return ChunkStore(origin_from_url(origin, s3_endpoint_url), load_or_create_secret(secret_path), cache_dir=cache_dir,
                      cache_bytes=cache_bytes, memory_bytes=memory_bytes, workers=workers)


class _Slice:
    """A packed file's place in a shared chunk whose upload (`future`) may still be running."""

    def __init__(self, future: concurrent.futures.Future[ChunkRef], at: int, length: int, shared: bool) -> None:
        self.future, self.at, self.length, self.shared = future, at, length, shared


_Pending = ChunkRef | concurrent.futures.Future[ChunkRef] | _Slice


def _resolve(ref: _Pending) -> ChunkRef:
    """The manifest reference for a piece `put_tree` planned (waiting for its upload)."""
    if isinstance(ref, _Slice):
        whole = ref.future.result()
        if not ref.shared:  # a group of one file: an ordinary whole-chunk reference
            return whole
        return ChunkRef(0, ref.length, whole.name, whole.digest, whole.stored, ref.at, whole.length)
    if isinstance(ref, concurrent.futures.Future):
        return ref.result()
    return ref


def _page_image_plan(directory: Path) -> dict[str, list[tuple[int, int]]]:
    """`layout.plan` for the top level of `directory` (where CRIU writes its images)."""
    pagemaps: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    with os.scandir(directory) as listing:
        for item in listing:
            if not item.is_file(follow_symlinks=False):
                continue
            sizes[item.name] = item.stat(follow_symlinks=False).st_size
            if layout.PAGEMAP.fullmatch(item.name) and sizes[item.name] <= MAX_PAGEMAP:
                with open(os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as source:
                    pagemaps[item.name] = source.read(MAX_PAGEMAP + 1)
    return layout.plan(pagemaps, sizes)


def _pieces(source: BinaryIO, planned: list[tuple[int, int]] | None) -> Iterator[bytes]:
    """The pieces of an open file, in order: `planned` lengths (a file that does not match its
    plan fails the put), else `CHUNK_SIZE` pieces until end of file."""
    if planned is None:
        while data := source.read(CHUNK_SIZE):
            yield data
        return
    for offset, length in planned:
        data = source.read(length)
        if len(data) != length:
            raise StoreError(f"snapshot store failed at step 'read tree': {source.name} is shorter than its "
                             f"pagemap says (piece at {offset})")
        yield data
    if source.read(1):
        raise StoreError(f"snapshot store failed at step 'read tree': {source.name} is longer than its pagemap says")


def _walk(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative path, path, lstat) of everything under `root`, sorted, parents first."""

    def visit(directory: Path, prefix: str) -> Iterator[tuple[str, Path, os.stat_result]]:
        with os.scandir(directory) as listing:
            items = sorted(listing, key=lambda item: item.name)
        for item in items:
            rel = f"{prefix}{item.name}"
            st = item.stat(follow_symlinks=False)
            yield rel, Path(item.path), st
            if stat.S_ISDIR(st.st_mode):
                yield from visit(Path(item.path), rel + "/")

    if not root.is_dir():
        raise StoreError(f"snapshot store failed at step 'read tree': {root} is not a directory")
    return visit(root, "")
