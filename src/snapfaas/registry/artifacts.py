"""Code artifacts: validated, content-addressed deployment packages.

Layout::

    <data-dir>/code/<sha256-hex>.zip       the package as uploaded (the source of truth)
    <sandbox-dir>/code/<sha256-hex>/       its extracted tree (mounted read-only at /var/task)

Trees live in the sandbox dir because every ancestor of a bind source must be traversable by
the sandbox's mapped root uid; they are derived state, re-extracted from the zip when missing.
A tree appears atomically (extracted into a temporary sibling, then renamed), so a crash never
leaves a half-extracted tree under a final name. Artifacts are shared by every version whose
code has the same hash; `collect_garbage` removes the ones no version references.
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
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from snapfaas.config import Limits
from snapfaas.errors import InvalidParameterValue, RequestTooLarge

logger = logging.getLogger(__name__)

UNZIP_ERROR = "Could not unzip uploaded file. Please check your file, then try to upload again."


@dataclasses.dataclass(frozen=True)
class CodeArtifact:
    """One stored package. `sha256` is Lambda's CodeSha256 (base64 of the digest)."""

    digest: str
    sha256: str
    size: int
    tree: Path


class ArtifactStore:
    def __init__(self, root: Path, trees: Path, limits: Limits, owner: int | None = None) -> None:
        """`owner` is the host uid (and gid) sandboxes read code as; trees are private to it."""
        self.root = root
        self.trees = trees
        self.limits = limits
        self.owner = owner
        root.mkdir(parents=True, exist_ok=True)
        trees.mkdir(parents=True, exist_ok=True)
        os.chmod(trees, 0o711)

    def tree(self, digest: str) -> Path:
        """The extracted tree of `digest`, re-extracting it from the stored zip if needed."""
        path = self.trees / digest
        if not path.is_dir() and (self.root / f"{digest}.zip").is_file():
            data = self.read_zip(digest)
            self._materialize(digest, data, self._check_zip(data))
        return path

    def ingest(self, data: bytes) -> CodeArtifact:
        """Validate and store a zip; idempotent for identical bytes.

        Raises `InvalidParameterValue` for a broken, unsafe or oversized package; nothing is left
        behind in that case.
        """
        if len(data) > self.limits.zip_bytes:
            raise RequestTooLarge(f"Zipped code must be smaller than {self.limits.zip_bytes} bytes")
        digest_bytes = hashlib.sha256(data).digest()
        digest = digest_bytes.hex()
        artifact = CodeArtifact(digest, base64.b64encode(digest_bytes).decode(), len(data), self.trees / digest)
        if artifact.tree.is_dir() and (self.root / f"{digest}.zip").is_file():
            return artifact
        self._materialize(digest, data, self._check_zip(data))
        tmp_zip = self.root / f".{digest}.zip.tmp"
        tmp_zip.write_bytes(data)
        os.replace(tmp_zip, self.root / f"{digest}.zip")
        return artifact

    def _materialize(self, digest: str, data: bytes, entries: list[zipfile.ZipInfo]) -> None:
        final = self.trees / digest
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=self.trees))
        try:
            self._extract(data, entries, tmp)
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

    def _extract(self, data: bytes, infos: Iterable[zipfile.ZipInfo], dest: Path) -> None:
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
            self._seal(dest)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise InvalidParameterValue(UNZIP_ERROR) from exc

    def _seal(self, tree: Path) -> None:
        """Read-only for the sandbox uid, invisible to other host users."""
        for dirpath, dirnames, filenames in os.walk(tree):
            os.chmod(dirpath, 0o500)
            if self.owner is not None:
                os.chown(dirpath, self.owner, self.owner)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), self.owner, self.owner)

    def handler_file_exists(self, digest: str, handler: str) -> bool:
        """Whether the module named by `handler` (``pkg.mod.func``) exists in the package."""
        parts = handler.rpartition(".")[0].replace("/", ".").split(".")
        if not all(parts):
            return False
        rel = Path(*parts)
        tree = self.tree(digest)
        return (tree / rel.with_suffix(".py")).is_file() or (tree / rel / "__init__.py").is_file() or any(
            (tree / rel.parent).glob(rel.name + ".*.so")
        )

    def discard(self, digest: str) -> None:
        """Delete one artifact (zip and tree); the caller guarantees no version references it."""
        (self.root / f"{digest}.zip").unlink(missing_ok=True)
        shutil.rmtree(self.trees / digest, ignore_errors=True)

    def read_zip(self, digest: str) -> bytes:
        return (self.root / f"{digest}.zip").read_bytes()

    def collect_garbage(self, referenced: set[str]) -> int:
        """Delete artifacts (and leftover temporaries) not in `referenced`; return how many."""
        removed = 0
        for entry in [*self.root.iterdir(), *self.trees.iterdir()]:
            name = entry.name
            if not name.startswith(".") and name.removesuffix(".zip") in referenced:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed
