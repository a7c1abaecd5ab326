"""Network isolation cost: what an environment's own network namespace adds to a cold start
and to a SnapStart restore, measured in one run against a same-run baseline.

Two private servers, running side by side, serve the same stdlib function: the default (``--sandbox-network
isolated``: a namespace per environment, prepared ahead of demand) and the baseline
(``--sandbox-network host``: environments share the host's network, as before isolation).
For each: on-demand cold starts and SnapStart restores (each the first invoke of a new
environment), end to end through boto3, plus the platform's Init / Restore Duration; samples
alternate between the two servers so that load on the machine affects both alike. The
namespace's own set-up (namespace, veth pair, addresses, the daemon's listener) happens in
the background, ahead of demand; its cost per environment is timed here too, in-process.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snapfaas.bench.harness import PrivateServer
from snapfaas.bench.snapstart import Bench, _p99, _publish, _stats
from snapfaas.sandbox.network import NetworkPool

BURST = 8
BURST_ROUNDS = 4  # per server; the first is left out
STDLIB_APP = """
import json, os
def handler(event, context):
    return {"ok": True}
"""


def _cold(bench: Bench, name: str, i: int) -> tuple[float, float | None]:
    """One on-demand cold start (a config change retires the warm environment)."""
    bench.client.update_function_configuration(FunctionName=name, Description=f"cold run {i}")
    bench.client.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1})
    elapsed, fields = bench.invoke(name)
    return elapsed, fields.get("Init Duration")


def _measure_pair(benches: dict[str, Bench], say: Callable[[str], None], runs: int) -> dict[str, Any]:
    """Samples alternate between the two servers, so load drift on the machine hits both alike."""
    name = "bench-net"
    samples: dict[str, dict[str, list[float]]] = {label: {"cold": [], "init": [], "restore_e2e": [], "restore": [],
                                                          "burst": []} for label in benches}
    for bench in benches.values():
        bench.server.deploy(name, {"app.py": STDLIB_APP}, SnapStart={"ApplyOn": "PublishedVersions"})
    say("on-demand cold starts, alternating between the servers")
    for i in range(runs):
        for label, bench in (benches.items() if i % 2 == 0 else reversed(benches.items())):
            elapsed, init = _cold(bench, name, i)
            samples[label]["cold"].append(elapsed)
            if init is not None:
                samples[label]["init"].append(init)
    for bench in benches.values():
        _publish(bench, name)
    say("SnapStart restores, alternating between the servers")
    for i in range(runs):
        for label, bench in (benches.items() if i % 2 == 0 else reversed(benches.items())):
            e2e, restore, _ = bench.restores(name, 1)
            samples[label]["restore_e2e"] += e2e
            samples[label]["restore"] += restore
    say(f"bursts of {BURST} concurrent restores, alternating between the servers")
    for i in range(BURST_ROUNDS):
        for label, bench in (benches.items() if i % 2 == 0 else reversed(benches.items())):
            e2e, _ = bench.burst(name, BURST)
            if i > 0:  # the first burst of each runs on guest memory the VM has not backed yet
                samples[label]["burst"] += e2e
    return {label: {"cold_e2e_ms": _stats(s["cold"]), "init_duration_ms": _stats(s["init"]) if s["init"] else None,
                    "restore_e2e_ms": _stats(s["restore_e2e"]), "restore_duration_ms": _stats(s["restore"]),
                    "burst_p99_e2e_ms": round(_p99(s["burst"]), 1)}
            for label, s in samples.items()}


def prepare_cost(samples: int) -> dict[str, Any]:
    """Background cost of one namespace (create + configure + listener, then removal), timed
    in this process on a block of its own."""
    lock_dir = Path(tempfile.mkdtemp(prefix="snapfaas-netbench-"))
    pool = NetworkPool(lock_dir, ready_target=0)
    pool.setup()
    made, removed = [], []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            net = pool._prepare_next()
            made.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            pool._remove(net)
            removed.append((time.perf_counter() - started) * 1000)
    finally:
        pool._teardown_all([])
    return {"prepare_ms": _stats(made), "remove_ms": _stats(removed)}


def run(say: Callable[[str], None], runs: int = 7) -> dict[str, Any]:
    args = ["--keep-alive", "2"]
    with PrivateServer(args) as isolated, PrivateServer([*args, "--sandbox-network", "host"]) as host_net:
        benches = {"isolated": Bench(isolated, say), "host": Bench(host_net, say)}
        try:
            results = _measure_pair(benches, say, runs)
        finally:
            for bench in benches.values():
                bench.close()
    iso, host = results["isolated"], results["host"]
    added = {
        "cold_e2e_ms": round(iso["cold_e2e_ms"]["median"] - host["cold_e2e_ms"]["median"], 1),
        "init_duration_ms": round(iso["init_duration_ms"]["median"] - host["init_duration_ms"]["median"], 1),
        "restore_e2e_ms": round(iso["restore_e2e_ms"]["median"] - host["restore_e2e_ms"]["median"], 1),
        "restore_duration_ms": round(iso["restore_duration_ms"]["median"] - host["restore_duration_ms"]["median"], 1),
        "burst_p99_e2e_ms": round(iso["burst_p99_e2e_ms"] - host["burst_p99_e2e_ms"], 1),
    }
    ratio = {
        "cold_e2e": round(iso["cold_e2e_ms"]["median"] / host["cold_e2e_ms"]["median"], 2),
        "restore_e2e": round(iso["restore_e2e_ms"]["median"] / host["restore_e2e_ms"]["median"], 2),
    }
    say("namespace preparation cost (background, in-process)")
    return {"benchmark": "network", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs,
            "isolated": iso, "host": host, "added_by_namespace": added, "ratio_isolated_over_host": ratio,
            "background": prepare_cost(max(5, runs))}


def markdown(result: dict[str, Any]) -> str:
    iso, host, added, ratio = result["isolated"], result["host"], result["added_by_namespace"], result["ratio_isolated_over_host"]
    bg = result["background"]
    rows = [
        ("on-demand cold start (e2e)", "cold_e2e_ms", "cold_e2e"),
        ("Init Duration", "init_duration_ms", None),
        ("SnapStart restore (e2e)", "restore_e2e_ms", "restore_e2e"),
        ("Restore Duration", "restore_duration_ms", None),
    ]
    lines = [
        f"Network isolation benchmark ({result['timestamp']}, one run; medians of {result['runs']} samples; stdlib function)",
        "",
        "| figure | own network namespace | host network (baseline) | added | ratio |",
        "|---|---|---|---|---|",
    ]
    for title, key, rkey in rows:
        lines.append(f"| {title} | {iso[key]['median']} ms | {host[key]['median']} ms | {added[key]:+} ms | "
                     f"{ratio[rkey] if rkey else round(iso[key]['median'] / host[key]['median'], 2)}x |")
    lines.append(f"| burst of {BURST} restores, p99 (e2e) | {iso['burst_p99_e2e_ms']} ms | {host['burst_p99_e2e_ms']} ms | "
                 f"{added['burst_p99_e2e_ms']:+} ms | {round(iso['burst_p99_e2e_ms'] / host['burst_p99_e2e_ms'], 2)}x |")
    lines += ["", f"Background, ahead of demand, per environment: prepare {bg['prepare_ms']['median']} ms, "
                  f"remove {bg['remove_ms']['median']} ms (median of {bg['prepare_ms']['n']})."]
    return "\n".join(lines) + "\n"

