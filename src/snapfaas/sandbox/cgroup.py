"""Environment cgroups: memory accounting (v1 or v2) and removal.

Layout (one subtree per daemon, so a daemon can clean up after a crash without touching
another daemon's environments)::

    /snapfaas/<daemon key>/                  `daemon_cgroup`: owned by one `Runc` state dir
    /snapfaas/<daemon key>/<env id>/         `environment_cgroup`: owned by one environment
    /snapfaas/<daemon key>/<env id>/sandbox  `container_cgroup`: created and removed by runc

A container the daemon restores by driving CRIU itself (`sandbox.criu_container`) has no runc
to remove its cgroup under it: it runs in its environment's cgroup directly, which the daemon
creates with the container's settings and removes when the container is gone.

runc removes the container's cgroup before `runc run` exits, i.e. before the worker sees the
container die; the environment's cgroup survives it and its usage counters are hierarchical,
so the worker can still read the container's peak memory (and, on cgroup v2, its OOM kills).
The worker removes an environment's cgroup when it destroys the environment, and a daemon
removes its whole subtree at start (after reaping leftover containers) and at shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import os
from pathlib import Path

from snapfaas import timeline

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


def peak_file(cgroup: str, root: Path = CGROUP_ROOT) -> Path | None:
    """The file holding `cgroup`'s peak memory (cgroup v1 or v2), or None if the cgroup is gone."""
    rel = cgroup.lstrip("/")
    for path in (root / "memory" / rel / "memory.max_usage_in_bytes", root / rel / "memory.peak",
                 root / "unified" / rel / "memory.peak"):
        if path.is_file():
            return path
    return None


class PeakMemory:
    """The peak memory of one cgroup, read per invoke with one ``pread(2)`` on a descriptor
    kept open between reads (a cgroup file regenerates its content at offset 0), instead of
    a lookup, open, read and close each time.

    The file is found and opened at the first read; `bytes` returns None while the cgroup
    does not exist (yet, or any more: a read of a removed cgroup's file fails and the
    descriptor is closed). `close` is idempotent; the owner calls it before removing the
    cgroup. Not thread-safe (one environment, on the event loop)."""

    def __init__(self, cgroup: str, root: Path = CGROUP_ROOT) -> None:
        self.cgroup = cgroup
        self.root = root
        self._fd: int | None = None

    def bytes(self) -> int | None:
        if self._fd is None:
            path = peak_file(self.cgroup, self.root)
            if path is None:
                return None
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            return int(os.pread(self._fd, 64, 0).split()[0])
        except (OSError, ValueError, IndexError):
            self.close()
            return None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """Every mounted cgroup hierarchy: the v2 root, or each v1 controller (plus systemd/unified).
    The host's (`CGROUP_ROOT`) are listed again only when that directory changes (one `stat`
    instead of a listing and a realpath per entry, ~0.7 ms, four times per restore): a v1
    hierarchy mounted later gets its directory created there first, which moves the mtime.
    Another root is listed at every call."""
    if root == CGROUP_ROOT:
        try:
            st = os.stat(root)
        except OSError:
            return []
        return list(_host_hierarchies((st.st_dev, st.st_ino, st.st_mtime_ns)))
    return _list_hierarchies(root)


@functools.lru_cache(maxsize=1)
def _host_hierarchies(_version: tuple[int, int, int]) -> tuple[Path, ...]:
    """The host's hierarchies while `CGROUP_ROOT` is at `_version` (its device, inode, mtime)."""
    return tuple(_list_hierarchies(CGROUP_ROOT))


def _list_hierarchies(root: Path) -> list[Path]:
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
        try:
            os.rmdir(top)  # the common case, a leaf without tasks: no listing of its files
            continue
        except FileNotFoundError:
            continue
        except OSError:
            pass  # cgroups below it (or tasks in it): remove bottom-up, reporting what stays
        for dirpath, _, _ in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                continue
            except OSError as exc:
                failures.append(f"rmdir {dirpath}: {exc.strerror}")
    return failures


# -- cgroup v1 containers set up without runc (sandbox/criu_container.py) ----------------------

# runc 1.1's default device rules for a container (libcontainer/specconv AllowedDevices):
# mknod of anything, the standard character devices, ptys and tun (as devices.list of a runc
# 1.1.5 container reads here).
DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:8 rwm", "c 1:7 rwm", "c 5:0 rwm", "c 1:5 rwm",
                "c 1:9 rwm", "c 136:* rwm", "c 5:2 rwm", "c 10:200 rwm")


