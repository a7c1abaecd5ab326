"""Density: what N restored environments of one version cost in memory, against one.

Three figures for a set of live environments (each read while they are all alive):

- **PSS** (the headline): the proportional set size summed over every process of the
  environments (/proc/<pid>/smaps_rollup). A page mapped by k processes counts 1/k in each,
  so the sum is the memory the set holds, shared library and snapshot pages counted once;
  for one environment alone it is its whole footprint. Precise and immune to other load.
- **cgroup charges**: the sum of the environments' memory cgroup charges (v1
  `memory.usage_in_bytes`, v2 `memory.current`). A page is charged to the cgroup that first
  faulted it, so pages already resident before (the page cache of libraries and the snapshot's
  images) are charged to none of them: this counts the memory each environment adds.
- **MemAvailable drop**: the host's MemAvailable before the environments exist minus while they
  are alive. The same increment as the charges, as the host sees it; noisy on a shared host.

The ratio 16-vs-1 of the PSS sum answers "16 environments use <= 2x the memory of one"; the
other two show the per-environment increment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from snapfaas.bench.cpu import cgroup_pids, environment_cgroups, wait_for
from snapfaas.sandbox.cgroup import CGROUP_ROOT


def parse_meminfo(text: str, key: str = "MemAvailable") -> int:
    """Bytes of `key` in a /proc/meminfo text."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            number, _, unit = value.strip().partition(" ")
            return int(number) * (1024 if unit == "kB" else 1)
    raise ValueError(f"/proc/meminfo has no {key}")


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """{"Rss": bytes, "Pss": bytes, ...} from a /proc/<pid>/smaps_rollup text."""
    out: dict[str, int] = {}
    for line in text.splitlines()[1:]:  # the first line names the address range
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[name.strip()] = int(parts[0]) * 1024
    return out


def mem_available() -> int:
    return parse_meminfo(Path("/proc/meminfo").read_text())


def memory_charge(cgroup: str) -> int:
    """Bytes charged to `cgroup` and below (0 if it is gone)."""
    rel = cgroup.strip("/")
    for path in (CGROUP_ROOT / "memory" / rel / "memory.usage_in_bytes", CGROUP_ROOT / rel / "memory.current",
                 CGROUP_ROOT / "unified" / rel / "memory.current"):
        try:
            return int(path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            continue
    return 0


def rollup(pids: Iterable[int]) -> dict[str, int]:
    """Rss and Pss summed over `pids` (processes that exited meanwhile are skipped)."""
    total = {"Rss": 0, "Pss": 0}
    for pid in pids:
        try:
            fields = parse_smaps_rollup(Path(f"/proc/{pid}/smaps_rollup").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for key in total:
            total[key] += fields.get(key, 0)
    return total


def snapshot(state_dir: Path, available_before: int) -> dict[str, Any]:
    """The memory figures of the daemon's live environments right now (see the module doc)."""
    cgroups = [c for c in environment_cgroups(state_dir) if cgroup_pids(c)]
    pids = [p for c in cgroups for p in cgroup_pids(c)]
    sizes = rollup(pids)
    return {
        "environments": len(cgroups),
        "processes": len(pids),
        "pss_bytes": sizes["Pss"],
        "rss_bytes": sizes["Rss"],
        "cgroup_bytes": sum(memory_charge(c) for c in cgroups),
        "mem_available_drop_bytes": available_before - mem_available(),
    }


def ratios(one: dict[str, Any], many: dict[str, Any]) -> dict[str, float | None]:
    """many / one for each memory figure (None where either figure is not positive: a
    MemAvailable that rose meanwhile says only that the host was busy)."""
    out: dict[str, float | None] = {}
    for key in ("pss_bytes", "cgroup_bytes", "mem_available_drop_bytes"):
        out[key] = round(many[key] / one[key], 2) if one[key] > 0 and many[key] > 0 else None
    return out


def mib(n: int) -> float:
    return round(n / 2**20, 1)



def resumed(state_dir: Path, count: int) -> Callable[[], bool]:
    """A check: `count` environments have processes and none of those is CRIU or runc (still
    restoring)."""
    def check() -> bool:
        cgroups = [c for c in environment_cgroups(state_dir) if cgroup_pids(c)]
        if len(cgroups) < count:
            return False
        for c in cgroups:
            for pid in cgroup_pids(c):
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except (FileNotFoundError, ProcessLookupError):
                    continue
                if comm.startswith(("criu", "runc")):
                    return False
        return True
    return check


def measure(state_dir: Path, settled: Callable[[], bool], start: Callable[[int], Callable[[], None]], count: int,
            resume_timeout: float = 60.0) -> dict[str, Any]:
    """One environment, then `count` at once: for each, wait until the daemon is `settled`, read
    MemAvailable, `start(n)` n concurrent invokes that hold their environments (it returns a
    `finish` that lets them end and checks them), wait until n environments `resumed`, read
    `snapshot`, then `finish()`. Returns {"1": ..., "<count>": ..., "ratios": ...}."""
    out: dict[str, Any] = {}
    for n in (1, count):
        wait_for(settled, 120, "the daemon's environments to be torn down")
        before = mem_available()
        finish = start(n)
        try:
            wait_for(resumed(state_dir, n), resume_timeout, f"{n} restored environments to resume")
            out[str(n)] = snapshot(state_dir, before)
        finally:
            finish()
    out["ratios"] = ratios(out["1"], out[str(count)])
    return out
