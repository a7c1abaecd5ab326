"""SnapshotView: a real FUSE mount over a real ChunkStore (directory origin, real caches).

Reads, copy-on-write maps, permissions checked by the kernel for other uids, lazy fetching
(counted), recording, corrupt origin chunks (EIO + the failure callback, the mount keeps
serving), withdrawal and unmounting."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.snapshot.view import SnapshotView, TouchedRange, clear_stale_mount, resident_pages
from snapfaas.store import CHUNK_SIZE, ChunkStore, DirectoryOrigin
from tests.storekit import flip_byte, make_tree

SECRET = bytes(range(32))
GROUP = 4242
MiB = 1 << 20


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return tmp_path / "origin"


def new_store(tmp_path: Path, name: str) -> ChunkStore:
    return ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=tmp_path / f"cache-{name}",
                      cache_bytes=64 * MiB, memory_bytes=64 * MiB)


@pytest.fixture
def view(tmp_path: Path) -> Iterator[SnapshotView]:
    """A mounted view over an empty-cache store (the snapshot is written by another store)."""
    writer = new_store(tmp_path, "writer")
    writer.put_tree("fn-1-aaaa", make_tree(tmp_path / "src"))
    writer.put_tree("fn-2-bbbb", make_tree(tmp_path / "src2", seed=2))
    writer.close()
    store = new_store(tmp_path, "reader")
    run = Path(tempfile.mkdtemp(prefix="snapfaas-view-test-", dir="/dev/shm"))  # traversable by other uids
    os.chmod(run, 0o711)
    mounted = SnapshotView(store, run / "view")
    mounted.start()
    try:
        yield mounted
    finally:
        mounted.close()
        store.close()
        assert not _mounted(run / "view")
        shutil.rmtree(run)


def _mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_exposed_snapshot_reads_back_byte_for_byte_with_the_slice_group(tmp_path: Path, view: SnapshotView) -> None:
    mounted = view
    assert not (mounted.mountpoint / "fn-1-aaaa").exists()  # nothing exists until exposed
    root = mounted.expose(mounted.store.manifest("fn-1-aaaa"), GROUP)
    src = tmp_path / "src"
    for name in ("pages-1.img", "pages-2.img", "core-1.img", "empty.img", "tmp/cache/model.bin"):
        assert sha((root / name).read_bytes()) == sha((src / name).read_bytes()), name
    assert os.readlink(root / "tmp" / "pages-link") == "../pages-1.img"
    st = (root / "pages-1.img").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, GROUP, 0o640)
    assert ((root.stat().st_mode & 0o7777), root.stat().st_gid) == (0o750, GROUP)
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in src.iterdir())
    assert os.listdir(mounted.mountpoint) == []  # searchable, not listable
    with pytest.raises(OSError) as denied:
        os.open(root / "core-1.img", os.O_WRONLY)
    assert denied.value.errno in (errno.EROFS, errno.EACCES)
    assert mounted.failure("fn-1-aaaa") is None


def test_other_uids_are_refused_by_the_kernel_and_the_slice_group_may_read(view: SnapshotView) -> None:
    mounted = view
    root = mounted.expose(mounted.store.manifest("fn-1-aaaa"), GROUP)

    def cat_as(uid: int, gid: int) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "cat", str(root / "core-1.img")],
                              capture_output=True, check=False)

    assert cat_as(70000, GROUP).stdout == b"core" * 300
    stranger = cat_as(70001, 70001)
    assert stranger.returncode != 0 and b"Permission denied" in stranger.stderr


MAP_CHECK = """
import hashlib, mmap, os, sys
path, size = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
first = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
digest = hashlib.sha256(first[:]).hexdigest()
head = first[0:4]
first[0:4] = b"MINE"
second = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ)
print(digest, second[0:4] == head, first[0:4] == b"MINE")
"""


def test_private_maps_read_the_image_and_writes_stay_private(tmp_path: Path, view: SnapshotView) -> None:
    """In a child process: a page fault on a view file in the serving process itself would
    wait for its own GIL-holding thread (see the view's contract)."""
    mounted = view
    root = mounted.expose(mounted.store.manifest("fn-1-aaaa"), GROUP)
    expected = (tmp_path / "src" / "pages-1.img").read_bytes()
    out = subprocess.run([sys.executable, "-c", MAP_CHECK, str(root / "pages-1.img"), str(len(expected))],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out == [sha(expected), "True", "True"]


def test_reads_fetch_only_the_chunks_they_touch_and_are_recorded(view: SnapshotView) -> None:
    mounted = view
    manifest = mounted.store.manifest("fn-1-aaaa")
    root = mounted.expose(manifest, GROUP)
    mounted.record("fn-1-aaaa")
    with open(root / "pages-1.img", "rb", buffering=0) as image:
        os.posix_fadvise(image.fileno(), 0, 0, os.POSIX_FADV_RANDOM)  # no readahead beyond the range
        image.seek(4 * CHUNK_SIZE + 100)
        image.read(4096)
    fetched = mounted.store.counters()["origin"].hits
    stored = len({ref.name for ref in manifest.chunk_refs() if not ref.is_hole})
    assert 1 <= fetched < stored
    touched = mounted.touched("fn-1-aaaa")
    assert [(t.path, t.offset) for t in touched] == [("pages-1.img", 4 * CHUNK_SIZE)]
    with open(root / "pages-1.img", "rb", buffering=0) as image:  # chunk 2 is a hole: read, not recorded
        os.posix_fadvise(image.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        assert os.pread(image.fileno(), 4096, 2 * CHUNK_SIZE) == bytes(4096)
    assert mounted.touched("fn-1-aaaa") == touched

    def read_head() -> bytes:
        with open(root / "pages-1.img", "rb", buffering=0) as image:
            os.posix_fadvise(image.fileno(), 0, 0, os.POSIX_FADV_RANDOM)  # no readahead windows
            return os.pread(image.fileno(), 4096, 0)

    first = read_head()
    served = mounted.reads
    for _ in range(2):  # the kernel's page cache answers, across re-opens (keep_cache)
        assert read_head() == first
    assert mounted.reads == served


def test_a_corrupt_origin_chunk_is_eio_and_reported_and_the_view_keeps_serving(tmp_path: Path, view: SnapshotView) -> None:
    mounted = view
    manifest = mounted.store.manifest("fn-1-aaaa")
    bad = manifest.file("pages-1.img").chunks[1]
    origin = mounted.store.origin
    assert isinstance(origin, DirectoryOrigin) and bad.name is not None
    flip_byte(origin.chunks / bad.name[:2] / bad.name, 50)
    root = mounted.expose(manifest, GROUP)
    with open(root / "pages-1.img", "rb", buffering=0) as image:
        with pytest.raises(OSError) as failed:
            os.pread(image.fileno(), 4096, CHUNK_SIZE + 8192)
    assert failed.value.errno == errno.EIO
    failure = mounted.failure("fn-1-aaaa")
    assert failure is not None and "corrupt at origin" in str(failure)
    assert mounted.failure("fn-2-bbbb") is None
    other = mounted.expose(mounted.store.manifest("fn-2-bbbb"), GROUP)
    assert sha((other / "pages-1.img").read_bytes()) == sha((tmp_path / "src2" / "pages-1.img").read_bytes())


def test_withdrawn_snapshots_disappear_and_holds_follows_exposure(view: SnapshotView) -> None:
    mounted = view
    root = mounted.expose(mounted.store.manifest("fn-1-aaaa"), GROUP)
    assert (root / "core-1.img").read_bytes()
    assert mounted.holds(GROUP) and not mounted.holds(GROUP + 1)
    mounted.withdraw("fn-1-aaaa")
    assert not root.exists()
    assert not mounted.holds(GROUP)
    again = mounted.expose(mounted.store.manifest("fn-1-aaaa"), GROUP + 1)  # re-exposed for another slice
    assert again.stat().st_gid == GROUP + 1


def test_a_dead_mount_left_behind_is_cleared(tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    stale.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "leftover", str(stale)], check=True)
    assert _mounted(stale)
    clear_stale_mount(stale)
    assert not _mounted(stale)
    clear_stale_mount(stale)  # nothing mounted: nothing to do


def test_prefetch_pushes_missing_chunks_into_the_page_cache_once(tmp_path: Path, view: SnapshotView) -> None:
    mounted = view
    root = mounted.expose(mounted.store.manifest("fn-1-aaaa"), GROUP)
    image = root / "pages-1.img"
    size = image.stat().st_size
    assert not any(flag & 1 for flag in resident_pages(image, size))
    wanted = [TouchedRange("pages-1.img", 0, CHUNK_SIZE), TouchedRange("pages-1.img", 3 * CHUNK_SIZE, 2 * CHUNK_SIZE),
              TouchedRange("pages-1.img", 2 * CHUNK_SIZE, CHUNK_SIZE)]  # chunk 2 is a hole: nothing to push
    assert not mounted.resident("fn-1-aaaa", wanted[1])
    report = mounted.prefetch("fn-1-aaaa", wanted)
    assert mounted.resident("fn-1-aaaa", wanted[1]) and not mounted.resident("fn-1-aaaa", wanted[2])
    assert not mounted.resident("fn-1-aaaa", TouchedRange("absent.img", 0, 1))
    assert (report.pushed, report.resident, report.failed, report.bytes) == (3, 0, 0, 3 * CHUNK_SIZE)
    present = resident_pages(image, size)
    per_chunk = CHUNK_SIZE // os.sysconf("SC_PAGE_SIZE")
    assert [all(flag & 1 for flag in present[i * per_chunk:(i + 1) * per_chunk]) for i in range(6)] == \
        [True, False, False, True, True, False]
    served = mounted.reads
    with open(image, "rb", buffering=0) as pages:
        assert os.pread(pages.fileno(), CHUNK_SIZE, 3 * CHUNK_SIZE) == (tmp_path / "src" / "pages-1.img").read_bytes()[3 * CHUNK_SIZE:4 * CHUNK_SIZE]
    assert mounted.reads == served  # answered from the page cache
    again = mounted.prefetch("fn-1-aaaa", wanted)
    assert (again.pushed, again.resident) == (0, 3)


def test_priming_from_the_dump_fills_the_page_cache_without_store_reads(tmp_path: Path, view: SnapshotView) -> None:
    mounted = view
    manifest = mounted.store.manifest("fn-1-aaaa")
    root = mounted.expose(manifest, GROUP)
    pushed = mounted.prime("fn-1-aaaa", tmp_path / "src")
    stored = sum(ref.length for entry in manifest.files for ref in entry.chunks if not ref.is_hole)
    assert pushed == stored
    image = root / "pages-1.img"
    present = resident_pages(image, image.stat().st_size)
    holes = [ref for ref in manifest.file("pages-1.img").chunks if ref.is_hole]
    page = os.sysconf("SC_PAGE_SIZE")
    expected_missing = sum(ref.length // page for ref in holes)
    assert sum(1 for flag in present if not flag & 1) == expected_missing  # every stored page, no hole
    assert mounted.store.counters()["origin"].hits == 0 and mounted.reads == 0


def test_a_re_exposed_snapshot_is_prefetched_into_its_new_files_not_the_old_ones(view: SnapshotView) -> None:
    mounted = view
    manifest = mounted.store.manifest("fn-1-aaaa")
    old = mounted.expose(manifest, GROUP)
    with open(old / "pages-1.img", "rb"):  # the kernel keeps the first exposure's inode while it is open
        new = mounted.expose(manifest, GROUP + 1)  # another slice: withdrawn and exposed afresh
        report = mounted.prefetch("fn-1-aaaa", [TouchedRange("pages-1.img", 0, CHUNK_SIZE)])
        assert (report.pushed, report.failed) == (1, 0)
        page = os.sysconf("SC_PAGE_SIZE")
        present = resident_pages(new / "pages-1.img", CHUNK_SIZE)
        assert len(present) == CHUNK_SIZE // page and all(flag & 1 for flag in present)


def test_a_working_set_records_runs_of_touched_pages_and_a_prefetch_pushes_only_those(view: SnapshotView) -> None:
    mounted = view
    root = mounted.expose(mounted.store.manifest("fn-1-aaaa"), GROUP)
    page = os.sysconf("SC_PAGE_SIZE")
    per_chunk = CHUNK_SIZE // page
    # pages 0-2 and 5 (gap of 2: one run), 40 alone, and the last page of chunk 0 with the first of chunk 1 (cut there)
    touched = {0, 1, 2, 5, 40, per_chunk - 1, per_chunk}
    ranges = [r for r in mounted.chunk_ranges("fn-1-aaaa", {"pages-1.img": touched}) if r.path == "pages-1.img"]
    assert ranges == [TouchedRange("pages-1.img", 0, 6 * page), TouchedRange("pages-1.img", 40 * page, page),
                      TouchedRange("pages-1.img", (per_chunk - 1) * page, page),
                      TouchedRange("pages-1.img", CHUNK_SIZE, page)]
    assert {r.path for r in mounted.chunk_ranges("fn-1-aaaa", {})} == {"core-1.img", "tmp/cache/model.bin"}  # small files: whole, always
    report = mounted.prefetch("fn-1-aaaa", ranges)
    assert (report.pushed, report.failed, report.bytes) == (2, 0, 9 * page)  # two chunks fetched, nine pages pushed
    image = root / "pages-1.img"
    present = resident_pages(image, 2 * CHUNK_SIZE)
    assert [i for i, flag in enumerate(present) if flag & 1] == [0, 1, 2, 3, 4, 5, 40, per_chunk - 1, per_chunk]
    assert mounted.prefetch("fn-1-aaaa", ranges).resident == 2
