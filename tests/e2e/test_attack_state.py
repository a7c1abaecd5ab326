"""Attacker suite, daemon state: paths a local user could plant (symlinks, directories of
their own, world-writable ones) make `snapfaas serve` refuse to start, naming the path, and
nothing the planted path points at is touched."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.config import RAM_ROOT
from snapfaas.sandbox.mounts import remove_tree
from tests.conftest import ACCESS_KEY, SECRET_KEY, ProcessFactory, free_port, require_root

NOBODY = 65534


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    require_root()
    path = Path(f"/var/lib/snapfaas/test/{tmp_path.name}-{os.getpid()}")
    yield path
    run = RAM_ROOT / path.name
    if run.is_symlink():
        run.unlink()
    else:
        for child in ("bundles", "cache"):
            if (run / child).is_symlink():
                (run / child).unlink()
        remove_tree(run)
    remove_tree(path)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """What a planted symlink points at: must come out untouched."""
    path = tmp_path / "victim"
    path.mkdir()
    (path / "precious.txt").write_text("keep me")
    return path


def refused(processes: ProcessFactory, tmp_path: Path, data_dir: Path, sandbox: Path) -> str:
    """Start a server that must refuse to start; returns what it printed."""
    log = tmp_path / "server.log"
    env = dict(os.environ, SNAPFAAS_ACCESS_KEY_ID=ACCESS_KEY, SNAPFAAS_SECRET_ACCESS_KEY=SECRET_KEY)
    proc = processes.start([sys.executable, "-m", "snapfaas", "serve", "--port", str(free_port()), "--data-dir",
                            str(data_dir), "--sandbox-dir", str(sandbox)], log, env)
    assert proc.wait(60) != 0
    text = log.read_text()
    assert "Traceback" not in text, text
    return text


def test_symlinked_run_dir_is_refused(processes: ProcessFactory, tmp_path: Path, sandbox: Path, victim: Path) -> None:
    RAM_ROOT.mkdir(mode=0o711, exist_ok=True)
    (RAM_ROOT / sandbox.name).symlink_to(victim)
    out = refused(processes, tmp_path, tmp_path / "data", sandbox)
    assert f"refusing {RAM_ROOT / sandbox.name}: it is a symlink" in out, out
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("child", ["bundles", "cache"])
def test_symlinked_bundles_or_cache_is_refused(processes: ProcessFactory, tmp_path: Path, sandbox: Path, victim: Path,
                                               child: str) -> None:
    run = RAM_ROOT / sandbox.name
    run.mkdir(mode=0o711, parents=True)
    (run / child).symlink_to(victim)
    out = refused(processes, tmp_path, tmp_path / "data", sandbox)
    assert "symlink" in out and str(run / child) in out, out
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]


def test_data_dir_of_another_user_is_refused(processes: ProcessFactory, tmp_path: Path, sandbox: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, NOBODY, NOBODY)
    out = refused(processes, tmp_path, data, sandbox)
    assert f"refusing {data}: owned by uid {NOBODY}" in out, out
    assert list(data.iterdir()) == []


def test_world_writable_data_dir_is_refused(processes: ProcessFactory, tmp_path: Path, sandbox: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o777)
    out = refused(processes, tmp_path, data, sandbox)
    assert "writable by group or others" in out, out
    assert list(data.iterdir()) == []
