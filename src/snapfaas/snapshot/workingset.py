"""The file pages a restored environment needs: recorded once, read ahead on later restores.

A CRIU image holds a process's private memory; the pages of the files it maps (the interpreter,
shared libraries such as ``libtorch_cpu.so``) come from the host's page cache. On a host whose
cache lacks them, the first invocation after a restore faults them in one readahead window at a
time, serially (torch: most of the ~250 ms a restore takes with a cold page cache).

Recording: after the first invocation of the first restore of a snapshot, `record` reads the
runtime process's ``/proc/PID/maps`` and ``/proc/PID/pagemap``: a page of a file mapping that is
*present* in the page tables was touched since the restore (CRIU does not prefault file
mappings), so the present pages are exactly what restore + first invocation used. Pages are
turned into file ranges (neighbours within `GAP_PAGES` merged) and identified by the file's host
path, device, inode, size and mtime. Files on virtual filesystems (device major 0: tmpfs, the
snapshot images themselves) are skipped: their pages are never dropped; so are files whose path
as the daemon reads it (the sandbox's view, e.g. ``/var/task/...``) is not the same file on the
host.

Prefetching: `prefetch` asks the kernel to read the ranges ahead (``posix_fadvise(WILLNEED)``,
asynchronous readahead) at the start of a restore, so the reads run in parallel with runc and
CRIU instead of one page fault at a time afterwards. A file whose identity changed is skipped.
What a function maps only decides which pages of files it can already read are cached: the
daemon never reads them itself, and the totals are capped (`MAX_RANGES`, `MAX_BYTES`).

Stored as JSON, one file per snapshot, in a root-owned directory (`WorkingSets`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from snapfaas.durable import write_atomic

logger = logging.getLogger(__name__)
PAGE = os.sysconf("SC_PAGE_SIZE")
GAP_PAGES = 16  # pages between two touched ones that are read too, to make fewer, larger ranges
MAX_RANGES = 8192
MAX_BYTES = 2 << 30
FORMAT = 1
PRESENT = 1 << 63
_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)\s*(.*)$")


@dataclasses.dataclass(frozen=True)
class FileRanges:
    """Byte ranges of one host file, with the identity it had when they were recorded."""

    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ranges: tuple[tuple[int, int], ...]  # (offset, length), sorted, not overlapping

    @property
    def bytes(self) -> int:
        return sum(length for _, length in self.ranges)


@dataclasses.dataclass(frozen=True)
class WorkingSet:
    files: tuple[FileRanges, ...]

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "files": [dataclasses.asdict(f) for f in self.files]}

    @classmethod
    def from_json(cls, data: Any) -> WorkingSet:
        """Parse and check a stored working set; ValueError if it is malformed."""
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), list):
            raise ValueError("not a working set")
        files = []
        for item in data["files"]:
            ranges = tuple((int(off), int(length)) for off, length in item["ranges"])
            if any(off < 0 or length <= 0 for off, length in ranges):
                raise ValueError("negative range")
            files.append(FileRanges(str(item["path"]), int(item["dev"]), int(item["ino"]), int(item["size"]),
                                    int(item["mtime_ns"]), ranges))
        return cls(tuple(files))


def pages_to_ranges(pages: Iterable[int], gap_pages: int = GAP_PAGES) -> list[tuple[int, int]]:
    """File page numbers (any order, repeats allowed) → byte ranges, merging pages at most
    `gap_pages` apart."""
    out: list[tuple[int, int]] = []
    start = end = -1
    for page in sorted(set(pages)):
        if start >= 0 and page - end <= gap_pages + 1:
            end = page
            continue
        if start >= 0:
            out.append((start * PAGE, (end - start + 1) * PAGE))
        start = end = page
    if start >= 0:
        out.append((start * PAGE, (end - start + 1) * PAGE))
    return out


@dataclasses.dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    inode: int
    path: str


def file_mappings(maps_text: str) -> Iterator[Mapping]:
    """The file-backed mappings of a ``/proc/PID/maps`` text."""
    for line in maps_text.splitlines():
        match = _MAPS_LINE.match(line)
        if match is None:
            continue
        start, end, _perms, offset, _major, _minor, inode, path = match.groups()
        if int(inode) == 0 or not path.startswith("/") or path.endswith(" (deleted)"):
            continue
        yield Mapping(int(start, 16), int(end, 16), int(offset, 16), int(inode), path)


def present_pages(pagemap: Any, mapping: Mapping) -> Iterator[int]:
    """File page numbers of `mapping` whose virtual page is present (`pagemap`: an open
    ``/proc/PID/pagemap``)."""
    count = (mapping.end - mapping.start) // PAGE
    pagemap.seek(mapping.start // PAGE * 8)
    data = pagemap.read(count * 8)
    first = mapping.offset // PAGE
    for index, (entry,) in enumerate(struct.iter_unpack("<Q", data)):
        if entry & PRESENT:
            yield first + index


def _same_file(path: str, st: os.stat_result) -> bool:
    try:
        here = os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from ``/proc/PID/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    return out


def record(pid: int) -> WorkingSet:
    """The working set of process `pid` and its descendants (a container's init and the
    runtime it forked; see the module docstring). Raises OSError if `pid` is gone or its /proc
    files cannot be read."""
    pages: dict[tuple[int, int], set[int]] = {}
    identity: dict[tuple[int, int], tuple[str, os.stat_result]] = {}
    for index, member in enumerate(process_tree(pid)):
        try:
            _record_process(Path(f"/proc/{member}"), pages, identity)
        except OSError:
            if index == 0:
                raise
            continue  # a descendant that exited meanwhile
    return _working_set(pages, identity)


def _record_process(proc: Path, pages: dict[tuple[int, int], set[int]],
                    identity: dict[tuple[int, int], tuple[str, os.stat_result]]) -> None:
    maps_text = (proc / "maps").read_text()
    with open(proc / "pagemap", "rb", buffering=0) as pagemap:
        for mapping in file_mappings(maps_text):
            link = proc / "map_files" / f"{mapping.start:x}-{mapping.end:x}"
            try:
                st = os.stat(link)
                host_path = os.readlink(link)
            except OSError:
                continue  # unmapped meanwhile
            if os.major(st.st_dev) == 0 or not host_path.startswith("/"):
                continue  # tmpfs and other virtual filesystems (the snapshot images among them)
            if not _same_file(host_path, st):
                continue  # the path is the sandbox's view (e.g. /var/task): not this file on the host
            key = (st.st_dev, st.st_ino)
            identity.setdefault(key, (host_path, st))
            pages.setdefault(key, set()).update(present_pages(pagemap, mapping))


def _working_set(pages: dict[tuple[int, int], set[int]],
                 identity: dict[tuple[int, int], tuple[str, os.stat_result]]) -> WorkingSet:
    files = []
    budget_ranges, budget_bytes = MAX_RANGES, MAX_BYTES
    for key, touched in sorted(pages.items(), key=lambda kv: identity[kv[0]][0]):
        host_path, st = identity[key]
        ranges = [(off, min(length, st.st_size - off)) for off, length in pages_to_ranges(touched) if off < st.st_size]
        ranges = [r for r in ranges if r[1] > 0][:budget_ranges]
        total = sum(length for _, length in ranges)
        if not ranges or total > budget_bytes:
            continue
        budget_ranges -= len(ranges)
        budget_bytes -= total
        files.append(FileRanges(host_path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, tuple(ranges)))
    return WorkingSet(tuple(files))


def prefetch(working_set: WorkingSet) -> int:
    """Start readahead of every range whose file is unchanged; returns the bytes asked for.
    Never raises for a file that is gone or changed (it is skipped)."""
    asked = 0
    for entry in working_set.files:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (entry.dev, entry.ino, entry.size, entry.mtime_ns):
                continue
            for offset, length in entry.ranges:
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
                asked += length
        except OSError as exc:
            logger.debug("prefetch of %s failed at step 'fadvise': %s", entry.path, exc)
        finally:
            os.close(fd)
    return asked


class WorkingSets:
    """One JSON file per snapshot id under `root` (0700, owned by the daemon)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    def _path(self, snapshot_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", snapshot_id) or snapshot_id.startswith("."):
            raise ValueError(f"bad snapshot id {snapshot_id!r}")
        return self.root / f"{snapshot_id}.json"

    def get(self, snapshot_id: str) -> WorkingSet | None:
        try:
            return WorkingSet.from_json(json.loads(self._path(snapshot_id).read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("working set of snapshot %s is unreadable (%s): recording it again", snapshot_id, exc)
            self.delete(snapshot_id)
            return None

    def has(self, snapshot_id: str) -> bool:
        return self._path(snapshot_id).exists()

    def put(self, snapshot_id: str, working_set: WorkingSet) -> None:
        write_atomic(self._path(snapshot_id), json.dumps(working_set.to_json(), separators=(",", ":")).encode())

    def delete(self, snapshot_id: str) -> None:
        self._path(snapshot_id).unlink(missing_ok=True)

    def sweep(self, referenced: set[str]) -> int:
        """Delete the working sets of snapshots not in `referenced`; returns how many."""
        removed = 0
        for path in self.root.glob("*.json"):
            if path.stem not in referenced:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


class WorkingSetKeeper:
    """What the worker calls around restores (on the event loop; the work runs in threads):
    `prefetch` when a restore starts, `observe` after a restored environment's first
    invocation (records the snapshot's working set once), `sweep` at start-up."""

    def __init__(self, store: WorkingSets) -> None:
        self.store = store
        self._known: dict[str, WorkingSet | None] = {}  # snapshot id -> its working set (None: none yet)
        self._recording: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, work: Callable[[], object], name: str) -> None:
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(work), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lookup(self, snapshot_id: str) -> WorkingSet | None:
        if snapshot_id not in self._known:
            self._known[snapshot_id] = self.store.get(snapshot_id)
        return self._known[snapshot_id]

    def prefetch(self, snapshot_id: str | None) -> None:
        """Start reading the snapshot's file working set ahead (no-op if none is recorded)."""
        working_set = self._lookup(snapshot_id) if snapshot_id else None
        if working_set is not None and working_set.files:
            self._spawn(lambda: prefetch(working_set), f"prefetch-{snapshot_id}")

    def observe(self, snapshot_id: str | None, pid_of: Callable[[], int | None]) -> None:
        """A restored environment of `snapshot_id` finished its first invocation: record the
        snapshot's working set from its process (`pid_of`, called in the thread) if none is."""
        if not snapshot_id or snapshot_id in self._recording or self._lookup(snapshot_id) is not None:
            return
        self._recording.add(snapshot_id)

        def work() -> None:
            try:
                pid = pid_of()
                if pid is None:
                    return
                working_set = record(pid)
                self.store.put(snapshot_id, working_set)
                self._known[snapshot_id] = working_set
                logger.info("snapshot %s: recorded a working set of %d file(s), %.1f MB", snapshot_id,
                            len(working_set.files), working_set.bytes / 1e6)
            except OSError as exc:  # the environment went away meanwhile: the next restore records it
                logger.info("snapshot %s: working set not recorded (failed at step 'record'): %s", snapshot_id, exc)
            finally:
                self._recording.discard(snapshot_id)

        self._spawn(work, f"record-{snapshot_id}")

    def sweep(self, referenced: set[str]) -> int:
        """Forget working sets of snapshots that no longer exist."""
        for snapshot_id in [s for s in self._known if s not in referenced]:
            del self._known[snapshot_id]
        return self.store.sweep(referenced)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


__all__ = ["FileRanges", "WorkingSet", "WorkingSetKeeper", "WorkingSets", "pages_to_ranges", "prefetch", "record"]
