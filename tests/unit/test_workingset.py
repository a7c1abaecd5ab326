"""Recording and reading ahead a snapshot's file working set (snapfaas.snapshot.workingset),
kept as the snapshot's store attachment (a real store over a directory origin)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.snapshot.workingset import (
    ATTACHMENT, PAGE, FileRanges, WorkingSet, WorkingSetDocument, WorkingSetKeeper, WorkingSets, file_mappings,
    pages_to_ranges, prefetch, process_tree, record, remove_legacy,
)
from snapfaas.store import ChunkStore, DirectoryOrigin, StoreError

SECRET = bytes(range(32))
SNAPSHOT = "fn-1-aaaa"

MAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 1234 /usr/bin/python3.11
7f0000000000-7f0000100000 r-xp 00002000 fe:00 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
7f0000400000-7f0000401000 r--p 00000000 00:1f 77 /tmp/gone (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_maps_lines_give_file_mappings_only() -> None:
    mappings = list(file_mappings(MAPS))
    assert [m.path for m in mappings] == ["/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
    libc = mappings[1]
    assert (libc.start, libc.end, libc.offset, libc.inode) == (0x7F0000000000, 0x7F0000100000, 0x2000, 99)


def test_pages_become_merged_byte_ranges() -> None:
    assert pages_to_ranges([]) == []
    assert pages_to_ranges([5, 3, 4, 4]) == [(3 * PAGE, 3 * PAGE)]
    assert pages_to_ranges([0, 2], gap_pages=1) == [(0, 3 * PAGE)]  # one page between: read it too
    assert pages_to_ranges([0, 3], gap_pages=1) == [(0, PAGE), (3 * PAGE, PAGE)]


def test_a_process_records_the_pages_it_touched_of_a_mapped_file(tmp_path: Path) -> None:
    data = tmp_path.parent / f"{tmp_path.name}-data.bin"  # on the test's disk, not a tmpfs
    data.write_bytes(os.urandom(64 * PAGE))
    assert os.major(data.stat().st_dev) != 0, "test premise: a file on a disk filesystem"
    with open(data, "rb") as f:  # out of the page cache, so the kernel maps only what is faulted
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    # a child maps the file (no read-around) and touches pages 10 and 40, then waits
    child = subprocess.Popen([sys.executable, "-c", (
        "import mmap, sys\n"
        f"f = open({str(data)!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
        "m.madvise(mmap.MADV_RANDOM)\n"
        f"m[10 * {PAGE}]; m[40 * {PAGE}]\n"
        "print('ready', flush=True); sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        working_set = record(os.getpid())  # this process and its descendants: the child among them
        assert child.pid in process_tree(os.getpid())
    finally:
        child.kill()
        child.wait()
        data.unlink()
    [entry] = [f for f in working_set.files if f.path == str(data)]
    assert entry.ranges == ((10 * PAGE, PAGE), (40 * PAGE, PAGE))
    assert any(f.path.endswith(".so") or "python" in f.path for f in working_set.files)


def test_prefetch_skips_files_that_changed_or_vanished(tmp_path: Path) -> None:
    same = tmp_path / "same"
    same.write_bytes(b"x" * 3 * PAGE)
    st = same.stat()
    unchanged = FileRanges(str(same), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, ((0, PAGE), (2 * PAGE, PAGE)))
    changed = FileRanges(str(same), st.st_dev, st.st_ino + 1, st.st_size, st.st_mtime_ns, ((0, PAGE),))
    gone = FileRanges(str(tmp_path / "gone"), 1, 2, 3, 4, ((0, PAGE),))
    symlink = tmp_path / "link"
    symlink.symlink_to(same)
    through_link = FileRanges(str(symlink), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, ((0, PAGE),))
    # the two ranges are one request (the page between them is read too)
    assert prefetch(WorkingSet((unchanged, changed, gone, through_link))) == 3 * PAGE
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the same requests from a pool's threads
        assert prefetch(WorkingSet((unchanged, changed, gone, through_link)), pool) == 3 * PAGE


def test_read_ahead_merges_near_ranges_into_one_request_and_cuts_a_large_file_into_tasks() -> None:
    from snapfaas.snapshot.workingset import read_ahead_tasks
    entry = FileRanges("/lib/big.so", 1, 2, 1 << 30, 4,
                       ((0, PAGE), (2 * PAGE, PAGE),  # a page apart: one request
                        (1 << 20, PAGE),  # 1 MiB on: a request of its own
                        (8 << 20, 3 << 20), ((11 << 20) + (32 << 10), 1 << 20)))  # 32 KiB apart: one request
    small = FileRanges("/lib/small.so", 1, 3, 1 << 20, 4, ((0, PAGE),))
    tasks = read_ahead_tasks(WorkingSet((entry, small)), gap=64 << 10, task_bytes=2 << 20, head=0)
    assert [(e.path, ranges) for e, ranges in tasks] == [
        ("/lib/big.so", ((0, 3 * PAGE), (1 << 20, PAGE), (8 << 20, (4 << 20) + (32 << 10)))),  # 2 MiB reached in the last
        ("/lib/small.so", ((0, PAGE),)),
    ]
    tasks = read_ahead_tasks(WorkingSet((entry,)), gap=64 << 10, task_bytes=PAGE, head=0)
    assert [ranges for _, ranges in tasks] == [((0, 3 * PAGE),), ((1 << 20, PAGE),), ((8 << 20, (4 << 20) + (32 << 10)),)]
    # every file's start (CRIU reads its ELF header and notes at restore) is asked for first
    tasks = read_ahead_tasks(WorkingSet((entry, small)), gap=64 << 10, task_bytes=2 << 20, head=16 << 10)
    assert [(e.path, ranges) for e, ranges in tasks] == [
        ("/lib/big.so", ((0, 16 << 10),)),  # the header took in the pages near it
        ("/lib/small.so", ((0, 16 << 10),)),
        ("/lib/big.so", ((1 << 20, PAGE), (8 << 20, (4 << 20) + (32 << 10)))),
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    """A real store (directory origin, disk cache) holding snapshot fn-1-aaaa."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "pages-1.img").write_bytes(os.urandom(3 * PAGE))
    store = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=tmp_path / "cache-a")
    store.put_tree(SNAPSHOT, tree)
    yield store
    store.close()


