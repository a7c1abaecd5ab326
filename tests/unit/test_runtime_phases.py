"""The phases debug switch's arithmetic: each phase is measured from the counters read after
the previous boundary's own smaps_rollup read, and ``anon`` is a difference from the second
phase on."""

from __future__ import annotations

from pathlib import Path

from snapfaas.runtime import phases
from snapfaas.runtime.phases import PhaseClock, Sample


def test_anonymous_kib_reads_the_rollup_figure(tmp_path: Path) -> None:
    rollup = tmp_path / "smaps_rollup"
    rollup.write_text("55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  2048 kB\nAnonymous:  1060 kB\nSwap: 0 kB\n")
    assert phases.anonymous_kib(str(rollup)) == 1060
    assert phases.anonymous_kib(str(tmp_path / "missing")) == -1


def test_report_takes_the_readings_own_cost_off_the_next_phase() -> None:
    clock = PhaseClock()
    clock.begin("restore")
    clock.marks = [
        ("restored", Sample(10.0, 0.010, 0.009, 500, 1, 648), Sample(10.001, 0.011, 0.010, 504, 1)),
        ("hooks", Sample(10.003, 0.012, 0.011, 600, 1, 1060), Sample(10.004, 0.013, 0.012, 603, 1)),
    ]
    line = clock.report()
    assert line.startswith("SNAPFAAS_PHASES restore: restored cpu 10.0 ms (thread 9.0) faults 500/1 anon 648 KiB | ")
    assert line.endswith("hooks cpu 1.0 ms (thread 1.0) wall 2.0 ms faults 96/0 anon +412 KiB\n")


def test_a_live_mark_has_both_readings() -> None:
    clock = PhaseClock()
    clock.begin("init")
    clock.mark("init")
    name, at, after = clock.marks[0]
    assert name == "init" and after.cpu >= at.cpu and after.wall >= at.wall
    assert at.anon_kib > 0  # Linux: /proc/self/smaps_rollup
