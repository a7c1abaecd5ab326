"""snapshot.memory: when a snapshot's restores may map memory, and the jemalloc scan."""

from __future__ import annotations

import mmap
import threading
import os
from pathlib import Path

from snapfaas.snapshot import memory


def test_choose_maps_only_when_configured_supported_and_safe() -> None:
    assert memory.choose("map", True, None) == memory.MemoryDecision("map", None)
    assert memory.choose("copy", True, None) == memory.MemoryDecision("copy", None)
    assert memory.choose("map", False, None) == memory.MemoryDecision("copy", None)
    forced = memory.choose("map", True, "jemalloc in /usr/lib/libarrow.so.1500")
    assert forced.mode == "copy" and "jemalloc in /usr/lib/libarrow.so.1500" in (forced.reason or "")
    assert memory.choose("copy", True, "jemalloc in x").reason is None  # nothing was overridden


def test_scan_finds_a_mapped_file_carrying_jemalloc(tmp_path: Path) -> None:
    lib = tmp_path / "libfake.so"
    lib.write_bytes(b"\0" * 8192 + b"<jemalloc>: Invalid conf pair" + b"\0" * 100)
    assert memory.find_zero_assuming_allocator([os.getpid()]) is None  # this interpreter maps none
    with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):
        assert memory.find_zero_assuming_allocator([os.getpid()]) == f"jemalloc in {lib}"


def test_container_pids_walks_the_process_tree() -> None:
    pids = memory.container_pids(os.getppid())
    assert pids[0] == os.getppid() and os.getpid() in pids


def test_scan_verdicts_are_cached_by_file_identity(tmp_path: Path) -> None:
    lib = tmp_path / "libplain.so"
    lib.write_bytes(b"\1" * 4096)
    known: dict[memory.FileKey, str | None] = {}
    with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):
        assert memory.find_zero_assuming_allocator([os.getpid()], known) is None
        st = lib.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        assert known[key] is None
        known[key] = "jemalloc"  # a cached verdict is trusted: the file is not read again
        assert memory.find_zero_assuming_allocator([os.getpid()], known) == f"jemalloc in {lib}"


def test_marker_split_across_read_chunks_is_found(tmp_path: Path) -> None:
    lib = tmp_path / "libsplit.so"
    lib.write_bytes(b"\0" * 1000 + b"<jemalloc>" + b"\0" * 1000)
    for chunk in (1, 3, 1004, 1005, 4096):
        assert memory._contains_marker(lib, chunk=chunk) == "jemalloc", chunk


def test_scan_reads_at_most_the_per_file_cap(tmp_path: Path) -> None:
    lib = tmp_path / "libfar.so"
    lib.write_bytes(b"\0" * 10_000 + b"<jemalloc>")
    assert memory._contains_marker(lib, limit=10_010) == "jemalloc"
    assert memory._contains_marker(lib, limit=10_000) is None


def test_scan_skips_anything_but_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert memory._contains_marker(fifo) is None  # opened non-blocking, then refused by fstat
    assert memory._contains_marker(Path("/dev/zero"), limit=1 << 20) is None
    assert memory._contains_marker(tmp_path / "missing") is None
    with open("/dev/zero", "rb") as f, mmap.mmap(f.fileno(), 4096, access=mmap.ACCESS_READ):
        assert memory.find_zero_assuming_allocator([os.getpid()]) is None


def test_a_file_truncated_and_extended_while_scanned_does_not_crash(tmp_path: Path) -> None:
    """With mmap this is a SIGBUS that kills the scanning process; with pread a short read."""
    target = tmp_path / "churn"
    target.write_bytes(b"\1" * (8 << 20))
    stop = threading.Event()

    def churn() -> None:
        with open(target, "r+b") as f:
            while not stop.is_set():
                os.ftruncate(f.fileno(), 0)
                os.ftruncate(f.fileno(), 8 << 20)

    with open(target, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):  # so the scan finds it
        thread = threading.Thread(target=churn)
        thread.start()
        try:
            for _ in range(50):
                assert memory.find_zero_assuming_allocator([os.getpid()], {}) is None
                assert memory._contains_marker(target, chunk=4096) is None
        finally:
            stop.set()
            thread.join()


def test_cached_verdicts_are_capped(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(memory, "MAX_KNOWN", 3)
    known: dict[memory.FileKey, str | None] = {(0, i, 0, 0): None for i in range(3)}
    lib = tmp_path / "libnew.so"
    lib.write_bytes(b"\1" * 4096)
    with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):
        memory.find_zero_assuming_allocator([os.getpid()], known)
    assert len(known) <= 3 and (0, 0, 0, 0) not in known