def attachment_at_origin(tmp_path: Path) -> Path:
    return tmp_path / "origin" / "attachments" / SNAPSHOT / ATTACHMENT


LIBC = WorkingSet((FileRanges("/usr/lib/x.so", 1, 2, 3 * PAGE, 4, ((0, PAGE),)),))


def test_working_sets_are_a_versioned_document_with_sections_in_the_snapshots_store_attachment(
        tmp_path: Path, store: ChunkStore) -> None:
    sets = WorkingSets(store)
    assert sets.get(SNAPSHOT) is None
    document = sets.put_files(SNAPSHOT, LIBC)
    assert document is not None and sets.get(SNAPSHOT) == document and document.files == LIBC
    assert json.loads(store.get_attachment(SNAPSHOT, ATTACHMENT) or b"") == {
        "version": 1, "sections": {"files": {"entries": [
            {"path": "/usr/lib/x.so", "dev": 1, "ino": 2, "size": 3 * PAGE, "mtime_ns": 4, "ranges": [[0, PAGE]]}]}}}
    assert attachment_at_origin(tmp_path).read_bytes().startswith(b"SFATTACH")  # sealed by the store
    with pytest.raises(StoreError):  # the snapshot must exist
        sets.put_files("fn-9-none", LIBC)


def test_a_rewrite_keeps_sections_this_build_does_not_know(store: ChunkStore) -> None:
    sets = WorkingSets(store)
    chunks = {"names": ["ab" * 32], "bytes": 524288}  # e.g. a section a later build adds
    store.put_attachment(SNAPSHOT, ATTACHMENT, json.dumps({"version": 1, "sections": {"chunks": chunks}}).encode())
    assert sets.get(SNAPSHOT) == WorkingSetDocument({"chunks": chunks})
    assert sets.get(SNAPSHOT).files is None  # type: ignore[union-attr]
    sets.put_files(SNAPSHOT, LIBC)
    stored = sets.get(SNAPSHOT)
    assert stored is not None and stored.sections["chunks"] == chunks and stored.files == LIBC
    assert sets.update(SNAPSHOT, lambda document: document.with_section("chunks", {"names": []})) is not None
    stored = sets.get(SNAPSHOT)
    assert stored is not None and stored.sections["chunks"] == {"names": []} and stored.files == LIBC
    assert sets.update(SNAPSHOT, lambda document: None) is None  # a change may decline
    assert sets.get(SNAPSHOT) == stored


