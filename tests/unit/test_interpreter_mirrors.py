"""Host-wide interpreter mirrors (sandbox/mirrors.py): made once, reused while the prefix is
unchanged, made anew under a new name when it changed, safe against concurrent creators and a
creator killed mid-creation."""

from __future__ import annotations

import concurrent.futures
import os
import stat
from pathlib import Path

import pytest

from snapfaas.sandbox.interpreter import mirror_source
from snapfaas.sandbox.mirrors import STAGING_PREFIX, current_mirror, ensure_mirror


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """A small interpreter-like tree under a directory others cannot search."""
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    root = private / "python"
    (root / "lib" / "python3.11").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin" / "python3.11").write_text("#!binary\n")
    (root / "lib" / "python3.11" / "os.py").write_text("sep = '/'\n")
    (root / "bin" / "python3").symlink_to("python3.11")
    root.chmod(0o700)
    return root


def test_a_reachable_prefix_is_bound_as_it_is(tmp_path: Path) -> None:
    assert mirror_source("/usr", tmp_path / "mirrors") == "/usr"
    assert not (tmp_path / "mirrors").exists()


def test_an_unreachable_prefix_is_mirrored_once_with_hard_links_and_reused(prefix: Path, tmp_path: Path) -> None:
    mirrors = tmp_path / "mirrors"
    first = Path(mirror_source(str(prefix), mirrors))
    assert first.parent == mirrors and stat.S_IMODE(mirrors.stat().st_mode) == 0o711
    assert stat.S_IMODE(first.stat().st_mode) & 0o005 == 0o005, "others may read and search the mirror's top"
    source, linked = prefix / "lib" / "python3.11" / "os.py", first / "lib" / "python3.11" / "os.py"
    assert linked.stat().st_ino == source.stat().st_ino, "a hard link, not a copy"
    assert os.readlink(first / "bin" / "python3") == "python3.11"
    made = first.stat().st_ino
    second = Path(mirror_source(str(prefix), mirrors))  # a later daemon start
    assert second == first and second.stat().st_ino == made, "the same tree, not made again"
    assert [p.name for p in mirrors.iterdir() if p.is_dir()] == [first.name]


def test_a_changed_prefix_gets_a_new_mirror_and_the_old_one_stays(prefix: Path, tmp_path: Path) -> None:
    mirrors = tmp_path / "mirrors"
    old = Path(mirror_source(str(prefix), mirrors))
    (prefix / "lib" / "python3.11" / "added.py").write_text("x = 1\n")
    new = Path(mirror_source(str(prefix), mirrors))
    assert new != old and (new / "lib" / "python3.11" / "added.py").read_text() == "x = 1\n"
    assert old.is_dir() and not (old / "lib" / "python3.11" / "added.py").exists(), "a running daemon may bind the old one"
    replaced = prefix / "bin" / "python3.11"  # replaced by rename: a new inode the old links do not see
    staged = prefix / "bin" / ".python3.11.new"
    staged.write_text("#!binary v2\n")
    os.rename(staged, replaced)
    newest = Path(mirror_source(str(prefix), mirrors))
    assert newest not in (old, new) and (newest / "bin" / "python3.11").read_text() == "#!binary v2\n"
    assert current_mirror(str(prefix), mirrors) == newest


def test_a_mode_change_of_a_directory_gets_a_new_mirror(prefix: Path, tmp_path: Path) -> None:
    mirrors = tmp_path / "mirrors"
    old = Path(mirror_source(str(prefix), mirrors))
    (prefix / "lib").chmod(0o700)
    new = Path(mirror_source(str(prefix), mirrors))
    assert new != old and stat.S_IMODE((new / "lib").stat().st_mode) == 0o700


def test_a_creation_killed_midway_leaves_only_a_staging_tree_the_next_creator_deletes(prefix: Path, tmp_path: Path) -> None:
    mirrors = tmp_path / "mirrors"
    mirrors.mkdir()
    torn = mirrors / f"{STAGING_PREFIX}deadbeef-0000"
    (torn / "lib").mkdir(parents=True)  # what a creator killed during its copy left
    (mirrors / f"{STAGING_PREFIX}deadbeef-feed.json").write_text("{")
    assert current_mirror(str(prefix), mirrors) is None
    made = ensure_mirror(str(prefix), mirrors)
    assert sorted(p.name for p in mirrors.iterdir()) == sorted([".lock", made.name, f"{made.name}.json"])


def test_a_mirror_whose_manifest_is_missing_or_damaged_is_not_used(prefix: Path, tmp_path: Path) -> None:
    mirrors = tmp_path / "mirrors"
    made = ensure_mirror(str(prefix), mirrors)
    manifest = made.with_name(made.name + ".json")
    manifest.write_text("{not json")
    assert current_mirror(str(prefix), mirrors) is None
    assert ensure_mirror(str(prefix), mirrors) == made, "the same fingerprint: the complete tree is reused"
    assert current_mirror(str(prefix), mirrors) == made


def test_concurrent_daemons_make_one_mirror(prefix: Path, tmp_path: Path) -> None:
    mirrors = tmp_path / "mirrors"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        made = set(pool.map(lambda _: mirror_source(str(prefix), mirrors), range(4)))
    assert len(made) == 1
    assert [p.name for p in mirrors.iterdir() if p.is_dir()] == [Path(made.pop()).name]


def test_a_daemon_deletes_the_per_daemon_mirrors_of_earlier_versions(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from snapfaas.worker.factory import EnvironmentFactory

    legacy = tmp_path / "sandbox" / "interpreters" / "0123456789abcdef" / "lib"
    legacy.mkdir(parents=True)
    (legacy / "os.py").write_text("sep = '/'\n")
    factory = EnvironmentFactory.__new__(EnvironmentFactory)  # only prepare's clean-up is exercised
    factory.config = SimpleNamespace(sandbox_dir=tmp_path / "sandbox")  # type: ignore[assignment]
    factory.prepare([])
    assert not (tmp_path / "sandbox" / "interpreters").exists()
    factory.prepare([])  # nothing left: fine
