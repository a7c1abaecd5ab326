"""Where the runtime's own time goes: CPU, wall time and page faults per phase, logged on demand.

A debug switch, off by default: the function environment variable ``SNAPFAAS_RUNTIME_PHASES=1``
makes the runtime sample its process at each phase boundary and write one line to the
function's log (before the log mark of the phase the line ends with, so it shows in that
invoke's ``LogType=Tail``)::

    SNAPFAAS_PHASES restore: restored cpu 9.1 ms (thread 8.7) faults 1204/0 | hooks cpu 0.4 ms ...

* SnapStart: ``restored`` is what the restored process did before its first Python instruction
  after the resume (CRIU's restorer running in the process, the kernel's work for it): a
  restored process starts with fresh CPU and fault counters, so the sample's absolute values
  are that phase; then ``hooks`` (fresh credentials, after-restore hooks, the log mark) and
  ``first invoke`` (the first invocation's handler call and response encoding, logged with it).
* on-demand: ``init`` (interpreter start and init, absolute) and ``first invoke``.

Each phase shows ``cpu`` (the whole process, every thread; ``thread``: the runtime's main
thread alone), ``wall`` (not for the absolute first phase) and page ``faults`` minor/major.
Nothing is sampled and nothing extra is imported while the switch is off; the variable is read
once, at init (a restored copy keeps its snapshot's setting).
"""

from __future__ import annotations

import dataclasses
import resource
import time

SWITCH = "SNAPFAAS_RUNTIME_PHASES"  # bootstrap.PHASES_SWITCH (bootstrap imports this module only when it is on)
PREFIX = "SNAPFAAS_PHASES"


@dataclasses.dataclass(frozen=True)
class Sample:
    wall: float  # perf_counter seconds
    cpu: float  # the process's user + system seconds, every thread
    thread_cpu: float  # the calling thread's seconds
    minor_faults: int
    major_faults: int

    @classmethod
    def now(cls) -> Sample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), usage.ru_utime + usage.ru_stime, time.thread_time(),
                   usage.ru_minflt, usage.ru_majflt)


class PhaseClock:
    """Samples taken at phase boundaries; `report` turns them into one log line.

    `begin(kind)` starts a series (its first `mark` is measured from the process's start, as
    the counters are), `mark(name)` ends the phase `name` at now."""

    def __init__(self) -> None:
        self.kind = ""
        self.marks: list[tuple[str, Sample]] = []

    def begin(self, kind: str) -> None:
        self.kind = kind
        self.marks = []

    def mark(self, name: str) -> None:
        self.marks.append((name, Sample.now()))

    def report(self) -> str:
        """``SNAPFAAS_PHASES <kind>: <phase> cpu .. ms (thread ..) [wall .. ms] faults minor/major | ...``"""
        parts = []
        previous: Sample | None = None
        for name, sample in self.marks:
            base = previous or Sample(sample.wall, 0.0, 0.0, 0, 0)
            part = (f"{name} cpu {(sample.cpu - base.cpu) * 1000:.1f} ms "
                    f"(thread {(sample.thread_cpu - base.thread_cpu) * 1000:.1f})")
            if previous is not None:
                part += f" wall {(sample.wall - base.wall) * 1000:.1f} ms"
            part += f" faults {sample.minor_faults - base.minor_faults}/{sample.major_faults - base.major_faults}"
            parts.append(part)
            previous = sample
        return f"{PREFIX} {self.kind}: " + " | ".join(parts) + "\n"