def test_another_version_is_neither_used_nor_rewritten_and_a_malformed_document_reads_as_none(
        store: ChunkStore, caplog: pytest.LogCaptureFixture) -> None:
    sets = WorkingSets(store)
    future = json.dumps({"version": 2, "sections": {"files": "a shape this build cannot read"}}).encode()
    store.put_attachment(SNAPSHOT, ATTACHMENT, future)
    document = sets.get(SNAPSHOT)
    assert document is not None and not document.supported
    assert sets.put_files(SNAPSHOT, LIBC) is None and store.get_attachment(SNAPSHOT, ATTACHMENT) == future
    for bad in (b"not json", b"[]", b'{"version": 1}', b'{"version": "1", "sections": {}}', b"\xff"):
        store.put_attachment(SNAPSHOT, ATTACHMENT, bad)
        assert sets.get(SNAPSHOT) is None, bad
    assert sum("is unreadable" in r.getMessage() for r in caplog.records) == 5
    store.put_attachment(SNAPSHOT, ATTACHMENT, json.dumps({"version": 1, "sections": {"files": {"entries": [
        {"path": "/x", "ranges": [[-1, 5]]}]}}}).encode())
    with pytest.raises(ValueError):
        sets.get(SNAPSHOT).files  # type: ignore[union-attr]


def test_the_keeper_records_once_into_the_store_and_a_keeper_on_another_host_reads_it_ahead(
        tmp_path: Path, store: ChunkStore) -> None:
    """Real recording (this test process's own mappings) through a real store; the second
    keeper stands for a server on another host: same origin, empty cache dir."""
    store.put_attachment(SNAPSHOT, ATTACHMENT, json.dumps({"version": 1, "sections": {"chunks": {"n": 3}}}).encode())
    first = WorkingSetKeeper(WorkingSets(store))

    async def first_host() -> None:
        first.prefetch(SNAPSHOT)  # nothing recorded yet: nothing to read ahead
        first.observe(SNAPSHOT, os.getpid)
        await first.close()

    asyncio.run(first_host())
    recorded = WorkingSets(store).get(SNAPSHOT)
    assert recorded is not None and recorded.sections["chunks"] == {"n": 3}  # the other section survived
    files = recorded.files
    assert files is not None and any("python" in f.path or f.path.endswith(".so") for f in files.files)
    envelope = attachment_at_origin(tmp_path).read_bytes()

    other = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=tmp_path / "cache-b")
    try:
        second = WorkingSetKeeper(WorkingSets(other))
        asked: list[str] = []

        async def second_host() -> None:
            second.prefetch(SNAPSHOT)
            await asyncio.gather(*second._tasks)
            known = second._cached(SNAPSHOT)
            asked.append("files" if known is not None and known.files == files else "none")
            second.observe(SNAPSHOT, os.getpid)  # already recorded: not again
            await second.close()

        asyncio.run(second_host())
        assert asked == ["files"]
        assert attachment_at_origin(tmp_path).read_bytes() == envelope  # not rewritten (a rewrite re-seals)
        assert (tmp_path / "cache-b" / "attachments" / SNAPSHOT / ATTACHMENT).read_bytes() == envelope
    finally:
        other.close()


def test_the_keeper_survives_a_snapshot_deleted_before_its_working_set_is_stored(
        store: ChunkStore, caplog: pytest.LogCaptureFixture) -> None:
    keeper = WorkingSetKeeper(WorkingSets(store))

    async def run() -> None:
        keeper.prefetch(SNAPSHOT)
        await asyncio.gather(*keeper._tasks)
        store.delete(SNAPSHOT)
        keeper.observe(SNAPSHOT, os.getpid)
        await keeper.close()
        keeper.observe(SNAPSHOT, os.getpid)  # closed: starts nothing
        assert not keeper._tasks

    asyncio.run(run())
    assert any("failed at step 'store working set'" in r.getMessage() and "has no manifest" in r.getMessage()
               for r in caplog.records)
    assert store.attachments(SNAPSHOT) == []


def test_the_directory_of_the_previous_format_is_removed(tmp_path: Path) -> None:
    assert remove_legacy(tmp_path) == 0
    (tmp_path / "workingsets").mkdir()
    (tmp_path / "workingsets" / "fn-1-aaaa.json").write_text("{}")
    (tmp_path / "workingsets" / "fn-2-bbbb.json").write_text("{}")
    assert remove_legacy(tmp_path) == 2 and not (tmp_path / "workingsets").exists()


