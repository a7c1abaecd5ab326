"""Load benchmark (`snapfaas bench load`): mixed `$LATEST` / version / alias traffic from
separate caller processes, from no environments (cold start) to steady state.

Every row runs on a fresh private server (no environments, a fresh function log, the daemon's
peak RSS its own) with `--max-environments` (default: the row's concurrency) and a keep-alive
longer than the run. The function is a stdlib echo (`callers.ECHO_APP`) with SnapStart on
published versions: version 1 is published (its snapshot Active) and alias `live` points at it,
so mixed traffic keeps two pools busy: `$LATEST` (on-demand cold starts) and version 1
(SnapStart restores, reached through the version and through the alias).

Baseline, in the same run: the same load to `$LATEST` alone, on an identically prepared server.

Environments created are counted from the daemon itself: its function log (read through the
API, which waits for the log writer) has one ``INIT_START`` line per on-demand environment and
one ``RESTORE_START`` line per restored one, each on the environment's own log stream; the
figure is the number of distinct environment ids on such lines (the publish's snapshot init,
``INIT_START ... Phase: snapshot``, serves no invoke and is not counted).
"""

from __future__ import annotations

import dataclasses
import os
import platform as host_platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from snapfaas.bench.callers import ECHO_APP, LATEST, Traffic, run_traffic
from snapfaas.bench.harness import PrivateServer, zip_files

FUNCTION = "load-echo"
ALIAS = "live"
MIXED = (LATEST, "1", ALIAS)
SINGLE = (LATEST,)
THROUGHPUT_FLOOR = 0.8  # the bar: mixed traffic keeps 80% of the single-qualifier req/s
STREAM = re.compile(r"(?:.*/)?\[(?P<version>[^\]]*)\](?P<env>.*)")


@dataclasses.dataclass(frozen=True)
class Started:
    """Environments the daemon started, from its function log."""

    cold: frozenset[str]  # INIT_START (on-demand)
    restored: frozenset[str]  # RESTORE_START (SnapStart)
    dropped_notices: int  # "N log lines dropped" lines: then the count is a lower bound

    @property
    def total(self) -> int:
        return len(self.cold | self.restored)


def environments_started(log_lines: Sequence[str]) -> Started:
    """Count environment starts in a function log (``<stamp>\\t<stream>\\t<message>`` lines)."""
    cold: set[str] = set()
    restored: set[str] = set()
    dropped = 0
    for line in log_lines:
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        _, stream, message = parts
        if message.startswith("[snapfaas]") and "log lines dropped" in message:
            dropped += 1
        match = STREAM.fullmatch(stream)
        if match is None or not match["env"] or "Phase: snapshot" in message:
            continue  # a publish's snapshot init is no environment that serves invokes
        if message.startswith("INIT_START"):
            cold.add(match["env"])
        elif message.startswith("RESTORE_START"):
            restored.add(match["env"])
    return Started(frozenset(cold), frozenset(restored), dropped)


def prepare_function(client: Any, name: str, role: str) -> dict[str, str]:
    """Create the echo function with SnapStart on published versions, publish version 1 (wait
    until its snapshot is Active) and point alias `live` at it; returns {alias: version}."""
    client.create_function(FunctionName=name, Role=role, Runtime="python3.12", Handler="app.handler",
                           Code={"ZipFile": zip_files({"app.py": ECHO_APP})}, MemorySize=128, Timeout=30,
                           SnapStart={"ApplyOn": "PublishedVersions"})
    client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    version = client.publish_version(FunctionName=name)["Version"]
    client.get_waiter("published_version_active").wait(FunctionName=name, Qualifier=version,
                                                       WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    client.create_alias(FunctionName=name, Name=ALIAS, FunctionVersion=version)
    return {ALIAS: version}


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def summarize(traffic: Traffic, started: Started, concurrency: int, max_environments: int, mix: str,
              rss_kb: int) -> dict[str, Any]:
    counts = traffic.counts()
    return {
        "concurrency": concurrency, "max_environments": max_environments, "mix": mix,
        "requests": len(traffic.outcomes), **counts,
        "throttle_reasons": dict(traffic.details("throttled")),
        "lost_details": dict(traffic.details("lost").most_common(5)),
        "mismatched_details": dict(traffic.details("mismatched").most_common(5)),
        "error_details": dict(traffic.details("error").most_common(5)),
        "environments_created": started.total, "cold_starts": len(started.cold), "restores": len(started.restored),
        "log_drop_notices": started.dropped_notices,
        "environments_answering": len(traffic.environments()),
        "p50_ms": round(traffic.percentile(50), 1), "p99_ms": round(traffic.percentile(99), 1),
        "wall_s": round(traffic.wall_s, 2), "rps": round(traffic.answered_per_s, 1),
        "daemon_peak_rss_mb": round(rss_kb / 1024, 1),
    }


def run_row(concurrency: int, max_environments: int, qualifiers: Sequence[str], requests: int,
            say: Callable[[str], None]) -> dict[str, Any]:
    """One row on a fresh server: prepare the function, run the traffic, count."""
    mix = "mixed" if len(qualifiers) > 1 else "$LATEST only"
    args = ["--keep-alive", "3600", "--max-environments", str(max_environments), "--log-max-bytes", "1G"]
    with PrivateServer(args) as server:
        aliases = prepare_function(server.client(), FUNCTION, "arn:aws:iam::000000000000:role/snapfaas")
        say(f"  c={concurrency} max-environments={max_environments} {mix}: {requests} requests")
        traffic = run_traffic(server.connection, FUNCTION, qualifiers, concurrency, requests, aliases)
        log = server.connection.signed_get(f"/snapfaas/v1/logs/{FUNCTION}").decode(errors="replace").splitlines()
        if server.proc is None:
            raise RuntimeError("load row failed at step 'daemon RSS': the server has no process")
        row = summarize(traffic, environments_started(log), concurrency, max_environments, mix, peak_rss_kb(server.proc.pid))
    say(f"    answered {row['answered']}, 429 {row['throttled']}, lost {row['lost']}, mismatched {row['mismatched']}, "
        f"errors {row['error']}, environments {row['environments_created']}, {row['rps']} req/s")
    return row


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), host_platform.machine())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return f"{os.cpu_count()} CPUs ({model}), {mem_kb / 1024 / 1024:.1f} GB RAM, Linux {host_platform.release()}"


