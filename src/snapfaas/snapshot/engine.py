"""The CRIU engine: is CRIU usable here, and the runc checkpoint/restore invocations.

Only this module knows CRIU. runc drives CRIU over its RPC; extra CRIU options come from a
CRIU configuration file named by the container's ``org.criu.config`` annotation (runc passes
it to CRIU), one for dump and one for restore.

CRIU is built with snapfaas's patches (scripts/criu-patches/); `criu --version` names them.
With the map-pages patch and ``CRIU_MAP_PAGES=1`` in its environment (`restore_environ`), a
restore maps private memory copy-on-write from the page images instead of copying it; with
the no-cow-pairs patch too, that includes the memory a restored child (the runtime) shares with
its parent (pid 1): CRIU no longer copies it to keep the two processes sharing it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from snapfaas.durable import write_atomic
from snapfaas.errors import ServiceError
from snapfaas.sandbox.container import RUNC_UMASK
from snapfaas.sandbox.mounts import fstype_of

MIN_MAJOR = 4
CONFIG_ANNOTATION = "org.criu.config"
# Each environment's network namespace is external to CRIU (runc passes it as extRootNetNS):
# the namespace itself is not dumped, only the process's sockets in it (UDP and listening TCP
# sockets: patch 0005; the runtime breaks TCP connections before a checkpoint, so no connection
# state needs freezing), and there is nothing to lock; the default lock would run
# iptables-restore per dump/restore.
NETWORK_LOCK = "network-lock=skip\n"
DUMP_CONFIG = "file-locks\n" + NETWORK_LOCK
# runc asks CRIU for debug logs (level 4): thousands of lines per restore, a few ms of CPU
# on the hot path. Restores log errors and warnings only (criu_errors reads "Error (" lines);
# dumps keep the full log for publish diagnostics.
RESTORE_CONFIG = "file-locks\nverbosity=2\n" + NETWORK_LOCK
MAP_PAGES_PATCH = "map-pages-copy-on-write"
NO_COW_PAIRS_PATCH = "map-pages-without-cow-pairs"  # parent and child VMAs mapped, not paired and copied
FILL_HOLES_PATCH = "dump-fills-small-holes"  # small holes of anonymous VMAs dumped as zero pages
# The largest hole (pages) of a private anonymous mapping that a checkpoint for map-pages restores
# dumps as zero pages, so that the mapping's pages are one range of the image and a restore maps
# it with one mmap (one VMA) instead of one VMA per range and per hole between them. Bounds what
# it adds to the image: at most this much per hole, zeros (one chunk in the store).
FILL_HOLES_PAGES = 16
EXTERNAL_NETNS_PATCHES = ("network-lock-in-rpc-config", "external-netns-of-another-userns")
KERNDAT_CACHE = Path("/run/criu.kdat")  # CRIU's compiled-in cache path (RUNDIR=/run)


class CheckpointFailed(ServiceError):
    """`runc checkpoint` failed; `detail` holds CRIU's own error lines."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"checkpoint failed at step '{step}': {detail}")
        self.step = step
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class CriuStatus:
    available: bool
    binary: str | None
    version: str | None
    reason: str | None = None
    patches: tuple[str, ...] = ()  # snapfaas patch names the binary reports

    @property
    def maps_pages(self) -> bool:
        """True if restores can map memory copy-on-write (see `restore_environ`)."""
        return MAP_PAGES_PATCH in self.patches

    @property
    def maps_inherited_pages(self) -> bool:
        """True if map-pages restores also map the memory a child shares with its parent
        (pid 1's whole memory, the runtime's inherited VMAs) instead of copying it."""
        return self.maps_pages and NO_COW_PAIRS_PATCH in self.patches

    def requiring_netns_patches(self) -> CriuStatus:
        """This status, made unavailable if the binary lacks the patches that checkpoint and
        restore an environment in its own (external, host-owned) network namespace."""
        missing = [p for p in EXTERNAL_NETNS_PATCHES if p not in self.patches]
        if not self.available or not missing:
            return self
        return dataclasses.replace(self, available=False, reason=(
            f"CRIU {self.version} at {self.binary} lacks snapfaas's patches {', '.join(missing)}, needed to snapshot "
            "environments in their own network namespace (scripts/install-system-deps.sh builds them; "
            "--sandbox-network host works without them)"))

    def describe(self) -> str:
        if self.available:
            patched = f" (patches: {', '.join(self.patches)})" if self.patches else " (no snapfaas patches)"
            return f"CRIU {self.version} at {self.binary}{patched}: criu check passed"
        return f"SnapStart unavailable: {self.reason}"


def parse_version(output: str) -> tuple[str | None, tuple[str, ...]]:
    """(version, snapfaas patch names) from `criu --version` output."""
    match = re.search(r"^Version:\s*([0-9.]+)", output, re.MULTILINE)
    patches = re.search(r"^Patches: snapfaas (.*)$", output, re.MULTILINE)
    names = tuple(n for n in patches.group(1).split() if not n.startswith("sha:")) if patches else ()
    return (match.group(1) if match else None), names


def restore_environ(status: CriuStatus, memory: str) -> Mapping[str, str]:
    """Extra environment for `runc restore` (runc passes it on to CRIU): memory="map" asks a
    patched CRIU to map page images copy-on-write; "copy" (or an unpatched CRIU) copies them."""
    return {"CRIU_MAP_PAGES": "1"} if memory == "map" and status.maps_pages else {}


