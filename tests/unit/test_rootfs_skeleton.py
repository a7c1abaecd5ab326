"""A restore's private rootfs skeleton (`spec.make_private_rootfs`) is the tree `prepare_rootfs`
makes: same directories, modes and merged-/usr links."""

from __future__ import annotations

import os
from pathlib import Path

from snapfaas.sandbox import spec
from snapfaas.sandbox.interpreter import Interpreter


def _tree(root: Path) -> dict[str, tuple[str, int | str]]:
    out: dict[str, tuple[str, int | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            out[rel] = ("link", os.readlink(path)) if path.is_symlink() else ("dir", path.stat().st_mode & 0o7777)
    return out


class _Interp:
    def __init__(self, prefixes: list[str]) -> None:
        self.prefixes = prefixes

    mount_sources = Interpreter.mount_sources


def test_private_skeleton_matches_prepare_rootfs(tmp_path: Path) -> None:
    interps = [_Interp(["/usr/local", "/opt/pythons/3.11", "/root/.pyenv/versions/3.11.9"])]
    old_umask = os.umask(0o077)
    try:
        spec.prepare_rootfs(tmp_path / "a" / "rootfs", interps)  # type: ignore[arg-type]
        spec.make_private_rootfs(tmp_path / "b" / "rootfs", interps)  # type: ignore[arg-type]
    finally:
        os.umask(old_umask)
    expected = _tree(tmp_path / "a" / "rootfs")
    assert _tree(tmp_path / "b" / "rootfs") == expected
    assert expected["bin"] == ("link", "usr/bin") and expected["root/.pyenv/versions/3.11.9"] == ("dir", 0o755)
    assert (tmp_path / "b" / "rootfs").stat().st_mode & 0o7777 == 0o755


def test_a_prefix_under_a_merged_usr_link_is_left_to_prepare_rootfs() -> None:
    assert spec.rootfs_layout([_Interp(["/lib/python-x"])]) is None  # type: ignore[list-item]
    assert spec.rootfs_layout([_Interp(["/opt/py"])]) is not None  # type: ignore[list-item]