def is_v1(root: Path = CGROUP_ROOT) -> bool:
    """True on a cgroup v1 (or hybrid) host: per-controller hierarchies under `root`."""
    return not (root / "cgroup.controllers").exists() and (root / "memory").is_dir()


@dataclasses.dataclass(frozen=True)
class Limits:
    """What runc's cgroup manager sets for an environment's container (spec.render's resources)."""

    memory_bytes: int
    swap_bytes: int  # memory + swap (runc's "swap"): equal to memory_bytes means no swap
    pids: int


def v1_hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """The hierarchies a container joins on a v1 host, as runc's v1 manager does: every
    controller, the named systemd one and, on a hybrid host, the unified v2 tree."""
    return hierarchies(root)


def _write(path: Path, *values: str) -> None:
    """Write each of `values` to cgroup file `path` with its own write(2) (a cgroup file takes
    one setting per write: a device rule, a pid, a limit) through one descriptor, without a
    Python file object: ~0.08 ms of CPU per value less than `Path.write_text` each. Raises
    OSError naming the file and the value."""
    value = ""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for value in values:
                os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"writing {value or values[0]!r} to {path}: {exc.strerror}") from exc


def _read(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)


# cpuset levels above an environment's cgroup known to hold cpus and mems, per hierarchy: a
# restore's cgroup needs one mkdir and its parent's two values there, not a walk reading and
# writing every level from the root (~0.9 ms of CPU per restore)
_cpuset_parents: set[tuple[Path, str]] = set()


def _ensure_cpuset_levels(hierarchy: Path, rel: str) -> None:
    """Create every level of `rel` in the cpuset hierarchy, copying cpus and mems down from the
    parent into each level that has none (an empty cpuset accepts no task; runc's cpuset
    manager does the same)."""
    current = hierarchy
    for part in rel.split("/"):
        parent, current = current, current / part
        current.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not _read(current / name):
                _write(current / name, _read(parent / name))


def _ensure_cpuset(hierarchy: Path, rel: str) -> None:
    """`_ensure_cpuset_levels`, walking the levels above the leaf only the first time (or once
    they are found gone or empty): the leaf is made and given its parent's cpus and mems."""
    parent_rel, _, leaf = rel.rpartition("/")
    key = (hierarchy, parent_rel)
    if not parent_rel or key not in _cpuset_parents:
        _ensure_cpuset_levels(hierarchy, rel)
        if parent_rel:
            _cpuset_parents.add(key)
        return
    parent = hierarchy / parent_rel
    current = parent / leaf
    try:
        os.mkdir(current)
        fresh = True
    except FileExistsError:
        fresh = False
    except FileNotFoundError:  # the levels above were removed meanwhile
        _cpuset_parents.discard(key)
        _ensure_cpuset(hierarchy, rel)
        return
    for name in ("cpuset.cpus", "cpuset.mems"):
        if fresh or not _read(current / name):
            value = _read(parent / name)
            if not value:  # a parent emptied since: walk every level again
                _cpuset_parents.discard(key)
                _ensure_cpuset_levels(hierarchy, rel)
                return
            _write(current / name, value)


@functools.lru_cache(maxsize=8)
def _has_memsw(memory_hierarchy: Path) -> bool:
    """Whether the host accounts swap in the memory hierarchy (a boot-time setting)."""
    return (memory_hierarchy / "memory.memsw.limit_in_bytes").exists()


def create_v1(cgroup: str, limits: Limits, root: Path = CGROUP_ROOT) -> None:
    """Create `cgroup` in every v1 hierarchy with runc's settings for a container: the device
    allow-list (everything else denied), the memory (+swap) and pids limits. Raises OSError
    naming the file that could not be written."""
    rel = cgroup.strip("/")
    for hierarchy in v1_hierarchies(root):
        if hierarchy.name == "cpuset":
            _ensure_cpuset(hierarchy, rel)
            continue
        (hierarchy / rel).mkdir(parents=True, exist_ok=True)
    _write(root / "devices" / rel / "devices.deny", "a")
    _write(root / "devices" / rel / "devices.allow", *DEVICE_RULES)
    memory = root / "memory" / rel
    _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
    if _has_memsw(root / "memory"):
        _write(memory / "memory.memsw.limit_in_bytes", str(limits.swap_bytes))
    _write(root / "pids" / rel / "pids.max", str(limits.pids))