def test_a_snapshot_read_ahead_moments_ago_is_read_ahead_again_only_if_the_page_cache_lost_it(
        store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapfaas.snapshot import workingset
    from snapfaas.snapshot.view import TouchedRange
    keeper = WorkingSetKeeper(WorkingSets(store))
    keeper._remember(SNAPSHOT, workingset._Known(LIBC, True, [TouchedRange("pages-1.img", 0, PAGE)]))
    submitted: list[int] = []
    cached = [True]
    monkeypatch.setattr(workingset, "submit_read_ahead", lambda ws, pool: submitted.append(len(ws.files)) or [])
    monkeypatch.setattr(workingset, "still_cached", lambda ws: cached[0])

    async def run() -> None:
        for _ in range(3):  # a burst: one read-ahead, the others find its sentinel page cached
            keeper.prefetch(SNAPSHOT)
            await asyncio.gather(*keeper._tasks)
        cached[0] = False  # the page cache was dropped: read ahead again at once
        keeper.prefetch(SNAPSHOT)
        await asyncio.gather(*keeper._tasks)
        cached[0] = True
        keeper.prefetch(SNAPSHOT)
        await asyncio.gather(*keeper._tasks)
        keeper._prefetched[(SNAPSHOT, "files")] -= workingset.PREFETCH_REPEAT_S  # that one is old now
        keeper.prefetch(SNAPSHOT)  # not recent: read ahead whatever the sentinel says
        await asyncio.gather(*keeper._tasks)
        await keeper.close()

    asyncio.run(run())
    assert submitted == [1, 1, 1]


def test_the_sentinel_page_of_a_working_set_tells_whether_the_page_cache_still_holds_it(tmp_path: Path) -> None:
    from snapfaas.snapshot.workingset import still_cached
    data = tmp_path / "lib.so"
    data.write_bytes(os.urandom(64 * PAGE))  # just written: in the page cache
    st = data.stat()
    entry = FileRanges(str(data), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, ((0, PAGE), (2 * PAGE, PAGE)))
    assert still_cached(WorkingSet((entry,)))
    os.sync()
    fd = os.open(data, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    finally:
        os.close(fd)
    if os.major(os.stat(tmp_path).st_dev) != 0:  # a real disk (tmpfs pages cannot be dropped)
        assert not still_cached(WorkingSet((entry,)))
        assert not still_cached(WorkingSet((entry,)))  # asking reads nothing in
    assert not still_cached(WorkingSet(()))
    assert not still_cached(WorkingSet((FileRanges(str(tmp_path / "gone"), 1, 2, 3, 4, ((0, PAGE),)),)))


def test_a_restore_reads_the_files_ahead_first_and_the_images_later_each_once(
        store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker asks for the library pages when a restore is decided and for the view's
    pages once the snapshot is exposed: each part is read ahead once, in its own task."""
    from snapfaas.snapshot import workingset
    from snapfaas.snapshot.view import PrefetchReport, TouchedRange

    class View:  # what the keeper uses of a SnapshotView
        def __init__(self) -> None:
            self.pushed: list[str] = []

        def prefetch(self, snapshot_id: str, ranges: list[TouchedRange]) -> PrefetchReport:
            self.pushed.append(snapshot_id)
            return PrefetchReport()

        def resident(self, snapshot_id: str, item: TouchedRange) -> bool:
            return True  # what was pushed is still there

    view = View()
    submitted: list[int] = []
    monkeypatch.setattr(workingset, "submit_read_ahead", lambda ws, pool: submitted.append(len(ws.files)) or [])
    monkeypatch.setattr(workingset, "still_cached", lambda ws: True)
    keeper = WorkingSetKeeper(WorkingSets(store), view=view)  # type: ignore[arg-type]
    keeper._remember(SNAPSHOT, workingset._Known(LIBC, True, [TouchedRange("pages-1.img", 0, PAGE)]))

    async def run() -> None:
        for files, images in ((True, False), (True, False), (False, True), (False, True), (True, True)):
            keeper.prefetch(SNAPSHOT, files=files, images=images)
            await asyncio.gather(*keeper._tasks)
        await keeper.close()

    asyncio.run(run())
    assert submitted == [1] and view.pushed == [SNAPSHOT]


def test_the_programs_every_restore_runs_are_read_ahead_whole_and_first(tmp_path: Path) -> None:
    from snapfaas.snapshot.workingset import read_ahead_tasks, whole_files
    program = tmp_path / "criu"
    program.write_bytes(b"\x7fELF" + b"x" * (3 * PAGE))
    platform = whole_files([str(program), str(tmp_path / "absent")])
    [entry] = platform.files
    assert entry.ranges == ((0, 3 * PAGE + 4),) and entry.size == 3 * PAGE + 4
    tasks = read_ahead_tasks(WorkingSet(platform.files + LIBC.files))
    assert [e.path for e, _ in tasks] == [str(program), "/usr/lib/x.so"]
    assert prefetch(platform) == 3 * PAGE + 4
