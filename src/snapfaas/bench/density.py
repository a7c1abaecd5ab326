"""Density: what N restored environments of one version cost in memory, against one.

Figures for a set of live environments (each read while they are all alive):

- **footprint** (the verdict's figure): every resident page the environments' processes map,
  each counted once however many of them map it (distinct page frames, read from
  /proc/<pid>/pagemap), plus the kernel memory charged to their cgroups (page tables, kernel
  stacks, slab: what no page count sees). For **one environment alone** ("the memory of one")
  that is its whole footprint: every page it maps (libraries and the snapshot pages it touched
  in full, as if nothing else on the host used them) and its kernel memory. For N it is the
  shared pages once plus each environment's private pages and kernel memory. Unlike PSS it does
  not depend on other processes of the host mapping the same libraries.
- **sum of PSS** (/proc/<pid>/smaps_rollup; a page mapped by k processes counts 1/k in each):
  what this bench reported before; smaller than the page count when processes outside the
  environments (another function's environments, on this shared host) map the same files.
- **cgroup charges**: the sum of the environments' memory cgroup charges (v1
  `memory.usage_in_bytes`, v2 `memory.current`; both include kernel memory). A page is charged
  to the cgroup that first faulted it, so pages already resident before (the page cache of
  libraries and the snapshot's images) are charged to none of them: this counts what each
  environment adds, and its N-vs-1 ratio is ~N by construction.
- **MemAvailable drop**: the host's MemAvailable before the environments exist minus while they
  are alive. The same increment as the charges, as the host sees it; noisy on a shared host.
- **per environment, kernel memory by kind**: page tables, kernel stacks (and other whole
  kernel pages charged to the environment) and slab. cgroup v2's memory.stat has them; on v1
  the pages charged to the environment's memory cgroups are found in /proc/kpagecgroup and
  classified by /proc/kpageflags (page-table pages are flagged; kernel stacks are the charged
  pages with no user, LRU or slab flag), and slab is what is left of the kernel charge (slab
  objects are charged one by one, not by page).
- **per environment, by process**: private bytes (Private_Clean + Private_Dirty) of the
  environment's init (pid 1 in its namespace, the process whose parent is outside it) and of
  its other processes (the runtime), averaged over the environments: where the increment goes.

The ratio N-vs-1 of the footprint answers "16 environments use <= 2x the memory of one"; the
others show the per-environment increment.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

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


def kernel_charge(cgroup: str) -> int:
    """Bytes of kernel memory (page tables, kernel stacks, slab) charged to `cgroup` and below:
    v1 `memory.kmem.usage_in_bytes`, v2 `memory.stat`'s kernel (0 if it is gone)."""
    rel = cgroup.strip("/")
    try:
        return int((CGROUP_ROOT / "memory" / rel / "memory.kmem.usage_in_bytes").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        pass
    for top in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        try:
            stat = dict(line.split() for line in (top / rel / "memory.stat").read_text().splitlines())
        except (FileNotFoundError, ValueError):
            continue
        if "kernel" in stat:
            return int(stat["kernel"])
        return sum(int(stat.get(key, 0)) for key in ("kernel_stack", "pagetables", "slab"))
    return 0


KPF_LRU, KPF_SLAB, KPF_ANON, KPF_PGTABLE = 5, 7, 12, 26  # /proc/kpageflags bits (linux/kernel-page-flags.h)
KPAGE_CHUNK = 1 << 23  # bytes of /proc/kpagecgroup read at once (1 Mi page frames)


def page_kind(flags: int) -> str:
    """What a page charged to a memory cgroup holds, from its /proc/kpageflags entry."""
    if flags >> KPF_PGTABLE & 1:
        return "page_tables"
    if flags >> KPF_SLAB & 1:
        return "slab"
    if flags >> KPF_ANON & 1 or flags >> KPF_LRU & 1:
        return "user"
    return "kernel_stack"  # charged, not mapped by a user, not on an LRU list: kernel stacks (vmalloc'd)


def charged_pages(owners: dict[int, str], kpagecgroup: BinaryIO, kpageflags: BinaryIO) -> dict[str, dict[str, int]]:
    """{owner: {kind: pages}} of the page frames charged to memory cgroups, `owners` naming the
    owner of each cgroup directory inode number; kinds by `page_kind`. /proc/kpagecgroup gives
    each frame's cgroup inode, /proc/kpageflags its flags (8 bytes per frame in both); one pass
    over the frames for every owner."""
    patterns = {struct.pack("<Q", inode): owner for inode, owner in owners.items() if inode}
    counts: dict[str, dict[str, int]] = {}
    base = 0
    while True:
        chunk = kpagecgroup.read(KPAGE_CHUNK)
        if not chunk:
            return counts
        for pattern, owner in patterns.items():
            at = chunk.find(pattern)
            while at >= 0:
                if at % 8 == 0:
                    kpageflags.seek(base + at)
                    kind = page_kind(struct.unpack("<Q", kpageflags.read(8))[0])
                    mine = counts.setdefault(owner, {})
                    mine[kind] = mine.get(kind, 0) + 1
                at = chunk.find(pattern, at + 1)
        base += len(chunk)


def kernel_parts(cgroups: Iterable[str]) -> dict[str, dict[str, int]]:
    """{cgroup: bytes of kernel memory charged to it and below, by kind}: page tables, kernel
    stacks and slab (v2: memory.stat; v1: `charged_pages`, slab being the rest of the kernel
    charge). A cgroup that is gone, or when the kernel does not say, has none."""
    out: dict[str, dict[str, int]] = {}
    owners: dict[int, str] = {}
    for cgroup in cgroups:
        rel = cgroup.strip("/")
        for top in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
            try:
                stat = dict(line.split() for line in (top / rel / "memory.stat").read_text().splitlines())
            except (FileNotFoundError, ValueError):
                continue
            if "pagetables" in stat and "kernel_stack" in stat:  # v2
                out[cgroup] = {"page_tables_bytes": int(stat["pagetables"]), "kernel_stack_bytes": int(stat["kernel_stack"]),
                               "slab_bytes": int(stat.get("slab", 0))}
                break
        else:
            for directory, _, _ in os.walk(CGROUP_ROOT / "memory" / rel):  # v1
                try:
                    owners[os.stat(directory).st_ino] = cgroup
                except FileNotFoundError:
                    continue
    if not owners:
        return out
    try:
        with open("/proc/kpagecgroup", "rb") as kpagecgroup, open("/proc/kpageflags", "rb") as kpageflags:
            pages = charged_pages(owners, kpagecgroup, kpageflags)
    except (FileNotFoundError, PermissionError):  # no CONFIG_MEMCG page owner files, or not root
        return out
    page_size = os.sysconf("SC_PAGE_SIZE")
    for cgroup in set(owners.values()):
        mine = pages.get(cgroup, {})
        tables, stacks = mine.get("page_tables", 0) * page_size, mine.get("kernel_stack", 0) * page_size
        out[cgroup] = {"page_tables_bytes": tables, "kernel_stack_bytes": stacks,
                       "slab_bytes": max(0, kernel_charge(cgroup) - tables - stacks)}
    return out


PFN_MASK = (1 << 55) - 1  # /proc/<pid>/pagemap entry: bits 0-54 the page frame, bit 63 present
PRESENT = 1 << 63


def mapped_ranges(smaps: str) -> list[tuple[int, int]]:
    """(start, end) of every mapping with resident pages, from a /proc/<pid>/smaps text."""
    out: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for line in smaps.splitlines():
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            start, _, end = head.partition("-")
            current = (int(start, 16), int(end, 16))
        elif head == "Rss:" and current is not None and int(line.split()[1]) > 0:
            out.append(current)
    return out


def resident_frames(pid: int, page_size: int) -> set[int]:
    """The page frames of every resident page `pid` maps (empty if it is gone). Needs root:
    to anyone else pagemap hides the frame numbers (all read as 0)."""
    frames: set[int] = set()
    try:
        ranges = mapped_ranges(Path(f"/proc/{pid}/smaps").read_text())
        with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            for start, end in ranges:
                pagemap.seek(start // page_size * 8)
                entries = memoryview(pagemap.read((end - start) // page_size * 8)).cast("Q")
                frames.update(entry & PFN_MASK for entry in entries if entry & PRESENT)
    except (FileNotFoundError, ProcessLookupError):
        return set()
    if 0 in frames:
        raise PermissionError(f"/proc/{pid}/pagemap hides page frame numbers (root is needed to count shared pages once)")
    return frames


def unique_resident_bytes(pids: Iterable[int]) -> int:
    """Bytes of the distinct resident pages that `pids` map: a page mapped by several of them
    (or by other processes too) counts once."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    frames: set[int] = set()
    for pid in pids:
        frames |= resident_frames(pid, page_size)
    return len(frames) * page_size


ROLLUP_FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Anonymous")


def rollup(pids: Iterable[int]) -> dict[str, int]:
    """`ROLLUP_FIELDS` summed over `pids` (processes that exited meanwhile are skipped)."""
    total = dict.fromkeys(ROLLUP_FIELDS, 0)
    for pid in pids:
        try:
            fields = parse_smaps_rollup(Path(f"/proc/{pid}/smaps_rollup").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for key in total:
            total[key] += fields.get(key, 0)
    return total


def parent_of(pid: int) -> int:
    """The parent pid of `pid` (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def roles(pids: list[int]) -> dict[str, list[int]]:
    """{"init": the processes whose parent is outside `pids` (an environment's pid 1),
    "runtime": the others (the runtime and whatever it started)}."""
    inside = set(pids)
    out: dict[str, list[int]] = {"init": [], "runtime": []}
    for pid in pids:
        out["init" if parent_of(pid) not in inside else "runtime"].append(pid)
    return out


def snapshot(state_dir: Path, available_before: int) -> dict[str, Any]:
    """The memory figures of the daemon's live environments right now (see the module doc)."""
    cgroups = [c for c in environment_cgroups(state_dir) if cgroup_pids(c)]
    by_cgroup = {c: cgroup_pids(c) for c in cgroups}
    pids = [p for c in cgroups for p in by_cgroup[c]]
    sizes = rollup(pids)
    kernel = sum(kernel_charge(c) for c in cgroups)
    private: dict[str, int] = {"init": 0, "runtime": 0}
    for c in cgroups:
        for role, members in roles(by_cgroup[c]).items():
            part = rollup(members)
            private[role] += part["Private_Clean"] + part["Private_Dirty"]
    count = max(1, len(cgroups))
    figures: dict[str, Any] = {
        "environments": len(cgroups),
        "processes": len(pids),
        "footprint_bytes": unique_resident_bytes(pids) + kernel,
        "pss_bytes": sizes["Pss"],
        "kernel_bytes": kernel,
        "rss_bytes": sizes["Rss"],
        "cgroup_bytes": sum(memory_charge(c) for c in cgroups),
        "mem_available_drop_bytes": available_before - mem_available(),
        # per environment (mean): private pages of its init and of its runtime, its kernel memory
        "per_environment": {"init_private_bytes": private["init"] // count,
                            "runtime_private_bytes": private["runtime"] // count, "kernel_bytes": kernel // count},
    }
    parts = kernel_parts(cgroups)  # last: a pass over every page frame of the host (seconds), after the judged figures
    for kind in {kind for sizes_by_kind in parts.values() for kind in sizes_by_kind}:  # mean over the cgroups it has
        figures["per_environment"][kind] = sum(p.get(kind, 0) for p in parts.values()) // len(parts)
    return figures


def ratios(one: dict[str, Any], many: dict[str, Any]) -> dict[str, float | None]:
    """many / one for each memory figure (None where either figure is not positive: a
    MemAvailable that rose meanwhile says only that the host was busy)."""
    out: dict[str, float | None] = {}
    for key in ("footprint_bytes", "pss_bytes", "cgroup_bytes", "mem_available_drop_bytes"):
        if key in one and key in many:
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


# clock_nanosleep and nanosleep by machine: a handler holding its environment with time.sleep
SLEEP_SYSCALLS = {"x86_64": frozenset({230, 35}), "aarch64": frozenset({115, 101})}


def sleeping(pid: int, calls: frozenset[int]) -> bool:
    """True if `pid`'s main thread is blocked in one of the system calls `calls`
    (/proc/<pid>/syscall: its number first; "running" or gone: False)."""
    try:
        first = Path(f"/proc/{pid}/syscall").read_text().split(maxsplit=1)[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return first.isdigit() and int(first) in calls


def holding(state_dir: Path, count: int) -> Callable[[], bool]:
    """A check: `count` environments `resumed` and each one's runtime is asleep in its handler
    (the bench function's hold). Without it a figure could be read between the resume and the
    handler's first pages (the restore frame, the first forward): a "one" a few ms early missed
    half of its touched pages (seen: 14.7 instead of 29.8 MiB, ratio 4.2)."""
    calls = SLEEP_SYSCALLS.get(os.uname().machine, frozenset())
    restored = resumed(state_dir, count)

    def check() -> bool:
        if not restored():
            return False
        for cgroup in environment_cgroups(state_dir):
            runtime = roles(cgroup_pids(cgroup))["runtime"]
            if runtime and calls and not any(sleeping(pid, calls) for pid in runtime):
                return False
        return True
    return check


def measure(state_dir: Path, settled: Callable[[], bool], start: Callable[[int], Callable[[], None]], count: int,
            resume_timeout: float = 60.0,
            held: Callable[[Path, int], Callable[[], bool]] = holding) -> dict[str, Any]:
    """One environment, then `count` at once: for each, wait until the daemon is `settled`, read
    MemAvailable, `start(n)` n concurrent invokes that hold their environments (it returns a
    `finish` that lets them end and checks them), wait until n environments are `held` (by
    default `holding`: resumed, their handlers asleep; a caller whose `start` already waits for
    its handlers to arrive at a hold that is no sleep passes `resumed`), read `snapshot`, then
    `finish()`. Returns {"1": ..., "<count>": ..., "ratios": ...}."""
    out: dict[str, Any] = {}
    for n in (1, count):
        wait_for(settled, 120, "the daemon's environments to be torn down")
        before = mem_available()
        finish = start(n)
        try:
            wait_for(held(state_dir, n), resume_timeout, f"{n} restored environments to resume and hold in their handlers")
            out[str(n)] = snapshot(state_dir, before)
        finally:
            finish()
    out["ratios"] = ratios(out["1"], out[str(count)])
    return out