def run(say: Callable[[str], None], requests: int = 10_000, concurrencies: Sequence[int] = (8, 16, 32),
        max_environments: int | None = None) -> dict[str, Any]:
    """For each concurrency: the `$LATEST`-only baseline, then mixed traffic, each on a fresh
    server with `max_environments` (default: the concurrency)."""
    load = os.getloadavg()
    rows = []
    for concurrency in concurrencies:
        limit = max_environments or concurrency
        baseline = run_row(concurrency, limit, SINGLE, requests, say)
        mixed = run_row(concurrency, limit, MIXED, requests, say)
        mixed["rps_vs_baseline"] = round(mixed["rps"] / baseline["rps"], 2) if baseline["rps"] else None
        baseline["rps_vs_baseline"] = 1.0
        rows += [baseline, mixed]
    return {"benchmark": "load", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(), "load_average_at_start": [round(x, 2) for x in load],
            "requests_per_row": requests, "rows": rows}


def verdict(row: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """The issue's bars for a mixed row: (statement, held)."""
    c = row["concurrency"]
    ratio = row.get("rps_vs_baseline")
    return [
        ("0 lost", row["lost"] == 0),
        ("0 mismatched", row["mismatched"] == 0),
        (f"environments created ≤ {2 * c} (2x concurrency)", row["environments_created"] <= 2 * c),
        (f"throughput ≥ {THROUGHPUT_FLOOR:.0%} of $LATEST only", ratio is not None and ratio >= THROUGHPUT_FLOOR),
    ]


def markdown(result: dict[str, Any]) -> str:
    load = " / ".join(str(x) for x in result["load_average_at_start"])
    lines = [
        f"Load benchmark ({result['timestamp']}, one run; {result['machine']}; load average at start {load}: "
        "the machine's cores are shared with other work, so absolute figures are noisy, the ratios less so).",
        "",
        f"Each row: a fresh server (no environments), a stdlib echo function with SnapStart, {result['requests_per_row']} "
        "closed-loop invokes from as many caller processes (each its own boto3 client) as the concurrency, from cold "
        "start to steady state. Mixed = `$LATEST` / version 1 / alias `live` (→ 1) in turn; baseline = the same load "
        "to `$LATEST` only, same `--max-environments`. Environments created: distinct environments with an "
        "INIT_START (cold) or RESTORE_START (restore) line in the daemon's function log. Lost: no answer, "
        "connection error or 5xx; mismatched: an answer carrying another request's token or version. "
        "Latency over answered requests; req/s = answered / wall time.",
        "",
        "| concurrency | max envs | traffic | requests | answered | 429 | lost | mismatched | other errors | "
        "environments created (cold + restored) | p50 ms | p99 ms | req/s | req/s vs $LATEST only | daemon peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['concurrency']} | {r['max_environments']} | {r['mix']} | {r['requests']} | {r['answered']} | "
            f"{r['throttled']} | {r['lost']} | {r['mismatched']} | {r['error']} | {r['environments_created']} "
            f"({r['cold_starts']} + {r['restores']}) | {r['p50_ms']} | {r['p99_ms']} | {r['rps']} | "
            f"{'-' if r['rps_vs_baseline'] is None else str(r['rps_vs_baseline']) + 'x'} | {r['daemon_peak_rss_mb']} MB |"
        )
    mixed = [r for r in result["rows"] if r["mix"] == "mixed"]
    if mixed:
        head = max(mixed, key=lambda r: r["concurrency"])
        checks = ", ".join(f"{text}: {'yes' if held else '**no**'}" for text, held in verdict(head))
        lines += ["", f"Mixed traffic at concurrency {head['concurrency']} with --max-environments "
                      f"{head['max_environments']}: {checks}."]
    notes = [r for r in result["rows"] if r["log_drop_notices"]]
    if notes:
        lines += ["", "The daemon dropped log lines in some rows: their environment counts are lower bounds."]
    return "\n".join(lines) + "\n"
