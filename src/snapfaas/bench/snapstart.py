"""SnapStart benchmark: on-demand cold start vs. SnapStart restore vs. warm, per reference
function, next to the engine floor (`runc restore` of the same image), all in one run.

Every figure is end to end from a boto3 client unless named otherwise ("Restore Duration" is
the platform's own REPORT field). Between restore samples the bench waits for the keep-alive
to reclaim the environment, so each sample is the first invoke of a new environment.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snapfaas.config import bundles_for, snapshot_cache_for
from snapfaas.bench import cpu
from snapfaas.bench.floor import restore_floor
from snapfaas.bench.harness import PrivateServer, bench_runtime_args, timed_invoke
from snapfaas.client import Connection
from snapfaas.snapshot import engine
from snapfaas.snapshot.catalog import Catalog

FUNCTIONS = Path(__file__).resolve().parent / "functions"
REFERENCE = {
    # name: (package dir, MemorySize)
    "stdlib": ("stdlib", 256),
    "numpy-scipy": ("numpy_scipy", 1024),
    "torch": ("torch_mlp", 1024),
}


def _files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in directory.glob("*.py")}


def drop_page_cache() -> None:
    """A cold host: write back and drop the page cache (code and libraries come from disk)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def measured_invoke(client: Any, name: str, qualifier: str | None = None,
                    payload: bytes = b"{}") -> tuple[float, dict[str, float]]:
    """One synchronous invoke: (e2e ms, the REPORT line's duration fields); a failed invoke raises."""
    result = timed_invoke(client, name, qualifier, payload)
    if result.function_error:
        raise RuntimeError(f"{name}:{qualifier} failed: {result.log[-800:]}")
    return result.elapsed_ms, result.durations()


_CALLER_CLIENT: Any = None  # in each burst caller process: its own boto3 client
_CALLER_BARRIER: Any = None  # in each burst caller process: every caller's invoke starts together
CALLER_BARRIER_TIMEOUT_S = 120.0


def _caller_start(connection: Connection, barrier: Any = None) -> None:
    """A caller process's start: its boto3 client, and the barrier (a `multiprocessing`
    Barrier with one party per caller, or None) its invokes wait on."""
    global _CALLER_CLIENT, _CALLER_BARRIER
    _CALLER_CLIENT = connection.lambda_client()
    _CALLER_BARRIER = barrier


def _caller_invoke(target: tuple[str, str, bytes]) -> tuple[float, dict[str, float]]:
    """One invoke from this caller; with a barrier, only once every caller holds one (a
    caller still making its client, on a loaded host, would otherwise leave its invoke to a
    caller that is done with its first and finds that environment idle)."""
    if _CALLER_BARRIER is not None:
        _CALLER_BARRIER.wait(CALLER_BARRIER_TIMEOUT_S)
    return measured_invoke(_CALLER_CLIENT, *target)


