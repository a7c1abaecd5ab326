"""`cgroup.PeakMemory`: one pread per read on a kept-open descriptor, None once the cgroup is gone."""

from __future__ import annotations

import os
from pathlib import Path

from snapfaas.sandbox.cgroup import PeakMemory, peak_file


def _v1(root: Path, cgroup: str, value: bytes) -> Path:
    path = root / "memory" / cgroup.lstrip("/") / "memory.max_usage_in_bytes"
    path.parent.mkdir(parents=True)
    path.write_bytes(value)
    return path


def test_reads_the_current_value_each_time_on_one_descriptor(tmp_path: Path) -> None:
    path = _v1(tmp_path, "/snapfaas/d/env", b"4096\n")
    peak = PeakMemory("/snapfaas/d/env", tmp_path)
    assert peak.bytes() == 4096
    fd = peak._fd
    path.write_bytes(b"8192\n")  # rewritten in place: the same inode, read again at offset 0
    assert peak.bytes() == 8192
    assert peak._fd == fd
    peak.close()
    peak.close()  # idempotent
    assert peak._fd is None


def test_cgroup_v2_file_is_found(tmp_path: Path) -> None:
    path = tmp_path / "snapfaas" / "d" / "env" / "memory.peak"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"123\n")
    assert peak_file("/snapfaas/d/env", tmp_path) == path
    assert PeakMemory("/snapfaas/d/env", tmp_path).bytes() == 123


def test_missing_cgroup_is_none_until_it_exists(tmp_path: Path) -> None:
    peak = PeakMemory("/snapfaas/d/env", tmp_path)
    assert peak.bytes() is None
    _v1(tmp_path, "/snapfaas/d/env", b"1\n")
    assert peak.bytes() == 1


def test_unreadable_value_closes_the_descriptor(tmp_path: Path) -> None:
    path = _v1(tmp_path, "/snapfaas/d/env", b"1\n")
    peak = PeakMemory("/snapfaas/d/env", tmp_path)
    assert peak.bytes() == 1
    fd = peak._fd
    assert fd is not None
    path.write_bytes(b"garbage\n")
    assert peak.bytes() is None
    assert peak._fd is None
    try:
        os.fstat(fd)
    except OSError:
        pass
    else:
        raise AssertionError("the descriptor should have been closed")
