"""Fixed mtimes for empty tmpfs mounts before a deterministic init's checkpoint (snapshot/timestamps.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from snapfaas.snapshot import timestamps

MOUNTINFO = """\
22 1 253:1 / / rw,relatime - ext4 /dev/vda rw
23 22 0:45 / /dev rw,nosuid - tmpfs tmpfs rw,mode=755
24 23 0:46 / /dev/shm rw - tmpfs shm rw
25 22 0:47 / /my\\040tmp rw - tmpfs tmpfs rw,uid=1000
26 23 0:5 /null /dev/null rw - devtmpfs udev rw
27 22 0:48 / /proc ro shared:3 - proc proc rw
"""


def test_the_tmpfs_mount_points_are_read_from_mountinfo() -> None:
    assert timestamps.tmpfs_mounts(MOUNTINFO) == ["/dev", "/dev/shm", "/my tmp"]


def test_only_empty_tmpfs_roots_get_the_fixed_time(tmp_path: Path) -> None:
    proc = tmp_path / "7"
    root = proc / "root"
    (root / "dev" / "shm").mkdir(parents=True)
    (root / "my tmp").mkdir()
    (root / "dev" / "null").write_text("")
    (proc / "mountinfo").write_text(MOUNTINFO)
    assert timestamps.settle(7, proc=str(tmp_path)) == ["/dev/shm", "/my tmp"]  # /dev holds an entry: left alone
    assert (root / "my tmp").stat().st_mtime_ns == timestamps.FIXED_NS
    assert (root / "dev" / "shm").stat().st_mtime_ns == timestamps.FIXED_NS
    assert (root / "dev").stat().st_mtime_ns != timestamps.FIXED_NS


def test_a_read_only_mount_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "7" / "root" / "dev" / "shm").mkdir(parents=True)
    (tmp_path / "7" / "root" / "dev" / "null").write_text("")
    (tmp_path / "7" / "mountinfo").write_text(MOUNTINFO)

    def read_only(path: str, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(os, "utime", read_only)
    assert timestamps.settle(7, proc=str(tmp_path)) == []
