"""Snapshot images kept in the chunk store, restored lazily through the snapshot view.

Where a snapshot lives::

    CRIU dump (work_dir, on tmpfs) ──seal──► ChunkStore.put_tree ──► origin (directory or S3):
                                                                     manifest + 512 KiB chunks
                                                                          │
    lazy (default): lease = SnapshotView.expose ─► <view>/<snapshot-id>/ ◄┤ page faults and reads:
                    + <cache>/<snapshot-id>/ (small images; pages-*.img  │ memory → disk → origin
                      are symlinks into the view, mapped by CRIU)        │
    eager:          lease = ChunkStore.materialize ─► <cache>/<snapshot-id>/ (plaintext RAM cache)

The store (`snapfaas.store`) owns chunking, dedup, convergent encryption, the tiers and the
origin; nothing else of a snapshot is kept on persistent disk. This vault owns the *plaintext*
side CRIU reads. By default (``loading="lazy"``) that is the snapshot view
(`snapshot.view`): a restore starts at once and pages come from the store's tiers when the
restored process touches them; the kernel's page cache of the view is the warm tier. CRIU's
small image files (everything but page images and files over 1 MiB: `view.read_through_view`)
are read whole at every restore: a lazy lease keeps them as real files in a *local copy*,
``<cache>/<snapshot-id>/`` on the same root-owned tmpfs as the eager RAM cache, where each page
image is a relative symlink to the snapshot's file in the view (CRIU follows it and maps the
view's file).
So a restore sends FUSE only the page images' faults and reads: no open, read, flush and
release of ~30 small files through the daemon, and, like eager's copy, the small images
survive a dropped page cache. The local copy is built from the store at the snapshot's first
lease in this process (a few hundred KB, usually from the memory tier), is marked by a
``.lazy`` file (eager leases never use one, lazy leases nothing else), and lives as long as
the snapshot's exposure in the view: not counted against the RAM cache's budget (eager's whole
copies), removed by `evict`, `delete` and `collect_garbage` with the exposure. A
stored snapshot is exposed and its page cache primed from the dump directory (`seal`), which is
then dropped: the first restores after a publish read nothing from the store. A lazy lease pins
the snapshot until the environment restored from it is destroyed (`CacheLease.mapped`). ``loading="eager"`` (an operator
switch, and the benchmark's baseline) keeps the previous design: the whole snapshot is
materialized into a plaintext RAM cache on a tmpfs before CRIU starts. The vault's metadata (the function, its restore memory
mode, the id slice the snapshot was taken in and the image group, and the caller's `extra`)
rides in the store manifest's ``meta``: the store authenticates the manifest (AES-GCM with the
snapshot id as associated data), so it can be neither altered nor moved to another snapshot id;
`manifest` verifies it on every call (`SnapshotCorrupt` otherwise).

Plaintext images belong to the host id slice of the function they were taken from
(`seal`/`lease` take the slice; the manifest records it, and a snapshot is only ever handed
out for the slice it was taken with).

RAM cache budget (eager only): the cache holds whole snapshots up to `cache_bytes` in total; past it, the
least recently used snapshots that no restore has pinned (`lease`) are evicted. Eviction only
renames the directory away and unlinks its files, never rewrites one in place: a restored
process may still map an image file copy-on-write, and its pages stay valid (the tmpfs frees
them when the last mapping goes). A snapshot bigger than the whole budget is still cached and
restored (everything else unpinned is evicted for it).

Deletion and garbage collection go through the store: `delete` drops the cached copy at once
and queues the manifest's removal; `collect_garbage` (in a thread) removes queued manifests and
then collects every chunk no live manifest references, from every tier and the origin. A
snapshot being published counts as live from `work_dir` until the registry has recorded it
(see `collect_garbage`), so a concurrent publish never loses its manifest or chunks.

Snapshots of the previous format (``<data-dir>/snapshots/<id>/manifest.json`` + ``*.enc``
and ``snapshot.key``) are not read: `remove_legacy` deletes them, and a version that referenced
one finds no manifest and re-creates its snapshot, as for any broken snapshot.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from snapfaas.errors import ServiceError
from snapfaas.snapshot.catalog import write_counters
from snapfaas.snapshot.view import SnapshotView, read_through_view
from snapfaas.store import ChunkStore, ChunkUnavailable, CollectReport, Manifest, ManifestInvalid, SnapshotMissing, StoreError
from snapfaas.store.manifest import DIR, FILE, SYMLINK

logger = logging.getLogger(__name__)
FORMAT_KEY = "snapfaas_vault"  # in the store manifest's meta: which vault format wrote it
FORMAT = 2
NOT_IMAGES = ("dump.log", ".complete")  # in a dump directory, never stored
LAZY_MARK = ".lazy"  # in a cache entry: a lazy lease's local copy (small images, page images linked into the view)


class SnapshotCorrupt(ServiceError):
    """A stored snapshot is missing, failed authentication, cannot be read back from the
    store, or belongs to another id slice: it must be re-created."""


class CacheLease:
    """A snapshot's plaintext images, pinned until `release` (idempotent): eviction skips them
    and garbage collection keeps the snapshot (its manifest and chunks). `manifest` is the
    verified manifest; `materialized` says whether this lease filled the cache from the store
    (lazy: exposed the snapshot in the view afresh); `mapped` (lazy) says the restored process
    keeps reading the images through its page faults for as long as it lives, so the lease must
    be held until the environment is destroyed, not only until the restore is over."""

    def __init__(self, vault: SnapshotVault, snapshot_id: str, path: Path, manifest: dict[str, Any],
                 materialized: bool = False, mapped: bool = False) -> None:
        self.vault = vault
        self.snapshot_id = snapshot_id
        self.path = path
        self.manifest = manifest
        self.materialized = materialized
        self.mapped = mapped
        self._released = False

    def __repr__(self) -> str:
        return f"<CacheLease {self.snapshot_id}{' released' if self._released else ''}>"

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.vault._unpin(self.snapshot_id)


def describe(manifest: Manifest) -> dict[str, Any]:
    """The vault's view of a store manifest: its meta plus the snapshot id and file list."""
    files = [{"name": entry.path, "size": entry.size} for entry in manifest.files if entry.type == "file"]
    return {**manifest.meta, "id": manifest.snapshot_id, "files": files, "created": manifest.created}


