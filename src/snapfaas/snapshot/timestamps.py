"""Fixed modification times for the empty tmpfs mounts a checkpoint archives.

CRIU archives every tmpfs mount of the container as a tar image (``tmpfs-dev-<n>.tar.gz.img``),
and tar records each entry's mtime. The sandbox's tmpfs mounts are made when the container
starts: ``/dev`` (runc's device nodes and ``/proc/self/fd`` links), ``/dev/shm`` and ``/tmp``.
So two snapshots of identical code differ in those images only by when their containers
started, and each is a new chunk in the store at every publish.

Before a deterministic init's checkpoint (`snapshot.determinism`), `settle` sets the mtime
(and atime) of the root directory of every tmpfs mount that is still empty to `FIXED_NS`: an
empty directory's mtime only says when the sandbox made it. A tmpfs the function wrote to keeps
every time it has. Read-only mounts (runc's tmpfs masks over ``/proc/acpi`` and the like)
cannot be changed and keep their times. ``/dev`` is not empty and keeps its times: runc bind-mounts the host's
device nodes over files of it, which CRIU archives but ``/proc/<pid>/root`` cannot reach
(setting times through the bind mounts would change the host's nodes), so its image still
differs per publish. Paths are reached through ``/proc/<pid>/root`` of the container's first
process and symlinks are not followed.
"""

from __future__ import annotations

import errno
import os

FIXED_NS = 315532800 * 10**9  # 1980-01-01T00:00:00Z, the code trees' fixed directory mtime


def tmpfs_mounts(mountinfo: str) -> list[str]:
    """The mount points of the tmpfs mounts in a ``/proc/<pid>/mountinfo`` listing."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype == "tmpfs":
            points.append(fields[4].replace("\\040", " "))
    return points


def settle(pid: int, proc: str = "/proc") -> list[str]:
    """Pin the times of the empty tmpfs mounts of the container whose first process is `pid`
    (see the module doc); returns their mount points. Raises OSError if the container's mounts
    cannot be read (the caller goes on without: only dedup is at stake). `proc`: where procfs
    is (tests)."""
    root = f"{proc}/{pid}/root"
    with open(f"{proc}/{pid}/mountinfo") as mountinfo:
        points = tmpfs_mounts(mountinfo.read())
    pinned = []
    for point in points:
        path = root + point
        if not os.path.isdir(path) or os.path.islink(path) or os.listdir(path):
            continue
        try:
            os.utime(path, ns=(FIXED_NS, FIXED_NS), follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            continue  # runc's read-only masks (/proc/acpi...): their images keep differing
        pinned.append(point)
    return pinned
