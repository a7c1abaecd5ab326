"""Records of containers restored without runc, so a daemon restarted after a crash can end them.

runc keeps a state directory per container and `Runc.reap_leftovers` deletes what a dead daemon
left; a container restored by driving CRIU directly (`CriuContainer`) has no runc state, so the
daemon writes one `RestoredRecord` per such container under ``<data-dir>/restored/<id>.json``
before CRIU runs and removes it once the container is gone. `RestoredLedger.reap_leftovers`
ends every recorded container: SIGKILL to every process in its cgroup (CRIU itself runs in that
cgroup while it restores, so nothing it made escapes it), then the cgroup is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import time
from pathlib import Path

from snapfaas.sandbox.cgroup import procs
from snapfaas.sandbox.cgroup import remove as remove_cgroup

logger = logging.getLogger(__name__)
KILL_WAIT_S = 10.0
DIRECTORY = "restored"  # under the data dir


def live_records(data_dir: Path) -> list[Path]:
    """The record files of containers a daemon with `data_dir` restored and has not ended."""
    directory = data_dir / DIRECTORY
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


@dataclasses.dataclass(frozen=True)
class RestoredRecord:
    """One container restored by CRIU directly: its id, its cgroup (every process of it runs
    there), its bundle and, once the restore answered, the host pid of its first process."""

    container_id: str
    cgroup: str
    bundle: str
    pid: int | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RestoredRecord:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("container_id"), str) or not isinstance(data.get("cgroup"), str):
            raise ValueError("not a restored-container record")
        pid = data.get("pid")
        return cls(data["container_id"], data["cgroup"], str(data.get("bundle", "")),
                   pid if isinstance(pid, int) else None)


def kill_cgroup(cgroup: str, timeout_s: float = KILL_WAIT_S, reap_except: frozenset[int] | None = None) -> list[int]:
    """SIGKILL every process in `cgroup` and wait (bounded) until each has exited; returns the
    pids that were still running after `timeout_s`. Processes are signalled through pidfds taken
    while they are listed in the cgroup, so a recycled pid is never signalled.

    With `reap_except`, each one that exited and is the caller's own child is reaped too (CRIU
    restores a container's first process as its client's child), except the pids named (a
    child someone else waits for)."""
    deadline = time.monotonic() + timeout_s
    left: list[int] = []
    while True:
        pidfds: dict[int, int] = {}
        for pid in procs(cgroup):
            try:
                pidfds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                continue
        if not pidfds:
            return []
        try:
            for fd in pidfds:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            poller = select.poll()
            for fd in pidfds:
                poller.register(fd, select.POLLIN)
            pending = set(pidfds)
            while pending and time.monotonic() < deadline:
                for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                    pending.discard(fd)
                    poller.unregister(fd)
            left = [pidfds[fd] for fd in pending]
            if reap_except is not None:
                for fd, pid in pidfds.items():
                    if fd not in pending and pid not in reap_except:
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(pid, os.WNOHANG)  # a zombie of ours (not ours: nothing happens)
        finally:
            for fd in pidfds:
                os.close(fd)
        if left or time.monotonic() >= deadline:
            return left  # a process that forked meanwhile is caught by the next round


class RestoredLedger:
    """The ``restored/`` directory of one daemon."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, container_id: str) -> Path:
        return self.directory / f"{container_id}.json"

    def write(self, record: RestoredRecord) -> None:
        """Record (or update) a container; written whole through a rename (no fsync: the
        record only has to outlive the daemon, not the machine, whose reboot ends the container)."""
        path = self._path(record.container_id)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(record.to_json())
        os.replace(tmp, path)

    def remove(self, container_id: str) -> None:
        self._path(container_id).unlink(missing_ok=True)

    def records(self) -> list[RestoredRecord]:
        out = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                out.append(RestoredRecord.from_json(path.read_text()))
            except (OSError, ValueError) as exc:
                logger.warning("unreadable restored-container record %s: %s", path, exc)
        return out

    def reap_leftovers(self) -> list[str]:
        """End every recorded container (kill its processes, remove its cgroup) and drop the
        records; returns their ids. Records that cannot be read are dropped too."""
        ended = []
        for record in self.records():
            survivors = kill_cgroup(record.cgroup)
            if survivors:
                logger.warning("restored container %s: pids %s survived SIGKILL", record.container_id, survivors)
            for failure in remove_cgroup(record.cgroup):
                logger.warning("restored container %s: cgroup cleanup failed at step %s", record.container_id, failure)
            ended.append(record.container_id)
        for path in self.directory.glob("*.json*"):
            path.unlink(missing_ok=True)
        return ended
