"""Code artifacts: validated, content-addressed deployment packages.

Layout::

    store origin: manifests/code.<sha256-hex>     the package as uploaded, in the snapshot store's
                                                  origin (the source of truth; `packages`)
    <data-dir>/code/<sha256-hex>.zip              this node's cache of it: filled on demand from
                                                  the origin (sha256 verified), evicted least
                                                  recently used past ``cache_bytes``
    <sandbox-dir>/code/<slice>/<sha256-hex>/      its extracted tree for host id slice <slice>
                                                  (mounted read-only at /var/task)
    <sandbox-dir>/code/<slice>/opt-<key>/         a function version's layers merged in order
                                                  (mounted read-only at /opt; see `merged`)

A package is validated completely at ingest (names, sizes, and every member decompressed
against the byte budget) but extracted only per *id slice* (sandbox/ids.py), on first use:
a tree is owned by the host uid its slice's function runs as (`owner_of(slice)`), mode 0500/0400,
so it is readable by that one function and by no other host user or function. Why not one
shared tree per digest: the bind mount is not id-mapped, so a shared tree would have to be
readable by several slices' uids, which means world- or ACL-readable, i.e. readable by every
host user and every other function's uid; the only cost of per-slice trees is disk for
identical packages deployed by *different* functions (versions of one function share theirs).

Trees live in the sandbox dir because every ancestor of a bind source must be traversable by
the sandbox's mapped root uid; they are derived state, re-extracted from the zip when missing
or owned by another uid (after a change of ``--id-range-base``). A tree appears atomically
(extracted into a temporary sibling, then renamed), so a crash never leaves a half-extracted
tree under a final name. `collect_garbage` removes zips and trees no version references.

Origin (cluster) contracts, when the store is given a `PackageOrigin`:

* `ingest` validates the zip, then stores it at the origin and returns only when it is durable
  there (so the API answers 201 only then, and any node can materialize it at once), then
  keeps it in the local cache. A package already cached here is put again all the same
  (cheap for zips: the chunks exist), which refreshes it at the origin (see `packages`).
* From the start of its `ingest` until the end of the mutation that uploaded it (`release`,
  committed or failed) and then until a store collection has read the registry after that end
  (`mark`, `settle`), `live_ids` names a package, and the store collection keeps it (as the
  snapshot vault does for a publish between its upload and its registry record).
* A package missing from the local cache is fetched from the origin (`CodeUnavailable` if it is
  missing or corrupt there, `ServiceUnavailable` if the origin cannot be reached). A cached zip
  whose bytes no longer hash to its digest is dropped and fetched again.
* `collect_garbage` and `discard` are node-local (the cache and the trees); packages leave the
  origin only by the store's collection (`SnapshotManager.collect_garbage`), which counts
  `packages.package_ids(registry.referenced_digests())` and `live_ids()` as live.

Without a `PackageOrigin` (unit tests, offline tools) the local zips are the only copy.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import io
import itertools
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from snapfaas.config import Limits
from snapfaas.errors import InvalidParameterValue, RequestTooLarge
from snapfaas.registry.packages import DIGEST, FILE_NAME, CodeUnavailable, PackageOrigin, package_ids

logger = logging.getLogger(__name__)

UNZIP_ERROR = "Could not unzip uploaded file. Please check your file, then try to upload again."
TREE_MTIME = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip entry can carry
EXTENDED_TIMESTAMP = 0x5455  # Info-ZIP's "UT" extra field (what `zip` writes): flags, then the mtime in Unix seconds


def entry_mtime(info: zipfile.ZipInfo) -> float:
    """The modification time a zip entry records: Info-ZIP's extended timestamp when it has
    one (whole seconds, UTC), else the DOS date and time every entry carries (2-second steps,
    local time, read the way zip tools write it)."""
    extra = info.extra
    while len(extra) >= 4:
        kind, size = struct.unpack("<HH", extra[:4])
        body = extra[4:4 + size]
        if kind == EXTENDED_TIMESTAMP and len(body) >= 5 and body[0] & 1:  # bit 0: the mtime is present
            return float(struct.unpack("<i", body[1:5])[0])
        extra = extra[4 + size:]
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):  # a date no clock can hold: the earliest a zip can say
        return float(TREE_MTIME)
TEMPORARY_DIGEST = re.compile(r"\.(?:ingest|fetch)-([0-9a-f]{64})[.-]")  # staging dirs of `ingest` and fetches


@dataclasses.dataclass(frozen=True)
class CodeArtifact:
    """One stored package. `sha256` is Lambda's CodeSha256 (base64 of the digest)."""

    digest: str
    sha256: str
    size: int


