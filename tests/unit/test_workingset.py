"""Recording and reading ahead a snapshot's file working set (snapfaas.snapshot.workingset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapfaas.snapshot.workingset import (
    PAGE, FileRanges, WorkingSet, WorkingSets, file_mappings, pages_to_ranges, prefetch, process_tree, record,
)

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
    assert prefetch(WorkingSet((unchanged, changed, gone, through_link))) == 2 * PAGE


def test_the_store_round_trips_sweeps_and_drops_a_malformed_file(tmp_path: Path) -> None:
    store = WorkingSets(tmp_path / "ws")
    assert (tmp_path / "ws").stat().st_mode & 0o777 == 0o700
    working_set = WorkingSet((FileRanges("/usr/lib/x.so", 1, 2, 3 * PAGE, 4, ((0, PAGE),)),))
    store.put("snap-a", working_set)
    store.put("snap-b", working_set)
    assert store.get("snap-a") == working_set and store.get("nope") is None
    assert store.sweep({"snap-a"}) == 1 and not store.has("snap-b")
    (tmp_path / "ws" / "snap-c.json").write_text(json.dumps({"format": 1, "files": [{"path": "/x", "ranges": [[-1, 5]]}]}))
    assert store.get("snap-c") is None and not store.has("snap-c")  # unreadable: dropped, recorded again later
    with pytest.raises(ValueError):
        store.get("../escape")
