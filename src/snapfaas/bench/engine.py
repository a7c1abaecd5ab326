"""`snapfaas bench engine`: restores under ``--restore-engine runc`` vs ``--restore-engine criu``, A/B
in one run.

Two private servers run side by side on the same host, same options but the engine (keep-alive
2 s, so each restore sample is a new environment; the runc one runs runc through the CPU-
accounting wrapper, `bench/runcwrap.py`). For each reference function (torch, numpy-scipy), both
publish version 1 and restore it once (recording the working set); then, alternating which
engine goes first:

* restore e2e: `runs` first invokes of a new environment per engine (boto3, warm page cache),
  with the REPORT's Restore Duration;
* CPU per restore by component (`bench/cpu.py`): `cpu_batches` batches of `cpu_per_batch`
  restores per engine, batches of the two engines alternating.

Figures are medians; the ratios (criu / runc) are what to compare (absolute numbers are noisy
on a shared 2-core host). `markdown` is pure.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snapfaas.bench import cpu, runcwrap
from snapfaas.bench.blink import FUNCTIONS_BLINK
from snapfaas.bench.harness import PrivateServer, bench_runtime_args
from snapfaas.bench.snapstart import Bench, _deploy, _publish, _stats

ENGINES = ("runc", "criu")
FUNCTIONS = ("torch", "numpy-scipy")


def _restore(bench: Bench, name: str) -> tuple[float, float]:
    """One restore of a new environment: (e2e ms, Restore Duration ms)."""
    bench.wait_idle()
    elapsed, fields = bench.invoke(name, "1")
    if "Restore Duration" not in fields:
        raise RuntimeError(f"{name}:1 did not restore: {fields}")
    return elapsed, fields["Restore Duration"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(b / a, 3) if a and b is not None else None


def compare(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """criu / runc ratios of one function's medians (restore e2e, Restore Duration, CPU total) (pure)."""
    runc, criu = rows["runc"], rows["criu"]
    return {
        "restore_e2e": _ratio(runc["restore_e2e_ms"]["median"], criu["restore_e2e_ms"]["median"]),
        "restore_duration": _ratio(runc["restore_duration_ms"]["median"], criu["restore_duration_ms"]["median"]),
        "cpu_total": _ratio(runc["cpu"]["per_restore_ms"]["total"], criu["cpu"]["per_restore_ms"]["total"]),
    }


def run(say: Callable[[str], None], runtime_python: str, runs: int = 7, cpu_batches: int = 3, cpu_per_batch: int = 4,
        only: list[str] | None = None) -> dict[str, Any]:
    selected = [n for n in FUNCTIONS if not only or n in only]
    scratch = Path(tempfile.mkdtemp(prefix="snapfaas-engine-"))
    runc_binary, runc_log = runcwrap.build(scratch)
    common = ["--keep-alive", "2", *bench_runtime_args(runtime_python)]
    result: dict[str, Any] = {"benchmark": "engine", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "runs": runs, "cpu_batches": cpu_batches, "cpu_per_batch": cpu_per_batch,
                              "page_cache": "warm", "functions": {}}
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        servers = {
            "runc": cleanup.enter_context(PrivateServer([*common, "--restore-engine", "runc", "--runc", str(runc_binary)])),
            "criu": cleanup.enter_context(PrivateServer([*common, "--restore-engine", "criu"])),
        }
        benches = {engine: Bench(server, say) for engine, server in servers.items()}
        for bench in benches.values():
            cleanup.callback(bench.close)
        for name in selected:
            package, memory = FUNCTIONS_BLINK[name]
            for engine, bench in benches.items():
                say(f"[{name}] {engine}: deploying and publishing")
                _deploy(bench, name, package, memory)
                _publish(bench, name)
                bench.invoke(name, "1")  # the first restore records the working set
            samples: dict[str, dict[str, list[float]]] = {e: {"e2e": [], "restore": []} for e in ENGINES}
            say(f"[{name}] {runs} restores per engine, alternating")
            for i in range(runs):
                for engine in (ENGINES if i % 2 == 0 else ENGINES[::-1]):
                    e2e, restore = _restore(benches[engine], name)
                    samples[engine]["e2e"].append(e2e)
                    samples[engine]["restore"].append(restore)
            batches: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
            say(f"[{name}] CPU per restore: {cpu_batches} batches of {cpu_per_batch} restores per engine, alternating")
            for i in range(cpu_batches):
                for engine in (ENGINES if i % 2 == 0 else ENGINES[::-1]):
                    server = servers[engine]
                    pid = server.proc.pid if server.proc else 0
                    state_dir = server.data_dir / "runc"
                    restore = lambda b=benches[engine]: _restore(b, name) and None  # noqa: E731
                    batches[engine].append(cpu.measure(
                        pid, state_dir, restore, cpu.settled(pid, state_dir), batches=1, per_batch=cpu_per_batch,
                        runc_log=runc_log if engine == "runc" else None))
            rows: dict[str, Any] = {}
            for engine in ENGINES:
                per_batch = [b["batches"][0] for b in batches[engine]]
                parts = cpu.median_breakdown([{k: v for k, v in row.items() if k in (*cpu.COMPONENTS, "total")}
                                              for row in per_batch])
                by_command = [row["runc_by_command_ms"] for row in per_batch if row["runc_by_command_ms"] is not None]
                rows[engine] = {
                    "restore_e2e_ms": _stats(samples[engine]["e2e"]),
                    "restore_duration_ms": _stats(samples[engine]["restore"]),
                    "cpu": {"per_restore_ms": parts, "runc_by_command_ms": cpu.mean_threads(by_command) if by_command else None,
                            "daemon_threads_ms": cpu.mean_threads([row["daemon_threads_ms"] for row in per_batch]),
                            "batches": per_batch},
                }
            rows["criu_over_runc"] = compare(rows)
            result["functions"][name] = rows
            for bench in benches.values():
                bench.client.delete_function(FunctionName=name)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Restore engine: runc vs criu ({result['timestamp']})",
        "",
        f"`snapfaas bench engine`: two servers side by side, `--restore-engine runc` and `--restore-engine criu`; "
        f"{result['runs']} restores per engine and function (alternating), CPU per restore over "
        f"{result['cpu_batches']} batches of {result['cpu_per_batch']} restores per engine (alternating); "
        "medians, warm page cache. Ratios are criu / runc (below 1: criu is cheaper).",
        "",
        "| function | engine | restore e2e ms | Restore Duration ms | CPU/restore ms | daemon | runc & helpers | CRIU | runtime |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["functions"].items():
        for engine in ENGINES:
            row = rows[engine]
            parts = row["cpu"]["per_restore_ms"]
            lines.append(f"| {name} | {engine} | {row['restore_e2e_ms']['median']} | {row['restore_duration_ms']['median']} | "
                         f"{parts['total']} | {parts['daemon']} | {parts['runc & helpers']} | {parts['CRIU']} | {parts['runtime']} |")
        ratio = rows["criu_over_runc"]
        lines.append(f"| {name} | criu / runc | {ratio['restore_e2e']} | {ratio['restore_duration']} | {ratio['cpu_total']} | | | | |")
    lines += ["", "With the criu engine \"runc & helpers\" holds the daemon's other helper processes only (no runc runs "
              "for a restore).", ""]
    for name, rows in result["functions"].items():
        by_command = rows["runc"]["cpu"]["runc_by_command_ms"]
        if by_command:
            lines.append(f"- {name}, runc engine, runc & helpers by command (ms/restore): "
                         + ", ".join(f"{k} {v}" for k, v in by_command.items()))
    return "\n".join(lines) + "\n"
