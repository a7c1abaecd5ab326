"""Restore loading benchmark (`snapfaas bench loading`): eager vs lazy vs lazy + prefetch, for
each tier the snapshot can come from, in one run.

Three private servers run side by side, one per loading, each with every reference function
(stdlib, numpy-scipy, torch) published with SnapStart:

* ``eager``: ``--restore-loading eager`` (the whole snapshot is materialized into the plaintext
  RAM cache before CRIU starts: the previous design, the baseline);
* ``lazy``: ``--restore-loading lazy --no-restore-prefetch`` (CRIU restores from the snapshot
  view; pages are fetched when the process touches them);
* ``prefetch``: ``--restore-loading lazy --restore-prefetch`` (the default: as lazy, and the
  working set the snapshot's first restore recorded, memory chunks and library pages, is
  fetched in bulk and in parallel while the restore runs).

Samples are interleaved (for each tier and run: eager, lazy, prefetch), each the e2e time of
the first invoke of a new environment of version 1 through boto3, after `wait_idle` (no
environment alive: nothing maps the snapshot). Before a sample, from outside the servers:

* ``memory``: nothing dropped. Eager: the RAM cache (a tmpfs) holds the snapshot; lazy: the
  kernel's page cache of the view does, from the previous sample, and the store's chunk memory
  tier (process memory, ``--store-memory-bytes``, 256 MiB) holds the chunks read before;
* ``memory_cold``: the host's page cache dropped (``drop_caches``: libraries, the runtime, the
  view's pages; once no environment of any of the servers is alive, since the pages a live
  process maps survive the drop): the snapshot is still in RAM (eager: the tmpfs RAM cache; lazy: the chunk
  memory tier), as on a host that restored it before and whose page cache was reclaimed
  since. This is the situation the issue's "247 ms cold page cache" figure was measured in;
* ``disk``: each server restarted (process memory and the view's page cache go; its RAM cache
  directory removed, as the vault evicts: eager's whole copy, lazy's local copy of the small
  images): chunks come from the local disk cache;
* ``origin``: as ``disk``, and the disk cache's blobs unlinked: every chunk comes from the
  origin (a directory on the same disk); the blobs the disk cache holds after the sample are
  the distinct chunks that restore fetched ("chunks fetched");
* ``origin_cold``: as ``origin``, and the host's page cache dropped: a cold host that never had
  the snapshot.

After a restart each server answers one on-demand invoke of a small warm-up function first
(runtimes prepared, network namespaces made), so the sample measures the restore, not start-up.

``tiers`` (``snapfaas bench loading --tiers memory,memory_cold``) runs only some tiers: a
torch run of the two memory tiers takes a few minutes instead of ~15 for everything.

The machine this runs on has 2 cores shared with other work: absolute figures are noisy;
compare the ratios of one run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from snapfaas.bench.harness import PrivateServer, bench_runtime_args
from snapfaas.bench.snapstart import REFERENCE, Bench, _deploy, _publish, drop_page_cache, measured_invoke
from snapfaas.bench.store import _manifests, _snapshot_ids, disk_blobs, drop_disk_cache, drop_ram_cache, stats

LOADINGS = {
    "eager": ["--restore-loading", "eager"],
    "lazy": ["--restore-loading", "lazy", "--no-restore-prefetch"],
    "prefetch": ["--restore-loading", "lazy", "--restore-prefetch"],
}
LOADING_LABELS = {"eager": "eager", "lazy": "lazy", "prefetch": "lazy + prefetch"}
TIERS = ("memory", "memory_cold", "disk", "origin", "origin_cold")
TIER_LABELS = {
    "memory": "memory tier warm",
    "memory_cold": "memory tier, page cache dropped",
    "disk": "local disk cache only",
    "origin": "origin only",
    "origin_cold": "origin only, page cache dropped",
}
RESTARTED = ("disk", "origin", "origin_cold")
WARMUP = "warmup"
WARMUP_CODE = "def handler(event, context):\n    return 'ok'\n"


def ratios(restore: dict[str, dict[str, dict[str, float]]], base: str = "eager") -> dict[str, dict[str, float]]:
    """loading -> tier -> its median over `base`'s median for that tier."""
    out: dict[str, dict[str, float]] = {}
    for loading, tiers in restore.items():
        if loading == base:
            continue
        out[loading] = {tier: round(figures["median"] / restore[base][tier]["median"], 2)
                        for tier, figures in tiers.items() if restore[base][tier]["median"] > 0}
    return out


def markdown(result: dict[str, Any]) -> str:
    tiers = tuple(result.get("tiers") or TIER_LABELS)
    lines = [
        f"Restore loading benchmark ({result['timestamp']}, one run, {result['runs']} samples per cell, interleaved; "
        "median e2e ms of the first invoke of a new environment through boto3, min–max in brackets; "
        "ratio = cell / eager for the same tier; 2 shared cores, other work running)",
        "",
        "| function | loading | " + " | ".join(TIER_LABELS[t] for t in tiers) + " | chunks fetched from the origin |",
        "|---|---|" + "---|" * (len(tiers) + 1),
    ]
    for name, r in result["functions"].items():
        for loading in LOADINGS:
            cells = []
            for tier in tiers:
                figures = r["restore_e2e_ms"][loading][tier]
                ratio = r["ratios_over_eager"].get(loading, {}).get(tier)
                cells.append(f"{figures['median']} ({figures['min']}–{figures['max']})"
                             + (f" **{ratio}x**" if ratio is not None else ""))
            fetched = r["chunks_fetched"][loading]
            lines.append(f"| {name} | {LOADING_LABELS[loading]} | " + " | ".join(cells)
                         + (f" | {fetched['median']} of {r['chunks']} |" if fetched["max"] else " | – |"))
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _servers(runtime_python: str) -> Iterator[dict[str, PrivateServer]]:
    base = ["--keep-alive", "2", *bench_runtime_args(runtime_python)]
    with contextlib.ExitStack() as stack:
        yield {loading: stack.enter_context(PrivateServer(base + args)) for loading, args in LOADINGS.items()}


