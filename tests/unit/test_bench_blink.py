"""The pure parts of `snapfaas bench blink`: parsing /proc and cgroup counters, the CPU split,
aggregation, density ratios and the per-target verdicts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from snapfaas.bench import blink, cpu, density, runcwrap, webfunction

ROOT = Path(__file__).resolve().parents[2]
# /proc/<pid>/stat of a process named "a) b": utime 700, stime 300, cutime 40, cstime 2 (ticks)
STAT = "4242 (a) b) S 1 4242 4242 0 -1 4194560 5000 100 0 0 700 300 40 2 20 0 7 0 123 456789 1000 18446744073709551615"


def test_proc_stat_fields_are_counted_after_the_last_parenthesis() -> None:
    assert cpu.parse_proc_stat(STAT) == (1000, 42)


@pytest.mark.skipif(os.uname().machine not in density.SLEEP_SYSCALLS, reason="sleep system calls known for x86_64/aarch64")
def test_density_sees_a_process_asleep_in_time_sleep_and_not_one_reading() -> None:
    import subprocess
    calls = density.SLEEP_SYSCALLS[os.uname().machine]
    asleep = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(60)"],
                              stdin=subprocess.PIPE)
    try:
        cpu.wait_for(lambda: Path(f"/proc/{asleep.pid}/syscall").read_text().split()[0] == "0", 30, "the child to read")
        assert not density.sleeping(asleep.pid, calls)  # blocked, but reading: not the handler's hold
        assert asleep.stdin is not None
        asleep.stdin.write(b"go\n")
        asleep.stdin.flush()
        cpu.wait_for(lambda: density.sleeping(asleep.pid, calls), 30, "the child to sleep")
    finally:
        asleep.kill()
        asleep.wait()
    assert not density.sleeping(asleep.pid, calls)  # gone


def test_schedstat_and_cgroup_counters_are_nanoseconds() -> None:
    assert cpu.parse_schedstat("123456789 1000 42\n") == 123456789
    assert cpu.parse_cgroup_cpu("98765\n", v1=True) == 98765
    assert cpu.parse_cgroup_cpu("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n", v1=False) == 1_500_000
    with pytest.raises(ValueError, match="usage_usec"):
        cpu.parse_cgroup_cpu("user_usec 1\n", v1=False)


def test_split_attributes_each_counter_to_one_component() -> None:
    batch = cpu.Counters(restores=4, wall_s=10.0, daemon_s=0.44, children_s=0.40, cgroup_ns=200_000_000, runtime_ns=120_000_000)
    parts = cpu.split(batch, idle_daemon_rate=0.004)  # 40 ms idle over the batch
    # children: runc + CRIU + helpers (the restored process is not runc's child): runc & helpers = 100 - 20
    assert parts == {"daemon": 100.0, "runc & helpers": 80.0, "CRIU": 20.0, "runtime": 30.0, "total": 230.0}


def test_split_clamps_what_tick_rounding_makes_negative() -> None:
    batch = cpu.Counters(restores=2, wall_s=5.0, daemon_s=0.0, children_s=0.01, cgroup_ns=30_000_000, runtime_ns=40_000_000)
    parts = cpu.split(batch, idle_daemon_rate=0.01)
    assert parts["daemon"] == 0 and parts["CRIU"] == 0 and parts["runc & helpers"] == 5.0
    assert parts["runtime"] == 20.0 and parts["total"] == 25.0
    with pytest.raises(ValueError):
        cpu.split(cpu.Counters(0, 1.0, 0, 0, 0, 0), 0)


def test_median_breakdown_is_per_component() -> None:
    rows = [{"daemon": 1.0, "total": 10.0}, {"daemon": 5.0, "total": 6.0}, {"daemon": 3.0, "total": 8.0}]
    assert cpu.median_breakdown(rows) == {"daemon": 3.0, "total": 8.0}
    with pytest.raises(ValueError):
        cpu.median_breakdown([])


def test_daemon_threads_are_grouped_by_pool_and_exited_threads_kept_apart() -> None:
    assert cpu.thread_group("view-prefetch_3") == "view-prefetch" and cpu.thread_group("python3") == "python"
    assert cpu.thread_group("snapshot-view") == "snapshot-view" and cpu.thread_group("123") == "123"
    assert cpu.thread_group("Trio thread 2") == "Trio thread"
    before = {1: ("python3", 1_000_000), 2: ("asyncio_0", 5_000_000), 3: ("gone", 9_000_000)}
    after = {1: ("python3", 41_000_000), 2: ("asyncio_0", 6_000_000), 4: ("asyncio_1", 3_000_000)}
    assert cpu.thread_delta_ns(before, after) == {"python": 40_000_000, "asyncio": 4_000_000}
    batch = cpu.Counters(2, 1.0, 0.1, 0, 0, 0, {"python": 40_000_000, "asyncio": 4_000_000})
    assert cpu.daemon_threads_ms(batch) == {"exited threads": 28.0, "python": 20.0, "asyncio": 2.0}
    assert cpu.mean_threads([{"a": 2.0}, {"a": 4.0, "b": 2.0}]) == {"a": 3.0, "b": 1.0}


def test_meminfo_and_smaps_rollup_are_read_in_bytes() -> None:
    assert density.parse_meminfo("MemTotal:  100 kB\nMemAvailable:   2048 kB\n") == 2 << 20
    with pytest.raises(ValueError):
        density.parse_meminfo("MemTotal: 1 kB\n")
    rollup = ("55d0c0000000-7ffc00000000 ---p 00000000 00:00 0 [rollup]\nRss:  4096 kB\nPss:  1024 kB\n"
              "Pss_Anon:  512 kB\n")
    assert density.parse_smaps_rollup(rollup) == {"Rss": 4 << 20, "Pss": 1 << 20, "Pss_Anon": 512 << 10}


def test_density_ratios_are_many_over_one() -> None:
    one = {"footprint_bytes": 110, "pss_bytes": 100, "cgroup_bytes": 10, "mem_available_drop_bytes": 0}
    many = {"footprint_bytes": 220, "pss_bytes": 180, "cgroup_bytes": 160, "mem_available_drop_bytes": 50}
    assert density.ratios(one, many) == {"footprint_bytes": 2.0, "pss_bytes": 1.8, "cgroup_bytes": 16.0,
                                         "mem_available_drop_bytes": None}
    assert density.ratios(many, {**one, "mem_available_drop_bytes": -5})["mem_available_drop_bytes"] is None


def test_only_mappings_with_resident_pages_are_read_from_pagemap() -> None:
    smaps = ("00400000-00452000 r-xp 00000000 08:01 123 /usr/bin/python3\nSize:  328 kB\nRss:  300 kB\n"
             "VmFlags: rd ex mr mw me dw\n"
             "7f0000000000-7f0000100000 rw-p 00000000 00:00 0\nSize:  1024 kB\nRss:  0 kB\n"
             "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\nRss:  8 kB\n")
    assert density.mapped_ranges(smaps) == [(0x400000, 0x452000), (0x7FFD00000000, 0x7FFD00021000)]


def test_distinct_resident_pages_count_a_shared_page_once() -> None:
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("pagemap shows page frame numbers to root only")
    page = os.sysconf("SC_PAGE_SIZE")
    # a process blocked reading stdin once it said "ready": its pages do not change meanwhile
    with subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as idle:
        try:
            assert idle.stdout is not None and idle.stdout.readline() == b"ready\n"
            alone = density.unique_resident_bytes([idle.pid])
            assert alone > 0 and alone % page == 0
            assert density.unique_resident_bytes([idle.pid, idle.pid]) == alone  # the same pages: once
        finally:
            idle.kill()


def test_charged_pages_are_classified_by_their_kpageflags() -> None:
    import io
    import struct

    cgroups = [7, 0, 9, 7, 7, 3, 7, 9]  # frame -> memory cgroup inode (/proc/kpagecgroup)
    flags = [1 << density.KPF_PGTABLE, 0, 1 << density.KPF_ANON, 1 << density.KPF_LRU, 0, 0,
             1 << density.KPF_SLAB, 1 << density.KPF_PGTABLE]
    kpagecgroup = io.BytesIO(b"".join(struct.pack("<Q", c) for c in cgroups))
    kpageflags = io.BytesIO(b"".join(struct.pack("<Q", f) for f in flags))
    assert density.charged_pages({7: "a", 9: "b", 11: "a"}, kpagecgroup, kpageflags) == {
        "a": {"page_tables": 1, "user": 1, "kernel_stack": 1, "slab": 1}, "b": {"user": 1, "page_tables": 1}}
    misaligned = io.BytesIO(b"\x00" + struct.pack("<Q", 7) + b"\x00" * 7)  # the inode's bytes across two entries
    assert density.charged_pages({7: "a"}, misaligned, io.BytesIO(bytes(16))) == {}


def test_an_environments_init_is_the_process_whose_parent_is_outside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    parents = {10: 1, 11: 10, 12: 11}
    monkeypatch.setattr(density, "parent_of", parents.__getitem__)
    assert density.roles([10, 11, 12]) == {"init": [10], "runtime": [11, 12]}


def test_parent_of_reads_a_live_process_and_a_gone_one_is_zero() -> None:
    import os

    assert density.parent_of(os.getpid()) == os.getppid()
    assert density.parent_of(2 ** 22 + 1) == 0  # above pid_max


def _result(**overrides: object) -> dict:
    result = {
        "burst_size": 8, "density_count": 16, "cpu_before_ms": {"torch": 300.0},
        "functions": {
            "torch": {"speedup_cold_over_restore": 31.0, "cpu": {"per_restore_ms": {"total": 150.0}}},
            "numpy-scipy": {"speedup_cold_over_restore": 29.9},
            "web": {"speedup_cold_over_restore": 12.0},
        },
        "burst": {"p99_over_single": 2.0},
        "warm": {"1": {"p50_overhead_ratio": 2.5}, "8": {"rps_ratio": 0.5}},
        "density": {"ratios": {"footprint_bytes": 1.4, "pss_bytes": 1.3}},
    }
    result.update(overrides)
    return result


def test_verdicts_name_every_target_with_its_figure() -> None:
    rows = blink.verdicts(_result())
    by_target = {(r["number"], r["target"].split(":")[0]): r for r in rows}
    assert [r["number"] for r in rows] == [1, 1, 1, 2, 3, 3, 4, 5]
    assert by_target[(1, "torch")]["verdict"] == "MET"
    assert by_target[(1, "numpy-scipy")]["verdict"] == "NOT MET"  # 29.9 < 30
    assert by_target[(1, "web")]["verdict"] == "MET" and by_target[(1, "web")]["bound"] == ">= 10x"
    assert rows[3]["verdict"] == "MET"  # p99 exactly 2x single: the bound holds
    assert rows[4]["verdict"] == "NOT MET" and rows[4]["figure"] == 2.5
    assert rows[5]["verdict"] == "MET"  # throughput ratio exactly 0.5
    assert rows[6]["figure"] == 2.0 and rows[6]["verdict"] == "MET"  # 300 ms before, 150 now: halved
    assert rows[7]["verdict"] == "MET"


def test_a_target_the_run_did_not_measure_is_not_measured() -> None:
    rows = blink.verdicts(_result(functions={}, cpu_before_ms={}, warm={}))
    assert {r["verdict"] for r in rows[:3]} == {"NOT MEASURED"}
    assert rows[6]["verdict"] == "NOT MEASURED"  # neither a figure nor a "before" to compare with
    assert rows[3]["verdict"] == "MET" and rows[7]["verdict"] == "MET"


def test_blink_refuses_unknown_parts_before_measuring_anything() -> None:
    with pytest.raises(ValueError, match="unknown blink parts"):
        blink.run(print, "/nonexistent/python", parts=["density", "dencity"])


def test_target_bounds() -> None:
    at_least = blink.Target(1, "x", 30.0, True)
    at_most = blink.Target(2, "y", 2.0, False)
    assert at_least.met(30.0) and not at_least.met(29.99) and at_least.met(None) is None
    assert at_most.met(2.0) and not at_most.met(2.01)
    assert at_least.bound == ">= 30x" and at_most.bound == "<= 2x"


def test_the_web_bench_function_is_the_example() -> None:
    example = ROOT / "examples" / "powertools-fastapi"
    assert webfunction.EXAMPLE == example and (example / "app.py").is_file()
    assert webfunction.requirements() == (example / "requirements.txt").read_text().split()
    event = webfunction.http_api_event()
    assert event["rawPath"] == "/hello" and event["queryStringParameters"] == {"name": "bench"}


def _stats(median: float) -> dict:
    return {"median": median, "min": median, "max": median, "n": 1}


def test_markdown_reports_every_section_and_the_count_of_targets_met() -> None:
    parts = {"daemon": 50.0, "runc & helpers": 30.0, "CRIU": 10.0, "runtime": 40.0, "total": 130.0}
    fn = {"cold_e2e_ms": _stats(3000.0), "restore_e2e_ms": _stats(100.0), "restore_duration_ms": _stats(60.0),
          "speedup_cold_over_restore": 30.0, "cpu": {"per_restore_ms": parts, "daemon_threads_ms": {"python": 45.0}},
          "cold_check": {"rev": "05747f3", "now_ms": _stats(3000.0), "before_ms": _stats(2900.0), "now_over_before": 1.03}}
    snap = {"environments": 1, "processes": 2, "footprint_bytes": 41 << 20, "pss_bytes": 40 << 20, "kernel_bytes": 1 << 20,
            "rss_bytes": 50 << 20, "cgroup_bytes": 8 << 20, "mem_available_drop_bytes": 9 << 20}
    many = {**snap, "environments": 16, "footprint_bytes": 71 << 20, "pss_bytes": 55 << 20, "kernel_bytes": 16 << 20,
            "per_environment": {"init_private_bytes": 64 << 10, "runtime_private_bytes": 1 << 20, "kernel_bytes": 1 << 20,
                                "page_tables_bytes": 464 << 10, "kernel_stack_bytes": 68 << 10, "slab_bytes": 276 << 10}}
    result = _result(functions={"torch": fn}, timestamp="T", runs=5, page_cache="warm",
                     burst={"function": "torch", "e2e_ms": _stats(150.0), "p99_e2e_ms": 190.0, "first_burst_p99_e2e_ms": 300.0,
                            "single_restore_e2e_ms": 100.0, "p99_over_single": 1.9},
                     density={"1": snap, "16": many, "ratios": {"footprint_bytes": 1.73, "pss_bytes": 1.38, "cgroup_bytes": 16.0,
                                                                 "mem_available_drop_bytes": 16.0}},
                     warm={"1": {"invoke": {"p50_ms": 2.0, "p99_ms": 3.0, "rps": 400}, "echo_baseline": {"p50_ms": 1.0, "p99_ms": 2.0, "rps": 900},
                                 "p50_overhead_ratio": 2.0, "rps_ratio": 0.44},
                           "8": {"invoke": {"p50_ms": 9.0, "p99_ms": 20.0, "rps": 800, "daemon_cpu_ms": 1.1},
                                 "echo_baseline": {"p50_ms": 2.0, "p99_ms": 4.0, "rps": 1600, "daemon_cpu_ms": 0.5},
                                 "p50_overhead_ratio": 4.5, "rps_ratio": 0.5}})
    result["verdicts"] = blink.verdicts(result)
    text = blink.markdown(result)
    assert "**6 of 8 targets met.**" in text  # numpy-scipy and web were not measured
    assert "| torch | 50.0 | 30.0 | 10.0 | 40.0 | **130.0** | 300.0 |" in text
    assert "| 16 / 1 | **1.73x** | 1.38x |" in text and "- torch: python 45.0" in text
    assert "adds 2.0 MiB of footprint (sum of PSS alone: 1.0 MiB)" in text
    assert "init (pid 1) 0.1 MiB, of its runtime 1.0 MiB" in text
    assert "kernel memory 1.0 MiB (page tables 464 KiB, kernel stacks 68 KiB, slab 276 KiB)." in text
    assert "NOT MEASURED" in text and "2 CPUs shared" in text
    assert "- torch: 3000.0 ms now vs 2900.0 ms on 05747f3 (1.03x)" in text  # the cold start the ratio divides, checked
    assert "| 0.44 | — / — ms |" in text and "| 0.5 | 1.1 / 0.5 ms |" in text  # the daemon's CPU per request, when measured


def test_warm_repetitions_merge_to_median_ratios() -> None:
    def rep(p50: float, rps: float) -> dict:
        return {"1": {"invoke": {"p50_ms": p50}, "echo_baseline": {"p50_ms": 1.0}, "p50_overhead_ratio": p50, "rps_ratio": rps}}
    merged = blink.merge_warm([rep(3.0, 0.2), rep(2.0, 0.4), rep(9.0, 0.3)])["1"]
    assert merged["p50_overhead_ratio"] == 3.0 and merged["rps_ratio"] == 0.3
    assert merged["invoke"] == {"p50_ms": 3.0}  # the median repetition's figures
    assert [r["p50_overhead_ratio"] for r in merged["repetitions"]] == [3.0, 2.0, 9.0]
    assert merged["daemon_cpu_ratio"] is None  # not measured


def test_warm_daemon_cpu_ratio_is_the_median_of_the_measured_ones() -> None:
    def rep(cpu_ratio: float | None) -> dict:
        return {"8": {"invoke": {"p50_ms": 2.0}, "echo_baseline": {"p50_ms": 1.0}, "p50_overhead_ratio": 2.0, "rps_ratio": 0.4,
                      "daemon_cpu_ratio": cpu_ratio}}
    assert blink.merge_warm([rep(2.4), rep(None), rep(2.0), rep(2.2)])["8"]["daemon_cpu_ratio"] == 2.2


def test_runc_wrapper_log_and_the_split_by_command() -> None:
    log = "restore 90000 30000\ndelete 3000 1000\nkill 1500 500\nrestore 70000 10000\nstate 10"  # a torn last line
    calls = runcwrap.parse_log(log)
    assert calls == {"restore": (2, 200.0), "delete": (1, 4.0), "kill": (1, 2.0)}
    batch = cpu.Counters(2, 5.0, 0.1, 0.25, 150_000_000, 100_000_000, {}, calls)
    by_command = cpu.runc_by_command(batch)
    # restore without CRIU's 50 ms (cgroup 150 - runtime 100); the unlogged 44 ms are other helpers
    assert by_command == {"runc delete": 2.0, "runc kill": 1.0, "runc restore": 75.0, "other helpers": 22.0}
    assert sum(by_command.values()) == cpu.split(batch, 0.0)["runc & helpers"]
    assert cpu.runc_by_command(cpu.Counters(1, 1.0, 0, 0, 0, 0)) is None


def test_under_the_criu_engine_crius_own_cpu_is_not_an_other_helper() -> None:
    # no runc restore: CRIU (cgroup 150 - runtime 100 = 50 ms) is the daemon's child, in children's 80 ms
    batch = cpu.Counters(2, 5.0, 0.1, 0.08, 150_000_000, 100_000_000, {}, {})
    assert cpu.runc_by_command(batch) == {"other helpers": 15.0}
    assert cpu.split(batch, 0.0)["runc & helpers"] == 15.0


def test_a_restored_process_the_daemon_reaps_is_counted_once() -> None:
    # the criu engine's restored pid 1 (20 ms over the batch) is in the runtime and, reaped by the
    # daemon, in its children's 80 ms: it stays in the runtime only
    batch = cpu.Counters(2, 5.0, 0.1, 0.08, 150_000_000, 100_000_000, {}, {}, reaped_ns=20_000_000)
    assert cpu.runc_by_command(batch) == {"other helpers": 5.0}
    assert cpu.split(batch, 0.0) == {"daemon": 50.0, "runc & helpers": 5.0, "CRIU": 25.0, "runtime": 50.0, "total": 130.0}
    assert cpu.parent_pid(os.getpid()) == os.getppid() and cpu.parent_pid(2**22 + 1) is None


def _row(total: float, daemon: float) -> dict:
    return {"daemon": daemon, "runc & helpers": 1.0, "CRIU": 1.0, "runtime": total - daemon - 2.0, "total": total,
            "daemon_threads_ms": {"python": daemon}, "runc_by_command_ms": None}


def test_summarize_takes_medians_over_batches_and_keeps_them() -> None:
    rows = [_row(100.0, 50.0), _row(90.0, 40.0), _row(120.0, 60.0)]
    out = cpu.summarize(rows, per_batch=4)
    assert out["per_restore_ms"]["total"] == 100.0 and out["per_restore_ms"]["daemon"] == 50.0
    assert out["daemon_threads_ms"] == {"python": 50.0} and out["runc_by_command_ms"] is None
    assert out["batches"] == rows and out["restores_per_batch"] == 4


def test_cpu_batches_alternate_between_the_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def measure(pid: int, *args: object, **kwargs: object) -> dict:
        calls.append(pid)
        assert kwargs["batches"] == 1 and kwargs["per_batch"] == 2
        return {"batches": [_row(10.0 * pid, 1.0)]}

    monkeypatch.setattr(cpu, "measure", measure)
    monkeypatch.setattr(cpu, "settled", lambda pid, state_dir: lambda: True)
    sides = {"now": (1, Path("/x"), lambda: None, None), "before": (2, Path("/y"), lambda: None, None)}
    out = blink.measure_cpu_alternating(sides, batches=3, per_batch=2)
    assert calls == [1, 2, 2, 1, 1, 2]  # the first side of each round alternates
    assert out["now"]["per_restore_ms"]["total"] == 10.0 and out["before"]["per_restore_ms"]["total"] == 20.0


def test_baseline_source_is_that_revisions_src(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    src = blink.baseline_source("HEAD", tmp_path / "base", repo=ROOT)
    assert (src / "snapfaas" / "bench" / "blink.py").is_file()
    with pytest.raises(RuntimeError, match="git archive no-such-rev"):
        blink.baseline_source("no-such-rev", tmp_path / "bad", repo=ROOT)


class _SlowToStart:
    """A caller connection whose client takes long to make in every other process."""

    def lambda_client(self) -> object:
        import os
        import time
        if os.getpid() % 2:
            time.sleep(0.3)  # a caller still making its client (not synchronization: the barrier is)
        return object()


def test_burst_callers_each_send_one_invoke(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every caller's invoke waits for the others' (`_caller_invoke`'s barrier): 4 invokes of a
    burst come from 4 processes, however slowly some of them started."""
    import multiprocessing
    import os

    from snapfaas.bench import snapstart

    monkeypatch.setattr(snapstart, "measured_invoke", lambda client, name, qualifier, payload: (float(os.getpid()), {}))
    context = multiprocessing.get_context("fork")
    with context.Pool(4, snapstart._caller_start, (_SlowToStart(), context.Barrier(4))) as callers:
        for _ in range(2):
            results = callers.map(snapstart._caller_invoke, [("f", "1", b"{}")] * 4, chunksize=1)
            assert len({pid for pid, _ in results}) == 4
