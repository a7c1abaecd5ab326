"""The REPORT line's billing fields, computed as Lambda computes them.

- Warm invocation: ``Billed Duration`` = Duration rounded up to the millisecond (at least 1).
- On-demand cold start: Init is billed too (since 2025-08-01, for ZIP functions on managed
  runtimes as it always was for container images and custom runtimes): ``Billed Duration`` =
  ceil(Duration + Init Duration) (REPORT samples: 1049.63 + 1307.68 ms -> 2366 ms).
- SnapStart restore: ``Restore Duration`` is the whole restore (snapshot restore, runtime
  load, after-restore hooks, time outside the sandbox included); ``Billed Restore Duration``
  only the runtime's part of it (runtime load + after-restore hooks), rounded up; and
  ``Billed Duration`` = ceil(Duration) + Billed Restore Duration (REPORT samples: 127.10 ms
  with 26 ms billed restore -> 154 ms).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Phase:
    """How a new environment came to be before its first invocation: ``Init`` (on-demand,
    `ms` = Init Duration) or ``Restore`` (SnapStart, `ms` = Restore Duration, `billed_ms` =
    the runtime's part of it: from the process resuming to the end of its after-restore hooks)."""

    kind: str
    ms: float
    billed_ms: float = 0.0

    @property
    def is_restore(self) -> bool:
        return self.kind == "Restore"


def ceil_ms(ms: float) -> int:
    return max(1, math.ceil(ms))


def billed_restore_ms(phase: Phase) -> int:
    return ceil_ms(phase.billed_ms)


def billed_duration_ms(duration_ms: float, phase: Phase | None) -> int:
    """``Billed Duration`` of an invocation that `phase` (None: a warm one) preceded."""
    if phase is None:
        return ceil_ms(duration_ms)
    if phase.is_restore:
        return ceil_ms(duration_ms) + billed_restore_ms(phase)
    return ceil_ms(duration_ms + phase.ms)


def report_fields(duration_ms: float, phase: Phase | None) -> list[str]:
    """The REPORT fields about time, in Lambda's order, without memory (the caller's)."""
    return [f"Duration: {duration_ms:.2f} ms", f"Billed Duration: {billed_duration_ms(duration_ms, phase)} ms"]


def phase_fields(phase: Phase | None) -> list[str]:
    """The REPORT fields after memory: Init Duration, or Restore and Billed Restore Duration."""
    if phase is None:
        return []
    if phase.is_restore:
        return [f"Restore Duration: {phase.ms:.2f} ms", f"Billed Restore Duration: {billed_restore_ms(phase)} ms"]
    return [f"Init Duration: {phase.ms:.2f} ms"]