class ArtifactStore:
    def __init__(self, root: Path, trees: Path, limits: Limits, owner_of: Callable[[int], int] | None = None,
                 packages: PackageOrigin | None = None, cache_bytes: int | None = None) -> None:
        """`owner_of(slice)` is the host uid (and gid) the sandboxes of id slice `slice` read
        code as; that slice's trees are private to it (None: trees keep the daemon's owner).
        `packages`: the origin packages live in (None: the local zips are the only copy);
        `cache_bytes`: the byte budget of the local zips when there is an origin (None: no
        budget)."""
        self.root = root
        self.trees = trees
        self.limits = limits
        self.owner_of = owner_of
        self.packages = packages
        self.cache_bytes = cache_bytes
        self._guard = threading.Lock()
        self._ingesting: collections.Counter[str] = collections.Counter()  # digests between ingest start and end
        self._fetching: collections.Counter[str] = collections.Counter()
        # protection from the store collection (see `live_ids`): mutations using a package that
        # are still open, and when the last one ended (a `mark` number)
        self._open: collections.Counter[str] = collections.Counter()
        self._released: dict[str, int] = {}
        self._marks = itertools.count(1)
        self._fetch_locks: dict[str, threading.Lock] = {}
        root.mkdir(parents=True, exist_ok=True)
        trees.mkdir(parents=True, exist_ok=True)
        os.chmod(trees, 0o711)

    def has_tree(self, digest: str, slice_index: int) -> bool:
        """Whether `tree(digest, slice_index)` would return at once (one lstat, never blocks on
        the origin): the tree exists, a directory owned by the slice's uid."""
        return self._present(self.trees / str(slice_index) / digest, slice_index)

    def has_merged(self, name: str, slice_index: int) -> bool:
        """Whether `merged(name, ..., slice_index)` would return at once (one lstat)."""
        return self._present(self.trees / str(slice_index) / name, slice_index)

    def _present(self, path: Path, slice_index: int) -> bool:
        try:
            current = path.lstat()
        except FileNotFoundError:
            return False
        owner = self.owner_of(slice_index) if self.owner_of is not None else None
        return stat.S_ISDIR(current.st_mode) and (owner is None or current.st_uid == owner)

    def tree(self, digest: str, slice_index: int) -> Path:
        """The extracted tree of `digest` for id slice `slice_index`, extracted from the stored
        zip (fetched from the origin if this node has no copy) if missing or owned by another
        uid. Raises `CodeUnavailable` / `ServiceUnavailable` if the package cannot be had."""
        path = self.trees / str(slice_index) / digest
        owner = self.owner_of(slice_index) if self.owner_of is not None else None
        try:
            current = path.lstat()
        except FileNotFoundError:
            current = None
        if current is not None and owner is not None and (current.st_uid != owner or not stat.S_ISDIR(current.st_mode)):
            shutil.rmtree(path, ignore_errors=True)  # made for another id range: re-extract
            current = None
        if current is None:
            data = self.read_zip(digest)
            self._materialize(path, data, self._check_zip(data), owner)
        return path

    def merged(self, name: str, digests: list[str], slice_index: int) -> Path:
        """The tree `name` of id slice `slice_index`: the extracted trees of `digests` (layer
        packages) merged in order, a later layer's file replacing an earlier one's (as Lambda
        extracts layers into /opt). Made once per (slice, name) from hard links to the layers'
        own cached trees (same owner and modes, no copy), atomically like `tree`."""
        path = self.trees / str(slice_index) / name
        owner = self.owner_of(slice_index) if self.owner_of is not None else None
        if path.is_dir() and not path.is_symlink() and (owner is None or path.stat().st_uid == owner):
            return path
        _remove(path)  # missing, or made for another id range: (re)merge
        sources = [self.tree(digest, slice_index) for digest in digests]
        path.parent.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=path.parent))
        try:
            for source in sources:
                _link_tree(source, tmp)
            self._seal(tmp, owner)
            try:
                os.rename(tmp, path)
            except OSError:
                if not path.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def unzipped_size(self, digest: str) -> int:
        """Bytes the stored package `digest` extracts to (from its central directory)."""
        with zipfile.ZipFile(self.zip_path(digest)) as archive:
            return sum(info.file_size for info in archive.infolist())

    def holds(self, slice_index: int) -> bool:
        """Whether any tree (or a temporary) of id slice `slice_index` exists."""
        directory = self.trees / str(slice_index)
        return directory.is_dir() and any(directory.iterdir())

    def ingest(self, data: bytes) -> CodeArtifact:
        """Validate and store a zip; idempotent for identical bytes.

        Raises `InvalidParameterValue` for a broken, unsafe or oversized package; nothing is left
        behind in that case.
        """
        if len(data) > self.limits.zip_bytes:
            raise RequestTooLarge(f"Zipped code must be smaller than {self.limits.zip_bytes} bytes")
        digest_bytes = hashlib.sha256(data).digest()
        digest = digest_bytes.hex()
        artifact = CodeArtifact(digest, base64.b64encode(digest_bytes).decode(), len(data))
        local = self.root / f"{digest}.zip"
        cached = local.is_file()
        if not cached:
            self._verify(data, self._check_zip(data))
        if self.packages is None:
            if not cached:
                tmp_zip = self.root / f".{digest}.zip.tmp"
                tmp_zip.write_bytes(data)
                os.replace(tmp_zip, local)
            return artifact
        with self._guard:
            self._ingesting[digest] += 1
        try:
            self._upload(digest, data)
            with self._guard:
                self._open[digest] += 1
                self._released.pop(digest, None)
        finally:
            with self._guard:
                self._ingesting[digest] -= 1
                if not self._ingesting[digest]:
                    del self._ingesting[digest]
        self._enforce_budget(keep=digest)
        return artifact

    def _upload(self, digest: str, data: bytes) -> None:
        """Put the zip `data` (hashing to `digest`) at the origin, durably, then into the local
        cache (unless it is there)."""
        assert self.packages is not None
        staging = Path(tempfile.mkdtemp(prefix=f".ingest-{digest}.", dir=self.root))
        try:
            fd = os.open(staging / FILE_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self.packages.put(digest, staging)
            if not (self.root / f"{digest}.zip").is_file():
                os.replace(staging / FILE_NAME, self.root / f"{digest}.zip")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- the origin: cache fills, eviction, what a store collection must keep -----------------
    def zip_path(self, digest: str) -> Path:
        """This node's copy of package `digest`, fetched from the origin (sha256 verified) if
        there is none; marked as just used (eviction is least recently used first)."""
        if not DIGEST.fullmatch(digest):
            raise CodeUnavailable(f"Lambda could not unzip the deployment package: {digest!r} is not a package digest")
        local = self.root / f"{digest}.zip"
        if not local.is_file():
            if self.packages is None:
                raise CodeUnavailable(f"Lambda could not unzip the deployment package: code package {digest} "
                                      "is missing from this node and there is no store origin", missing=True)
            with self._fetch_lock(digest):
                if not local.is_file():
                    self._fetch(digest, local)
        self._touch(local)
        return local

    def _fetch_lock(self, digest: str) -> threading.Lock:
        with self._guard:
            return self._fetch_locks.setdefault(digest, threading.Lock())

    def _fetch(self, digest: str, local: Path) -> None:
        assert self.packages is not None
        with self._guard:
            self._fetching[digest] += 1
        try:
            started = time.monotonic()
            self.packages.fetch(digest, local)
            logger.info("code package %s fetched from origin %s (%d bytes, %.0f ms)", digest, self.packages.describe(),
                        local.stat().st_size, (time.monotonic() - started) * 1000)
        finally:
            with self._guard:
                self._fetching[digest] -= 1
                if not self._fetching[digest]:
                    del self._fetching[digest]
                    self._fetch_locks.pop(digest, None)
        self._enforce_budget(keep=digest)

    @staticmethod
    def _touch(path: Path) -> None:
        """Record a use in the file's access time (the eviction order; the mtime stays)."""
        try:
            st = path.stat()
            os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
        except FileNotFoundError:
            pass  # evicted meanwhile: the caller's read finds out and fetches again

    def _held(self) -> set[str]:
        """Packages whose local files are being written: eviction and local GC leave them."""
        with self._guard:
            return set(self._ingesting) | set(self._fetching)

    def _enforce_budget(self, keep: str) -> int:
        """Evict the least recently used cached zips until the cache fits `cache_bytes` (never
        `keep` or a package being ingested or fetched); returns how many went. Only with an
        origin (which keeps every package in use): without one the local zips are the only copy."""
        if self.packages is None or self.cache_bytes is None:
            return 0
        entries = []
        for path in self.root.glob("*.zip"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_atime_ns, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        held = self._held() | {keep}
        evicted = 0
        for _, size, path in sorted(entries):
            if total <= self.cache_bytes:
                break
            if path.stem in held:
                continue
            path.unlink(missing_ok=True)
            total -= size
            evicted += 1
            logger.info("code cache: evicted %s (%d bytes; budget %d bytes)", path.name, size, self.cache_bytes)
        return evicted

    def cached_bytes(self) -> int:
        """Bytes of the zips in this node's cache."""
        total = 0
        for path in self.root.glob("*.zip"):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def release(self, digest: str) -> None:
        """The mutation that ingested `digest` has ended (committed or failed): from the next
        registry read on, the registry alone says whether the package is in use."""
        if self.packages is None:
            return
        with self._guard:
            if self._open[digest] <= 1:
                self._open.pop(digest, None)
                self._released[digest] = next(self._marks)
            else:
                self._open[digest] -= 1

    def mark(self) -> int:
        """Take this right before reading the registry for a store collection; pass it to
        `settle` after that collection."""
        with self._guard:
            return next(self._marks)

    def live_ids(self, mark: int | None = None) -> set[str]:
        """Store ids of the packages a store collection must keep besides the ones its registry
        read found: being ingested, used by a mutation still open, or released by one after
        the collection's `mark` (it may have committed after the registry read; None: any)."""
        with self._guard:
            released = {digest for digest, when in self._released.items() if mark is None or when > mark}
            return package_ids(set(self._ingesting) | set(self._open) | released)

    def settle(self, mark: int) -> None:
        """After a store collection whose registry read followed `mark`: packages released
        before it need no more protection (that read saw their mutation's outcome)."""
        with self._guard:
            self._released = {digest: released for digest, released in self._released.items() if released > mark}

    def migrate(self, wanted: set[str] | None = None) -> int:
        """Upload every cached zip (of `wanted` digests, if given) the origin lacks: a data dir
        from before packages lived in the origin. Idempotent; returns how many went up."""
        if self.packages is None:
            return 0
        local = {path.stem: path for path in self.root.glob("*.zip") if DIGEST.fullmatch(path.stem)}
        if wanted is not None:
            local = {digest: path for digest, path in local.items() if digest in wanted}
        if not local:
            return 0
        uploaded = 0
        for digest in sorted(set(local) - self.packages.stored()):
            data = local[digest].read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                logger.warning("code package %s: the local zip does not hash to its name; not uploaded", digest)
                continue
            self._upload(digest, data)
            uploaded += 1
        return uploaded

    def _materialize(self, final: Path, data: bytes, entries: list[zipfile.ZipInfo], owner: int | None) -> None:
        final.parent.mkdir(exist_ok=True)
        os.chmod(final.parent, 0o711)  # the mapped root walks through; nobody lists it
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            self._extract(data, entries, tmp, owner)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # lost a race with an identical upload: fine
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _check_zip(self, data: bytes) -> list[zipfile.ZipInfo]:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            infos = archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise InvalidParameterValue(UNZIP_ERROR) from exc
        if len(infos) > self.limits.zip_entries:
            raise InvalidParameterValue(f"{UNZIP_ERROR} (more than {self.limits.zip_entries} entries)")
        declared = 0
        for info in infos:
            name = info.filename
            path = PurePosixPath(name)
            if name.startswith("/") or "\\" in name or path.is_absolute() or ".." in path.parts or (
                len(name) > 1 and name[1] == ":"
            ):
                raise InvalidParameterValue(f"{UNZIP_ERROR} (unsafe entry path {name!r})")
            if info.flag_bits & 0x1:
                raise InvalidParameterValue(
                    f"{UNZIP_ERROR} (entry {name!r} is encrypted; encrypted zip entries are not supported)"
                )
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise InvalidParameterValue(f"{UNZIP_ERROR} (symbolic links are not supported: {name!r})")
            declared += info.file_size
        if declared > self.limits.unzipped_bytes:
            raise InvalidParameterValue(
                f"Unzipped size must be smaller than {self.limits.unzipped_bytes} bytes"
            )
        return infos

    def _verify(self, data: bytes, infos: Iterable[zipfile.ZipInfo]) -> None:
        """Decompress every member (nothing written) under the byte budget, so a broken or
        lying package is refused at upload, not at its first invoke."""
        budget = self.limits.unzipped_bytes
        infos = list(infos)
        files = {info.filename.rstrip("/") for info in infos if not info.is_dir()}
        parents = {str(parent) for info in infos for parent in PurePosixPath(info.filename).parents}
        if files & parents:  # "a" and "a/b": not extractable
            raise InvalidParameterValue(f"{UNZIP_ERROR} (an entry is both a file and a directory: {sorted(files & parents)[0]!r})")
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            for info in infos:
                if info.is_dir():
                    continue
                with archive.open(info) as src:
                    while chunk := src.read(1 << 16):
                        budget -= len(chunk)
                        if budget < 0:
                            raise InvalidParameterValue(
                                f"Unzipped size must be smaller than {self.limits.unzipped_bytes} bytes"
                            )
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
            raise InvalidParameterValue(UNZIP_ERROR) from exc

    def _extract(self, data: bytes, infos: Iterable[zipfile.ZipInfo], dest: Path, owner: int | None) -> None:
        """Extract with a hard byte budget, so a zip that lies about its sizes still stops.
        Each file gets the modification time its entry records (`entry_mtime`), as unzip and
        Lambda give it: Python checks a shipped ``__pycache__/*.pyc`` against its source's
        mtime and size, and with the extraction time as mtime every one was stale, so each
        import compiled its source again (every on-demand init, and in every restored copy
        each module a SnapStart function first imports after the restore)."""
        budget = self.limits.unzipped_bytes
        archive = zipfile.ZipFile(io.BytesIO(data))
        try:
            for info in infos:
                target = dest / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 16):
                        budget -= len(chunk)
                        if budget < 0:
                            raise InvalidParameterValue(
                                f"Unzipped size must be smaller than {self.limits.unzipped_bytes} bytes"
                            )
                        out.write(chunk)
                executable = (info.external_attr >> 16) & 0o111
                os.chmod(target, 0o500 if executable else 0o400)
                mtime = entry_mtime(info)
                os.utime(target, (mtime, mtime))
            self._seal(dest, owner)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise InvalidParameterValue(UNZIP_ERROR) from exc

    @staticmethod
    def _seal(tree: Path, owner: int | None) -> None:
        """Read-only for the slice's uid (`owner`), invisible to other host users. Directories
        get one fixed mtime (`TREE_MTIME`): Python's import system keeps the mtime of each
        directory it searched in the process's memory, and an extraction time there would make
        every SnapStart snapshot of a new code version differ in those pages
        (snapshot/determinism.py)."""
        for dirpath, dirnames, filenames in os.walk(tree):
            os.utime(dirpath, (TREE_MTIME, TREE_MTIME))
            os.chmod(dirpath, 0o500)
            if owner is not None:
                os.chown(dirpath, owner, owner)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), owner, owner)

    def discard(self, digest: str) -> None:
        """Delete one artifact from this node (zip and every slice's tree; it leaves the origin
        at a store collection); the caller guarantees no version references it and no other
        mutation is about to."""
        (self.root / f"{digest}.zip").unlink(missing_ok=True)
        for directory in self._slice_dirs():
            shutil.rmtree(directory / digest, ignore_errors=True)

    def _slice_dirs(self) -> list[Path]:
        return [p for p in self.trees.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit()]

    def read_zip(self, digest: str) -> bytes:
        """The verified bytes of package `digest` (fetched from the origin if this node has no
        copy; a cached copy that fails its hash is dropped and fetched again)."""
        for _ in range(3):
            path = self.zip_path(digest)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # evicted between the lookup and the read
            if hashlib.sha256(data).hexdigest() == digest:
                return data
            if self.packages is None:  # the only copy: left for the operator to look at
                logger.warning("code package %s: the stored zip %s does not hash to its digest", digest, path)
                break
            logger.warning("code package %s: the cached zip %s does not hash to its digest; dropped", digest, path)
            path.unlink(missing_ok=True)
        raise CodeUnavailable(f"Lambda could not unzip the deployment package: code package {digest} could not be "
                              f"read intact from this node's cache")

    def collect_garbage(self, referenced: set[str], trees: set[tuple[int, str]] | None = None) -> int:
        """Delete zips not in `referenced`, trees not in `trees` ((slice, digest) pairs; None:
        every slice's tree of a referenced digest is kept) and leftover temporaries; return how
        many entries went. A slice directory left empty is removed too."""
        removed = 0
        held = self._held()
        keep_zips = referenced | held
        for entry in self.root.iterdir():
            busy = TEMPORARY_DIGEST.search(entry.name)
            if busy is not None and busy.group(1) in held:
                continue  # an ingest's or a fetch's staging directory
            if entry.name.startswith(".") or entry.name.removesuffix(".zip") not in keep_zips:
                _remove(entry)
                removed += 1
        for entry in self.trees.iterdir():
            if entry.is_symlink() or not entry.is_dir() or not entry.name.isdigit():
                _remove(entry)  # trees of the layout before id slices, temporaries, strays
                removed += 1
                continue
            for tree in entry.iterdir():
                key = (int(entry.name), tree.name)
                kept = tree.name in referenced if trees is None else key in trees
                if tree.name.startswith(".") or not kept:
                    _remove(tree)
                    removed += 1
            if not any(entry.iterdir()):
                entry.rmdir()
        return removed


def _link_tree(source: Path, dest: Path) -> None:
    """Hard-link every file of `source` into `dest` (directories created writable, sealed later
    by the caller), replacing what an earlier tree put at the same path."""
    for dirpath, dirnames, filenames in os.walk(source):
        relative = Path(dirpath).relative_to(source)
        target_dir = dest / relative
        if target_dir.is_file():
            target_dir.unlink()
        target_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(target_dir, 0o700)
        for name in filenames:
            target = target_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.link(Path(dirpath) / name, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