class Bench:
    def __init__(self, server: PrivateServer, say: Callable[[str], None], cold_cache: bool = False) -> None:
        """`cold_cache`: drop the page cache before every cold-start and restore sample."""
        self.server = server
        self.client = server.client()
        self.say = say
        self.cold_cache = cold_cache
        self._callers: Any = None  # a process pool, made on the first burst
        self.payloads: dict[str, bytes] = {}  # the event each function is invoked with (default `{}`)

    def close(self) -> None:
        if self._callers is not None:
            self._callers.terminate()
            self._callers.join()

    def _prepare_sample(self) -> None:
        if self.cold_cache:
            drop_page_cache()

    def invoke(self, name: str, qualifier: str | None = None) -> tuple[float, dict[str, float]]:
        return measured_invoke(self.client, name, qualifier, self.payloads.get(name, b"{}"))

    def containers(self) -> int:
        """Live containers: runc keeps one state directory per container (no `runc list`, which
        fails when a container disappears while it reads the states)."""
        return cpu.containers(self.server.data_dir / "runc")

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until keep-alive reclaimed every environment (so the next invoke is a new one)."""
        deadline = time.monotonic() + timeout
        while self.containers():
            if time.monotonic() > deadline:
                raise RuntimeError("environments were not reclaimed")
            time.sleep(0.2)  # polling the container list of a separate process

    def cold(self, name: str, runs: int) -> list[float]:
        """On-demand first invokes of $LATEST: each run forces a new environment (config change)."""
        out = []
        for i in range(runs):
            self.client.update_function_configuration(FunctionName=name, Description=f"cold run {i}")
            self.client.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1})
            self._prepare_sample()
            out.append(self.invoke(name)[0])
        return out

    def restores(self, name: str, runs: int) -> tuple[list[float], list[float], list[float]]:
        """(e2e ms, Restore Duration ms, warm e2e ms) over `runs` new environments."""
        e2e, restore, warm = [], [], []
        for _ in range(runs):
            self.wait_idle()
            self._prepare_sample()
            elapsed, fields = self.invoke(name, "1")
            if "Restore Duration" not in fields:
                raise RuntimeError(f"{name}:1 did not restore: {fields}")
            e2e.append(elapsed)
            restore.append(fields["Restore Duration"])
            warm.extend(self.invoke(name, "1")[0] for _ in range(3))
        return e2e, restore, warm

    def burst(self, name: str, size: int) -> tuple[list[float], list[float]]:
        """`size` concurrent first invokes of new environments: (e2e ms, Restore Duration ms).

        The invokes come from `size` caller processes, each with its own boto3 client (started
        once, before the first burst), as `size` independent callers would send them: threads
        of one process would queue on its GIL to sign requests and parse responses. Each
        caller's invoke waits at a barrier until every caller holds one, so they start together
        and none is sent by a caller that is done with its first (which would reuse it)."""
        if self._callers is None:
            context = multiprocessing.get_context("fork")
            self._callers = context.Pool(size, _caller_start, (self.server.connection, context.Barrier(size)))
        self.wait_idle()
        results = self._callers.map(_caller_invoke, [(name, "1", self.payloads.get(name, b"{}"))] * size, chunksize=1)
        if any("Restore Duration" not in r[1] for r in results):
            raise RuntimeError(f"{name}:1 burst reused an environment: {[r[1] for r in results]}")
        return [r[0] for r in results], [r[1]["Restore Duration"] for r in results]

    def floor(self, name: str, runs: int) -> list[float]:
        """Engine floor on the same image, borrowing a live restored environment's bundle."""
        self.invoke(name, "1")
        bundle = next(
            b for b in bundles_for(self.server.sandbox).iterdir()
            if (b / "config.json").exists() and (b / "rootfs").exists()
            and f"AWS_LAMBDA_FUNCTION_NAME={name}" in (b / "config.json").read_text()
        )
        catalog = Catalog.open(self.server.data_dir)  # the server holds the disk cache: origin reads only
        try:
            snapshot = next(s for s in catalog.snapshots() if s.get("function") == name and s.get("referenced"))
        finally:
            catalog.close()
        images = snapshot_cache_for(self.server.sandbox) / snapshot["snapshot"]
        mode = snapshot.get("restore_memory") or "copy"  # as the platform restores it
        environ = engine.restore_environ(engine.probe(), mode)
        return restore_floor(bundle / "config.json", images, self.server.sandbox / "floor", runs, environ)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 1), "min": round(ordered[0], 1), "max": round(ordered[-1], 1),
            "n": len(ordered)}


def _deploy(bench: Bench, name: str, package: str, memory: int) -> None:
    """Deploy a reference function with SnapStart on published versions."""
    bench.server.deploy(name, _files(FUNCTIONS / package), Runtime="python3.11", MemorySize=memory, Timeout=120,
                        SnapStart={"ApplyOn": "PublishedVersions"})


def _publish(bench: Bench, name: str) -> float:
    """Publish version 1 and wait until its snapshot is Active; returns the seconds taken."""
    started = time.perf_counter()
    bench.client.publish_version(FunctionName=name)
    bench.client.get_waiter("published_version_active").wait(FunctionName=name, Qualifier="1",
                                                               WaiterConfig={"Delay": 1, "MaxAttempts": 600})
    return time.perf_counter() - started


