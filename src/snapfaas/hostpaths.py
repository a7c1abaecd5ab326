"""Directories the root daemon trusts: created or verified component by component, never via a
symlink, never owned or writable by another user.

The daemon runs as root and acts on paths (mounts, unmounts, `rm -rf`, CRIU restores); a path a
local user could create first, swap or redirect with a symlink would turn those acts against
the host. So:

- `private_dir` creates each missing component itself with `mkdir` (which never follows a
  final symlink) and checks every component with `lstat`: a directory (not a symlink), owned by
  root, writable by nobody else; the leaf gets exactly the mode asked for.
- `trusted_dir` is the same check for directories the operator names (data dir, sandbox dir):
  each ancestor must be owned by root or the daemon's user and not writable by others unless it
  is sticky (like /tmp); the directory itself must be the daemon's and writable only by it.
- `RUN_ROOT` (/run/snapfaas) holds what must live in RAM (plaintext snapshot images, container
  bundles, network block locks). If it is not on a tmpfs (on hosts where /run is disk), a
  tmpfs is mounted there.

Modes: directories that user-namespaced sandboxes must walk through (the mapped root of a
container reaches its rootfs and CRIU images) are 0711 (traverse, no listing); directories
only the daemon uses are 0700.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from snapfaas.errors import ServiceError
from snapfaas.sandbox.mounts import fstype_of

RUN_ROOT = Path("/run/snapfaas")


class UntrustedPath(ServiceError):
    """A directory the daemon would use is a symlink, or owned or writable by another user."""


def _check(path: Path, st: os.stat_result, uid: int, leaf: bool) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedPath(f"refusing {path}: it is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedPath(f"refusing {path}: not a directory")
    if leaf:
        if st.st_uid != uid:
            raise UntrustedPath(f"refusing {path}: owned by uid {st.st_uid}, not {uid}")
        if st.st_mode & 0o022:
            raise UntrustedPath(f"refusing {path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
        return
    if st.st_uid not in (0, uid):
        raise UntrustedPath(f"refusing {path}: owned by uid {st.st_uid}, who could replace what is below it")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UntrustedPath(f"refusing {path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}) and not sticky")


def trusted_dir(path: Path, create_mode: int | None = None) -> Path:
    """Verify (creating the missing tail with `create_mode` if given) that `path` and every
    ancestor pass the rules in the module docstring; returns the absolute path."""
    uid = os.geteuid()
    path = Path(os.path.abspath(path))
    parts = [path, *path.parents][::-1]
    for i, part in enumerate(parts):
        leaf = i == len(parts) - 1
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            if create_mode is None:
                raise UntrustedPath(f"refusing {path}: {part} does not exist") from None
            os.mkdir(part, create_mode if leaf else 0o755)
            st = os.lstat(part)
        _check(part, st, uid, leaf)
    return path


def private_dir(path: Path, mode: int) -> Path:
    """`trusted_dir(path, mode)`, then the leaf's mode set to exactly `mode` (via a descriptor
    opened with O_NOFOLLOW|O_DIRECTORY, so a swapped-in symlink cannot redirect the chmod)."""
    trusted_dir(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UntrustedPath(f"refusing {path}: changed owner while being checked")
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def run_root() -> Path:
    """`RUN_ROOT`, verified and on a tmpfs (mounted here if needed); returns it."""
    private_dir(RUN_ROOT, 0o711)
    if fstype_of(RUN_ROOT) != "tmpfs":
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0711,nosuid,nodev", "snapfaas", str(RUN_ROOT)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise ServiceError(f"state dir setup failed at step 'mount tmpfs on {RUN_ROOT}': {out.stderr.strip()}")
        private_dir(RUN_ROOT, 0o711)
    return RUN_ROOT
