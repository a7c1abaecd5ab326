"""What each dashboard page shows, as plain dicts for the templates.

Numbers come from the same places as the metrics (`snapfaas.metrics`): invocations from
`Metrics.recent` (the records the histograms are fed), environments from the worker's pools,
states from the registry, snapshot sizes and sharing from the store, scan findings from the
function's log (stream ``scan/[VERSION]``). Builders are synchronous and cheap except
`version_page`, whose store statistics the route computes in a thread.
"""

from __future__ import annotations

import collections
from typing import Any

from snapfaas.metrics import STARTS, Invocation, Metrics
from snapfaas.publish_view import findings_of
from snapfaas.registry.model import FunctionVersion

RECENT_ROWS = 50


def environments(pools: dict[tuple[str, str, str], Any]) -> dict[tuple[str, str], dict[str, int]]:
    """(function, version) -> busy/idle/starting counts of the live pools."""
    out: dict[tuple[str, str], dict[str, int]] = collections.defaultdict(lambda: {"busy": 0, "idle": 0, "starting": 0})
    for (function, version, _revision), pool in list(pools.items()):
        counts = out[(function, version)]
        counts["busy"] += len(pool.busy)
        counts["idle"] += len(pool.idle)
        counts["starting"] += pool.starting
    return out


def version_row(version: FunctionVersion, envs: dict[str, int] | None) -> dict[str, Any]:
    return {
        "version": version.version, "state": version.state.value, "reason": version.state_reason,
        "snapstart": version.optimization_status if version.snap_start == "PublishedVersions" else "Off",
        "snapshot_id": version.snapshot_id, "runtime": version.runtime, "memory": version.memory_size,
        "environments": envs or {"busy": 0, "idle": 0, "starting": 0},
    }


def index_page(latest: list[FunctionVersion], versions_of, pools, metrics: Metrics) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    envs = environments(pools)
    counts = collections.Counter(e.function for e in metrics.recent())
    functions = []
    for fn in sorted(latest, key=lambda v: v.name):
        versions = [version_row(v, envs.get((fn.name, v.version))) for v in versions_of(fn.name)]
        functions.append({
            "name": fn.name, "runtime": fn.runtime, "memory": fn.memory_size, "snap_start": fn.snap_start,
            "versions": versions, "recent_invocations": counts.get(fn.name, 0),
            "live": sum(v["environments"]["busy"] + v["environments"]["idle"] for v in versions),
        })
    return {"functions": functions}


def invocation_row(event: Invocation) -> dict[str, Any]:
    return {
        "request_id": event.request_id, "version": event.version, "outcome": event.outcome, "start": event.start or "-",
        "at": event.at, "latency_ms": None if event.latency_s is None else round(event.latency_s * 1000, 2),
        "duration_ms": event.duration_ms, "init_ms": event.init_ms, "restore_ms": event.restore_ms,
        "memory": event.memory_size_mb, "max_memory": event.max_memory_used_mb,
    }


def chart_series(events: list[Invocation], version: str) -> dict[str, Any]:
    """The version's invocations that ran code as (time, latency ms) points per start kind."""
    series: dict[str, list[dict[str, float]]] = {start: [] for start in STARTS}
    for event in events:
        if event.version == version and event.start in series and event.latency_s is not None:
            series[event.start].append({"x": round(event.at, 3), "y": round(event.latency_s * 1000, 3)})
    return {"version": version, "series": series, "points": sum(len(points) for points in series.values())}


def function_page(latest: FunctionVersion, versions: list[FunctionVersion], pools, metrics: Metrics) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    envs = environments(pools)
    events = metrics.recent(latest.name)
    rows = [version_row(v, envs.get((latest.name, v.version))) for v in versions]
    charts = [chart_series(events, v.version) for v in versions]
    return {
        "name": latest.name, "runtime": latest.runtime, "handler": latest.handler, "memory": latest.memory_size,
        "timeout": latest.timeout, "snap_start": latest.snap_start, "versions": rows,
        "charts": [c for c in charts if c["points"]],
        "recent": [invocation_row(e) for e in reversed(events[-RECENT_ROWS:])],
    }


def version_page(version: FunctionVersion, pools, metrics: Metrics, log_lines: list[str],  # type: ignore[no-untyped-def]
                 snapshot: dict[str, Any] | None) -> dict[str, Any]:
    envs = environments(pools)
    events = [e for e in metrics.recent(version.name) if e.version == version.version]
    return {
        "name": version.name, **version_row(version, envs.get((version.name, version.version))),
        "chart": chart_series(events, version.version), "findings": findings_of(log_lines, version.version),
        "snapshot": snapshot, "recent": [invocation_row(e) for e in reversed(events[-RECENT_ROWS:])],
    }