def checkpoint_environ(status: CriuStatus, memory: str) -> Mapping[str, str]:
    """Extra environment for `runc checkpoint` (runc passes it on to CRIU): for a snapshot that
    restores by mapping its page images ("map"), a CRIU with the fill-holes patch dumps small
    holes of anonymous mappings as zero pages (`FILL_HOLES_PAGES`). Every restored environment
    then has fewer VMAs (kernel memory); the image is restorable by any CRIU."""
    if memory == "map" and status.maps_pages and FILL_HOLES_PATCH in status.patches:
        return {"CRIU_FILL_HOLES": str(FILL_HOLES_PAGES)}
    return {}


def probe(binary: str = "criu") -> CriuStatus:
    """Find CRIU and run `criu check`; never raises."""
    path = shutil.which(binary, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        return CriuStatus(False, None, None, "criu is not installed (run scripts/install-system-deps.sh)")
    try:
        version_out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        version, patches = parse_version(version_out.stdout)
        if version is None or int(version.split(".")[0]) < MIN_MAJOR:
            return CriuStatus(False, path, version, f"criu {version} is too old (need {MIN_MAJOR}.x; Debian 12's 3.17 fails here)")
        check = subprocess.run([path, "check"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return CriuStatus(False, path, None, f"criu could not run: {exc}")
    output = check.stdout + check.stderr
    if "Looks good" not in output:
        errors = [line for line in output.splitlines() if "Error" in line and "RLIMIT_NOFILE" not in line]
        return CriuStatus(False, path, version, f"criu check failed: {'; '.join(errors[-3:]) or output.strip()[-300:]}", patches)
    return CriuStatus(True, path, version, None, patches)


def prime_kernel_cache(binary: str, cache: Path = KERNDAT_CACHE) -> str:
    """Make CRIU's kernel-feature cache (`cache`, /run/criu.kdat) exist for this boot; returns
    what was done. Never raises.

    Without it every CRIU run (two per restore) re-probes the kernel, spawning iptables and
    friends: about 7 ms per restore. CRIU writes the cache itself only when /run is a tmpfs
    (so that it dies with the boot), and a `criu.kdat.tmp` left by a killed run blocks that
    forever. On hosts whose /run is not a tmpfs, the cache is made by `criu check` in a
    private mount namespace with a tmpfs on /run, then installed here; the daemon does this
    at every start, so after a reboot or a CRIU upgrade it is re-made. (Until then, other
    CRIU users on such a host would read the previous boot's cache.)
    """
    stale = cache.with_name(cache.name + ".tmp")
    try:
        stale.unlink(missing_ok=True)
        if fstype_of(cache.parent) == "tmpfs":
            cache.unlink(missing_ok=True)
            subprocess.run([binary, "check"], capture_output=True, timeout=60)
            return f"CRIU kernel-feature cache {'written' if cache.exists() else 'NOT written'} by criu check at {cache}"
        script = 'mount -t tmpfs -o size=1m,mode=0755 snapfaas-kdat "$1" && "$0" check >/dev/null 2>&1; cat "$1/criu.kdat"'
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, binary, str(cache.parent)],
                             capture_output=True, timeout=60)
        if out.returncode != 0 or not out.stdout:
            return f"CRIU kernel-feature cache not made (unshare exit {out.returncode}: {out.stderr.decode(errors='replace').strip()[-200:]})"
        write_atomic(cache, out.stdout, mode=0o600)
        return f"CRIU kernel-feature cache installed at {cache} ({cache.parent} is not a tmpfs)"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"CRIU kernel-feature cache not made: {exc}"


def write_configs(directory: Path) -> tuple[Path, Path]:
    """The dump and restore CRIU config files referenced by the container annotation."""
    directory.mkdir(parents=True, exist_ok=True)
    dump, restore = directory / "criu-dump.conf", directory / "criu-restore.conf"
    dump.write_text(DUMP_CONFIG)
    restore.write_text(RESTORE_CONFIG)
    for path in (dump, restore):
        path.chmod(0o644)
    return dump, restore


def criu_errors(log: Path, limit: int = 3) -> str:
    """The last few CRIU error lines of a dump/restore log (the useful part for a StateReason)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no CRIU log"
    errors = [l.split(": ", 1)[-1].strip() for l in lines if "Error (" in l and "RLIMIT_NOFILE" not in l and "cgroupd" not in l]
    return "; ".join(errors[-limit:]) or (lines[-1] if lines else "CRIU log is empty")


async def checkpoint(runc_argv: list[str], container_id: str, image_dir: Path,
                     environ: Mapping[str, str] | None = None) -> float:
    """`runc checkpoint` the container into `image_dir` (the container stops); returns seconds.
    `environ` is added to runc's environment (`checkpoint_environ`)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        *runc_argv, "checkpoint", "--image-path", str(image_dir), "--work-path", str(image_dir), container_id,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, umask=RUNC_UMASK,
        env={**os.environ, **environ} if environ else None,
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        detail = criu_errors(image_dir / "dump.log")
        raise CheckpointFailed("runc checkpoint", f"{detail} ({stderr.decode(errors='replace').strip()[-200:]})")
    return loop.time() - started
