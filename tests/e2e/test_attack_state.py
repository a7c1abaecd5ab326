"""Attacker suite, daemon state: paths a local user could plant (symlinks, directories of
their own, world-writable ones) make `snapfaas serve` refuse to start, naming the path, and
nothing the planted path points at is touched."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.config import RAM_ROOT, bundles_for, run_dir_for, snapshot_cache_for
from snapfaas.sandbox.mounts import fstype_of, remove_tree
from tests.conftest import ACCESS_KEY, SECRET_KEY, ProcessFactory, ServerHandle, create, free_port, invoke_json, require_root

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


def refused(processes: ProcessFactory, tmp_path: Path, data_dir: Path, sandbox: Path, *extra: str) -> str:
    """Start a server that must refuse to start; returns what it printed."""
    log = tmp_path / "server.log"
    env = dict(os.environ, SNAPFAAS_ACCESS_KEY_ID=ACCESS_KEY, SNAPFAAS_SECRET_ACCESS_KEY=SECRET_KEY)
    proc = processes.start([sys.executable, "-m", "snapfaas", "serve", "--port", str(free_port()), "--data-dir",
                            str(data_dir), "--sandbox-dir", str(sandbox), *extra], log, env)
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


def snapshot_of(path: Path) -> tuple[int, int, int, list[str]]:
    """Owner, group, mode and entries of a directory: what a daemon taking it over would change."""
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), sorted(p.name for p in path.iterdir())


@pytest.fixture
def root_victim(tmp_path: Path) -> Path:
    """A root-owned 0755 directory (as /etc is): passes the owner and mode checks by itself, so
    only refusing the symlink to it protects it."""
    path = tmp_path / "root-owned"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    (path / "precious.conf").write_text("keep me")
    return path


@pytest.mark.parametrize("option", ["--data-dir", "--sandbox-dir", "--store-cache-dir", "--store-origin"])
def test_symlinked_data_store_or_cache_dir_is_refused(processes: ProcessFactory, tmp_path: Path, sandbox: Path,
                                                      root_victim: Path, option: str) -> None:
    """E.g. `--data-dir /tmp/snapdata` with /tmp/snapdata pre-created by a local user as a
    symlink to a root-owned directory: refused, the directory is not taken over."""
    planted = tmp_path / "planted"
    planted.symlink_to(root_victim)
    before = snapshot_of(root_victim)
    if option == "--data-dir":
        out = refused(processes, tmp_path, planted, sandbox)
    elif option == "--sandbox-dir":
        out = refused(processes, tmp_path, tmp_path / "data", planted)
        assert not (RAM_ROOT / planted.name).exists(), "nothing is created in RAM before the check"
    else:
        out = refused(processes, tmp_path, tmp_path / "data", sandbox, option, str(planted))
    assert f"refusing {planted}: it is a symlink" in out, out
    assert snapshot_of(root_victim) == before


@pytest.mark.parametrize("option", ["--store-cache-dir", "--store-origin"])
def test_store_or_cache_dir_of_another_user_or_writable_by_others_is_refused(
        processes: ProcessFactory, tmp_path: Path, sandbox: Path, option: str) -> None:
    owned = tmp_path / "owned"
    owned.mkdir()
    os.chown(owned, NOBODY, NOBODY)
    out = refused(processes, tmp_path, tmp_path / "data", sandbox, option, str(owned))
    assert f"refusing {owned}: owned by uid {NOBODY}" in out, out
    assert list(owned.iterdir()) == []
    writable = tmp_path / "writable"
    writable.mkdir()
    os.chmod(writable, 0o777)
    out = refused(processes, tmp_path, tmp_path / "data2", sandbox, option, str(writable))
    assert f"refusing {writable}: writable by group or others" in out, out
    assert list(writable.iterdir()) == []


def test_a_running_servers_private_state_is_root_owned_private_and_in_ram(server: ServerHandle, lam) -> None:  # type: ignore[no-untyped-def]
    """What a server that started (the module's ordinary one) left: its RAM state (snapshot
    cache, container bundles) under /run/snapfaas on a tmpfs, its data dir private; every
    component root-owned, a real directory, writable by root only; 0700 where only the daemon
    goes, 0711 (walk through, no listing) where the sandboxes' mapped roots must reach. A local
    user lists none of them."""
    create(lam, "stateful", {"app.py": "def handler(event, context):\n    return 1\n"})
    invoke_json(lam, "stateful")  # an environment exists: its bundle is in the bundles dir
    sandbox = Path(server.extra_args[server.extra_args.index("--sandbox-dir") + 1])
    run, cache, bundles = run_dir_for(sandbox), snapshot_cache_for(sandbox), bundles_for(sandbox)
    assert fstype_of(RAM_ROOT) == "tmpfs"
    expected = {RAM_ROOT: 0o711, run: 0o711, cache: 0o711, bundles: 0o711, RAM_ROOT / "net": 0o700,
                server.data_dir: 0o700, server.data_dir / "uploads": 0o700}
    for path, mode in expected.items():
        st = path.lstat()
        assert stat.S_ISDIR(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, mode), (path, st)
    assert run.parent == RAM_ROOT and cache.parent == run and bundles.parent == run
    assert any(bundles.iterdir()), "control: root lists the bundles"
    for path in expected:
        listing = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "ls", str(path)],
                                 capture_output=True, text=True)
        assert listing.returncode != 0 and "Permission denied" in listing.stderr, (path, listing)
