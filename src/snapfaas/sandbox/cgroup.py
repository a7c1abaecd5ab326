"""Read an environment's memory accounting from its cgroup (v1 or v2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


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
