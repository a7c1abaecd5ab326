"""Where the runtime's own time goes: CPU, wall time and page faults per phase, logged on demand.

A debug switch, off by default: the function environment variable ``SNAPFAAS_RUNTIME_PHASES=1``
makes the runtime sample its process at each phase boundary and write one line to the
function's log (before the log mark of the phase the line ends with, so it shows in that
invoke's ``LogType=Tail``)::

    SNAPFAAS_PHASES restore: restored cpu 9.1 ms (thread 8.7) faults 1204/0 | hooks cpu 0.4 ms ...

* SnapStart: ``restored`` is what the restored process did before its first Python instruction
  after the resume (CRIU's restorer running in the process, the kernel's work for it): a
  restored process starts with fresh CPU and fault counters, so the sample's absolute values
  are that phase; then ``credentials`` (the ``resumed`` frame, connections, the fresh
  credentials put in the environment), ``hooks`` (the reseed if asked, after-restore hooks),
  ``log mark``, ``invoke read`` (``ready``, the first ``invoke`` frame read and decoded, its
  context) and ``first invoke`` (the handler call and the response's encoding, logged with it).
* on-demand: ``init`` (interpreter start and init, absolute), ``invoke read`` (the init's log
  mark included) and ``first invoke``.

Each phase shows ``cpu`` (the whole process, every thread; ``thread``: the runtime's main
thread alone), ``wall`` (not for the absolute first phase), page ``faults`` minor/major and
``anon`` (the change of the process's ``Anonymous`` memory in KiB, from
/proc/self/smaps_rollup: after a restore, the snapshot pages the phase wrote, each a private
copy per environment, plus fresh memory). Reading smaps_rollup costs CPU and a few faults of
its own: they are taken off every phase (the counters are read before and after it).
Nothing is sampled and nothing extra is imported while the switch is off; the variable is read
once, at init (a restored copy keeps its snapshot's setting).
"""

from __future__ import annotations

import dataclasses
import resource
import time

SWITCH = "SNAPFAAS_RUNTIME_PHASES"  # bootstrap.PHASES_SWITCH (bootstrap imports this module only when it is on)
PREFIX = "SNAPFAAS_PHASES"


ROLLUP = "/proc/self/smaps_rollup"


def anonymous_kib(path: str = ROLLUP) -> int:
    """The ``Anonymous:`` figure of `path` (smaps_rollup format), KiB; -1 if it cannot be read."""
    try:
        with open(path, "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Anonymous:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


@dataclasses.dataclass(frozen=True)
class Sample:
    wall: float  # perf_counter seconds
    cpu: float  # the process's user + system seconds, every thread
    thread_cpu: float  # the calling thread's seconds
    minor_faults: int
    major_faults: int
    anon_kib: int = -1  # Anonymous memory (smaps_rollup), -1: unknown

    @classmethod
    def counters(cls) -> Sample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), usage.ru_utime + usage.ru_stime, time.thread_time(),
                   usage.ru_minflt, usage.ru_majflt)

    @classmethod
    def now(cls) -> tuple[Sample, Sample]:
        """(the counters at the boundary with the anonymous memory there, the counters once
        that was read): the next phase is measured from the second."""
        before = cls.counters()
        anon = anonymous_kib()
        after = cls.counters()
        return dataclasses.replace(before, anon_kib=anon), after


class PhaseClock:
    """Samples taken at phase boundaries; `report` turns them into one log line.

    `begin(kind)` starts a series (its first `mark` is measured from the process's start, as
    the counters are), `mark(name)` ends the phase `name` at now."""

    def __init__(self) -> None:
        self.kind = ""
        self.marks: list[tuple[str, Sample, Sample]] = []

    def begin(self, kind: str) -> None:
        self.kind = kind
        self.marks = []

    def mark(self, name: str) -> None:
        self.marks.append((name, *Sample.now()))

    def report(self) -> str:
        """``SNAPFAAS_PHASES <kind>: <phase> cpu .. ms (thread ..) [wall .. ms] faults minor/major
        [anon +.. KiB] | ...`` (anon: from the second phase on, and the absolute figure for the first)"""
        parts = []
        previous: Sample | None = None  # the counters after the previous boundary's own reading
        previous_anon = -1
        for name, sample, after in self.marks:
            base = previous or Sample(sample.wall, 0.0, 0.0, 0, 0)
            part = (f"{name} cpu {(sample.cpu - base.cpu) * 1000:.1f} ms "
                    f"(thread {(sample.thread_cpu - base.thread_cpu) * 1000:.1f})")
            if previous is not None:
                part += f" wall {(sample.wall - base.wall) * 1000:.1f} ms"
            part += f" faults {sample.minor_faults - base.minor_faults}/{sample.major_faults - base.major_faults}"
            if sample.anon_kib >= 0:
                part += f" anon {sample.anon_kib} KiB" if previous_anon < 0 else f" anon {sample.anon_kib - previous_anon:+d} KiB"
            parts.append(part)
            previous, previous_anon = after, sample.anon_kib
        return f"{PREFIX} {self.kind}: " + " | ".join(parts) + "\n"