def _sample(bench: Bench, name: str, snapshot_id: str, loading: str, tier: str,
            others: tuple[Bench, ...] = ()) -> tuple[float, int | None]:
    """One first invoke of a new environment after dropping what `tier` says; (e2e ms, distinct
    chunks fetched from the origin or None). `others`: the other servers of the run, whose
    environments must be gone too before the page cache is dropped (`drop_caches` keeps the
    pages a live process maps: another server's torch environment kept its libraries cached)."""
    server = bench.server
    cache_dir = server.data_dir / "store-cache"
    bench.wait_idle()
    if tier in ("memory_cold", "origin_cold"):
        for other in others:
            other.wait_idle()
    if tier in RESTARTED:
        server.stop()
        drop_ram_cache(server.sandbox, snapshot_id)  # eager: the snapshot; lazy: the local copy of its small images
        if tier.startswith("origin"):
            drop_disk_cache(cache_dir)
        server.start()
        measured_invoke(bench.client, WARMUP)
        bench.wait_idle()
    if tier in ("memory_cold", "origin_cold"):
        drop_page_cache()
    elapsed, fields = measured_invoke(bench.client, name, "1")
    if "Restore Duration" not in fields:
        raise RuntimeError(f"{name}:1 did not restore ({loading}, {tier}): {fields}")
    return elapsed, len(disk_blobs(cache_dir)) if tier.startswith("origin") else None


def run(say: Callable[[str], None], runtime_python: str, runs: int = 5, only: list[str] | None = None,
        tiers: list[str] | None = None) -> dict[str, Any]:
    """Every reference function (or those in `only`), each tier of `TIERS` (or those in `tiers`)."""
    unknown = set(tiers or ()) - set(TIERS)
    if unknown:
        raise ValueError(f"unknown tier(s) {', '.join(sorted(unknown))}: choose from {', '.join(TIERS)}")
    chosen = tuple(tier for tier in TIERS if not tiers or tier in tiers)
    results: dict[str, Any] = {}
    with _servers(runtime_python) as servers:
        benches = {loading: Bench(server, say) for loading, server in servers.items()}
        for server in servers.values():
            server.deploy(WARMUP, {"app.py": WARMUP_CODE}, Runtime="python3.11", MemorySize=128)
        try:
            for name, (package, memory) in REFERENCE.items():
                if only and name not in only:
                    continue
                ids: dict[str, str] = {}
                for loading, bench in benches.items():
                    say(f"[{name}] {loading}: deploying, publishing, first restore (records the working set)")
                    _deploy(bench, name, package, memory)
                    _publish(bench, name)
                    bench.invoke(name, "1")
                    ids[loading] = _snapshot_ids(bench.server, name)["1"]
                with_catalog = _snapshot_chunks(benches["eager"].server, ids["eager"])
                e2e: dict[str, dict[str, list[float]]] = {loading: {tier: [] for tier in chosen} for loading in LOADINGS}
                fetched: dict[str, list[int]] = {loading: [] for loading in LOADINGS}
                for tier in chosen:
                    say(f"[{name}] {runs} restores per loading, {TIER_LABELS[tier]}")
                    for _ in range(runs):
                        for loading, bench in benches.items():
                            others = tuple(b for b in benches.values() if b is not bench)
                            elapsed, count = _sample(bench, name, ids[loading], loading, tier, others)
                            e2e[loading][tier].append(elapsed)
                            if count is not None:
                                fetched[loading].append(count)
                restore = {loading: {tier: stats(values) for tier, values in tiers.items()} for loading, tiers in e2e.items()}
                results[name] = {
                    "chunks": with_catalog,
                    "restore_e2e_ms": restore,
                    "ratios_over_eager": ratios(restore),
                    "chunks_fetched": {loading: {"median": sorted(counts)[len(counts) // 2] if counts else 0,
                                                 "min": min(counts, default=0), "max": max(counts, default=0)}
                                       for loading, counts in fetched.items()},
                }
                for bench in benches.values():
                    bench.client.delete_function(FunctionName=name)
        finally:
            for bench in benches.values():
                bench.close()
    return {"benchmark": "loading", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs,
            "loadings": {k: " ".join(v) for k, v in LOADINGS.items()}, "tiers": {t: TIER_LABELS[t] for t in chosen},
            "functions": results}


def _snapshot_chunks(server: PrivateServer, snapshot_id: str) -> int:
    """Distinct stored chunks of a snapshot (from its manifest)."""
    (manifest,) = _manifests(server, [snapshot_id])
    return len(manifest.names())
