"""CPU per restore, split by who spends it: the daemon, runc (and the daemon's other helper
processes), CRIU, and the restored runtime.

How each part is measured (no wrapper binaries, no server option, nothing global on the host):

- **daemon**: the server process's own CPU (`utime + stime` of /proc/<pid>/stat: every thread,
  live or exited; the FUSE snapshot view and the HTTP front end run in it) over a batch of
  restores, minus its idle rate measured just before the batch over an idle window.
- **all children**: the daemon's `cutime + cstime` over the batch: every child process it waited
  for, each with its own waited-for descendants: runc (every subcommand), CRIU (runc waits for
  it) and the daemon's other helpers (`ip`/`nft` refilling the prepared network namespaces,
  `umount`). Not the restored process: it is not runc's child once CRIU is done, so its CPU
  never reaches runc's or the daemon's rusage (checked: a handler that burns 0.6 s of CPU
  changes the cgroup's figure by 0.6 s and the daemon's children figure by nothing). Under
  ``--restore-engine criu`` CRIU restores the container's first process (the runtime's
  supervisor, pid 1 of the container) as the daemon's own child, which reaps it: *its* CPU
  (~10 ms for torch: its part of CRIU's restorer work and the resume) does reach the children
  figure, and is taken off it again (`Counters.reaped_ns`), since it is counted in the runtime
  already. The function's own process (the supervisor's child, where a handler runs) does not
  reach it (checked: a 1 s burn in the handler moved the cgroup by 1.0 s and the children by
  0.04 s, as without the burn).
- **CRIU + runtime**: the environment cgroup's CPU counter (cgroup v1 `cpuacct.usage`, v2
  `cpu.stat usage_usec`), read after the first invoke, before teardown. runc moves the CRIU
  process into the container's cgroup before it restores (`criuApplyCgroups`; the criu engine,
  `sandbox/criu_container.py`, does the same), so the cgroup holds CRIU's restore work plus the
  restored process's.
- **runtime**: the restored process's threads, summed from /proc/<pid>/task/*/schedstat
  (nanoseconds on CPU), read at the same moment: CRIU's restorer blob running in the task
  (mapping memory, restoring threads), then the runtime's resume hooks and the first invoke.
- **CRIU** = cgroup − runtime; **runc & helpers** = all children − CRIU − the restored processes
  the daemon reaped itself (CRIU's start-up before runc, or the criu engine, moves it into the
  cgroup stays in this part).
- with the runc wrapper (`bench/runcwrap.py`, the server's `--runc`), "runc & helpers" is split
  further by runc subcommand (`runc_by_command`).

Why not the alternatives: BSD process accounting (`accton`) is host-wide (other users' processes
too) and stores CPU in 1/100 s units per process, truncated: a runc call of 4 ms reads 0. A runc
wrapper alone folds CRIU into `runc restore` (its waited-for child) and adds a fork per call,
so it only refines the runc part here. CRIU cannot be wrapped the same
way: it restores the container's process as its parent's child (`--restore-sibling`), which a
wrapper in between would orphan. CRIU's own `stats-restore` holds wall times, not CPU.

/proc/<pid>/stat counts in clock ticks (1/100 s), so the daemon and children figures are taken
over a batch of restores and divided; the cgroup and schedstat figures are exact.
The pure parts (parsing, the split, aggregation) are separate from the I/O that feeds them.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from snapfaas.bench import runcwrap
from snapfaas.sandbox.cgroup import CGROUP_ROOT, daemon_cgroup
from snapfaas.sandbox.restored import live_records

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
COMPONENTS = ("daemon", "runc & helpers", "CRIU", "runtime")


# -- parsing (pure) --------------------------------------------------------------------------

def parse_proc_stat(text: str) -> tuple[int, int]:
    """(own ticks, waited-for children's ticks) from a /proc/<pid>/stat line:
    utime + stime (fields 14, 15) and cutime + cstime (16, 17). The command name (field 2) may
    hold spaces and parentheses, so fields are counted from its last ')'."""
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): field n is rest[n - 3]
    utime, stime, cutime, cstime = (int(rest[n - 3]) for n in (14, 15, 16, 17))
    return utime + stime, cutime + cstime


def parse_schedstat(text: str) -> int:
    """Nanoseconds on CPU from a /proc/<pid>/task/<tid>/schedstat line (its first field)."""
    return int(text.split()[0])


def parse_cgroup_cpu(text: str, v1: bool) -> int:
    """Nanoseconds of CPU from cgroup v1 `cpuacct.usage` (ns) or v2 `cpu.stat` (usage_usec)."""
    if v1:
        return int(text.split()[0])
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) * 1000
    raise ValueError("cpu.stat has no usage_usec")


# -- the split (pure) ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Counters:
    """What one batch of restores read: daemon and children in seconds (from ticks), cgroup and
    runtime in nanoseconds summed over the batch's environments."""

    restores: int
    wall_s: float
    daemon_s: float
    children_s: float
    cgroup_ns: int
    runtime_ns: int
    daemon_threads_ns: dict[str, int] = dataclasses.field(default_factory=dict)
    runc_calls: dict[str, tuple[int, float]] | None = None  # the runc wrapper's {subcommand: (calls, ms)}, if used
    # CPU of restored processes that are the daemon's own children (the criu engine's restored
    # pid 1): in `runtime_ns`, and in `children_s` again once the daemon reaped them
    reaped_ns: int = 0


def daemon_threads_ms(batch: Counters) -> dict[str, float]:
    """The daemon's CPU per restore by thread group (ms, largest first), with what threads that
    exited during the batch spent (and tick rounding) as "exited threads"."""
    n = batch.restores
    parts = {group: ns / 1e6 / n for group, ns in batch.daemon_threads_ns.items()}
    parts["exited threads"] = max(0.0, batch.daemon_s * 1000 / n - sum(parts.values()))
    return {k: round(v, 2) for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if round(v, 2) > 0}


def runc_by_command(batch: Counters) -> dict[str, float] | None:
    """"runc & helpers" per restore by command (ms), from the runc wrapper's log (`bench/runcwrap.py`):
    `runc restore` without the CRIU CPU it waited for (cgroup − runtime), each other runc
    subcommand, and "other helpers" (every other child of the daemon: `nft`, `umount`, the
    wrapper itself, CRIU's start-up before it joins the environment's cgroup; under the criu
    engine CRIU is the daemon's own child, and its cgroup CPU is taken off this rest as it is
    off `runc restore`). None without the wrapper. Negative rests are clamped to 0."""
    if batch.runc_calls is None:
        return None
    n = batch.restores
    out: dict[str, float] = {}
    logged = 0.0
    criu_ms = max(0.0, (batch.cgroup_ns - batch.runtime_ns) / 1e6)
    for command, (_, ms) in sorted(batch.runc_calls.items()):
        logged += ms
        own = ms - criu_ms if command == "restore" else ms
        out[f"runc {command}"] = max(0.0, own) / n
    # without a `runc restore` line CRIU ran as the daemon's own child (the criu engine): its
    # CPU is in the children figure too, and is the CRIU part, not a helper's
    criu_child = 0.0 if "restore" in batch.runc_calls else criu_ms
    out["other helpers"] = max(0.0, batch.children_s * 1000 - logged - criu_child - batch.reaped_ns / 1e6) / n
    return {k: round(v, 2) for k, v in out.items()}


def mean_threads(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per thread group, the mean over batches (a group a batch lacks counts 0 there)."""
    groups = {g for row in rows for g in row}
    means = {g: sum(row.get(g, 0.0) for row in rows) / len(rows) for g in groups} if rows else {}
    return {g: round(v, 2) for g, v in sorted(means.items(), key=lambda kv: -kv[1])}


def split(batch: Counters, idle_daemon_rate: float) -> dict[str, float]:
    """ms of CPU per restore by component (`COMPONENTS`) plus "total", from one batch.
    `idle_daemon_rate` is the daemon's CPU seconds per wall second when nothing happens.
    A part that comes out negative (tick rounding on a tiny figure) is clamped to 0."""
    n = batch.restores
    if n <= 0:
        raise ValueError("a batch needs at least one restore")
    daemon = max(0.0, batch.daemon_s - idle_daemon_rate * batch.wall_s) * 1000 / n
    cgroup = batch.cgroup_ns / 1e6 / n
    runtime = batch.runtime_ns / 1e6 / n
    criu = max(0.0, cgroup - runtime)
    runc = max(0.0, (batch.children_s * 1000 - batch.reaped_ns / 1e6) / n - criu)
    parts = {"daemon": daemon, "runc & helpers": runc, "CRIU": criu, "runtime": runtime}
    parts["total"] = sum(parts.values())
    return {k: round(v, 2) for k, v in parts.items()}


def median_breakdown(batches: list[dict[str, float]]) -> dict[str, float]:
    """Per component, the median over batches (so "total" is the median of totals, not the sum
    of medians)."""
    if not batches:
        raise ValueError("no batches")
    return {key: round(statistics.median(b[key] for b in batches), 2) for key in batches[0]}


# -- reading the host ------------------------------------------------------------------------

def thread_group(comm: str) -> str:
    """A thread name without its pool index ("view-prefetch_3" -> "view-prefetch",
    "asyncio_0" -> "asyncio"), so that threads of one pool add up."""
    return comm.rstrip("0123456789").rstrip("_- ") or comm


def thread_delta_ns(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, int]:
    """CPU ns per thread group between two `threads_by_tid` readings: a thread alive at both
    counts its difference, a thread born in between all of its time; one that exited in
    between is not seen (the caller reports the rest as "exited threads")."""
    out: dict[str, int] = {}
    for tid, (comm, ns) in after.items():
        spent = ns - before[tid][1] if tid in before else ns
        group = thread_group(comm)
        out[group] = out.get(group, 0) + max(0, spent)
    return out


def threads_by_tid(pid: int) -> dict[int, tuple[str, int]]:
    """{tid: (thread name, CPU ns)} for every live thread of `pid`."""
    out: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = ((task / "comm").read_text().strip(), parse_schedstat((task / "schedstat").read_text()))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return out


def process_cpu(pid: int) -> tuple[float, float]:
    """(own CPU s, waited-for children's CPU s) of a live process."""
    own, children = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    return own * TICK_S, children * TICK_S


def _cpu_dir(cgroup: str) -> tuple[Path, bool]:
    """The directory holding `cgroup`'s CPU counter and whether it is cgroup v1."""
    rel = cgroup.strip("/")
    v1 = CGROUP_ROOT / "cpuacct" / rel
    if (CGROUP_ROOT / "cpuacct").is_dir():
        return v1, True
    unified = CGROUP_ROOT / "unified"
    return ((unified if not (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT) / rel), False


def environment_cgroups(state_dir: Path) -> list[str]:
    """The environment cgroups (`/snapfaas/<daemon key>/<env id>`) of the daemon whose runc
    state directory is `state_dir`."""
    daemon = daemon_cgroup(state_dir)
    top, _ = _cpu_dir(daemon)
    try:
        return sorted(f"{daemon}/{entry.name}" for entry in top.iterdir() if entry.is_dir())
    except FileNotFoundError:
        return []


def cgroup_cpu_ns(cgroup: str) -> int:
    """CPU nanoseconds charged to `cgroup` and below (0 once it is gone)."""
    directory, v1 = _cpu_dir(cgroup)
    try:
        return parse_cgroup_cpu((directory / ("cpuacct.usage" if v1 else "cpu.stat")).read_text(), v1)
    except (FileNotFoundError, ValueError):
        return 0


def cgroup_pids(cgroup: str) -> list[int]:
    """Every process in `cgroup` and below."""
    top, _ = _cpu_dir(cgroup)
    pids: list[int] = []
    for dirpath, _, files in os.walk(top):
        if "cgroup.procs" in files:
            try:
                pids += [int(p) for p in (Path(dirpath) / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                continue  # removed while walking
    return pids


def threads_cpu_ns(pids: Iterable[int]) -> int:
    """CPU nanoseconds of every live thread of `pids` (threads that already exited are not
    counted: the restored runtime keeps its threads)."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                total += parse_schedstat((task / "schedstat").read_text())
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
    return total


def parent_pid(pid: int) -> int | None:
    """The parent of live process `pid` (field 4 of /proc/<pid>/stat), None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(text[text.rindex(")") + 2:].split()[1])


def live_environments_cpu(state_dir: Path, daemon_pid: int | None = None) -> tuple[int, int, int]:
    """(cgroup ns, runtime threads ns, ns of those runtime processes that are `daemon_pid`'s
    own children) summed over the daemon's environments that have processes."""
    cgroup_ns = runtime_ns = reaped_ns = 0
    for cgroup in environment_cgroups(state_dir):
        pids = cgroup_pids(cgroup)
        if pids:
            cgroup_ns += cgroup_cpu_ns(cgroup)
            runtime_ns += threads_cpu_ns(pids)
            if daemon_pid is not None:
                reaped_ns += threads_cpu_ns(p for p in pids if parent_pid(p) == daemon_pid)
    return cgroup_ns, runtime_ns, reaped_ns


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; raise naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)  # polling another process's state


def daemon_children(pid: int) -> list[int]:
    """The live child processes of `pid` (/proc/<pid>/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def containers(state_dir: Path) -> int:
    """Live containers: runc keeps one state directory per container, and the daemon one record
    per container it restored without runc (`sandbox.restored`, beside the runc state)."""
    runc = sum(1 for entry in state_dir.iterdir() if entry.is_dir()) if state_dir.exists() else 0
    return runc + len(live_records(state_dir.parent))


def settled(pid: int, state_dir: Path) -> Callable[[], bool]:
    """A check: the daemon `pid` (runc state in `state_dir`) has no container, no environment
    with processes and no child process (so every runc and helper it ran has been waited for)."""
    def check() -> bool:
        return (not containers(state_dir) and not any(cgroup_pids(c) for c in environment_cgroups(state_dir))
                and not daemon_children(pid))
    return check


def idle_rate(pid: int, window_s: float) -> float:
    """The daemon's own CPU seconds per wall second while nothing is asked of it."""
    before, started = process_cpu(pid)[0], time.monotonic()
    time.sleep(window_s)  # the measurement window itself
    return (process_cpu(pid)[0] - before) / (time.monotonic() - started)


def measure_batch(pid: int, state_dir: Path, restores: int, restore: Callable[[], None],
                  settled: Callable[[], bool], runc_log: Path | None = None) -> Counters:
    """Run `restore` (one restore of a new environment, returning after its first invoke)
    `restores` times; after each, read the environment's cgroup and runtime CPU, then wait for
    `settled` (every environment torn down) before the next and at the end. `runc_log`: the
    runc wrapper's log (`bench/runcwrap.py`), if the server runs runc through it."""
    wait_for(settled, 120, "the daemon's environments to be torn down")
    log_start = runc_log.stat().st_size if runc_log is not None else 0
    own0, children0 = process_cpu(pid)
    threads0 = threads_by_tid(pid)
    started = time.monotonic()
    cgroup_ns = runtime_ns = reaped_ns = 0
    for _ in range(restores):
        restore()
        c, r, own = live_environments_cpu(state_dir, pid)
        if c == 0:
            raise RuntimeError("no live environment cgroup after a restore")
        cgroup_ns += c
        runtime_ns += r
        reaped_ns += own
        wait_for(settled, 120, "the restored environment to be torn down")
    threads1 = threads_by_tid(pid)
    own1, children1 = process_cpu(pid)
    calls = None
    if runc_log is not None:
        with runc_log.open("rb") as log:
            log.seek(log_start)
            calls = runcwrap.parse_log(log.read().decode(errors="replace"))
    return Counters(restores, time.monotonic() - started, own1 - own0, children1 - children0, cgroup_ns, runtime_ns,
                    thread_delta_ns(threads0, threads1), calls, reaped_ns)


def batch_row(batch: Counters, idle_daemon_rate: float) -> dict[str, Any]:
    """One batch's figures per restore (`split`), its idle rate, raw counters and breakdowns."""
    raw = {"wall_s": round(batch.wall_s, 2), "daemon_ms": round(batch.daemon_s * 1000, 1),
           "children_ms": round(batch.children_s * 1000, 1), "cgroup_ms": round(batch.cgroup_ns / 1e6, 1),
           "runtime_ms": round(batch.runtime_ns / 1e6, 1), "reaped_ms": round(batch.reaped_ns / 1e6, 1),
           "runc_calls": batch.runc_calls}
    return {**split(batch, idle_daemon_rate), "idle_daemon_ms_per_s": round(idle_daemon_rate * 1000, 2), "counters": raw,
            "daemon_threads_ms": daemon_threads_ms(batch), "runc_by_command_ms": runc_by_command(batch)}


def summarize(rows: list[dict[str, Any]], per_batch: int) -> dict[str, Any]:
    """CPU per restore by component over batches (`batch_row`s): the median per component, the
    mean per daemon thread group and runc command; the batches' rows are kept (pure)."""
    parts = median_breakdown([{k: v for k, v in row.items() if k in (*COMPONENTS, "total")} for row in rows])
    by_command = [row["runc_by_command_ms"] for row in rows if row["runc_by_command_ms"] is not None]
    return {"per_restore_ms": parts, "daemon_threads_ms": mean_threads([row["daemon_threads_ms"] for row in rows]),
            "runc_by_command_ms": mean_threads(by_command) if by_command else None,
            "batches": rows, "restores_per_batch": per_batch}


def measure(pid: int, state_dir: Path, restore: Callable[[], None], settled: Callable[[], bool],
            batches: int = 3, per_batch: int = 4, idle_window_s: float = 3.0, runc_log: Path | None = None) -> dict[str, Any]:
    """CPU per restore by component: the median over `batches` batches of `per_batch`
    restores, each batch preceded by its own idle-rate window; the batches' figures are kept."""
    rows = []
    for _ in range(batches):
        wait_for(settled, 120, "the daemon's environments to be torn down")
        rate = idle_rate(pid, idle_window_s)
        rows.append(batch_row(measure_batch(pid, state_dir, per_batch, restore, settled, runc_log), rate))
    return summarize(rows, per_batch)
