"""cgroup.create_v1 / attach_v1 on a fake v1 tree (plain files stand in for cgroup files: a
write appends, so one setting per write shows as the settings concatenated)."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapfaas.sandbox import cgroup
from snapfaas.sandbox.cgroup import DEVICE_RULES, Limits

FILES = {
    "cpuset": ("cpuset.cpus", "cpuset.mems", "cgroup.procs"),
    "devices": ("devices.deny", "devices.allow", "cgroup.procs"),
    "memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "cgroup.procs"),
    "pids": ("pids.max", "cgroup.procs"),
}
LIMITS = Limits(512 << 20, 512 << 20, 64)


def _tree(root: Path, rels: list[str]) -> None:
    """The hierarchies, with every level of `rels` made and its files empty (mkdir in a plain
    directory makes no files: the levels exist before the call, as they would after a mkdir)."""
    for hierarchy, names in FILES.items():
        for name in names:
            (root / hierarchy).mkdir(parents=True, exist_ok=True)
            (root / hierarchy / name).write_text("")
        for rel in rels:
            parts = rel.split("/")
            for end in range(1, len(parts) + 1):
                level = root / hierarchy / "/".join(parts[:end])
                level.mkdir(exist_ok=True)
                for name in names:
                    if not (level / name).exists():
                        (level / name).write_text("")
    (root / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")


def test_create_sets_runcs_settings_and_fills_every_cpuset_level(tmp_path: Path) -> None:
    _tree(tmp_path, ["snapfaas/k/e1", "snapfaas/k/e2"])
    for env in ("e1", "e2"):  # the second one takes the levels above as known
        cgroup.create_v1(f"/snapfaas/k/{env}", LIMITS, root=tmp_path)
        leaf = f"snapfaas/k/{env}"
        assert (tmp_path / "devices" / leaf / "devices.deny").read_text() == "a"
        assert (tmp_path / "devices" / leaf / "devices.allow").read_text() == "".join(DEVICE_RULES)
        assert (tmp_path / "memory" / leaf / "memory.limit_in_bytes").read_text() == str(512 << 20)
        assert (tmp_path / "memory" / leaf / "memory.memsw.limit_in_bytes").read_text() == str(512 << 20)
        assert (tmp_path / "pids" / leaf / "pids.max").read_text() == "64"
        for level in ("snapfaas", "snapfaas/k", leaf):
            assert (tmp_path / "cpuset" / level / "cpuset.cpus").read_text() == "0-1"
            assert (tmp_path / "cpuset" / level / "cpuset.mems").read_text() == "0"


def test_a_parent_emptied_since_is_filled_again(tmp_path: Path) -> None:
    _tree(tmp_path, ["snapfaas/k/e1", "snapfaas/k/e2"])
    cgroup.create_v1("/snapfaas/k/e1", LIMITS, root=tmp_path)
    (tmp_path / "cpuset" / "snapfaas" / "k" / "cpuset.cpus").write_text("")
    cgroup.create_v1("/snapfaas/k/e2", LIMITS, root=tmp_path)
    assert (tmp_path / "cpuset" / "snapfaas" / "k" / "cpuset.cpus").read_text() == "0-1"
    assert (tmp_path / "cpuset" / "snapfaas" / "k" / "e2" / "cpuset.cpus").read_text() == "0-1"


def test_a_failed_write_names_the_file_and_the_value(tmp_path: Path) -> None:
    _tree(tmp_path, ["snapfaas/k/e1"])
    (tmp_path / "pids" / "snapfaas" / "k" / "e1" / "pids.max").unlink()
    with pytest.raises(OSError, match=r"writing '64' to .*pids.max"):
        cgroup.create_v1("/snapfaas/k/e1", LIMITS, root=tmp_path)


def test_attach_writes_the_pid_in_every_hierarchy(tmp_path: Path) -> None:
    _tree(tmp_path, ["snapfaas/k/e1"])
    cgroup.attach_v1("/snapfaas/k/e1", 4242, root=tmp_path)
    for hierarchy in FILES:
        assert (tmp_path / hierarchy / "snapfaas" / "k" / "e1" / "cgroup.procs").read_text() == "4242"
