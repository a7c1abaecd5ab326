"""Platform overhead benchmark (issue: cold start and warm latency vs. a bare HTTP baseline).

In one run, against one private server:
- cold start of a stdlib-only function (first invoke of a fresh environment, on-demand), e2e;
- warm invoke latency p50/p99 and requests/s at concurrency 1 and 8;
- the same load against the server's echo endpoint (same aiohttp stack, same SigV4 auth, no
  function behind it) as the baseline. The overhead ratio is invoke / echo.
"""

from __future__ import annotations

import base64
import json
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from snapfaas.bench.cpu import process_cpu
from snapfaas.bench.harness import PrivateServer
from snapfaas.bench.load import Target, run_load

STDLIB_APP = """
import json, os
def handler(event, context):
    return {"ok": True, "echo": event}
"""
INIT_RE = re.compile(r"Init Duration: ([0-9.]+) ms")


def measure_cold(server: PrivateServer, name: str, runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Force a new environment each run (a config change retires the pool), invoke once."""
    client = server.client()
    e2e, init = [], []
    for i in range(runs):
        client.update_function_configuration(FunctionName=name, Environment={"Variables": {"RUN": str(i)}})
        client.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1})
        started = time.perf_counter()
        response = client.invoke(FunctionName=name, Payload=b"{}", LogType="Tail")
        e2e.append((time.perf_counter() - started) * 1000)
        response["Payload"].read()
        match = INIT_RE.search(base64.b64decode(response["LogResult"]).decode())
        if match:
            init.append(float(match.group(1)))
        say(f"  cold start {i + 1}/{runs}: {e2e[-1]:.1f} ms e2e")
    return {"runs": runs, "e2e_ms_median": round(statistics.median(e2e), 2), "e2e_ms_min": round(min(e2e), 2),
            "e2e_ms_max": round(max(e2e), 2), "init_ms_median": round(statistics.median(init), 2) if init else None}


def measure_warm(server: PrivateServer, name: str, requests: int, say: Callable[[str], None],
                 concurrencies: tuple[int, ...] = (1, 8)) -> dict[str, Any]:
    """Warm invokes of `name` ($LATEST, a stdlib function that answers at once) against the
    server's echo endpoint, same client, same requests, per concurrency: latency percentiles,
    requests/s and their ratios (invoke / echo). The function must already be deployed."""
    conn = server.connection
    pid = server.proc.pid if server.proc else None
    body = json.dumps({"hello": "world"}).encode()
    invoke = Target(conn.endpoint, f"/2015-03-31/functions/{name}/invocations", body, conn.access_key_id, conn.secret_access_key)
    echo = Target(conn.endpoint, "/snapfaas/v1/echo", body, conn.access_key_id, conn.secret_access_key)
    warm: dict[str, Any] = {}
    for concurrency in concurrencies:
        per_worker = max(10, requests // concurrency)
        say(f"warm load at concurrency {concurrency} ({per_worker * concurrency} requests each path)")
        sent = (per_worker + 3) * concurrency  # the warm-up requests count: the daemon served them too
        cpu_at = [_daemon_cpu_s(pid)]
        inv = run_load(invoke, concurrency, per_worker, warmup=3).summary()
        cpu_at.append(_daemon_cpu_s(pid))
        base = run_load(echo, concurrency, per_worker, warmup=3).summary()
        cpu_at.append(_daemon_cpu_s(pid))
        inv["daemon_cpu_ms"] = round((cpu_at[1] - cpu_at[0]) * 1000 / sent, 3)
        base["daemon_cpu_ms"] = round((cpu_at[2] - cpu_at[1]) * 1000 / sent, 3)
        warm[str(concurrency)] = {
            "invoke": inv,
            "echo_baseline": base,
            "daemon_cpu_ratio": round(inv["daemon_cpu_ms"] / base["daemon_cpu_ms"], 2) if base["daemon_cpu_ms"] else None,
            "p50_overhead_ratio": round(inv["p50_ms"] / base["p50_ms"], 2),
            "p99_overhead_ratio": round(inv["p99_ms"] / base["p99_ms"], 2),
            "rps_ratio": round(inv["rps"] / base["rps"], 3),
            "p50_added_ms": round(inv["p50_ms"] - base["p50_ms"], 3),
        }
    return warm


def _daemon_cpu_s(pid: int | None) -> float:
    """The server's CPU seconds so far (every thread; 0 when it is not ours to read). Per request
    it is steadier than req/s on a shared host: other jobs delay the daemon, they do not make
    its work per request larger."""
    return process_cpu(pid)[0] if pid else 0.0


def run(say: Callable[[str], None], cold_runs: int = 5, requests: int = 200) -> dict[str, Any]:
    with PrivateServer(["--keep-alive", "600"]) as server:
        name = "bench-stdlib"
        server.deploy(name, {"app.py": STDLIB_APP})
        say("cold starts (stdlib-only function, on-demand):")
        cold = measure_cold(server, name, cold_runs, say)
        warm = measure_warm(server, name, requests, say)
    return {"benchmark": "platform", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cold_start": cold, "warm": warm}


def markdown(result: dict[str, Any]) -> str:
    cold = result["cold_start"]
    lines = [
        f"Platform benchmark ({result['timestamp']}, one run, same machine)",
        "",
        f"Cold start, stdlib-only function, on-demand: median {cold['e2e_ms_median']} ms end to end "
        f"(min {cold['e2e_ms_min']}, max {cold['e2e_ms_max']}; Init Duration median {cold['init_ms_median']} ms; {cold['runs']} runs).",
        "",
        "| concurrency | invoke p50 / p99 (ms) | echo baseline p50 / p99 (ms) | p50 ratio | p99 ratio | invoke req/s | echo req/s | req/s ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, row in result["warm"].items():
        inv, base = row["invoke"], row["echo_baseline"]
        lines.append(
            f"| {c} | {inv['p50_ms']} / {inv['p99_ms']} | {base['p50_ms']} / {base['p99_ms']} | {row['p50_overhead_ratio']}x | "
            f"{row['p99_overhead_ratio']}x | {inv['rps']} | {base['rps']} | {row['rps_ratio']} |"
        )
    return "\n".join(lines) + "\n"
