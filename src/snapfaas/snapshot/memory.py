"""How a snapshot's restores bring memory back: map the page images copy-on-write, or copy them.

Mapping (snapfaas's CRIU patch) changes one corner of Linux semantics for memory that existed
at checkpoint time: after ``madvise(MADV_DONTNEED)`` such a page reads back as the snapshot's
content, not as zeros. glibc's malloc, CPython and the usual numeric libraries never rely on
the zeros; jemalloc does (it skips clearing memory it purged that way, so ``calloc`` could
return stale bytes), and jemalloc ships inside common wheels (pyarrow's libarrow, polars).
So before the checkpoint the platform looks for jemalloc in every file the snapshotted
processes map, and a snapshot that maps one restores by copying.

`choose` is the decision; `find_zero_assuming_allocator` is the I/O around it.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

# A byte string every jemalloc build carries (the prefix of its diagnostics), whatever its
# symbol prefix (je_, je_arrow_, _rjem_ ...).
MARKERS = {b"<jemalloc>": "jemalloc"}


@dataclasses.dataclass(frozen=True)
class MemoryDecision:
    mode: str  # "map" or "copy"
    reason: str | None  # why restores copy although mapping was configured, or None


def choose(configured: str, engine_maps_pages: bool, finding: str | None) -> MemoryDecision:
    """The restore memory mode of one snapshot: `configured` ("map" / "copy", the server's
    setting), whether CRIU can map pages, and what `find_zero_assuming_allocator` found."""
    if configured != "map" or not engine_maps_pages:
        return MemoryDecision("copy", None)
    if finding is not None:
        return MemoryDecision("copy", f"{finding} assumes memory it released with MADV_DONTNEED reads back as zeros, "
                                      "which pages mapped from a snapshot do not")
    return MemoryDecision("map", None)


def mapped_files(pid: int) -> dict[str, Path]:
    """Files `pid` maps: path as the process sees it -> a path the host can open it by
    (``/proc/<pid>/map_files/<range>``, which works across mount namespaces; needs root)."""
    out: dict[str, Path] = {}
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/") and not fields[5].endswith(" (deleted)"):
            out.setdefault(fields[5], Path(f"/proc/{pid}/map_files/{fields[0]}"))
    return out


def _contains_marker(path: Path) -> str | None:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for marker, name in MARKERS.items():
                if data.find(marker) >= 0:
                    return name
    except (OSError, ValueError):  # unreadable, or empty (mmap of length 0)
        return None
    return None


FileKey = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def find_zero_assuming_allocator(pids: Iterable[int], known: dict[FileKey, str | None] | None = None) -> str | None:
    """"jemalloc in <path>" for the first file mapped by any of `pids` that carries an
    allocator relying on zero-after-MADV_DONTNEED, or None. Reads every mapped file not in
    `known` (a cache of earlier verdicts by file identity, updated here): ~600 MB for torch,
    about a second the first time."""
    known = {} if known is None else known
    seen: set[str] = set()
    for pid in pids:
        for shown, openable in mapped_files(pid).items():
            if shown in seen:
                continue
            seen.add(shown)
            try:
                st = os.stat(openable)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in known:
                known[key] = _contains_marker(openable)
            if known[key]:
                return f"{known[key]} in {shown}"
    return None


def container_pids(init_pid: int) -> list[int]:
    """`init_pid` and all its descendants (the processes a checkpoint of its container saves)."""
    pids, queue = [], [init_pid]
    while queue:
        pid = queue.pop()
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):  # nothing if the process is gone
            try:
                queue.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return pids
