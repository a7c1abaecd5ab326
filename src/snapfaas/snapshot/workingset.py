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
asynchronous readahead) as soon as a restore is decided (before the environment is prepared),
in merged requests from several threads, so the reads run in parallel with the preparation,
runc and CRIU instead of one page fault at a time afterwards. A file whose identity changed is
skipped.
What a function maps only decides which pages of files it can already read are cached: the
daemon never reads them itself, and the totals are capped (`MAX_RANGES`, `MAX_BYTES`).

Stored with the snapshot: the store attachment ``workingset`` of the snapshot (`WorkingSets`;
sealed like the manifest, stored beside it at the origin and copied into the disk cache,
deleted and garbage-collected with it, and shared by every host on the same origin: a host
that never restored the snapshot reads the working set another one recorded). The document is
versioned JSON with named sections::

    {"version": 1,
     "sections": {"files": {"entries": [{"path": "/usr/lib/x86_64-linux-gnu/libc.so.6",
                                         "dev": 65024, "ino": 99, "size": 1922136,
                                         "mtime_ns": 1700000000000000000,
                                         "ranges": [[0, 413696], [1486848, 69632]]}, ...]},
                  "<other>": ...}}

``version`` changes only with an incompatible change: a build that reads another version
neither uses nor rewrites the document. New information (e.g. the snapshot's own memory chunks
a restore touched) goes into a new section; a build that does not know a section keeps it
verbatim when it rewrites the document (`WorkingSets.update`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from snapfaas import timeline
from snapfaas.snapshot.view import ResidencyProbe, SnapshotView, TouchedRange
from snapfaas.store import ChunkStore, StoreError

logger = logging.getLogger(__name__)
PAGE = os.sysconf("SC_PAGE_SIZE")
GAP_PAGES = 16  # pages between two touched ones that are read too, to make fewer, larger ranges
MAX_RANGES = 8192
READ_AHEAD_THREADS = 4  # threads submitting a working set's readahead (several requests in flight)
READ_AHEAD_GAP = 256 << 10  # a file's ranges closer than this are read ahead as one request
READ_AHEAD_TASK_BYTES = 2 << 20  # a file's requests are cut into tasks of about this size, shared by the threads
READ_AHEAD_HEAD = 16 << 10  # the start of every file is read ahead first: CRIU reads ELF headers and notes at restore
MAX_BYTES = 2 << 30
ATTACHMENT = "workingset"  # the store attachment name
VERSION = 1  # of the document; changes only with an incompatible change
FILES = "files"  # the section of host file ranges
IMAGES = "images"  # the section of snapshot image chunk ranges (lazy restores: memory pages and image files)
KNOWN_MAX = 1024  # snapshots whose working set a keeper keeps in memory
# A restore within this many seconds of the last read-ahead of its snapshot's working set does
# not read it ahead again if a sentinel page of it is still in the page cache: the pages that
# one pushed (charged to the daemon) are most likely still there, and asking again costs a
# residency probe of every image window and an fadvise per file range (~1.5 ms of CPU per torch
# restore, 8 times over in a burst of 8). A page evicted meanwhile is read on demand, as
# without a read-ahead: slower, never wrong. A dropped page cache (the sentinel gone) is read
# ahead again at once.
PREFETCH_REPEAT_S = 5.0
LEGACY_DIR = "workingsets"  # <data-dir>/workingsets/: where working sets lived before the store
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

    def to_section(self) -> dict[str, Any]:
        """The document's ``files`` section (plain JSON values: it compares equal to its parse)."""
        return {"entries": [{**dataclasses.asdict(f), "ranges": [list(r) for r in f.ranges]} for f in self.files]}

    @classmethod
    def from_section(cls, data: Any) -> WorkingSet:
        """Parse and check a ``files`` section; ValueError if it is malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise ValueError("the files section has no list of entries")
        files = []
        try:
            for item in data["entries"]:
                ranges = tuple((int(off), int(length)) for off, length in item["ranges"])
                if any(off < 0 or length <= 0 for off, length in ranges):
                    raise ValueError("negative range")
                files.append(FileRanges(str(item["path"]), int(item["dev"]), int(item["ino"]), int(item["size"]),
                                        int(item["mtime_ns"]), ranges))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed file entry: {exc!r}") from None
        return cls(tuple(files))


@dataclasses.dataclass(frozen=True)
class WorkingSetDocument:
    """The stored document: a version and named sections (JSON values; see the module
    docstring). Sections this build does not know are carried verbatim."""

    sections: Mapping[str, Any]
    version: int = VERSION

    @property
    def supported(self) -> bool:
        """Whether this build may use and rewrite the document."""
        return self.version == VERSION

    @property
    def files(self) -> WorkingSet | None:
        """The ``files`` section (None if absent); ValueError if it is malformed."""
        section = self.sections.get(FILES)
        return None if section is None else WorkingSet.from_section(section)

    @property
    def images(self) -> list[TouchedRange] | None:
        """The ``images`` section: chunk ranges of the snapshot's image files a first restore
        read through the view (None if absent); ValueError if it is malformed."""
        section = self.sections.get(IMAGES)
        if section is None:
            return None
        if not isinstance(section, dict) or not isinstance(section.get("ranges"), list):
            raise ValueError("images section without a ranges list")
        out = []
        for item in section["ranges"][:MAX_RANGES]:
            if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                    or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in item[1:])):
                raise ValueError(f"malformed image range {item!r}")
            out.append(TouchedRange(item[0], item[1], item[2]))
        return out

    def with_section(self, name: str, value: Any) -> WorkingSetDocument:
        """A copy with section `name` set to `value` (a JSON value); every other section kept."""
        return dataclasses.replace(self, sections={**self.sections, name: value})

    def encode(self) -> bytes:
        return json.dumps({"version": self.version, "sections": dict(self.sections)},
                          separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> WorkingSetDocument:
        """Parse a stored document; ValueError if it is not one (its sections are checked only
        when read, so an unknown version's still parses)."""
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("sections"), dict):
            raise ValueError("not an object with a sections object")
        version = body.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError("no integer version")
        return cls(body["sections"], version)


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
class FileMapping:
    start: int
    end: int
    offset: int
    inode: int
    path: str


def file_mappings(maps_text: str) -> Iterator[FileMapping]:
    """The file-backed mappings of a ``/proc/PID/maps`` text."""
    for line in maps_text.splitlines():
        match = _MAPS_LINE.match(line)
        if match is None:
            continue
        start, end, _perms, offset, _major, _minor, inode, path = match.groups()
        if int(inode) == 0 or not path.startswith("/") or path.endswith(" (deleted)"):
            continue
        yield FileMapping(int(start, 16), int(end, 16), int(offset, 16), int(inode), path)


def present_pages(pagemap: Any, mapping: FileMapping) -> Iterator[int]:
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


def _visit_mappings(pid: int, visit: Callable[[Path, Any, FileMapping], None]) -> None:
    """Call `visit(its /proc directory, its open pagemap, mapping)` for every file mapping of
    process `pid` and its descendants. Raises OSError if `pid` itself cannot be read; a
    descendant that exits meanwhile is skipped."""
    for index, member in enumerate(process_tree(pid)):
        proc = Path(f"/proc/{member}")
        try:
            maps_text = (proc / "maps").read_text()
            with open(proc / "pagemap", "rb", buffering=0) as pagemap:
                for mapping in file_mappings(maps_text):
                    visit(proc, pagemap, mapping)
        except OSError:
            if index == 0:
                raise
            continue  # a descendant that exited meanwhile


def record(pid: int) -> WorkingSet:
    """The working set of process `pid` and its descendants (a container's init and the
    runtime it forked; see the module docstring). Raises OSError if `pid` is gone or its /proc
    files cannot be read."""
    pages: dict[tuple[int, int], set[int]] = {}
    identity: dict[tuple[int, int], tuple[str, os.stat_result]] = {}

    def visit(proc: Path, pagemap: Any, mapping: FileMapping) -> None:
        link = proc / "map_files" / f"{mapping.start:x}-{mapping.end:x}"
        try:
            st = os.stat(link)
            host_path = os.readlink(link)
        except OSError:
            return  # unmapped meanwhile
        if os.major(st.st_dev) == 0 or not host_path.startswith("/"):
            return  # tmpfs and other virtual filesystems (the snapshot images among them)
        if not _same_file(host_path, st):
            return  # the path is the sandbox's view (e.g. /var/task): not this file on the host
        key = (st.st_dev, st.st_ino)
        identity.setdefault(key, (host_path, st))
        pages.setdefault(key, set()).update(present_pages(pagemap, mapping))

    _visit_mappings(pid, visit)
    return _working_set(pages, identity)


def record_images(pid: int, images: Path) -> dict[str, set[int]]:
    """Which pages of the snapshot image files under `images` (a snapshot's directory in the
    view) process `pid` and its descendants have present in their page tables: what a lazily
    restored process touched of its memory images, read or written (a page written since the
    restore is present too), whether or not its first read came through the view. Image file
    name -> file page numbers. Reads only /proc (maps, pagemap): it never touches the
    mappings. Raises OSError if `pid` is gone."""
    prefix = str(images) + "/"
    pages: dict[str, set[int]] = {}

    def visit(_proc: Path, pagemap: Any, mapping: FileMapping) -> None:
        name = mapping.path[len(prefix):]
        if mapping.path.startswith(prefix) and "/" not in name:
            pages.setdefault(name, set()).update(present_pages(pagemap, mapping))

    _visit_mappings(pid, visit)
    return pages


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


def whole_files(paths: Iterable[str]) -> WorkingSet:
    """`paths` as a working set of whole files, with the identity they have now (a file that
    cannot be stat'ed is left out; one replaced later is skipped by `prefetch`)."""
    files = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_size > 0:
            files.append(FileRanges(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, ((0, st.st_size),)))
    return WorkingSet(tuple(files))


def still_cached(working_set: WorkingSet) -> bool:
    """Whether the sentinel page of `working_set` is in the page cache: the page holding the
    start of the last range of its largest file (``mincore`` over a map of the file, which
    reads nothing: a ``preadv2(RWF_NOWAIT)`` probe is no good, recent kernels read a page the
    cache lacks from a fast disk within the call). False if it cannot be told or there is none."""
    if not working_set.files:
        return False
    entry = max(working_set.files, key=lambda f: f.bytes)
    offset = entry.ranges[-1][0] // PAGE * PAGE if entry.ranges else 0
    if offset >= entry.size:
        return False
    try:
        probe = ResidencyProbe(Path(entry.path), entry.size)
    except OSError:  # gone, unreadable, or not mappable
        return False
    try:
        return bool(probe.pages([(offset, offset + PAGE)])[offset // PAGE] & 1)
    except OSError:
        return False
    finally:
        probe.close()


def read_ahead_tasks(working_set: WorkingSet, gap: int = READ_AHEAD_GAP, task_bytes: int = READ_AHEAD_TASK_BYTES,
                     head: int = READ_AHEAD_HEAD) -> list[tuple[FileRanges, tuple[tuple[int, int], ...]]]:
    """The read-ahead requests of `working_set`, as tasks for `prefetch`'s threads. Each file's
    first `head` bytes come first (CRIU checks the build id of every mapped ELF file at restore
    by mapping its start and reading the header and notes: on a cold page cache that one
    page fault reads a whole readahead window, 8 MiB of libtorch_cpu.so, while the restore
    waits), then its ranges, neighbours at most `gap` bytes apart merged into one request (a
    virtio disk serves one large request faster than several small ones; the bytes between
    are few), cut into tasks of about `task_bytes`, so the threads share a large library.
    Every file's first task (its header) precedes any file's second."""
    per_file: list[list[tuple[FileRanges, tuple[tuple[int, int], ...]]]] = []
    for entry in working_set.files:
        merged: list[tuple[int, int]] = []
        for offset, length in [(0, min(head, entry.size)), *entry.ranges]:
            if length <= 0:
                continue
            if merged and offset - (merged[-1][0] + merged[-1][1]) <= gap:
                start = merged[-1][0]
                merged[-1] = (start, max(merged[-1][1], offset + length - start))
            else:
                merged.append((offset, length))
        tasks: list[tuple[FileRanges, tuple[tuple[int, int], ...]]] = []
        batch: list[tuple[int, int]] = []
        size = 0
        for item in merged:
            batch.append(item)
            size += item[1]
            if size >= task_bytes or head > 0 and not tasks and item[0] == 0:  # the header alone, at once
                tasks.append((entry, tuple(batch)))
                batch, size = [], 0
        if batch:
            tasks.append((entry, tuple(batch)))
        per_file.append(tasks)
    rounds = max((len(tasks) for tasks in per_file), default=0)
    return [tasks[i] for i in range(rounds) for tasks in per_file if i < len(tasks)]


def _read_ahead(entry: FileRanges, ranges: tuple[tuple[int, int], ...]) -> int:
    """Ask for readahead of `ranges` of `entry`'s file if it is unchanged; the bytes asked for."""
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return 0
    asked = 0
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (entry.dev, entry.ino, entry.size, entry.mtime_ns):
            return 0
        for offset, length in ranges:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            asked += length
    except OSError as exc:
        logger.debug("prefetch of %s failed at step 'fadvise': %s", entry.path, exc)
    finally:
        os.close(fd)
    return asked


def submit_read_ahead(working_set: WorkingSet, pool: concurrent.futures.Executor) -> list[concurrent.futures.Future[int]]:
    """Submit the readahead of `working_set` (`read_ahead_tasks`) to `pool`'s threads; each
    future gives the bytes one task asked for. Returns at once."""
    return [pool.submit(_read_ahead, entry, ranges) for entry, ranges in read_ahead_tasks(working_set)]


def prefetch(working_set: WorkingSet, pool: concurrent.futures.Executor | None = None) -> int:
    """Start readahead of every range whose file is unchanged (`read_ahead_tasks`), on `pool`'s
    threads (else in this thread; never from one of `pool`'s own); returns the bytes asked for
    once every request is submitted. Several threads keep the disk's queue full: opening a
    file whose inode and directory left the cache, and mapping a large file's extents, are
    synchronous reads of their own. Never raises for a file that is gone or changed (it is
    skipped)."""
    if pool is None:
        return sum(_read_ahead(entry, ranges) for entry, ranges in read_ahead_tasks(working_set))
    return sum(future.result() for future in submit_read_ahead(working_set, pool))


class WorkingSets:
    """Working-set documents, one per snapshot: the store attachment ``workingset`` (see the
    module docstring). Blocking (the origin may be S3): call from threads. A read that finds
    none, or one that fails authentication (the store warns) or does not parse (warned here),
    returns None: the working set is recorded again and the new document replaces it."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self._lock = threading.Lock()  # one read-modify-write at a time in this process

    def get(self, snapshot_id: str) -> WorkingSetDocument | None:
        """The snapshot's document, or None. Raises `StoreError` if the store cannot be read
        (an unreachable origin and no cached copy)."""
        data = self.store.get_attachment(snapshot_id, ATTACHMENT)
        if data is None:
            return None
        try:
            return WorkingSetDocument.decode(data)
        except ValueError as exc:
            logger.warning("working set of snapshot %s is unreadable (%s): recording it again", snapshot_id, exc)
            return None

    def update(self, snapshot_id: str,
               change: Callable[[WorkingSetDocument], WorkingSetDocument | None]) -> WorkingSetDocument | None:
        """Apply `change` to the snapshot's current document (an empty one if none) and store
        the result, which replaces the document whole; returns it. `change` returning None
        stores nothing. A document of another version is left alone (None). Serialized within
        this process; across hosts the last writer wins. Raises `StoreError` (e.g.
        `SnapshotMissing` once the snapshot is deleted)."""
        with self._lock:
            current = self.get(snapshot_id) or WorkingSetDocument({})
            if not current.supported:
                logger.warning("working set of snapshot %s has version %s (this build writes %s): left alone",
                               snapshot_id, current.version, VERSION)
                return None
            updated = change(current)
            if updated is None:
                return None
            self.store.put_attachment(snapshot_id, ATTACHMENT, updated.encode())
            return updated

    def put_files(self, snapshot_id: str, working_set: WorkingSet) -> WorkingSetDocument | None:
        """Store `working_set` as the document's ``files`` section (other sections kept)."""
        return self.update(snapshot_id, lambda document: document.with_section(FILES, working_set.to_section()))


def remove_legacy(data_dir: Path) -> int:
    """Delete ``<data-dir>/workingsets/``, where working sets lived before they moved into the
    store; returns how many files went (their snapshots record them again, once)."""
    legacy = data_dir / LEGACY_DIR
    if not legacy.is_dir():
        return 0
    removed = sum(1 for path in legacy.iterdir() if path.is_file())
    shutil.rmtree(legacy)
    return removed


def images_section(ranges: list[TouchedRange]) -> dict[str, Any]:
    return {"ranges": [[r.path, r.offset, r.length] for r in ranges[:MAX_RANGES]],
            "bytes": sum(r.length for r in ranges[:MAX_RANGES])}


@dataclasses.dataclass(frozen=True)
class _Known:
    """What a keeper knows of one snapshot: its file working set and image chunk ranges (None:
    none to read ahead), and whether nothing is left to record (both sections are stored, or a
    document of a version this build does not write)."""

    files: WorkingSet | None
    settled: bool
    images: list[TouchedRange] | None = None


class WorkingSetKeeper:
    """What the worker calls around restores (on the event loop; the store work runs in
    threads): `prefetch` when a restore starts, `observe` after a restored environment's first
    invocation (records the snapshot's working set once, for every host on the origin). What
    it read is remembered (the `KNOWN_MAX` most recent snapshots): one store read per snapshot
    and process. No sweeping: the store deletes a working set with its snapshot."""

    def __init__(self, store: WorkingSets, view: SnapshotView | None = None) -> None:
        """`view`: the snapshot view of lazy restores; its reads are recorded as the ``images``
        section, and later restores push that section into the page cache (`SnapshotView.prefetch`)."""
        self.store = store
        self.view = view
        self._known: collections.OrderedDict[str, _Known] = collections.OrderedDict()
        self._known_lock = threading.Lock()
        self._recording: set[str] = set()
        self._prefetched: dict[tuple[str, str], float] = {}  # (snapshot id, part) -> monotonic time of its last read-ahead
        self._read_ahead_pool = concurrent.futures.ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="read-ahead")
        # the programs every restore executes (CRIU) that the daemon could not keep resident
        # (`snapshot.resident`): read ahead whole, first, with each snapshot's files (on a cold
        # page cache CRIU's exec read its 6 MB while the restore waited)
        self.platform = WorkingSet(())
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def _spawn(self, work: Callable[[], object], name: str) -> None:
        if self._closed:
            return  # shutting down: the store may be closed next
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(work), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cached(self, snapshot_id: str) -> _Known | None:
        with self._known_lock:
            known = self._known.get(snapshot_id)
            if known is not None:
                self._known.move_to_end(snapshot_id)
            return known

    def _remember(self, snapshot_id: str, known: _Known) -> None:
        with self._known_lock:
            self._known[snapshot_id] = known
            self._known.move_to_end(snapshot_id)
            while len(self._known) > KNOWN_MAX:
                self._known.popitem(last=False)

    def _lookup(self, snapshot_id: str) -> _Known | None:
        """What the store holds for `snapshot_id` (in a thread); None if it cannot be read now
        (not remembered: a later restore asks again)."""
        known = self._cached(snapshot_id)
        if known is not None:
            return known
        try:
            document = self.store.get(snapshot_id)
        except StoreError as exc:
            logger.warning("snapshot %s: working set not read (failed at step 'read working set'): %s",
                           snapshot_id, exc.message)
            return None
        if document is None:
            known = _Known(None, False)
        elif not document.supported:
            logger.warning("snapshot %s: working set has version %s, this build reads %s: not used",
                           snapshot_id, document.version, VERSION)
            known = _Known(None, True)
        else:
            try:
                files, images = document.files, document.images
            except ValueError as exc:
                logger.warning("snapshot %s: working set is malformed (%s): recording it again", snapshot_id, exc)
                files = images = None
            known = _Known(files, files is not None and (images is not None or self.view is None), images)
            if files is not None:
                logger.info("snapshot %s: working set of %d file(s), %.1f MB, and %s of image chunks, read from the store",
                            snapshot_id, len(files.files), files.bytes / 1e6,
                            "none" if images is None else f"{sum(r.length for r in images) / 1e6:.1f} MB")
        self._remember(snapshot_id, known)
        return known

    def prefetch(self, snapshot_id: str | None, *, files: bool = True, images: bool = True) -> None:
        """Start reading the snapshot's working set ahead: the library pages (`files`; call it
        as soon as a restore is decided: nothing needs the snapshot exposed) and the view's
        pages (`images`; once the snapshot is exposed). A part is skipped if none is recorded,
        or if it was read ahead less than `PREFETCH_REPEAT_S` ago and its sentinel page is
        still in the page cache (`still_cached`, `SnapshotView.resident`)."""
        if not snapshot_id:
            return
        known = self._cached(snapshot_id)
        if known is not None and known.files is None and known.images is None:
            return  # none recorded (yet): no thread for nothing
        parts = {part for part, wanted in ((FILES, files), (IMAGES, images and self.view is not None)) if wanted}
        recent: set[str] = set()  # read ahead moments ago: again only if its sentinel page is gone
        if known is not None:
            parts -= {FILES} if known.files is None or not known.files.files else set()
            parts -= set() if known.images else {IMAGES}
            now = time.monotonic()
            # a burst, or restores in quick succession: the first one's pages are most likely there
            recent = {part for part in parts
                      if now - self._prefetched.get((snapshot_id, part), -PREFETCH_REPEAT_S) < PREFETCH_REPEAT_S}
            for part in parts - recent:
                self._prefetched[(snapshot_id, part)] = now
            if len(self._prefetched) > 2 * KNOWN_MAX:
                for stale in [k for k, at in self._prefetched.items() if now - at >= PREFETCH_REPEAT_S]:
                    del self._prefetched[stale]
        if not parts:
            return

        def work() -> None:
            known = self._lookup(snapshot_id)
            if known is None:
                return
            started = time.monotonic()
            working_set = None
            if FILES in parts and known.files is not None and known.files.files:
                if FILES not in recent or not still_cached(known.files):
                    working_set = WorkingSet(self.platform.files + known.files.files)
            push = None
            if IMAGES in parts and known.images and self.view is not None:
                if IMAGES not in recent or not self.view.resident(snapshot_id, known.images[0]):
                    push = known.images
            for part, going in ((FILES, working_set), (IMAGES, push)):
                if part in recent and going is not None:  # the page cache lost it meanwhile
                    self._prefetched[(snapshot_id, part)] = started
            # Submitting the files' readahead takes a while; the image chunks CRIU is about to
            # read are pushed meanwhile, not after it.
            submitted = submit_read_ahead(working_set, self._read_ahead_pool) if working_set is not None else []
            if push is not None and self.view is not None:
                report = self.view.prefetch(snapshot_id, push)
                timeline.mark("working set images pushed [thread]")
                logger.debug("snapshot %s: prefetch: images %.1f ms: pushed %d chunks (%.1f MB), %d resident, %d failed",
                             snapshot_id, (time.monotonic() - started) * 1000, report.pushed, report.bytes / 1e6,
                             report.resident, report.failed)
            if submitted:
                asked = sum(future.result() for future in submitted)
                timeline.mark("working set files read ahead [thread]")
                logger.debug("snapshot %s: prefetch: files (%.1f MB) submitted in %.1f ms", snapshot_id, asked / 1e6,
                             (time.monotonic() - started) * 1000)

        self._spawn(work, f"prefetch-{snapshot_id}")

    def observe(self, snapshot_id: str | None, pid_of: Callable[[], int | None]) -> None:
        """A restored environment of `snapshot_id` finished its first invocation: record the
        snapshot's working set from its process (`pid_of`, called in the thread) if the store
        holds none."""
        if not snapshot_id or snapshot_id in self._recording:
            return
        known = self._cached(snapshot_id)
        if known is not None and known.settled:
            if self.view is not None:
                self.view.record(snapshot_id, on=False)  # nothing to record: stop keeping its reads
            return
        self._recording.add(snapshot_id)

        def work() -> None:
            try:
                known = self._lookup(snapshot_id)
                if known is None or known.settled:
                    if known is not None and self.view is not None:
                        self.view.record(snapshot_id, on=False)
                    return
                pid = pid_of()
                if pid is None:
                    return
                working_set = record(pid)
                images = None
                if self.view is not None:
                    # what came through the view (in first-read order), then the image pages the
                    # process has present that did not (a primed page cache answered them)
                    read = self.view.touched(snapshot_id)
                    self.view.record(snapshot_id, on=False)
                    mapped = self.view.chunk_ranges(snapshot_id, record_images(pid, self.view.path(snapshot_id)))
                    images = list(dict.fromkeys([*read, *mapped]))

                def change(document: WorkingSetDocument) -> WorkingSetDocument:
                    document = document.with_section(FILES, working_set.to_section())
                    return document if images is None else document.with_section(IMAGES, images_section(images))

                if self.store.update(snapshot_id, change) is None:
                    self._remember(snapshot_id, _Known(None, True))  # another version's document: left alone
                    return
                self._remember(snapshot_id, _Known(working_set, True, images))
                logger.info("snapshot %s: recorded a working set of %d file(s), %.1f MB%s", snapshot_id,
                            len(working_set.files), working_set.bytes / 1e6,
                            "" if images is None else f", and {len(images)} image chunks, "
                                                      f"{sum(r.length for r in images) / 1e6:.1f} MB")
            except OSError as exc:  # the environment went away meanwhile: the next restore records it
                logger.info("snapshot %s: working set not recorded (failed at step 'record'): %s", snapshot_id, exc)
            except StoreError as exc:  # e.g. the snapshot was deleted meanwhile, or the origin is down
                logger.warning("snapshot %s: working set not stored (failed at step 'store working set'): %s",
                               snapshot_id, exc.message)
            finally:
                self._recording.discard(snapshot_id)

        self._spawn(work, f"record-{snapshot_id}")

    async def close(self) -> None:
        """Wait for the prefetches and recordings under way; start none after."""
        self._closed = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._read_ahead_pool.shutdown(wait=False)  # nothing is submitted any more


__all__ = [
    "ATTACHMENT", "FileRanges", "WorkingSet", "WorkingSetDocument", "WorkingSetKeeper", "WorkingSets", "pages_to_ranges",
    "prefetch", "read_ahead_tasks", "record", "remove_legacy", "still_cached", "whole_files",
]
