"""Which files a scan reads: ``*.py`` under the given paths, or in a deployment zip.

Third-party distributions vendored into a package (anything listed in a ``*.dist-info/RECORD``
next to it, as ``pip install -t`` leaves them) are skipped unless asked for: their import-time
code is not the function author's to fix, and scanning them would drown the author's findings.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import tokenize
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

MAX_FILE_BYTES = 8 * 1024 * 1024  # larger .py files are generated data, not init code worth reading
SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", ".git", ".hg", ".svn", ".tox", ".nox",
                          ".venv", "venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


@dataclasses.dataclass(frozen=True)
class SourceFile:
    path: str  # display path (posix)
    data: bytes | None  # None: could not be read
    error: str | None = None


def decode(data: bytes) -> str:
    """Source bytes -> text, honouring a PEP 263 coding cookie (UTF-8 by default)."""
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding)


def _record_paths(record: str, base: PurePosixPath) -> set[str]:
    paths: set[str] = set()
    for row in csv.reader(io.StringIO(record)):
        if row and row[0].endswith(".py"):
            path = (base / row[0]).as_posix()
            if ".." not in PurePosixPath(path).parts:
                paths.add(path)
    return paths


def files_in_directory(root: Path, include_deps: bool = False) -> Iterator[SourceFile]:
    display_root = root.as_posix()
    found: list[str] = []  # relative posix paths
    vendored: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if name.endswith(".py"):
                found.append(rel)
            elif name == "RECORD" and rel_dir.name.endswith(".dist-info") and not include_deps:
                try:
                    record = Path(dirpath, name).read_text(errors="replace")
                except OSError:
                    continue
                vendored |= _record_paths(record, PurePosixPath(rel_dir.parent.as_posix()))
    for rel in sorted(found):
        rel = rel.removeprefix("./")
        if rel in vendored:
            continue
        full = root / rel
        shown = rel if display_root in ("", ".") else f"{display_root.rstrip('/')}/{rel}"
        yield read_file(full, shown)


def read_file(path: Path, shown: str | None = None) -> SourceFile:
    shown = shown if shown is not None else path.as_posix()
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return SourceFile(shown, None, f"file larger than {MAX_FILE_BYTES} bytes")
        return SourceFile(shown, path.read_bytes())
    except OSError as exc:
        return SourceFile(shown, None, f"unreadable: {exc.strerror or exc}")


def files_in_zip(data: bytes, include_deps: bool = False) -> Iterator[SourceFile]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        yield SourceFile("<zip>", None, f"not a readable zip: {exc}")
        return
    vendored: set[str] = set()
    if not include_deps:
        for info in infos:
            path = PurePosixPath(info.filename)
            if path.name == "RECORD" and path.parent.name.endswith(".dist-info") and info.file_size <= MAX_FILE_BYTES:
                try:
                    record = archive.read(info).decode(errors="replace")
                except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
                    continue
                vendored |= _record_paths(record, path.parent.parent)
    for info in sorted(infos, key=lambda i: i.filename):
        name = info.filename
        parts = PurePosixPath(name).parts
        if info.is_dir() or not name.endswith(".py") or "__pycache__" in parts or name in vendored:
            continue
        if info.file_size > MAX_FILE_BYTES:
            yield SourceFile(name, None, f"file larger than {MAX_FILE_BYTES} bytes")
            continue
        try:
            yield SourceFile(name, archive.read(info))
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
            yield SourceFile(name, None, f"unreadable zip entry: {exc}")
