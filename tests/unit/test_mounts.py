"""sandbox.mounts: the mount table lookups that guard a bundle's deletion."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapfaas.sandbox import mounts


def _line(number: int, point: str, fstype: str = "tmpfs") -> str:
    return f"{number} 1 0:{number} / {point} rw,relatime shared:{number} - {fstype} {fstype} rw"


def _table(monkeypatch: pytest.MonkeyPatch, points: list[str]) -> list[int]:
    """Serve `points` (escaped as the kernel writes them) as the mount table; counts the reads."""
    reads: list[int] = []
    text = "\n".join(_line(i + 30, p) for i, p in enumerate(["/", "/proc", *points])) + "\n"

    def read() -> str:
        reads.append(1)
        return text

    monkeypatch.setattr(mounts, "_mountinfo", read)
    return reads


def test_mounts_below_finds_escaped_points_deepest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "my bundle"
    bundle.mkdir()
    root = str(bundle.resolve())
    _table(monkeypatch, [root.replace(" ", "\\040") + "/rootfs", root.replace(" ", "\\040") + "/rootfs/usr",
                         root.replace(" ", "\\040")])
    assert mounts.mounts_below(bundle) == [f"{root}/rootfs/usr", f"{root}/rootfs"]


def test_mounts_below_ignores_siblings_sharing_a_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "env"
    bundle.mkdir()
    root = str(bundle.resolve())
    _table(monkeypatch, [root + "x/rootfs", root])
    assert mounts.mounts_below(bundle) == []


def test_a_tree_without_mounts_reads_the_table_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "env"
    (bundle / "rootfs" / "usr").mkdir(parents=True)
    reads = _table(monkeypatch, ["/run/netns/sf00n0001"])
    mounts.remove_tree(bundle)
    assert not bundle.exists()
    assert len(reads) == 1


def test_a_tree_still_mounted_below_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "env"
    (bundle / "rootfs").mkdir(parents=True)
    _table(monkeypatch, [str(bundle.resolve()) + "/rootfs"])
    monkeypatch.setattr(mounts, "_unmount_lazily", lambda points: [])  # umount fails
    with pytest.raises(OSError, match="still mounted below it"):
        mounts.remove_tree(bundle)
    assert (bundle / "rootfs").is_dir()
