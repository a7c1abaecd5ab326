"""`SnapshotView`: every stored snapshot as a read-only FUSE file system, so restores load lazily.

::

    <mount>/                                    0711 root:root   (searchable, not listable)
    └── <snapshot-id>/                          0750 root:<slice group>   (only once `expose`d)
        ├── core-1.img, mm-1.img, ...           0640 root:<slice group>
        └── pages-1.img ──read(off, len)──► ChunkStore.chunk: memory → disk cache → origin
                                            (every chunk verified; holes read as zeros)

CRIU restores straight from ``<mount>/<snapshot-id>``: the small image files are read whole;
the memory images (``pages-*.img``) are mapped copy-on-write by snapfaas's patched CRIU, so a
page is fetched from the store only when the restored process first touches it (or when CRIU
copies it, for snapshots restored in copy mode). The kernel's page cache of these files
(``keep_cache``: it survives re-opens) is the warm tier: a second restore of a snapshot on
this host reads nothing through this process at all. Pages are charged by the kernel to whoever
brings them in: pages pushed by this process (`prime`, `prefetch`) are the daemon's and outlive
environments; pages a restored process faults in are its own and may leave with it.

Contracts:

* Only exposed snapshots exist in the view (`expose`, with the verified manifest and the host
  gid of the slice the snapshot belongs to; `withdraw` hides one again and drops its page
  cache). Files are owned by root and that group, mode 0640, directories 0750, checked by the
  kernel (``default_permissions``); the mount is ``allow_other`` so the sandbox's mapped root
  can open them, and read-only.
* A read that cannot be served (a chunk missing or corrupt at the origin, the origin
  unreachable) answers EIO, never other bytes: CRIU fails the restore, or the restored process
  dies of SIGBUS on the page it touched. The first such error per snapshot is kept:
  `failure(snapshot_id)` returns it, for the owner to consult when a restore fails or a
  restored process dies (then the snapshot is unusable). A failed read alone condemns nothing:
  the kernel's readahead asks for pages no process wants (a read-around spans chunks beyond
  the faulted page), and a bad chunk only matters if a restore or a process needs it.
* Reads are recorded per snapshot from its (fresh) exposure until `record(snapshot_id, False)`:
  `touched(snapshot_id)` gives the chunk ranges read through this view meanwhile (the working
  set of a first restore; reads answered by the page cache never reach the view).
* `prime(snapshot_id, dump)` pushes a freshly stored snapshot into the page cache from its
  dump directory (the publish's first restores find it in memory; no store reads).
* `prefetch(snapshot_id, ranges)` (blocking, from any thread but the view's): the pages of
  those ranges that are not in the kernel's page cache (``mincore`` over a map of the file,
  which faults nothing) are fetched in parallel, a chunk at a time, and pushed into the page
  cache (``notify_store``), so the restored process finds them there instead of faulting them
  in one at a time. A working set records the runs of pages a restore touched
  (`chunk_ranges`), so a prefetch pushes those, not the untouched rest of their chunks. Only files restores read through the view count (`read_through_view`: page
  images and large files; the small images come from the lease's local copy). Best effort: a
  chunk that cannot be had is left to the fault that needs it.
* The file system runs on its own thread and trio loop; chunk fetches run on a bounded thread
  pool, so the kernel's concurrent read requests (readahead, several restores) fetch in
  parallel. Nothing in this process may touch a mapping of a view file while holding the GIL
  (a page fault would wait for this very process): read view files with syscalls only.
* `close` unmounts (lazily: a restored process may still map a file; its pages already in
  memory stay valid, later faults fail). A mount left by a killed server is detached by
  `clear_stale_mount` before the next start.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from snapfaas.store import ChunkStore, Manifest, StoreError
from snapfaas.store.manifest import DIR, FILE, SYMLINK, ChunkRef, FileEntry

logger = logging.getLogger(__name__)
FSNAME = "snapfaas-view"
ATTR_TIMEOUT_S = 86400.0  # names and attributes never change while a snapshot is exposed
DECODED_CHUNKS = 24  # plaintext chunks kept for the next read of the same chunk (12 MiB)
FETCH_THREADS = 8
PREFETCH_THREADS = 4
PROBE_GAP = 64 << 10  # working-set spans closer than this are probed with one mincore call (a call costs about 16 pages)
PROBE_WINDOWS = 2048  # more probe windows than this: the whole file in one call
RUN_GAP_PAGES = 4  # touched pages at most this many pages apart are recorded as one run (fewer, larger pushes)
LOCAL_IMAGE_MAX = 1 << 20  # image files up to this size (and not page images) are read from a lease's local copy
PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
MAP_FAILED = ctypes.c_void_p(-1).value
_LOW_BIT = bytes(i & 1 for i in range(256))  # mincore's byte per page -> 1 if resident, else 0


def read_through_view(entry: FileEntry) -> bool:
    """Whether restores read this snapshot file through the view: CRIU's page images (mapped,
    faulted in page by page) and any file over `LOCAL_IMAGE_MAX`. The other files (CRIU's small
    images, read whole at every restore) come from a local copy beside the lease (see
    `snapshot.vault`), never through this file system."""
    return entry.type == FILE and (entry.path.rpartition("/")[2].startswith("pages-") or entry.size > LOCAL_IMAGE_MAX)


@dataclass
class Node:
    """One inode: the root, a snapshot directory, or an entry of a snapshot's tree."""

    inode: int
    snapshot_id: str | None
    entry: FileEntry | None  # None for the root and snapshot directories
    group: int
    children: dict[bytes, int] = field(default_factory=dict)
    lookups: int = 0
    withdrawn: bool = False

    @property
    def mode(self) -> int:
        if self.entry is None or self.entry.type == DIR:
            return stat.S_IFDIR | (0o711 if self.snapshot_id is None else 0o750)
        if self.entry.type == SYMLINK:
            return stat.S_IFLNK | 0o777
        return stat.S_IFREG | 0o640

    @property
    def size(self) -> int:
        if self.entry is None:
            return 0
        return len(self.entry.target.encode()) if self.entry.type == SYMLINK else self.entry.size


