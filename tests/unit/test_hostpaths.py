"""The daemon's trusted directories (snapfaas.hostpaths): created or verified component by
component, never through a symlink, never owned or writable by another user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from snapfaas.hostpaths import UntrustedPath, private_dir, trusted_dir
from snapfaas.sandbox.mounts import remove_tree

NOBODY = 65534


@pytest.fixture
def base(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    return tmp_path


def test_creates_missing_components_with_the_mode_asked(base: Path) -> None:
    leaf = private_dir(base / "a" / "b", 0o711)
    assert stat.S_IMODE(os.lstat(leaf).st_mode) == 0o711
    assert stat.S_IMODE(os.lstat(base / "a").st_mode) == 0o755


def test_fixes_the_mode_of_an_existing_own_directory(base: Path) -> None:
    (base / "d").mkdir(mode=0o755)
    private_dir(base / "d", 0o700)
    assert stat.S_IMODE(os.lstat(base / "d").st_mode) == 0o700


def test_refuses_a_symlink_anywhere(base: Path) -> None:
    (base / "target").mkdir()
    (base / "link").symlink_to(base / "target")
    with pytest.raises(UntrustedPath, match="symlink"):
        private_dir(base / "link", 0o700)
    with pytest.raises(UntrustedPath, match="symlink"):
        private_dir(base / "link" / "below", 0o700)
    assert not (base / "target" / "below").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_refuses_a_directory_another_user_owns(base: Path) -> None:
    (base / "theirs").mkdir()
    os.chown(base / "theirs", NOBODY, NOBODY)
    with pytest.raises(UntrustedPath, match="owned by uid 65534"):
        trusted_dir(base / "theirs")
    with pytest.raises(UntrustedPath, match="owned by uid 65534"):
        private_dir(base / "theirs" / "mine", 0o700)  # they could swap what is below


def test_refuses_a_directory_others_can_write(base: Path) -> None:
    (base / "open").mkdir()
    os.chmod(base / "open", 0o777)
    with pytest.raises(UntrustedPath, match="writable by group or others"):
        trusted_dir(base / "open")
    with pytest.raises(UntrustedPath, match="not sticky"):
        private_dir(base / "open" / "mine", 0o700)


def test_a_sticky_ancestor_is_fine(base: Path) -> None:
    (base / "shared").mkdir()
    os.chmod(base / "shared", 0o1777)  # like /tmp: others cannot rename what is ours
    assert private_dir(base / "shared" / "mine", 0o700) == base / "shared" / "mine"


def test_an_unknown_directory_is_not_created_without_a_mode(base: Path) -> None:
    with pytest.raises(UntrustedPath, match="does not exist"):
        trusted_dir(base / "missing")


def test_remove_tree_refuses_a_symlink(base: Path) -> None:
    (base / "victim").mkdir()
    (base / "victim" / "keep.txt").write_text("x")
    (base / "bundles").symlink_to(base / "victim")
    with pytest.raises(OSError, match="symlink"):
        remove_tree(base / "bundles")
    assert (base / "victim" / "keep.txt").exists()
