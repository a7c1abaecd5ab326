"""Code artifacts: validated, content-addressed deployment packages.

Layout::

    <data-dir>/code/<sha256-hex>.zip              the package as uploaded (the source of truth)
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
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from snapfaas.config import Limits
from snapfaas.errors import InvalidParameterValue, RequestTooLarge

logger = logging.getLogger(__name__)

UNZIP_ERROR = "Could not unzip uploaded file. Please check your file, then try to upload again."
TREE_MTIME = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip entry can carry


@dataclasses.dataclass(frozen=True)
class CodeArtifact:
    """One stored package. `sha256` is Lambda's CodeSha256 (base64 of the digest)."""

    digest: str
    sha256: str
    size: int


class ArtifactStore:
    def __init__(self, root: Path, trees: Path, limits: Limits, owner_of: Callable[[int], int] | None = None) -> None:
        """`owner_of(slice)` is the host uid (and gid) the sandboxes of id slice `slice` read
        code as; that slice's trees are private to it (None: trees keep the daemon's owner)."""
        self.root = root
        self.trees = trees
        self.limits = limits
        self.owner_of = owner_of
        root.mkdir(parents=True, exist_ok=True)
        trees.mkdir(parents=True, exist_ok=True)
        os.chmod(trees, 0o711)

    def tree(self, digest: str, slice_index: int) -> Path:
        """The extracted tree of `digest` for id slice `slice_index`, extracted from the stored
        zip if missing or owned by another uid. The path is returned even if the zip is gone."""
        path = self.trees / str(slice_index) / digest
        owner = self.owner_of(slice_index) if self.owner_of is not None else None
        try:
            current = path.lstat()
        except FileNotFoundError:
            current = None
        if current is not None and owner is not None and (current.st_uid != owner or not stat.S_ISDIR(current.st_mode)):
            shutil.rmtree(path, ignore_errors=True)  # made for another id range: re-extract
            current = None
        if current is None and (self.root / f"{digest}.zip").is_file():
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
        with zipfile.ZipFile(self.root / f"{digest}.zip") as archive:
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
        if (self.root / f"{digest}.zip").is_file():
            return artifact
        self._verify(data, self._check_zip(data))
        tmp_zip = self.root / f".{digest}.zip.tmp"
        tmp_zip.write_bytes(data)
        os.replace(tmp_zip, self.root / f"{digest}.zip")
        return artifact

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
        """Extract with a hard byte budget, so a zip that lies about its sizes still stops."""
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
        """Delete one artifact (zip and every slice's tree); the caller guarantees no version
        references it."""
        (self.root / f"{digest}.zip").unlink(missing_ok=True)
        for directory in self._slice_dirs():
            shutil.rmtree(directory / digest, ignore_errors=True)

    def _slice_dirs(self) -> list[Path]:
        return [p for p in self.trees.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit()]

    def read_zip(self, digest: str) -> bytes:
        return (self.root / f"{digest}.zip").read_bytes()

    def collect_garbage(self, referenced: set[str], trees: set[tuple[int, str]] | None = None) -> int:
        """Delete zips not in `referenced`, trees not in `trees` ((slice, digest) pairs; None:
        every slice's tree of a referenced digest is kept) and leftover temporaries; return how
        many entries went. A slice directory left empty is removed too."""
        removed = 0
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or entry.name.removesuffix(".zip") not in referenced:
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