@dataclass(frozen=True)
class TouchedRange:
    """A byte range of one image file that reads went through (whole chunks)."""

    path: str
    offset: int
    length: int


@dataclass
class PrefetchReport:
    """What one `prefetch` did: chunks pushed into the page cache, chunks already there,
    chunks that could not be had (left to the faults that need them)."""

    pushed: int = 0
    resident: int = 0
    failed: int = 0
    bytes: int = 0


class ResidencyProbe:
    """A file of the view mapped once (PROT_READ, never touched) so that `pages()` can ask the
    kernel which of its pages are in the page cache (mincore faults nothing): safe in the view's
    own process, and one syscall per question instead of an open (a FUSE request) each time."""

    def __init__(self, path: Path, size: int) -> None:
        self.size = size
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._address: int | None = None
        if size > 0:
            address = _libc.mmap(None, size, 0x1, 0x01, self._fd, 0)  # PROT_READ, MAP_SHARED
            if address is None or address == MAP_FAILED:
                error = ctypes.get_errno()
                os.close(self._fd)
                raise OSError(error, f"mmap of {path} failed")
            self._address = address

    def pages(self, windows: Iterable[tuple[int, int]] | None = None) -> bytes:
        """One byte per page of the file: bit 0 set if the page is in the page cache. With
        `windows` (byte spans), only their pages are asked about (the others read as not
        resident): mincore costs ~8 ms of CPU per 160 MB asked, whatever the answer."""
        if self._address is None:
            return b""
        count = (self.size + PAGE - 1) // PAGE
        if windows is None:
            windows = [(0, self.size)]
        vector = ctypes.create_string_buffer(count)
        for lo, hi in windows:
            first, end = max(0, lo // PAGE), min(count, -(-hi // PAGE))
            if end <= first:
                continue
            length = min(self.size, end * PAGE) - first * PAGE
            if _libc.mincore(self._address + first * PAGE, length, ctypes.addressof(vector) + first) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        return vector.raw

    def close(self) -> None:
        if self._address is not None:
            _libc.munmap(self._address, self.size)
            self._address = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def resident_pages(path: Path, size: int) -> bytes:
    """One byte per page of the file at `path` (first `size` bytes): bit 0 set if the page is
    in the page cache (see `ResidencyProbe`)."""
    probe = ResidencyProbe(path, size)
    try:
        return probe.pages()
    finally:
        probe.close()


class SnapshotView(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, store: ChunkStore, mountpoint: Path) -> None:
        super().__init__()
        self.store = store
        self.mountpoint = mountpoint
        self._guard = threading.Lock()
        self._nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, None, None, 0)}
        self._snapshots: dict[str, int] = {}  # exposed snapshot id -> its directory's inode
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._decoded: OrderedDict[str, bytes] = OrderedDict()  # chunk name -> plaintext
        self._touched: dict[str, dict[tuple[str, int], None]] = {}  # snapshot id -> (path, chunk index), first read first
        self._inflight: dict[str, concurrent.futures.Future[bytes]] = {}  # chunk name -> its fetch under way
        self._probes: dict[tuple[str, str], ResidencyProbe] = {}  # (snapshot id, path) -> its mapped probe
        self._recording: set[str] = set()
        self._failed: dict[str, StoreError] = {}  # snapshot id -> its first failed read's error
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._started = threading.Event()
        self.reads = 0  # read requests served (statistics, tests)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Mount at `mountpoint` (created 0711 if missing) and serve on a thread."""
        clear_stale_mount(self.mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        os.chmod(self.mountpoint, 0o711)
        options = set(pyfuse3.default_options) | {f"fsname={FSNAME}", "allow_other", "ro", "nosuid", "nodev"}
        try:
            pyfuse3.init(self, str(self.mountpoint), options)
        except RuntimeError as exc:
            raise RuntimeError(f"snapshot view failed at step 'mount {self.mountpoint}': {exc} "
                               "(is /dev/fuse present and the fuse module loaded?)") from exc
        self._thread = threading.Thread(target=self._serve, name="snapshot-view", daemon=True)
        self._thread.start()
        self._started.wait()

    def _serve(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._limiter = trio.CapacityLimiter(FETCH_THREADS)
            self._started.set()
            await pyfuse3.main(min_tasks=2)

        try:
            trio.run(main)
        except BaseException:  # the mount is unusable from here on: say so loudly
            logger.exception("snapshot view stopped serving")
        finally:
            self._started.set()

    def close(self) -> None:
        """Stop serving and unmount (lazily, see the module docstring). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._close_probes(None)  # our own open files first: their release goes to this very loop
        if thread.is_alive() and self._token is not None:
            try:
                trio.from_thread.run_sync(pyfuse3.terminate, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            thread.join(timeout=10)
        try:
            pyfuse3.close(unmount=False)
        finally:
            clear_stale_mount(self.mountpoint)

    @property
    def serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- what is exposed -----------------------------------------------------------------------
    def path(self, snapshot_id: str) -> Path:
        return self.mountpoint / snapshot_id

    def expose(self, manifest: Manifest, group: int) -> Path:
        """Make `manifest`'s tree visible as ``<mount>/<snapshot id>`` for gid `group`; returns
        that path. Idempotent for the same group; a different group replaces the exposure."""
        snapshot_id = manifest.snapshot_id
        with self._guard:
            inode = self._snapshots.get(snapshot_id)
            if inode is not None and self._nodes[inode].group == group:
                return self.path(snapshot_id)
        if inode is not None:
            self.withdraw(snapshot_id)
        with self._guard:
            directory = self._new_node(snapshot_id, None, group)
            by_path: dict[str, Node] = {"": directory}
            for entry in sorted(manifest.files, key=lambda e: e.path.count("/")):
                parent_path, _, name = entry.path.rpartition("/")
                parent = by_path.get(parent_path)
                if parent is None:
                    continue  # the manifest's parser guarantees parents; be defensive anyway
                node = self._new_node(snapshot_id, entry, group)
                parent.children[name.encode()] = node.inode
                if entry.type == DIR:
                    by_path[entry.path] = node
            self._snapshots[snapshot_id] = directory.inode
            self._nodes[pyfuse3.ROOT_INODE].children[snapshot_id.encode()] = directory.inode
            self._failed.pop(snapshot_id, None)
            self._touched.pop(snapshot_id, None)
            self._recording.add(snapshot_id)  # a fresh exposure's reads are a first restore's working set
        return self.path(snapshot_id)

    def _new_node(self, snapshot_id: str, entry: FileEntry | None, group: int) -> Node:
        node = Node(self._next_inode, snapshot_id, entry, group)
        self._next_inode += 1
        self._nodes[node.inode] = node
        return node

    def _files(self, snapshot_id: str) -> dict[str, Node]:
        """The regular files of exposed `snapshot_id` by path (empty if it is not exposed).
        Nodes of an earlier exposure the kernel has not forgotten yet are left out."""
        with self._guard:
            if snapshot_id not in self._snapshots:
                return {}
            return {n.entry.path: n for n in self._nodes.values() if n.snapshot_id == snapshot_id and not n.withdrawn
                    and n.entry is not None and n.entry.type == FILE}

    def exposed(self) -> dict[str, int]:
        """Exposed snapshot id -> the group it is readable by."""
        with self._guard:
            return {sid: self._nodes[inode].group for sid, inode in self._snapshots.items()}

    def holds(self, group: int) -> bool:
        return group in self.exposed().values()

    def withdraw(self, snapshot_id: str, drop_cache: bool = True) -> None:
        """Hide a snapshot and (if `drop_cache`) drop its page cache: pages a live process maps
        are then re-read on its next fault, so its chunks must still exist. Open files and
        maps keep working (inodes live until the kernel forgets them). Idempotent."""
        with self._guard:
            inode = self._snapshots.pop(snapshot_id, None)
            if inode is None:
                return
            self._nodes[pyfuse3.ROOT_INODE].children.pop(snapshot_id.encode(), None)
            nodes = [n for n in self._nodes.values() if n.snapshot_id == snapshot_id and not n.withdrawn]
            for node in nodes:
                node.withdrawn = True
                if node.lookups <= 0:  # the kernel holds no reference: nothing will forget it
                    del self._nodes[node.inode]
            self._touched.pop(snapshot_id, None)
            self._recording.discard(snapshot_id)
        self._close_probes(snapshot_id)
        if not self.serving:
            return
        for node in nodes:
            if drop_cache and node.entry is not None and node.entry.type == FILE:
                _ignore_missing(pyfuse3.invalidate_inode, node.inode, False)
        _ignore_missing(pyfuse3.invalidate_entry, pyfuse3.ROOT_INODE, snapshot_id.encode())

    # -- working-set recording -------------------------------------------------------------------
    def record(self, snapshot_id: str, on: bool = True) -> None:
        """Start (or stop) recording which chunks reads of `snapshot_id` go through."""
        with self._guard:
            if on:
                self._recording.add(snapshot_id)
            else:
                self._recording.discard(snapshot_id)

    def touched(self, snapshot_id: str) -> list[TouchedRange]:
        """The chunk ranges read through the view while recording `snapshot_id`, in the order
        they were first read (the order a prefetch should push them in). Holes are left out:
        they are no chunks (a read of one is answered with zeros, and a prefetch skips them)."""
        with self._guard:
            keys = list(self._touched.get(snapshot_id, ()))
        files = self._files(snapshot_id)
        out = []
        for path, index in keys:
            entry = files[path].entry if path in files else None
            if entry is not None and index < len(entry.chunks) and not entry.chunks[index].is_hole:
                ref = entry.chunks[index]
                out.append(TouchedRange(path, ref.offset, ref.length))
        return out

    # -- priming and prefetching ---------------------------------------------------------------
    def prime(self, snapshot_id: str, plain: Path) -> int:
        """Push the exposed snapshot's stored chunks into the page cache from `plain`, the dump
        directory it was stored from (same bytes, no store reads): the first restores after a
        publish find the whole snapshot in memory, as the eager RAM cache did, but reclaimable.
        Holes are skipped. Blocking; returns the bytes pushed. Best effort (OSError logged)."""
        pushed = 0
        for node in self._files(snapshot_id).values():
            assert node.entry is not None
            try:
                os.stat(self.path(snapshot_id) / node.entry.path)  # the kernel stores pages only for inodes it knows
                with open(plain / node.entry.path, "rb", buffering=0) as source:
                    for ref in node.entry.chunks:
                        if not ref.is_hole:
                            pyfuse3.notify_store(node.inode, ref.offset, os.pread(source.fileno(), ref.length, ref.offset))
                            pushed += ref.length
            except OSError as exc:
                logger.warning("snapshot view: priming %s/%s stopped: %s", snapshot_id, node.entry.path, exc)
        return pushed

    def chunk_ranges(self, snapshot_id: str, pages: dict[str, set[int]]) -> list[TouchedRange]:
        """The ranges of exposed `snapshot_id` holding the given file pages (image file name ->
        page numbers): for files read through the view (`read_through_view`), the runs of those
        pages (neighbours up to `RUN_GAP_PAGES` apart joined), cut at chunk boundaries, so a
        prefetch pushes those pages and not the rest of their chunks; for the small image files,
        every chunk whole (CRIU reads those whole at every restore). Holes left out. Chunks may
        have any length (a manifest says where each is)."""
        out = []
        for _, node in sorted(self._files(snapshot_id).items()):
            entry = node.entry
            assert entry is not None
            whole = not read_through_view(entry)
            offsets = sorted(page * PAGE for page in pages.get(entry.path, ()))
            if not whole and not offsets:
                continue
            for ref in entry.chunks:
                if ref.is_hole:
                    continue
                end = ref.offset + ref.length
                if whole:
                    out.append(TouchedRange(entry.path, ref.offset, ref.length))
                    continue
                first, last = bisect.bisect_left(offsets, ref.offset), bisect.bisect_left(offsets, end)
                run_start = run_end = None
                for offset in offsets[first:last]:
                    if run_end is not None and offset <= run_end + RUN_GAP_PAGES * PAGE:
                        run_end = offset + PAGE
                        continue
                    if run_start is not None and run_end is not None:
                        out.append(TouchedRange(entry.path, run_start, min(run_end, end) - run_start))
                    run_start, run_end = offset, offset + PAGE
                if run_start is not None and run_end is not None:
                    out.append(TouchedRange(entry.path, run_start, min(run_end, end) - run_start))
        return out

    def _probe(self, snapshot_id: str, path: str, size: int) -> ResidencyProbe:
        with self._guard:
            probe = self._probes.get((snapshot_id, path))
        if probe is not None:
            return probe
        probe = ResidencyProbe(self.path(snapshot_id) / path, size)
        with self._guard:
            if snapshot_id in self._snapshots and (snapshot_id, path) not in self._probes:
                self._probes[(snapshot_id, path)] = probe
                return probe
            kept = self._probes.get((snapshot_id, path))
        probe.close()  # withdrawn meanwhile, or another thread made one first
        if kept is None:
            raise OSError(errno.ENOENT, f"snapshot {snapshot_id} is no longer exposed")
        return kept

    def _close_probes(self, snapshot_id: str | None) -> None:
        """Close the probes of `snapshot_id` (None: all)."""
        with self._guard:
            keys = [key for key in self._probes if snapshot_id is None or key[0] == snapshot_id]
            probes = [self._probes.pop(key) for key in keys]
        for probe in probes:
            probe.close()

    def resident(self, snapshot_id: str, item: TouchedRange) -> bool:
        """Whether the first page of `item` (a range of exposed `snapshot_id`) is in the page
        cache (``mincore``, which faults nothing); False when it cannot be told. Blocking; never
        call it on the view's own thread."""
        node = self._files(snapshot_id).get(item.path)
        if node is None or node.entry is None or item.offset >= node.entry.size:
            return False
        span = (item.offset // PAGE * PAGE, item.offset // PAGE * PAGE + PAGE)
        try:
            present = self._probe(snapshot_id, item.path, node.entry.size).pages([span])
        except OSError:
            return False
        return _resident(present, *span)

    def prefetch(self, snapshot_id: str, ranges: Iterable[TouchedRange]) -> PrefetchReport:
        """Push the pages of `ranges` of exposed `snapshot_id` that the page cache lacks (see the
        module docstring): each chunk they fall in is fetched once, and only the ranges' pages
        of it are pushed (a range of whole chunks pushes those chunks). Counts are in chunks.
        Blocking; never call it on the view's own thread."""
        report = PrefetchReport()
        files = self._files(snapshot_id)
        wanted: dict[tuple[str, int], list[tuple[int, int]]] = {}  # (path, chunk index) -> byte spans, in the order given
        for item in ranges:
            node = files.get(item.path)
            if node is None or node.entry is None or not read_through_view(node.entry):
                continue
            for index, ref in node.entry.covering(item.offset, item.length):
                if not ref.is_hole:
                    lo = max(item.offset, ref.offset) // PAGE * PAGE
                    hi = min(item.offset + item.length, ref.offset + ref.length)
                    hi = min(-(-hi // PAGE) * PAGE, ref.offset + ref.length)
                    wanted.setdefault((item.path, index), []).append((lo, hi))
        present: dict[str, bytes] = {}
        spans_by_path: dict[str, list[tuple[int, int]]] = {}
        for (path, _), spans in wanted.items():
            spans_by_path.setdefault(path, []).extend(spans)
        for path, spans in spans_by_path.items():
            entry = files[path].entry
            assert entry is not None
            try:
                present[path] = self._probe(snapshot_id, path, entry.size).pages(probe_windows(spans))
            except OSError as exc:
                logger.debug("snapshot view: residency of %s/%s unknown: %s", snapshot_id, path, exc)
                present[path] = b""
        missing: list[tuple[Node, int, ChunkRef, list[tuple[int, int]]]] = []
        for (path, index), spans in wanted.items():
            node = files[path]
            assert node.entry is not None
            ref = node.entry.chunks[index]
            absent = [span for span in _merged(spans) if not _resident(present[path], *span)]
            if absent:
                missing.append((node, index, ref, absent))
            else:
                report.resident += 1
        if not missing:
            return report

        def push(node: Node, index: int, ref: ChunkRef, spans: list[tuple[int, int]]) -> int:
            assert node.entry is not None and node.snapshot_id is not None
            data = memoryview(self._plaintext(node.snapshot_id, node.entry.path, index, ref))
            for lo, hi in spans:
                pyfuse3.notify_store(node.inode, lo, data[lo - ref.offset:hi - ref.offset])
            return sum(hi - lo for lo, hi in spans)

        with concurrent.futures.ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="view-prefetch") as pool:
            futures = [pool.submit(push, *item) for item in missing]
            for future in futures:
                try:
                    report.bytes += future.result()
                    report.pushed += 1
                except (StoreError, OSError) as exc:
                    report.failed += 1
                    logger.debug("snapshot view: prefetch of a chunk of %s skipped: %s", snapshot_id, exc)
        return report

    # -- FUSE operations (trio thread) -----------------------------------------------------------
    def _node(self, inode: int) -> Node:
        with self._guard:
            node = self._nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.generation = 0
        attrs.entry_timeout = ATTR_TIMEOUT_S
        attrs.attr_timeout = ATTR_TIMEOUT_S
        attrs.st_mode = node.mode
        attrs.st_nlink = 2 if stat.S_ISDIR(node.mode) else 1
        attrs.st_uid = 0
        attrs.st_gid = node.group
        attrs.st_size = node.size
        attrs.st_blksize = 1 << 19
        attrs.st_blocks = (node.size + 511) // 512
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attributes(self._node(inode))

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        with self._guard:
            inode = parent.children.get(name)
            node = self._nodes.get(inode) if inode is not None else None
            if node is None or node.withdrawn:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node.lookups += 1
        return self._attributes(node)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        with self._guard:
            for inode, count in inode_list:
                node = self._nodes.get(inode)
                if node is None or inode == pyfuse3.ROOT_INODE:
                    continue
                node.lookups -= count
                if node.lookups <= 0 and node.withdrawn:
                    del self._nodes[inode]

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.entry is None or node.entry.type != SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.entry.target.encode()

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if not stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._node(fh)
        if node.inode == pyfuse3.ROOT_INODE:
            return  # the root is searchable, not listable (mode 0711); say nothing even to root
        with self._guard:
            children = sorted(node.children.items())
        for position, (name, inode) in enumerate(children[start_id:], start=start_id + 1):
            with self._guard:
                child = self._nodes.get(inode)
            if child is None or child.withdrawn:
                continue
            if not pyfuse3.readdir_reply(token, name, self._attributes(child), position):
                return
            with self._guard:
                child.lookups += 1

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.entry is None or node.entry.type != FILE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def release(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._node(fh)
        if node.entry is None or node.entry.type != FILE or node.snapshot_id is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        self.reads += 1
        logger.debug("snapshot view: read %s/%s %d+%d", node.snapshot_id, node.entry.path, off, size)
        try:
            return await trio.to_thread.run_sync(self._read, node, off, size, limiter=self._limiter)
        except StoreError as exc:
            self._failed_read(node, exc)
            raise pyfuse3.FUSEError(errno.EIO) from exc
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # never let a handler end the file system's loop: fail this read only
            logger.exception("snapshot view: read of %s/%s at %d failed", node.snapshot_id, node.entry.path, off)
            raise pyfuse3.FUSEError(errno.EIO) from exc

    # -- reading (fetch threads) -----------------------------------------------------------------
    def _read(self, node: Node, offset: int, size: int) -> bytes:
        assert node.entry is not None and node.snapshot_id is not None
        entry = node.entry
        parts = []
        end = min(offset + size, entry.size)
        touched = []
        for index, ref in entry.covering(offset, size):
            lo, hi = max(offset, ref.offset), min(end, ref.offset + ref.length)
            if ref.is_hole:
                parts.append(bytes(hi - lo))
            else:
                data = self._plaintext(node.snapshot_id, entry.path, index, ref)
                parts.append(data[lo - ref.offset:hi - ref.offset])
            touched.append((entry.path, index))
        with self._guard:
            if node.snapshot_id in self._recording:
                self._touched.setdefault(node.snapshot_id, {}).update(dict.fromkeys(touched))
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def _plaintext(self, snapshot_id: str, path: str, index: int, ref: ChunkRef) -> bytes:
        """One chunk's plaintext: from the small decoded LRU (a chunk is usually read in
        several requests, and a prefetch may be pushing it), else through the store's tiers
        (verified there); concurrent wants of one chunk share one fetch. A packed reference
        (a small file's slice of a shared chunk) is cached as that slice, under its own key."""
        assert ref.name is not None
        name = f"{ref.name}@{ref.at}+{ref.length}" if ref.packed else ref.name
        with self._guard:
            data = self._decoded.get(name)
            if data is not None:
                self._decoded.move_to_end(name)
                return data
            future = self._inflight.get(name)
            owner = future is None
            if owner:
                future = self._inflight[name] = concurrent.futures.Future()
        assert future is not None
        if not owner:
            return future.result()
        try:
            data = self.store.chunk(snapshot_id, path, index, ref)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._guard:
                self._inflight.pop(name, None)
        with self._guard:
            self._decoded[name] = data
            while len(self._decoded) > DECODED_CHUNKS:
                self._decoded.popitem(last=False)
        future.set_result(data)
        return data

    def _failed_read(self, node: Node, exc: StoreError) -> None:
        snapshot_id = node.snapshot_id or "?"
        logger.warning("snapshot view: %s/%s unreadable: %s", snapshot_id, node.entry.path if node.entry else "", exc)
        with self._guard:
            self._failed.setdefault(snapshot_id, exc)

    def failure(self, snapshot_id: str) -> StoreError | None:
        """The first read of `snapshot_id` this view could not serve since it was exposed (a
        chunk missing or corrupt at the origin, or the origin unreachable); None if none."""
        with self._guard:
            return self._failed.get(snapshot_id)


def probe_windows(spans: list[tuple[int, int]], gap: int = PROBE_GAP, most: int = PROBE_WINDOWS) -> list[tuple[int, int]] | None:
    """The byte windows to ask the page cache about for `spans`: merged when less than `gap`
    apart (one mincore call per window), or None (the whole file) past `most` windows."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + gap:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out if len(out) <= most else None


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Byte spans sorted, overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _resident(pages: bytes, lo: int, hi: int) -> bool:
    """Whether every page of byte span [lo, hi) is in the page cache (`pages`: one mincore
    byte per page of the file; empty when unknown: not resident)."""
    window = pages[lo // PAGE:(hi + PAGE - 1) // PAGE]
    return bool(window) and not window.translate(_LOW_BIT).count(0)


def _ignore_missing(call: Callable[..., object], *args: object) -> None:
    """Kernel cache invalidations: an inode or name the kernel no longer knows is fine."""
    try:
        call(*args)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTCONN, errno.ENOSYS, errno.EBADF):
            logger.warning("snapshot view: cache invalidation failed: %s", exc)


def clear_stale_mount(mountpoint: Path) -> None:
    """Detach whatever is mounted at `mountpoint` (a view left by a killed server answers
    ENOTCONN to everything); nothing if nothing is mounted there."""
    if not _is_mountpoint(mountpoint):
        return
    result = subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, text=True, check=False)
    if result.returncode != 0 and _is_mountpoint(mountpoint):
        raise RuntimeError(f"snapshot view failed at step 'unmount stale {mountpoint}': {result.stderr.strip()}")


def _is_mountpoint(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                return True
    return False
