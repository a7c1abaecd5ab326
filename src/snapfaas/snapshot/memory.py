"""How a snapshot's restores bring memory back: map the page images copy-on-write, or copy them.

Mapping (snapfaas's CRIU patch) changes one corner of Linux semantics for memory that existed
at checkpoint time: after ``madvise(MADV_DONTNEED)`` such a page reads back as the snapshot's
content, not as zeros. glibc's malloc, CPython and the usual numeric libraries never rely on
the zeros; jemalloc does (it skips clearing memory it purged that way, so ``calloc`` could
return stale bytes), and jemalloc ships inside common wheels (pyarrow's libarrow, polars).
So before the checkpoint the platform looks for jemalloc in every file the snapshotted
processes map, and a snapshot that maps one restores by copying.

`choose` is the decision; `find_zero_assuming_allocator` is the I/O around it.

The files scanned belong to the function (it may map anything it can open, /tmp included, and
change it while it is read), so the scan never maps them: a mapped file truncated under the
reader is a SIGBUS that kills the daemon. It reads regular files only (checked on the open
descriptor) with bounded ``pread``s (`SCAN_CHUNK`, overlapping by the marker's length), at most
`MAX_SCAN_BYTES` per file; a file that shrinks just ends the read early. Verdicts are cached
by file identity in a dict capped at `MAX_KNOWN` entries.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable
from pathlib import Path

# A byte string every jemalloc build carries (the prefix of its diagnostics), whatever its
# symbol prefix (je_, je_arrow_, _rjem_ ...).
MARKERS = {b"<jemalloc>": "jemalloc"}
SCAN_CHUNK = 1 << 20
# Past this a file is not read further (its first bytes only are scanned): the largest
# wheels' libraries (libtorch_cuda) stay under it, and a function's own huge files cost a
# bounded read.
MAX_SCAN_BYTES = 2 << 30
MAX_KNOWN = 4096  # cached verdicts kept; the oldest are dropped first


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


def _contains_marker(path: Path, limit: int = MAX_SCAN_BYTES, chunk: int = SCAN_CHUNK) -> str | None:
    """The name of the first marker in the first `limit` bytes of `path`, if it is a regular
    file; None if none is found or it cannot be read. Reads with `os.pread`, never `mmap`."""
    overlap = max(len(marker) for marker in MARKERS) - 1
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a device or anything else: never read
            return None
        offset, tail = 0, b""
        while offset < limit:
            block = os.pread(fd, min(chunk, limit - offset), offset)
            if not block:
                return None
            data = tail + block
            for marker, name in MARKERS.items():
                if marker in data:
                    return name
            tail = data[-overlap:] if overlap else b""
            offset += len(block)
        return None
    except OSError:  # e.g. the file went away under us
        return None
    finally:
        os.close(fd)


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
            if not stat.S_ISREG(st.st_mode):
                continue
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in known:
                while len(known) >= MAX_KNOWN:
                    known.pop(next(iter(known)))
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