class SnapshotVault:
    def __init__(self, store: ChunkStore, cache: Path, image_owner: int, group_of: Callable[[int], int],
                 cache_bytes: int | None = None, grace_seconds: float = 0.0, counters_path: Path | None = None,
                 view: SnapshotView | None = None) -> None:
        """CRIU reads images both as host root (a freshly cloned task, before its user
        namespace has a uid map, has no DAC override there) and as the sandbox's mapped root:
        images belong to `image_owner` (root) and `group_of(slice)` (the host gid of the mapped
        root of the function's id slice), mode 0640 in 0750 directories; no other host user,
        and no other function's uids, can read them.

        `cache_bytes` is the RAM cache's budget (None: unbounded). Complete snapshots already
        in the cache directory (left by a previous run) are counted against it.
        `grace_seconds`: manifests and origin chunks younger than this survive `collect_garbage`
        even if unreferenced (0 for an origin only this process writes: the in-process fence is
        exact; more for an origin other hosts publish to). `counters_path`: where
        `save_counters` writes the store's tier counters for the operator tools.

        `view`: a started `SnapshotView` over `store` makes restores lazy (leases expose the
        snapshot there); without one, leases materialize into the RAM cache (eager). The
        vault closes the view."""
        self.store = store
        self.view = view
        self.cache = cache
        self.image_owner = image_owner
        self.group_of = group_of
        self.cache_bytes = cache_bytes
        self.grace_seconds = grace_seconds
        self.counters_path = counters_path
        cache.mkdir(parents=True, exist_ok=True)
        for directory in (cache.parent, cache):  # searchable (not listable) by the sandbox's uids
            os.chmod(directory, 0o711)
        self._locks: dict[str, threading.Lock] = {}  # per snapshot id: one materialization at a time
        self._locks_guard = threading.Lock()
        # the RAM cache's bookkeeping, under `_cache_guard`: snapshot id -> bytes, least recently used first
        self._cached: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._pins: collections.Counter[str] = collections.Counter()
        self._materialized: collections.Counter[str] = collections.Counter()  # per id: fills from the store
        self._cache_guard = threading.Lock()
        # publishes not yet known to be recorded (see `collect_garbage`) and deletions not yet done
        self._unrecorded: set[str] = set()
        self._doomed: set[str] = set()
        self._gc_guard = threading.Lock()
        # called (from any thread) when the last lease of a deleted snapshot goes: collect it now
        self.on_unpinned_doomed: Callable[[str], None] | None = None
        self._adopt_cached()

    def close(self) -> None:
        self.save_counters()
        if self.view is not None:
            self.view.close()
        self.store.close()

    def save_counters(self) -> None:
        """Write the store's tier counters to `counters_path` (blocking; if set)."""
        if self.counters_path is not None:
            try:
                write_counters(self.counters_path, self.store.counters())
            except OSError as exc:  # operator statistics only: never fail the caller for them
                logger.warning("could not write the snapshot store counters to %s: %s", self.counters_path, exc)

    # -- publishing ----------------------------------------------------------------------
    def work_dir(self, snapshot_id: str) -> Path:
        """A fresh plaintext directory (in the RAM cache) for CRIU to dump into. From now on
        the snapshot id counts as live for garbage collection until the registry records it
        (or `delete`)."""
        with self._gc_guard:
            self._unrecorded.add(snapshot_id)
        path = self.cache / snapshot_id
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.chmod(path, 0o700)
        return path

    def seal(self, snapshot_id: str, plain: Path, extra: dict[str, Any], slice_index: int) -> dict[str, Any]:
        """Put the images in `plain` (taken from an environment of id slice `slice_index`) into
        the store and keep `plain` as the snapshot's cached copy; returns the manifest. Blocks
        (chunking, encryption, uploads): call it in a thread."""
        for name in NOT_IMAGES:
            (plain / name).unlink(missing_ok=True)
        # the format keys come last: `extra` (the caller's metadata) must not overwrite them
        meta = {**extra, FORMAT_KEY: FORMAT, "id_slice": slice_index, "image_group": self.group_of(slice_index)}
        try:
            stored = self.store.put_tree(snapshot_id, plain, meta=meta, warm_cache=True)
        except StoreError as exc:
            raise StoreError(f"snapshot {snapshot_id} failed at step 'store images': {exc}") from exc
        if self.view is not None:  # lazy: restores read the store through the view
            try:  # the first restores find the snapshot in the page cache, as in the dump's RAM copy
                self.view.expose(stored, self.group_of(slice_index))
                self.view.prime(snapshot_id, plain)
            finally:
                shutil.rmtree(plain, ignore_errors=True)
            return describe(stored)
        self._own(plain, self.group_of(slice_index))
        self._admit(snapshot_id, plain)  # the dump directory is now the snapshot's cached copy
        return describe(stored)

    # -- reading -------------------------------------------------------------------------
    def manifest(self, snapshot_id: str) -> dict[str, Any]:
        """The snapshot's manifest, authenticated by the store; raises `SnapshotCorrupt` if it
        is missing, malformed, unauthenticated, another snapshot's or not a vault snapshot."""
        return describe(self._stored(snapshot_id))

    def _stored(self, snapshot_id: str) -> Manifest:
        """The store's manifest of a vault snapshot (see `manifest`)."""
        try:
            stored = self.store.manifest(snapshot_id)
        except StoreError as exc:
            logger.warning("snapshot %s: %s", snapshot_id, exc.message)
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: manifest unusable ({public_reason(exc)})") from exc
        if stored.meta.get(FORMAT_KEY) != FORMAT:
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: not a format-{FORMAT} snapfaas snapshot")
        return stored

    def exists(self, snapshot_id: str) -> bool:
        try:
            self.store.manifest(snapshot_id)
        except StoreError:
            return False
        return True

    def _lock(self, snapshot_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(snapshot_id, threading.Lock())

    def lease(self, snapshot_id: str, slice_index: int) -> CacheLease:
        """Plaintext images for a restore into id slice `slice_index`, pinned until the lease is
        released. Lazy: the snapshot's directory in the view (exposed for the slice's group;
        nothing is read yet). Eager: the RAM cache, materialized from the store on a miss
        (memory → disk cache → origin; every chunk verified), which may evict other, unpinned
        snapshots.

        Thread-safe (it runs in worker threads): concurrent misses of one snapshot materialize
        it once, and a complete cache directory is never replaced while restores may read it.
        The manifest is verified on every call, cache hit or not. Raises `SnapshotCorrupt` if
        the snapshot is missing, tampered with, cannot be read back (a chunk missing or
        corrupt at the origin), or was taken in another slice: it must be re-created.
        """
        stored = self._stored(snapshot_id)
        manifest = describe(stored)
        group = self.group_of(slice_index)
        if manifest.get("id_slice") != slice_index or manifest.get("image_group") != group:
            raise SnapshotCorrupt(f"snapshot {snapshot_id} was taken in id slice {manifest.get('id_slice')} "
                                  f"(group {manifest.get('image_group')}), not slice {slice_index} (group {group})")
        if self.view is not None:
            return self._expose(stored, manifest, group)
        plain = self.cache / snapshot_id
        with self._cache_guard:
            self._pins[snapshot_id] += 1  # from here on no eviction takes it
        materialized = False
        try:
            if not self._usable(plain, group, stored, quiet=True):
                with self._lock(snapshot_id):
                    if not self._usable(plain, group, stored):  # else another thread materialized it while we waited
                        self._materialize(snapshot_id, plain, group)
                        materialized = True
            self._admit(snapshot_id, plain)
        except BaseException:
            self._unpin(snapshot_id)
            raise
        return CacheLease(self, snapshot_id, plain, manifest, materialized)

    def _expose(self, stored: Manifest, manifest: dict[str, Any], group: int) -> CacheLease:
        """A lazy lease: the snapshot exposed in the view for `group`, and its local copy (see
        the module docstring), built if missing; the lease's path is the local copy."""
        assert self.view is not None
        snapshot_id = stored.snapshot_id
        plain = self.cache / snapshot_id
        with self._cache_guard:
            self._pins[snapshot_id] += 1  # from here on no eviction takes the local copy
        try:
            with self._lock(snapshot_id):
                fresh = self.view.exposed().get(snapshot_id) != group
                self.view.expose(stored, group)
                if fresh:
                    with self._cache_guard:
                        self._materialized[snapshot_id] += 1
                if not self._ready(plain, group, lazy=True):
                    self._link_view(stored, plain, group)
        except BaseException:
            self._unpin(snapshot_id)
            raise
        return CacheLease(self, snapshot_id, plain, manifest, fresh, mapped=True)

    def _link_view(self, stored: Manifest, plain: Path, group: int) -> None:
        """Build the lazy local copy of `stored` at `plain` (staged, then renamed into place):
        directories and symlinks of the tree, the small files' bytes from the store, and a
        symlink into the view for every file read through it. Raises `SnapshotCorrupt` if a
        small file cannot be read back from the store."""
        assert self.view is not None
        snapshot_id = stored.snapshot_id
        # relative links: CRIU opens images relative to the image directory's descriptor, partly
        # from the restored tasks, whose root is the container's (an absolute link would miss)
        exposed = self.view.mountpoint.resolve() / snapshot_id
        home = self.cache.resolve() / snapshot_id
        with self._installing(snapshot_id, plain, group, "copy small images from the store") as staging:
            staging.mkdir(mode=0o700)
            (staging / LAZY_MARK).touch()
            for entry in stored.files:
                target = staging / entry.path
                if entry.type == DIR:
                    target.mkdir(mode=0o700)
                elif entry.type == SYMLINK:
                    os.symlink(entry.target, target)
                elif read_through_view(entry):
                    os.symlink(os.path.relpath(exposed / entry.path, (home / entry.path).parent), target)
                else:
                    data = self.store.read(snapshot_id, entry.path, 0, entry.size)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                    try:
                        if os.write(fd, data) != len(data):
                            raise OSError(f"short write to {target}")
                    finally:
                        os.close(fd)

    def materializations(self, snapshot_id: str) -> int:
        """How often this process filled the cache with `snapshot_id` from the store (lazy:
        exposed it in the view afresh)."""
        with self._cache_guard:
            return self._materialized[snapshot_id]

    @staticmethod
    def _ready(plain: Path, group: int, lazy: bool = False) -> bool:
        """A complete cached copy readable by the slice whose mapped root's gid is `group`: a
        lazy local copy if `lazy`, else a whole (eager) one."""
        try:
            return ((plain / ".complete").exists() and (plain / LAZY_MARK).exists() == lazy
                    and plain.lstat().st_gid == group)
        except FileNotFoundError:
            return False

    def _usable(self, plain: Path, group: int, stored: Manifest, quiet: bool = False) -> bool:
        """`_ready` (eager), and every image file of the copy has the size the verified manifest
        gives it. The copy's bytes are not re-hashed on a hit, but a truncated or extended image
        is caught here, before a restore meets it: mapped copy-on-write (CRIU's map mode), a
        page past a truncated end would fault with SIGBUS in the restored process, and the
        restore would hang until its timeout instead of failing. ~30 lstat calls per restore.
        A mismatch is logged unless `quiet` (the unlocked first look: the locked second one logs)."""
        if not self._ready(plain, group):
            return False
        for entry in stored.files:
            if entry.type != FILE:
                continue
            try:
                size = os.lstat(plain / entry.path).st_size
            except FileNotFoundError:
                size = -1
            if size != entry.size:
                if not quiet:
                    logger.warning("cached images of %s: %s is %d bytes, the manifest says %d; reading the snapshot "
                                   "again from the store", stored.snapshot_id, entry.path, size, entry.size)
                return False
        return True

    def _materialize(self, snapshot_id: str, plain: Path, group: int) -> None:
        """Rebuild the snapshot from the store into `plain` (staged, then renamed into place)."""
        with self._installing(snapshot_id, plain, group, "materialize from the store") as staging:
            self.store.materialize(snapshot_id, staging)
        with self._cache_guard:
            self._materialized[snapshot_id] += 1

    @contextlib.contextmanager
    def _installing(self, snapshot_id: str, plain: Path, group: int, step: str) -> Iterator[Path]:
        """Yield a fresh staging path beside `plain` (not created) for the caller to fill; then
        give it to `group`, and rename it over `plain` (whatever was there is a leftover nobody
        restores from), so `plain` is complete or absent. A `StoreError` while filling becomes
        `SnapshotCorrupt` naming `step`; the staging path never outlives the call."""
        staging = self.cache / f".{snapshot_id}.{secrets.token_hex(4)}"
        try:
            yield staging
            self._own(staging, group)
            with self._cache_guard:
                self._cached.pop(snapshot_id, None)  # a leftover's size is stale
            shutil.rmtree(plain, ignore_errors=True)
            os.rename(staging, plain)
        except StoreError as exc:
            logger.warning("snapshot %s: %s", snapshot_id, exc.message)
            raise SnapshotCorrupt(f"snapshot {snapshot_id} failed at step '{step}': {public_reason(exc)}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def holds(self, slice_index: int) -> bool:
        """Whether the RAM cache or the view holds plaintext images readable by id slice
        `slice_index`."""
        group = self.group_of(slice_index)
        if self.view is not None and self.view.holds(group):
            return True
        for path in self.cache.iterdir():
            try:
                if path.lstat().st_gid == group:
                    return True
            except FileNotFoundError:
                continue
        return False

    # -- the RAM cache ---------------------------------------------------------------------
    def _unpin(self, snapshot_id: str) -> None:
        with self._cache_guard:
            self._pins[snapshot_id] -= 1
            if self._pins[snapshot_id] > 0:
                return
            del self._pins[snapshot_id]
        with self._gc_guard:
            doomed = snapshot_id in self._doomed
        if doomed and self.on_unpinned_doomed is not None:
            self.on_unpinned_doomed(snapshot_id)  # its deletion waited for the last lease

    def pinned(self) -> set[str]:
        """Snapshot ids some lease holds (restores in progress; lazy: environments alive)."""
        with self._cache_guard:
            return set(self._pins)

    def cached(self) -> dict[str, int]:
        """Snapshot id -> cached bytes, least recently used first (a copy)."""
        with self._cache_guard:
            return dict(self._cached)

    def _adopt_cached(self) -> None:
        """Count complete snapshots left in the cache by a previous run (oldest first)."""
        found = sorted((p for p in self.cache.iterdir() if not p.name.startswith(".") and (p / ".complete").exists()
                        and not (p / LAZY_MARK).exists()),  # lazy local copies are not budgeted
                       key=lambda p: p.stat().st_mtime)
        for path in found:
            self._admit(path.name, path)

    def _admit(self, snapshot_id: str, plain: Path) -> None:
        """Record `snapshot_id` as the most recently used cached snapshot, then evict the least
        recently used unpinned others until the cache fits its budget (or only it and pinned
        snapshots are left)."""
        with self._cache_guard:
            known = self._cached.get(snapshot_id)
        size = self._bytes_of(plain) if known is None else known
        with self._cache_guard:
            self._cached[snapshot_id] = size
            self._cached.move_to_end(snapshot_id)
            victims = self._over_budget(keep=snapshot_id)
            moved = [self._detach(victim) for victim in victims]
        for victim, path in zip(victims, moved):
            logger.info("snapshot cache: evicted %s (budget %s bytes)", victim, self.cache_bytes)
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)

    def _over_budget(self, keep: str) -> list[str]:
        """Which cached snapshots to evict, least recently used first; under `_cache_guard`."""
        if self.cache_bytes is None:
            return []
        total = sum(self._cached.values())
        victims = []
        for candidate, size in self._cached.items():
            if total <= self.cache_bytes:
                break
            if candidate == keep or self._pins.get(candidate):
                continue
            victims.append(candidate)
            total -= size
        return victims

    def _detach(self, snapshot_id: str) -> Path | None:
        """Forget a cached snapshot and rename its directory out of the way (to a hidden name
        `collect_garbage` also removes); the caller unlinks it. Under `_cache_guard`."""
        self._cached.pop(snapshot_id, None)
        path = self.cache / snapshot_id
        trash = self.cache / f".evicted.{snapshot_id}.{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        return trash

    @staticmethod
    def _bytes_of(plain: Path) -> int:
        total = 0
        for directory, _, files in os.walk(plain):
            for name in files:
                try:
                    total += os.lstat(os.path.join(directory, name)).st_size
                except FileNotFoundError:
                    continue
        return total

    def _own(self, plain: Path, group: int) -> None:
        """Tightest permissions that still restore (see `__init__`); the directory's group is
        set last, so a cache entry whose directory has the slice's group is complete."""
        (plain / ".complete").touch()
        inner: list[Path] = []
        for directory, dirs, files in os.walk(plain):
            inner += [Path(directory) / name for name in (*dirs, *files)]
        for path in [*inner, plain]:
            os.chown(path, self.image_owner, group, follow_symlinks=False)
            if not path.is_symlink():
                os.chmod(path, 0o750 if path.is_dir() else 0o640)

    def evict(self, snapshot_id: str) -> None:
        """Drop a snapshot's cached copy, pinned or not (its files are unlinked, not rewritten),
        and withdraw it from the view: its page cache is dropped unless a lease holds it (live
        environments keep faulting pages from it; they were verified when read)."""
        if self.view is not None:
            self.view.withdraw(snapshot_id, drop_cache=snapshot_id not in self.pinned())
        with self._cache_guard:
            path = self._detach(snapshot_id)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    # -- deletion and garbage collection -------------------------------------------------------
    def delete(self, snapshot_id: str) -> None:
        """Drop the cached copy now; the manifest goes at the next `collect_garbage` (which the
        caller runs in a thread). Cheap: safe on the event loop."""
        self.evict(snapshot_id)
        with self._gc_guard:
            self._unrecorded.discard(snapshot_id)
            self._doomed.add(snapshot_id)
        with self._locks_guard:
            self._locks.pop(snapshot_id, None)

    def collect_garbage(self, referenced: set[str], startup: bool = False,
                        also_live: Callable[[], set[str]] | None = None, *, origin: bool = True,
                        pending: set[str] | None = None,
                        still_held: Callable[[], bool] | None = None) -> CollectReport:
        """Remove snapshots not in `referenced` (the ids the registry holds, read before this
        call) from the store (manifests, then unreferenced chunks from every tier and the
        origin) and the RAM cache; at `startup` also interrupted temporaries. Blocking: run it
        in a thread.

        Safe against a concurrent publish: the live set is `referenced` plus every id between
        `work_dir` and the first collection whose `referenced` holds it (or its `delete`), and
        it is taken after the store's collection fence is up (the store evaluates the iterable
        then), so a publish either is in it or opens its write under the fence. `also_live()`,
        read at that moment too, names more store ids to keep (code packages being ingested).

        Cluster mode (`snapshot.manager`'s lease protocol): `origin` False (another node holds
        the gc lease) skips the store's collection, cleaning this node's RAM cache and view only;
        `pending` and `still_held` are passed to `ChunkStore.collect`."""
        pinned = self.pinned()  # a snapshot live processes still read (lazy) keeps its manifest and chunks
        with self._gc_guard:
            doomed, self._doomed = self._doomed - pinned, self._doomed & pinned
        for snapshot_id in sorted(doomed - referenced):
            try:
                self.store.delete(snapshot_id)
            except StoreError as exc:  # the collection below retries (it deletes unreferenced manifests)
                logger.warning("snapshot %s: manifest deletion failed, left to garbage collection: %s", snapshot_id, exc)

        def live() -> Iterator[str]:
            with self._gc_guard:
                unrecorded = set(self._unrecorded)
            yield from referenced | unrecorded | self.pinned() | (also_live() if also_live is not None else set())

        if origin:
            report = self.store.collect(live(), grace_seconds=self.grace_seconds, pending=pending, still_held=still_held)
        else:
            report = CollectReport(0, 0, 0, 0, 0)
        with self._gc_guard:
            self._unrecorded -= referenced
            keep = referenced | self._unrecorded | self.pinned()
        for path in list(self.cache.iterdir()):
            if path.name.startswith(".evicted.") or (startup and path.name.startswith(".")):
                shutil.rmtree(path, ignore_errors=True)  # at start-up no materialization is staging
            elif not path.name.startswith(".") and path.name not in keep:
                self.evict(path.name)
        if self.view is not None:
            for snapshot_id in set(self.view.exposed()) - keep:
                self.view.withdraw(snapshot_id)
        self.save_counters()
        return report


def public_reason(exc: StoreError) -> str:
    """What went wrong, without host paths or origin locations: this text reaches the
    function's log (the server log has the full message)."""
    if isinstance(exc, ChunkUnavailable):
        text = exc.message
        kind = "corrupt" if "corrupt at origin" in text else "missing" if "missing at origin" in text else "unavailable"
        return f"chunk {exc.index} of {exc.path} (offset {exc.offset}) is {kind} at origin"
    if isinstance(exc, SnapshotMissing):
        return "no manifest in the snapshot store"
    if isinstance(exc, ManifestInvalid):
        return exc.message.partition(": ")[2] or exc.message
    return f"the snapshot store failed ({type(exc).__name__})"


def remove_legacy(data_dir: Path) -> int:
    """Delete snapshots of the previous on-disk format (``<data-dir>/snapshots/`` with its
    whole-file encrypted images, and ``snapshot.key``); returns how many snapshot directories
    went. Versions that referenced them re-create their snapshots (their ids have no manifest)."""
    legacy = data_dir / "snapshots"
    removed = 0
    if legacy.is_dir():
        removed = sum(1 for _ in legacy.iterdir())
        shutil.rmtree(legacy)
    (data_dir / "snapshot.key").unlink(missing_ok=True)
    return removed
