"""The OCI runtime spec (config.json) of one execution environment.

Isolation contract: read-only rootfs made of host binds (/usr, the interpreter's install
tree), the server's synthesized /etc (sandbox/etc.py; not the host's), the function's code at
/var/task (read-only), its layers merged at /opt (read-only; an empty directory without layers)
and the runtime at /var/runtime (read-only); a private tmpfs /tmp sized
by EphemeralStorage and owned by the function's uid; its own pid, mount, ipc, uts and user
namespaces (container 0-65535 -> the function's host id slice base..base+65535, see
sandbox/ids.py; the process runs as `uid` inside, which is unprivileged on the host too and
shared with no other function); no capabilities, no-new-privileges, a seccomp filter
(sandbox/seccomp.py); a memory limit (no swap) from MemorySize and a pids limit. The network
namespace is the environment's own, prepared ahead by `sandbox.network` and joined by path
(so CRIU treats it as external: a restore joins a fresh one).
There is no /dev/shm, as on Lambda (multiprocessing's semaphores and queues fail there too).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snapfaas.sandbox import seccomp
from snapfaas.sandbox.cgroup import Limits
from snapfaas.sandbox.interpreter import Interpreter

TASK_ROOT = "/var/task"
OPT_DIR = "/opt"
RUNTIME_DIR = "/var/runtime"
RUNTIME_PACKAGE = "snapfaas_runtime"
MERGED_USR_LINKS = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}
BASE_DIRS = ("usr", "etc", "proc", "dev", "tmp", "opt", "var/task", "var/runtime", "sys/devices/system/cpu")
RO = ["rbind", "ro", "nosuid", "nodev"]
HOSTNAME = "sandbox"
PIDS_LIMIT = 1024  # processes and threads per environment


@dataclasses.dataclass(frozen=True)
class SandboxSpec:
    """What differs between environments; everything else is policy fixed in `render`."""

    env_id: str
    code_dir: Path
    runtime_dir: Path
    interpreter: Interpreter
    environ: Mapping[str, str]
    memory_mb: int
    tmp_mb: int
    uid: int
    host_id_base: int  # host id of container id 0: the base of the function's id slice
    cgroup: str
    etc_dir: Path  # the synthesized /etc (sandbox/etc.py), bound read-only
    netns: Path | None = None  # the environment's own network namespace (None: runc makes an empty one)
    host_network: bool = False  # share the host's network namespace (--sandbox-network host: unsafe)
    pids_limit: int = PIDS_LIMIT
    mount_sources: Mapping[str, str] = dataclasses.field(default_factory=dict)  # prefix -> reachable bind source
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    opt_dir: Path | None = None  # the version's merged layers (None: no layers, /opt stays empty)


def limits(memory_mb: int, pids_limit: int = PIDS_LIMIT) -> Limits:
    """The cgroup settings `render` gives a spec with `memory_mb` (memory, no swap) and `pids_limit`."""
    memory = memory_mb * 1024 * 1024
    return Limits(memory, memory, pids_limit)


def prepare_rootfs(rootfs: Path, interpreters: list[Interpreter]) -> None:
    """Create the shared, read-only rootfs skeleton with every mount point it needs.

    Idempotent. The merged-/usr links must be symlinks, not bind mounts (CRIU restore fails on
    the latter). Mount points for interpreter trees outside /usr are created here because the
    rootfs is read-only inside the container.
    """
    for rel in BASE_DIRS:
        (rootfs / rel).mkdir(parents=True, exist_ok=True)
    for name, target in MERGED_USR_LINKS.items():
        link = rootfs / name
        if not link.is_symlink():
            link.symlink_to(target)
    for interp in interpreters:
        for prefix in interp.mount_sources():
            (rootfs / prefix.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, _ in os.walk(rootfs):
        os.chmod(dirpath, 0o755)


def rootfs_layout(interpreters: list[Interpreter]) -> tuple[list[str], list[tuple[str, str]]] | None:
    """The directories (relative, parents first) and merged-/usr links of `prepare_rootfs`'s
    skeleton for `interpreters` (pure), or None when an interpreter's prefix lies under one of
    the links (only `prepare_rootfs`, which creates through them, handles that)."""
    dirs: list[str] = []
    seen: set[str] = set()

    def add(rel: str) -> None:
        parts = rel.strip("/").split("/")
        for end in range(1, len(parts) + 1):
            sub = "/".join(parts[:end])
            if sub not in seen:
                seen.add(sub)
                dirs.append(sub)

    for rel in BASE_DIRS:
        add(rel)
    for interp in interpreters:
        for prefix in interp.mount_sources():
            if prefix.strip("/").split("/")[0] in MERGED_USR_LINKS:
                return None
            add(prefix)
    return dirs, list(MERGED_USR_LINKS.items())


def make_private_rootfs(rootfs: Path, interpreters: list[Interpreter]) -> None:
    """A new rootfs skeleton at `rootfs` (which must not exist yet; its parents are created),
    the same as `prepare_rootfs` makes, with one mkdir and chmod per directory: no existence
    checks, no walk (`prepare_rootfs` took ~6 ms of CPU on the event loop per restore)."""
    layout = rootfs_layout(interpreters)
    if layout is None:
        prepare_rootfs(rootfs, interpreters)
        return
    dirs, links = layout
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    root = str(rootfs)
    for path in (root, *(os.path.join(root, rel) for rel in dirs)):
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # whatever the umask
    for name, target in links:
        os.symlink(target, os.path.join(root, name))


def _namespaces(spec: SandboxSpec) -> list[dict[str, str]]:
    out = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user")]
    if not spec.host_network:
        out.append({"type": "network", "path": str(spec.netns)} if spec.netns is not None else {"type": "network"})
    return out


def render(spec: SandboxSpec, rootfs: Path, argv: list[str]) -> dict[str, Any]:
    """runc's config.json for `spec` on `rootfs`, the container process running `argv`."""
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": RO},
        {"destination": "/etc", "type": "bind", "source": str(spec.etc_dir), "options": RO},
        {"destination": "/sys/devices/system/cpu", "type": "bind", "source": "/sys/devices/system/cpu", "options": RO},
        {"destination": TASK_ROOT, "type": "bind", "source": str(spec.code_dir), "options": RO},
        {"destination": RUNTIME_DIR, "type": "bind", "source": str(spec.runtime_dir), "options": RO},
        *([{"destination": OPT_DIR, "type": "bind", "source": str(spec.opt_dir), "options": RO}]
          if spec.opt_dir is not None else []),
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", f"size={spec.tmp_mb}m", f"uid={spec.uid}", f"gid={spec.uid}", "mode=1777"],
        },
    ]
    for prefix in spec.interpreter.mount_sources():
        source = spec.mount_sources.get(prefix, prefix)
        mounts.append({"destination": prefix, "type": "bind", "source": source, "options": RO})
    memory = spec.memory_mb * 1024 * 1024
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": spec.uid, "gid": spec.uid},
            "args": argv,
            "env": [f"{k}={v}" for k, v in spec.environ.items()],
            "cwd": TASK_ROOT,
            "noNewPrivileges": True,
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": HOSTNAME,
        "annotations": dict(spec.annotations),
        "mounts": mounts,
        "linux": {
            "namespaces": _namespaces(spec),
            "uidMappings": [{"containerID": 0, "hostID": spec.host_id_base, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": spec.host_id_base, "size": 65536}],
            "cgroupsPath": spec.cgroup,
            "resources": {"memory": {"limit": memory, "swap": memory}, "pids": {"limit": spec.pids_limit}},
            "maskedPaths": [
                "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
            ],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            "seccomp": seccomp.profile(),
        },
    }
