"""Environment cgroups: memory accounting (v1 or v2) and removal.

Layout (one subtree per daemon, so a daemon can clean up after a crash without touching
another daemon's environments)::

    /snapfaas/<daemon key>/                  `daemon_cgroup`: owned by one `Runc` state dir
    /snapfaas/<daemon key>/<env id>/         `environment_cgroup`: owned by one environment
    /snapfaas/<daemon key>/<env id>/sandbox  `container_cgroup`: created and removed by runc

runc removes the container's cgroup before `runc run` exits, i.e. before the worker sees the
container die; the environment's cgroup survives it and its usage counters are hierarchical,
so the worker can still read the container's peak memory (and, on cgroup v2, its OOM kills).
The worker removes an environment's cgroup when it destroys the environment, and a daemon
removes its whole subtree at start (after reaping leftover containers) and at shutdown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)
CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "/snapfaas"
CONTAINER_LEAF = "sandbox"


def daemon_cgroup(state_dir: Path) -> str:
    """The subtree of the daemon whose runc state lives in `state_dir`."""
    return f"{PARENT}/{hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]}"


def environment_cgroup(daemon: str, env_id: str) -> str:
    """The cgroup an environment owns (it outlives the container's own cgroup)."""
    return f"{daemon}/{env_id}"


def container_cgroup(environment: str) -> str:
    """The cgroupsPath runc creates (and removes) for the environment's container."""
    return f"{environment}/{CONTAINER_LEAF}"


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    peak_bytes: int
    oom_killed: bool


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _oom_kills(events: Path) -> int:
    try:
        for line in events.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def memory_stats(cgroup: str) -> MemoryStats | None:
    """Peak memory and whether the OOM killer fired, or None if the cgroup is gone."""
    rel = cgroup.lstrip("/")
    v1 = CGROUP_ROOT / "memory" / rel
    if v1.is_dir():
        peak = _read_int(v1 / "memory.max_usage_in_bytes")
        if peak is None:
            return None
        return MemoryStats(peak, _oom_kills(v1 / "memory.oom_control") > 0)
    for base in (CGROUP_ROOT / rel, CGROUP_ROOT / "unified" / rel):
        peak = _read_int(base / "memory.peak")
        if peak is not None:
            return MemoryStats(peak, _oom_kills(base / "memory.events") > 0)
    return None


def hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """Every mounted cgroup hierarchy: the v2 root, or each v1 controller (plus systemd/unified)."""
    if (root / "cgroup.controllers").exists():
        return [root]
    seen: set[Path] = set()
    out: list[Path] = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            continue  # cpu -> cpu,cpuacct and the like: the target is listed on its own
        real = entry.resolve()
        if real not in seen:
            seen.add(real)
            out.append(entry)
    return out


def remove(cgroup: str, root: Path = CGROUP_ROOT) -> list[str]:
    """Remove `cgroup` and every cgroup below it from every hierarchy; idempotent.

    Returns one message per directory that could not be removed (a cgroup with live
    processes, say); a missing cgroup is not a failure.
    """
    failures: list[str] = []
    rel = cgroup.strip("/")
    if not rel:
        raise ValueError("refusing to remove the root cgroup")
    for hierarchy in hierarchies(root):
        top = hierarchy / rel
        if not top.is_dir():
            continue
        for dirpath, _, _ in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                continue
            except OSError as exc:
                failures.append(f"rmdir {dirpath}: {exc.strerror}")
    return failures