def attach_v1(cgroup: str, pid: int, root: Path = CGROUP_ROOT) -> None:
    """Move process `pid` into `cgroup` in every v1 hierarchy (runc's `Apply`)."""
    rel = cgroup.strip("/")
    value = str(pid)
    for hierarchy in v1_hierarchies(root):
        path = hierarchy / rel / "cgroup.procs"
        try:
            _write(path, value)
        except OSError as exc:
            raise OSError(exc.errno, f"moving pid {pid} into {path}: {exc.strerror}") from exc


def prime_attach(root: Path = CGROUP_ROOT) -> None:
    """Take the kernel's cgroup attach lock once without moving anything: write this process's
    pid into the cgroup it is in already (its ``pids`` cgroup on v1, its cgroup on v2).

    Why: every write to a ``cgroup.procs`` takes the global ``cgroup_threadgroup_rwsem`` for
    writing, and the first writer after a quiet spell waits for an RCU grace period (the
    semaphore's rcu_sync; 10-20 ms here, longer under load) while writers that come within
    about one grace period of the previous one do not wait. Moving a restore's CRIU into its
    cgroup was that first writer, on the restore's critical path; a no-op move started when
    the restore begins (in a worker thread) waits out the grace period while the daemon
    prepares the rest. Raises OSError (no such hierarchy, or not allowed)."""
    if is_v1(root):
        pairs = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
        path = next((p for controller, p in pairs if controller == "pids"), None)
        if path is None:
            raise OSError("priming the cgroup attach lock: no pids hierarchy in /proc/self/cgroup")
        procs = root / "pids" / path.lstrip("/") / "cgroup.procs"
    else:
        path = Path("/proc/self/cgroup").read_text().strip().rpartition(":")[2]
        procs = root / path.lstrip("/") / "cgroup.procs"
    try:
        procs.write_text(str(os.getpid()))
    except OSError as exc:
        raise OSError(exc.errno, f"priming the cgroup attach lock through {procs}: {exc.strerror}") from exc


class AttachPrimer:
    """Starts `prime_attach` in a worker thread when a new environment is about to be made,
    so the grace period its container's first cgroup move would wait for passes meanwhile.

    At most one priming runs at a time (the environments of a burst share it: their moves
    follow each other within a grace period). The first failure is logged and turns priming
    off for the process (a cgroup tree this daemon may not write to: nothing else breaks).
    Use on the event loop's thread."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self.enabled = True
        self._running = False

    def start(self) -> asyncio.Future[None] | None:
        """Start a priming unless one runs or priming is off; its future (None: not started)."""
        if self._running or not self.enabled:
            return None
        self._running = True
        future = asyncio.get_running_loop().run_in_executor(None, timeline.carried(self._prime))
        future.add_done_callback(self._done)
        return future

    def _prime(self) -> None:
        prime_attach(self.root)
        timeline.mark("cgroup attach lock primed [thread]")

    def _done(self, future: asyncio.Future[None]) -> None:
        self._running = False
        error = None if future.cancelled() else future.exception()
        if error is not None:
            self.enabled = False
            logger.warning("cgroup attach priming turned off: %s", error)


def parse_proc_cgroup(text: str) -> list[tuple[str, str]]:
    """(controller, path) pairs of a /proc/<pid>/cgroup file, one per controller of a
    comma-joined hierarchy ("" for the v2 line), as runc's ParseCgroupFile reads it."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out += [(controller, parts[2]) for controller in parts[1].split(",")]
    return out


def procs(cgroup: str, root: Path = CGROUP_ROOT) -> list[int]:
    """Pids in `cgroup` itself and below (from the pids hierarchy, else memory; v2: the tree)."""
    rel = cgroup.strip("/")
    bases = [root / "pids" / rel, root / "memory" / rel] if is_v1(root) else [root / rel]
    for base in bases:
        if base.is_dir():
            out: list[int] = []
            for dirpath, _, filenames in os.walk(base):
                if "cgroup.procs" in filenames:
                    try:
                        out += [int(p) for p in (Path(dirpath) / "cgroup.procs").read_text().split()]
                    except (OSError, ValueError):
                        continue
            return out
    return []
