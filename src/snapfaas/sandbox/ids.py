"""Host id slices: the subordinate uid/gid range sandboxes map to, cut into one slice per function.

Every environment runs in its own user namespace mapping container ids 0-65535 to the 65536
host ids of its function's *slice*: slice ``i`` is ``base + i*65536 ... base + i*65536 + 65535``
(uids and gids alike), so the function's code (container uid 1000) runs as host uid
``base + i*65536 + 1000`` and two functions never share a host uid or gid. The range
``[base, base + slices*65536)`` is dedicated to snapfaas: the default base, 0x70000000
(1879048192), is far above where ``useradd`` hands out subordinate ids (Debian's login.defs:
``SUB_UID_MIN``/``SUB_GID_MIN`` 100000, ``SUB_UID_MAX``/``SUB_GID_MAX`` 600100000, 65536 per
user), and the range ends below 2**31 (tools that keep ids in a signed 32-bit int break above that).

The daemon refuses to start when its range overlaps an entry of /etc/subuid or /etc/subgid
(`check_host`): a host user owning those ids could otherwise read every sandbox's memory and
files, or signal its processes. Slices are allocated per function in the registry; a slice
freed by a deleted function is reused only once no file and no process of it is left
(`slice_has_processes` plus the stores' own checks, see `Registry.reclaim_slices`).

Other host ranges (LDAP/SSSD id mapping, whose default window is 200000-2000200000) are not
read from anywhere: an operator on such a host chooses ``--id-range-base`` accordingly.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from snapfaas.errors import ServiceError

SLICE_SIZE = 65536
DEFAULT_BASE = 0x70000000
DEFAULT_SLICES = 4095
ID_LIMIT = 2**31  # base + slices*SLICE_SIZE stays below this
SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")


class IdRangeConflict(ServiceError):
    """The configured id range overlaps a subordinate id range of a host user."""


@dataclasses.dataclass(frozen=True)
class IdRange:
    """`slices` slices of `SLICE_SIZE` ids starting at host id `base`."""

    base: int = DEFAULT_BASE
    slices: int = DEFAULT_SLICES

    def __post_init__(self) -> None:
        if self.base < SLICE_SIZE:
            raise ValueError(f"--id-range-base must be at least {SLICE_SIZE} (host system ids live below), got {self.base}")
        if self.slices < 1:
            raise ValueError(f"--id-range-slices must be at least 1, got {self.slices}")
        if self.end >= ID_LIMIT:
            raise ValueError(
                f"id range {self.base}-{self.end - 1} ({self.slices} slices of {SLICE_SIZE}): base + slices*{SLICE_SIZE} "
                f"= {self.end} must stay below 2**31 = {ID_LIMIT}"
            )

    @property
    def end(self) -> int:
        """First host id past the range."""
        return self.base + self.slices * SLICE_SIZE

    def slice_base(self, index: int) -> int:
        """Host id that container id 0 of slice `index` maps to."""
        if not 0 <= index < self.slices:
            raise ValueError(f"id slice {index} is outside 0..{self.slices - 1}")
        return self.base + index * SLICE_SIZE

    def host_id(self, index: int, container_id: int) -> int:
        """The host uid (or gid) of `container_id` inside slice `index`."""
        if not 0 <= container_id < SLICE_SIZE:
            raise ValueError(f"container id {container_id} is outside 0..{SLICE_SIZE - 1}")
        return self.slice_base(index) + container_id

    def describe(self) -> str:
        return f"{self.base}-{self.end - 1} ({self.slices} slices of {SLICE_SIZE})"


@dataclasses.dataclass(frozen=True)
class SubidEntry:
    """One line of /etc/subuid or /etc/subgid: `user` owns ids ``start .. start+count-1``."""

    file: str
    line: int
    user: str
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


def parse_subids(text: str, file: str) -> list[SubidEntry]:
    """Entries of a subuid/subgid file (``name-or-id:start:count``); comments, blank and
    malformed lines are skipped (shadow-utils and the kernel helpers skip them too)."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        entries.append(SubidEntry(file, number, parts[0], int(parts[1]), int(parts[2])))
    return entries


def overlaps(ids: IdRange, entries: list[SubidEntry]) -> list[SubidEntry]:
    """The entries whose ids intersect `ids` (half-open intervals; empty entries never do)."""
    return [e for e in entries if e.count > 0 and e.start < ids.end and ids.base < e.end]


def conflict_message(ids: IdRange, clashes: list[SubidEntry]) -> str:
    listed = "; ".join(
        f"{e.file} line {e.line}: user {e.user!r} owns {e.start}-{e.end - 1}" for e in clashes
    )
    return (f"refusing to start: the sandbox id range {ids.describe()} overlaps subordinate ids of host users "
            f"({listed}); choose another --id-range-base/--id-range-slices or move those entries")


def check_host(ids: IdRange, subuid: Path = SUBUID, subgid: Path = SUBGID) -> None:
    """Raise `IdRangeConflict` if `ids` overlaps any entry of `subuid` or `subgid`. A missing
    file has no entries; an unreadable one is an error (its entries cannot be checked)."""
    clashes: list[SubidEntry] = []
    for path in (subuid, subgid):
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise IdRangeConflict(f"refusing to start: cannot read {path} to check the sandbox id range: {exc}") from exc
        clashes += overlaps(ids, parse_subids(text, str(path)))
    if clashes:
        raise IdRangeConflict(conflict_message(ids, clashes))


def uids_of_status(status: str) -> tuple[int, ...]:
    """Real, effective, saved and fs uids from a /proc/<pid>/status text (empty if absent)."""
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return tuple(int(v) for v in line.split()[1:])
    return ()


def slice_has_processes(ids: IdRange, index: int, proc: Path = Path("/proc")) -> bool:
    """Whether any host process runs with a uid of slice `index` (a scan of /proc; runs only
    when a freed slice is considered for reuse)."""
    low = ids.slice_base(index)
    high = low + SLICE_SIZE
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            status = (Path(entry.path) / "status").read_text()
        except OSError:
            continue  # exited meanwhile
        if any(low <= uid < high for uid in uids_of_status(status)):
            return True
    return False
