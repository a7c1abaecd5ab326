"""snapshot.memory: when a snapshot's restores may map memory, and the jemalloc scan."""

from __future__ import annotations

import mmap
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
