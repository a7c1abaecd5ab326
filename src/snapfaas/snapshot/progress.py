"""Where a SnapStart publish is, phase by phase (``snapfaas deploy --snapstart`` shows it).

Phases, in order (a publish may skip some: no scanner, no wait for a slot, a runtime that
does not announce its hooks)::

    scan -> queued -> init -> hooks -> checkpoint -> upload -> done | failed

``scan``: the snapshot safety scan of the package; ``queued``: waiting for an environment slot;
``init``: the function's init code; ``hooks``: before-snapshot hooks; ``checkpoint``: CRIU dumps
the environment; ``upload``: the images are chunked, encrypted and stored in the origin.

A `PublishProgress` is a record the publishing task updates with the time it moves on
(`enter`, `end`); `Progresses` keeps them per version, the finished ones for `KEEP_S` (the CLI
polls until it sees the end). Kept in the memory of the server that runs the publish.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

PHASES = ("scan", "queued", "init", "hooks", "checkpoint", "upload")
ENDS = ("done", "failed")
KEEP_S = 3600.0


@dataclasses.dataclass
class PublishProgress:
    function: str
    version: str
    started: float  # clock time (seconds) the publish began
    phase: str | None = None  # None until the first phase is entered
    phase_started: float = 0.0
    durations: dict[str, float] = dataclasses.field(default_factory=dict)  # finished phases -> seconds
    ended: float | None = None
    reason: str | None = None  # why it failed
    snapshot_bytes: int | None = None  # the images' size, once uploaded

    def enter(self, phase: str, now: float) -> None:
        """Move to `phase` (later in `PHASES`), closing the current one."""
        if phase not in PHASES:
            raise ValueError(f"unknown publish phase {phase!r}")
        if self.ended is not None:
            raise ValueError(f"publish of {self.function}:{self.version} already ended ({self.phase})")
        if self.phase is not None and PHASES.index(phase) <= PHASES.index(self.phase):
            raise ValueError(f"publish phase {phase!r} after {self.phase!r}")
        self._close(now)
        self.phase, self.phase_started = phase, now

    def end(self, outcome: str, now: float, reason: str | None = None) -> None:
        if outcome not in ENDS:
            raise ValueError(f"unknown publish outcome {outcome!r}")
        if self.ended is not None:
            return
        self._close(now)
        self.phase, self.ended, self.reason = outcome, now, reason

    def _close(self, now: float) -> None:
        if self.phase is not None:
            self.durations[self.phase] = max(0.0, now - self.phase_started)

    def to_json(self, now: float) -> dict[str, Any]:
        """The API's view: phase, its elapsed seconds, each finished phase's seconds, the total."""
        current = None if self.ended is not None else max(0.0, now - self.phase_started)
        return {
            "FunctionName": self.function, "Version": self.version, "Phase": self.phase,
            "PhaseElapsedSeconds": None if current is None else round(current, 3),
            "Phases": [{"Phase": name, "Seconds": round(self.durations[name], 3)} for name in PHASES if name in self.durations],
            "TotalSeconds": round((self.ended if self.ended is not None else now) - self.started, 3),
            "Reason": self.reason, "SnapshotBytes": self.snapshot_bytes,
        }


class Progresses:
    """The progress of every publish this server runs or ran in the last `KEEP_S` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_version: dict[tuple[str, str], PublishProgress] = {}

    def begin(self, function: str, version: str) -> PublishProgress:
        self._prune()
        now = self.clock()
        progress = PublishProgress(function, version, now)
        self._by_version[(function, version)] = progress
        return progress

    def get(self, function: str, version: str) -> PublishProgress | None:
        return self._by_version.get((function, version))

    def enter(self, function: str, version: str, phase: str) -> None:
        progress = self._by_version.get((function, version))
        if progress is not None and progress.ended is None:
            progress.enter(phase, self.clock())

    def end(self, function: str, version: str, outcome: str, reason: str | None = None) -> None:
        progress = self._by_version.get((function, version))
        if progress is not None:
            progress.end(outcome, self.clock(), reason)

    def _prune(self) -> None:
        cutoff = self.clock() - KEEP_S
        for key in [k for k, p in self._by_version.items() if p.ended is not None and p.ended < cutoff]:
            del self._by_version[key]