def run(say: Callable[[str], None], runtime_python: str, runs: int = 3, burst: int = 8,
        only: list[str] | None = None, cold_cache: bool = False) -> dict[str, Any]:
    """Every figure for each reference function; the baseline for the copy-on-write restore
    (a second server with ``--restore-memory copy``) runs in the same process and run."""
    results: dict[str, Any] = {}
    args = ["--keep-alive", "2", *bench_runtime_args(runtime_python)]
    with contextlib.ExitStack() as servers:
        server = servers.enter_context(PrivateServer(args))
        copy_server = servers.enter_context(PrivateServer([*args, "--restore-memory", "copy"]))
        bench = Bench(server, say, cold_cache)
        copy_bench = Bench(copy_server, say, cold_cache)
        # with the page cache dropped, the baseline for reading the file working set ahead
        plain_bench = Bench(servers.enter_context(PrivateServer([*args, "--no-restore-prefetch"])), say, cold_cache) if cold_cache else None
        for name, (package, memory) in REFERENCE.items():
            if only and name not in only:
                continue
            say(f"[{name}] deploying (MemorySize {memory} MB, SnapStart on published versions)")
            _deploy(bench, name, package, memory)
            say(f"[{name}] on-demand cold starts ($LATEST)")
            cold = bench.cold(name, runs)
            publish_s = _publish(bench, name)
            say(f"[{name}] snapshot ready in {publish_s:.1f} s; restores")
            bench.invoke(name, "1")  # the first restore records the snapshot's file working set
            e2e, restore, warm = bench.restores(name, runs)
            if plain_bench is not None:
                say(f"[{name}] baseline: restores without reading the working set ahead (--no-restore-prefetch)")
                _deploy(plain_bench, name, package, memory)
                _publish(plain_bench, name)
                plain_bench.invoke(name, "1")
                plain_e2e, _, _ = plain_bench.restores(name, runs)
                plain_bench.client.delete_function(FunctionName=name)
            say(f"[{name}] baseline: restores that copy memory (--restore-memory copy)")
            _deploy(copy_bench, name, package, memory)
            _publish(copy_bench, name)
            copy_e2e, _, _ = copy_bench.restores(name, runs)
            copy_bench.client.delete_function(FunctionName=name)
            say(f"[{name}] engine floor (runc restore of the same image)")
            floor = bench.floor(name, runs)
            say(f"[{name}] bursts of {burst} concurrent restores (first one reported apart: fresh guest memory)")
            first_e2e, _ = bench.burst(name, burst)
            burst_e2e, burst_restore = [], []
            for _ in range(2):
                e2e_ms, restore_ms = bench.burst(name, burst)
                burst_e2e += e2e_ms
                burst_restore += restore_ms
            row = {
                "cold_e2e_ms": _stats(cold), "restore_e2e_ms": _stats(e2e), "restore_duration_ms": _stats(restore),
                "restore_copy_e2e_ms": _stats(copy_e2e),
                "warm_e2e_ms": _stats(warm), "engine_floor_ms": _stats(floor), "publish_s": round(publish_s, 2),
                "burst_e2e_ms": _stats(burst_e2e), "burst_restore_duration_ms": _stats(burst_restore),
                "first_burst_e2e_ms": _stats(first_e2e),
            }
            if plain_bench is not None:
                row["restore_no_prefetch_e2e_ms"] = _stats(plain_e2e)
                row["speedup_no_prefetch_over_prefetch"] = round(
                    row["restore_no_prefetch_e2e_ms"]["median"] / row["restore_e2e_ms"]["median"], 2)
            row["speedup_cold_over_restore"] = round(row["cold_e2e_ms"]["median"] / row["restore_e2e_ms"]["median"], 1)
            row["speedup_copy_over_map"] = round(row["restore_copy_e2e_ms"]["median"] / row["restore_e2e_ms"]["median"], 2)
            row["restore_over_floor"] = round(row["restore_e2e_ms"]["median"] / row["engine_floor_ms"]["median"], 2)
            row["burst_p99_e2e_ms"] = round(_p99(burst_e2e), 1)
            row["burst_p99_over_single"] = round(row["burst_p99_e2e_ms"] / row["restore_e2e_ms"]["median"], 2)
            row["first_burst_p99_over_single"] = round(_p99(first_e2e) / row["restore_e2e_ms"]["median"], 2)
            results[name] = row
            bench.client.delete_function(FunctionName=name)
        bench.close()
        copy_bench.close()
        if plain_bench is not None:
            plain_bench.close()
    return {"benchmark": "snapstart", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runs": runs, "burst": burst, "page_cache": "dropped before each sample" if cold_cache else "warm",
            "functions": results}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"SnapStart benchmark ({result['timestamp']}, one run; medians of {result['runs']} samples, e2e through boto3; "
        f"page cache: {result['page_cache']})",
        "",
        "Bursts: p99 over two bursts after a first one, which runs on guest memory the VM has not backed yet and is shown apart.",
        "",
        "| function | on-demand cold | SnapStart restore (e2e) | Restore Duration | warm | engine floor | speed-up cold/restore | restore/floor | burst of "
        f"{result['burst']}: p99 e2e | p99 / single | first burst p99 / single | restore, copying memory (e2e) | copy / map |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["functions"].items():
        lines.append(
            f"| {name} | {r['cold_e2e_ms']['median']} ms | {r['restore_e2e_ms']['median']} ms | {r['restore_duration_ms']['median']} ms | "
            f"{r['warm_e2e_ms']['median']} ms | {r['engine_floor_ms']['median']} ms | **{r['speedup_cold_over_restore']}x** | "
            f"{r['restore_over_floor']}x | {r['burst_p99_e2e_ms']} ms | {r['burst_p99_over_single']}x | {r['first_burst_p99_over_single']}x | "
            f"{r['restore_copy_e2e_ms']['median']} ms | {r['speedup_copy_over_map']}x |"
        )
    prefetch = {name: r for name, r in result["functions"].items() if "restore_no_prefetch_e2e_ms" in r}
    if prefetch:
        lines += ["", "Reading the file working set ahead (page cache dropped before each sample; baseline: a server "
                  "with `--no-restore-prefetch`, same run):", "",
                  "| function | restore, working set read ahead (e2e) | restore without (e2e) | without / with |", "|---|---|---|---|"]
        for name, r in prefetch.items():
            lines.append(f"| {name} | {r['restore_e2e_ms']['median']} ms | {r['restore_no_prefetch_e2e_ms']['median']} ms | "
                         f"**{r['speedup_no_prefetch_over_prefetch']}x** |")
    return "\n".join(lines) + "\n"
