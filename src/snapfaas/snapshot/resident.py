"""The restore engine's own program files, kept in memory for the daemon's lifetime.

Every restore executes CRIU (``criu swrk``; under ``--restore-engine runc`` also runc, which
executes CRIU). On a host whose page cache lost them (a dropped cache, memory pressure, a
long idle spell) that exec reads the 6 MB CRIU binary and its shared libraries from disk, a
page fault and a readahead window at a time, and looks their paths and inodes up again,
while the restore waits. These files are the platform's code, not the function's: they are
kept resident the way the daemon's own code is (the Python interpreter and the libraries the
daemon maps stay in memory as long as the daemon maps them, whatever happens to the page
cache). `ResidentPrograms` maps each file read-only and locks the mapping (``mlock``): its
pages are read once, at the daemon's start, and are neither dropped (``drop_caches`` skips
mapped pages) nor reclaimed; the open mapping also keeps the file's inode and the dentries of
its path cached. The cost is the files' size in locked memory (~10 MB for CRIU and its
libraries here), counted once per host. A function's own files (its interpreter, its
libraries) are never locked: a cold host reads them from disk, through the working-set
read-ahead (`snapshot.workingset`).

Which files: the program and the shared libraries its dynamic loader resolves (``ldd``). A
file that cannot be mapped or locked is reported and left out (the working-set read-ahead
still reads it ahead at each restore); nothing here fails the daemon's start.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import mmap
import os
import re
import subprocess
from collections.abc import Iterable

logger = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
MAP_FAILED = ctypes.c_void_p(-1).value
LDD_TIMEOUT_S = 10
LOADER_CACHE = "/etc/ld.so.cache"
_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def shared_libraries(program: str) -> list[str]:
    """The shared libraries (and the dynamic loader) `program` loads, as ``ldd`` resolves them
    (the paths the loader opens, symlinks unresolved); empty for a static program or if
    ``ldd`` is missing or fails."""
    try:
        out = subprocess.run(["ldd", program], capture_output=True, text=True, timeout=LDD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.info("resident programs: libraries of %s not listed (failed at step 'ldd'): %s", program, exc)
        return []
    if out.returncode != 0:
        return []
    found = []
    for line in out.stdout.splitlines():
        match = _LDD_LINE.search(line)
        if match is not None:
            found.append(match.group(1))
    return found


@dataclasses.dataclass(frozen=True)
class ResidentFile:
    path: str
    size: int
    address: int
    locked: bool


class ResidentPrograms:
    """Files mapped and locked in this process until `release` (see the module docstring)."""

    def __init__(self) -> None:
        self.files: list[ResidentFile] = []
        self._pinned: dict[str, int] = {}  # path -> an O_PATH descriptor keeping its dentry cached

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def paths(self) -> set[str]:
        return {f.path for f in self.files}

    @property
    def locked_paths(self) -> set[str]:
        return {f.path for f in self.files if f.locked}

    def hold(self, paths: Iterable[str]) -> list[str]:
        """Map and lock each of `paths` (symlinks resolved; one already held is skipped), and
        keep the dentry of every component of the path as given cached (an ``O_PATH``
        descriptor each: the loader and exec look up ``/lib/x86_64-linux-gnu/libc.so.6``, a
        chain of symlinks, not the file the mapping holds); returns what could not be held,
        each with the step that failed."""
        failed = []
        held = self.paths
        paths = list(paths)
        for path in paths:
            self._pin(path)
        for path in dict.fromkeys(os.path.realpath(p) for p in paths):
            if path in held:
                continue
            try:
                self.files.append(_map_locked(path))
            except OSError as exc:
                failed.append(f"{path}: {exc.strerror or exc}")
            held.add(path)
        return failed

    def hold_program(self, program: str) -> str:
        """Hold `program` and its shared libraries; returns what was done, for the operator."""
        before = len(self.files), self.bytes
        libraries = shared_libraries(program)
        # the loader maps its cache to find the libraries: resident too
        failed = self.hold([program, *libraries, *([LOADER_CACHE] if libraries and os.path.exists(LOADER_CACHE) else [])])
        count, size = len(self.files) - before[0], self.bytes - before[1]
        unlocked = [f.path for f in self.files[before[0]:] if not f.locked]
        summary = f"{program} and its libraries kept resident: {count} file(s), {size / 1e6:.1f} MB locked in memory"
        if unlocked:
            summary += f" ({len(unlocked)} mapped but not locked: {', '.join(unlocked)})"
        if failed:
            summary += f"; not held: {'; '.join(failed)}"
        return summary

    def _pin(self, path: str) -> None:
        """Open every component of `path` (absolute) with ``O_PATH | O_NOFOLLOW`` (kept until
        `release`); a component that cannot be opened ends the walk."""
        parts = [p for p in path.split("/") if p]
        for index in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:index])
            if prefix in self._pinned:
                continue
            try:
                self._pinned[prefix] = os.open(prefix, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                return
            if os.path.islink(prefix):  # the rest of the path is looked up under its target
                self._pin(os.path.join(os.path.dirname(prefix), os.readlink(prefix)) + "/" + "/".join(parts[index:]))
                return

    def release(self) -> None:
        """Unmap every file and close the pinned paths (their pages become ordinary page cache again)."""
        for held in self.files:
            _libc.munmap(held.address, held.size)
        self.files = []
        for fd in self._pinned.values():
            os.close(fd)
        self._pinned = {}


def _map_locked(path: str) -> ResidentFile:
    """Map `path` read-only and lock it (which reads every page in); a mapping that cannot be
    locked (no CAP_IPC_LOCK, RLIMIT_MEMLOCK) is kept populated and mapped. OSError names the step."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise OSError(0, "empty file")
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0x8000), fd, 0)
        if address in (None, MAP_FAILED):
            errno = ctypes.get_errno()
            raise OSError(errno, f"failed at step 'mmap': {os.strerror(errno)}")
    finally:
        os.close(fd)  # the mapping keeps the file (and its inode and dentry) referenced
    locked = _libc.mlock(address, size) == 0
    if not locked:
        logger.info("resident programs: %s mapped but not locked (failed at step 'mlock'): %s", path,
                    os.strerror(ctypes.get_errno()))
    return ResidentFile(path, size, address, locked)


__all__ = ["ResidentFile", "ResidentPrograms", "shared_libraries"]
