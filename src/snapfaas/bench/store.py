"""Snapshot store benchmark (`snapfaas bench store`): what the chunk store keeps of each
reference function's snapshot, how much a one-line code change adds, and what an eager
SnapStart restore costs when its images come from each cache tier, all in one run.

Per reference function (stdlib, numpy-scipy, torch), on one private server:

1. **Size.** The version-1 snapshot's manifest: raw image bytes (file sizes, holes included),
   all-zero (hole) chunks, distinct stored chunks and their stored (compressed + encrypted)
   bytes; stored / raw is the issue's "≤ 35 % of raw" figure (`ChunkStore.snapshot_stats`).
2. **Dedup across versions.** Version 2 is published after a one-line change to the handler
   module (a constant appended); new chunks = distinct chunks of version 2 no version-1 chunk
   has, over version 2's distinct chunks, and their stored bytes (`version_delta`). Version 3
   changes only a comment (the same code objects as version 1): what it adds over version 1 is
   the floor set by what differs between any two inits (per-exec randomness, CRIU's metadata).
3. **Restore e2e by tier, eager.** Medians over `runs` first invokes of new environments of
   version 1 (through boto3, as `snapstart.Bench.restores`: wait until keep-alive reclaimed the
   last environment, then invoke), with the snapshot's images coming from:

   * ``ram``: the vault's plaintext RAM cache (today's normal path: a cache hit);
   * ``disk``: the RAM cache dropped; the store's local disk cache holds every sealed chunk;
   * ``origin``: the RAM cache and the disk cache dropped; every chunk comes from the origin
     (a directory, `<data-dir>/store`, on the same disk);
   * ``origin_cold``: as ``origin``, and the host's page cache dropped before each sample
     (`drop_page_cache`: the origin's files, the libraries and the runtime come from disk).

   ``ram``, ``disk`` and ``origin`` run with the page cache warm. ``restores=False``
   (``--tiers none``) skips this part: the run then times nothing, only publishes and reads
   manifests.

How each tier is dropped, from outside the server (no server change, no private API):

* The server runs with ``--store-memory-bytes 1``: the store's own chunk memory tier (64 MiB by
  default) then holds nothing, so a restore that misses the RAM cache reads the disk cache or
  the origin, not a partly warm chunk tier. This tier is not on the ``ram`` path at all (a RAM
  cache hit reads no chunk).
* RAM cache: between samples (after `wait_idle`: no environment is alive, so no restore holds
  a lease and no restored process maps an image), the snapshot's directory
  ``<snapshot cache>/<snapshot id>`` is renamed to a hidden ``.evicted.*`` sibling and removed,
  exactly as the vault's own eviction does (`SnapshotVault._detach`). The vault's next `lease`
  finds no ``.complete`` marker and materializes the snapshot from the store; its stale size
  bookkeeping is replaced there (`_materialize`). A tiny ``--snapshot-cache-bytes`` budget
  cannot do this: the vault keeps the snapshot being restored even when it alone exceeds the
  budget.
* Disk cache: the sealed blobs ``<data-dir>/store-cache/??/<name>`` are unlinked (never
  ``.lock``). `DiskTier.get` treats a vanished file as a miss and forgets it, and the chunk
  fetched from the origin is written back; so after an ``origin`` sample the blobs present in
  the disk cache are exactly the distinct chunks that restore fetched from the origin, which
  the bench counts ("chunks fetched").

Chunks fetched per restore: restores are eager (the vault materializes the whole snapshot
before CRIU starts), so a ``disk`` restore reads every non-hole chunk reference from the disk
cache (from the manifest) and an ``origin`` restore fetches each distinct chunk from the origin
once (counted, as above). The server's tier counters (``store-counters.json``) are written only
periodically and at shutdown, so they are not used per sample.

The machine this runs on has 2 cores shared with other work: absolute figures are noisy;
compare the ratios of one run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snapfaas.bench.harness import PrivateServer, bench_runtime_args, zip_files
from snapfaas.bench.snapstart import FUNCTIONS, REFERENCE, Bench, _deploy, _files, _publish, drop_page_cache, measured_invoke
from snapfaas.config import snapshot_cache_for
from snapfaas.snapshot.catalog import Catalog
from snapfaas.store import Manifest

TIERS = ("ram", "disk", "origin", "origin_cold")
TIER_LABELS = {
    "ram": "RAM cache warm",
    "disk": "disk cache only",
    "origin": "origin only",
    "origin_cold": "origin only, page cache dropped",
}
REVISION_LINE = "\nSTORE_BENCH_REVISION = 2  # the one-line change of version 2\n"
COMMENT_LINE = "\n# version 3: a comment only (the code of version 1)\n"


# -- pure helpers (unit-tested) ----------------------------------------------------------------
def image_summary(manifest: Manifest) -> dict[str, Any]:
    """What the store keeps of one snapshot: raw bytes, hole chunks, chunk references and
    distinct chunks, stored bytes and stored / raw."""
    refs = manifest.chunk_refs()
    distinct = {ref.name: ref for ref in refs}
    holes = [ref for entry in manifest.files for ref in entry.chunks if ref.is_hole]
    raw = manifest.raw_bytes
    stored = sum(ref.stored for ref in distinct.values())
    return {
        "raw_bytes": raw,
        "hole_chunks": len(holes),
        "hole_bytes": sum(ref.length for ref in holes),
        "chunk_refs": len(refs),
        "chunks": len(distinct),
        "stored_bytes": stored,
        "stored_over_raw": round(stored / raw, 4) if raw else 0.0,
    }


def version_delta(old: Manifest, new: Manifest) -> dict[str, Any]:
    """What `new` adds to a store holding `old`: its distinct chunks `old` lacks, over all of
    its distinct chunks, and their stored bytes; ``by_file``: how many of those new chunks each
    file of `new` holds (a chunk two files share is counted at its first file), most first."""
    new_refs = {ref.name: ref for ref in new.chunk_refs()}
    old_names = old.names()
    added = [ref for name, ref in new_refs.items() if name not in old_names]
    by_file: dict[str, int] = {}
    seen: set[str] = set()
    for entry in new.files:
        for ref in entry.chunks:
            if ref.name is None or ref.name in old_names or ref.name in seen:
                continue
            seen.add(ref.name)
            by_file[entry.path] = by_file.get(entry.path, 0) + 1
    total_bytes = sum(ref.stored for ref in new_refs.values())
    added_bytes = sum(ref.stored for ref in added)
    return {
        "chunks": len(new_refs),
        "new_chunks": len(added),
        "new_chunk_fraction": round(len(added) / len(new_refs), 4) if new_refs else 0.0,
        "stored_bytes": total_bytes,
        "new_bytes": added_bytes,
        "new_byte_fraction": round(added_bytes / total_bytes, 4) if total_bytes else 0.0,
        "by_file": dict(sorted(by_file.items(), key=lambda item: (-item[1], item[0]))),
    }


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 1), "min": round(ordered[0], 1), "max": round(ordered[-1], 1),
            "n": len(ordered)}


def tier_ratios(restore: dict[str, dict[str, float]], base: str = "ram") -> dict[str, float]:
    """Each tier's median e2e over the `base` tier's (e.g. origin-only / RAM-warm)."""
    reference = restore[base]["median"]
    return {tier: round(figures["median"] / reference, 2) for tier, figures in restore.items()
            if tier != base and reference > 0}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _delta_cell(delta: dict[str, Any] | None) -> str:
    if not delta:
        return "-"
    return f"{delta['new_chunks']} / {delta['chunks']} ({delta['new_chunk_fraction'] * 100:.1f}%)"


def markdown(result: dict[str, Any]) -> str:
    functions = result["functions"]
    timed = {name: r for name, r in functions.items() if r.get("restore_e2e_ms")}
    restores = (f"restores: medians of {result['runs']} first invokes of new environments, e2e through boto3, eager restores"
                if timed else "no restores timed (--tiers none)")
    lines = [
        f"Snapshot store benchmark ({result['timestamp']}, one run; {restores}; 2 shared cores, other work running)",
        "",
        "Size of the version-1 snapshot in the store (stored = compressed + encrypted distinct chunks of at most 512 KiB, "
        "page images cut along 512 KiB memory windows; holes = all-zero chunks, not stored) and what version 2, a one-line "
        "handler change, adds, and version 3, a comment only (the code of version 1), adds (deterministic init: "
        "`--no-snapshot-init-aslr`):",
        "",
        "| function | raw images | stored | stored / raw | chunks (distinct / refs) | hole chunks | "
        "v2: new chunks / chunks | v2: new bytes | v3 (comment only): new chunks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in functions.items():
        size, delta = r["size"], r["version_2"]
        lines.append(
            f"| {name} | {_mib(size['raw_bytes'])} | {_mib(size['stored_bytes'])} | **{size['stored_over_raw'] * 100:.1f}%** | "
            f"{size['chunks']} / {size['chunk_refs']} | {size['hole_chunks']} | "
            f"{delta['new_chunks']} / {delta['chunks']} (**{delta['new_chunk_fraction'] * 100:.1f}%**) | "
            f"{_mib(delta['new_bytes'])} ({delta['new_byte_fraction'] * 100:.1f}%) | {_delta_cell(r.get('version_3'))} |")
    if not timed:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Restore e2e (version 1) by the tier the snapshot's images come from; ratio = tier median / RAM-cache-warm median; "
        "chunks fetched per restore vs distinct chunks of the snapshot:",
        "",
        "| function | " + " | ".join(TIER_LABELS[t] for t in TIERS) + " | disk / RAM | origin / RAM | origin, cold / RAM | "
        "chunks fetched: disk | chunks fetched: origin |",
        "|---|" + "---|" * (len(TIERS) + 5),
    ]
    for name, r in timed.items():
        restore, ratios, fetched = r["restore_e2e_ms"], r["ratios_over_ram"], r["chunks_fetched"]
        lines.append(
            f"| {name} | " + " | ".join(f"{restore[t]['median']} ms" for t in TIERS) + " | "
            + " | ".join(f"{ratios[t]}x" for t in TIERS[1:]) + " | "
            f"{fetched['disk']['reads']} reads of {fetched['disk']['distinct']} chunks (all) | "
            f"{fetched['origin']['median']} of {fetched['origin']['distinct']} |")
    return "\n".join(lines) + "\n"


# -- dropping tiers from outside the server ----------------------------------------------------------
def drop_ram_cache(sandbox: Path, snapshot_id: str) -> bool:
    """Remove the snapshot's plaintext RAM cache directory as the vault's eviction does
    (rename away, then unlink); call only while no environment is alive. True if it was there."""
    path = snapshot_cache_for(sandbox) / snapshot_id
    trash = path.with_name(f".evicted.{snapshot_id}.{secrets.token_hex(4)}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def disk_blobs(cache_dir: Path) -> list[Path]:
    return [path for path in cache_dir.glob("??/*") if path.is_file() and ".tmp" not in path.name]


def drop_disk_cache(cache_dir: Path) -> int:
    """Unlink every sealed blob of the store's disk cache (not its lock); how many went."""
    blobs = disk_blobs(cache_dir)
    for path in blobs:
        path.unlink(missing_ok=True)
    return len(blobs)


# -- the run ------------------------------------------------------------------------------------
def _snapshot_ids(server: PrivateServer, name: str) -> dict[str, str]:
    """Version -> snapshot id of function `name` (what the registry references)."""
    catalog = Catalog.open(server.data_dir)  # the server holds the disk cache: origin reads only
    try:
        return {str(s["version"]): s["snapshot"] for s in catalog.snapshots()
                if s.get("function") == name and s.get("referenced")}
    finally:
        catalog.close()


def _manifests(server: PrivateServer, ids: list[str]) -> list[Manifest]:
    catalog = Catalog.open(server.data_dir)
    try:
        return [catalog.store.manifest(snapshot_id) for snapshot_id in ids]
    finally:
        catalog.close()


def _publish_changed(bench: Bench, name: str, package: str, line: str, expected: str) -> None:
    """Publish version `expected` of `name` with `line` appended to the reference app.py."""
    files = _files(FUNCTIONS / package)
    files["app.py"] += line
    bench.client.update_function_code(FunctionName=name, ZipFile=zip_files(files))
    bench.client.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1})
    version = bench.client.publish_version(FunctionName=name)["Version"]
    if version != expected:
        raise RuntimeError(f"{name}: publish after the code change made version {version}, not {expected}")
    bench.client.get_waiter("published_version_active").wait(FunctionName=name, Qualifier=expected,
                                                               WaiterConfig={"Delay": 1, "MaxAttempts": 600})


def _restores(bench: Bench, name: str, snapshot_id: str, tier: str, runs: int) -> tuple[list[float], list[int]]:
    """(e2e ms per sample, distinct chunks the disk cache gained per sample, i.e. fetched from
    the origin, for the origin tiers) over `runs` new environments of version 1."""
    server = bench.server
    cache_dir = server.data_dir / "store-cache"
    e2e, fetched = [], []
    for _ in range(runs):
        bench.wait_idle()
        # the previous restore left the snapshot in the RAM cache (a hit for "ram"; dropped for the others)
        if not (snapshot_cache_for(server.sandbox) / snapshot_id / ".complete").exists():
            raise RuntimeError(f"{name}:1 ({tier}): the snapshot is not in the RAM cache before the sample")
        if tier != "ram":
            drop_ram_cache(server.sandbox, snapshot_id)
        if tier.startswith("origin"):
            drop_disk_cache(cache_dir)
        if tier == "origin_cold":
            drop_page_cache()
        elapsed, fields = measured_invoke(bench.client, name, "1")
        if "Restore Duration" not in fields:
            raise RuntimeError(f"{name}:1 did not restore ({tier}): {fields}")
        e2e.append(elapsed)
        if tier.startswith("origin"):
            fetched.append(len(disk_blobs(cache_dir)))
    return e2e, fetched


def run(say: Callable[[str], None], runtime_python: str, runs: int = 5, only: list[str] | None = None,
        restores: bool = True) -> dict[str, Any]:
    """Every figure for each reference function, on one server (see the module docstring);
    without `restores` only the sizes and version deltas (nothing timed)."""
    results: dict[str, Any] = {}
    # eager restores (the RAM cache is the "ram" tier; lazy loading is `bench loading`'s subject) and
    # deterministic publish inits (the dedup figures are for that switch)
    args = ["--keep-alive", "2", *bench_runtime_args(runtime_python), "--store-memory-bytes", "1",
            "--restore-loading", "eager", "--no-snapshot-init-aslr"]
    with PrivateServer(args) as server:
        bench = Bench(server, say)
        try:
            for name, (package, memory) in REFERENCE.items():
                if only and name not in only:
                    continue
                say(f"[{name}] deploying and publishing version 1")
                _deploy(bench, name, package, memory)
                publish_s = _publish(bench, name)
                snapshot_id = _snapshot_ids(server, name)["1"]
                (manifest_1,) = _manifests(server, [snapshot_id])
                restore: dict[str, dict[str, float]] = {}
                fetched: list[int] = []
                if restores:
                    bench.invoke(name, "1")  # the first restore records the snapshot's file working set
                for tier in TIERS if restores else ():
                    say(f"[{name}] {runs} restores, {TIER_LABELS[tier]}")
                    e2e, counts = _restores(bench, name, snapshot_id, tier, runs)
                    restore[tier] = stats(e2e)
                    fetched += counts
                say(f"[{name}] version 2 (one-line code change)")
                _publish_changed(bench, name, package, REVISION_LINE, "2")
                say(f"[{name}] version 3 (a comment only)")
                _publish_changed(bench, name, package, COMMENT_LINE, "3")
                ids = _snapshot_ids(server, name)
                manifest_2, manifest_3 = _manifests(server, [ids["2"], ids["3"]])
                size = image_summary(manifest_1)
                results[name] = {
                    "snapshot": snapshot_id,
                    "publish_s": round(publish_s, 2),
                    "size": size,
                    "version_2": version_delta(manifest_1, manifest_2),
                    "version_3": version_delta(manifest_1, manifest_3),
                }
                if not restores:
                    bench.client.delete_function(FunctionName=name)
                    continue
                results[name] |= {
                    "restore_e2e_ms": restore,
                    "ratios_over_ram": tier_ratios(restore),
                    "chunks_fetched": {
                        "disk": {"reads": size["chunk_refs"], "distinct": size["chunks"],
                                 "source": "manifest: an eager restore reads every non-hole chunk reference"},
                        "origin": {"median": int(statistics.median(fetched)), "min": min(fetched), "max": max(fetched),
                                   "distinct": size["chunks"],
                                   "source": "counted: blobs the emptied disk cache holds after the restore"},
                    },
                }
                bench.client.delete_function(FunctionName=name)
        finally:
            bench.close()
    return {"benchmark": "store", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs,
            "server_args": ["--keep-alive", "2", "--store-memory-bytes", "1", "--restore-loading", "eager",
                            "--no-snapshot-init-aslr"], "tiers": dict(TIER_LABELS),
            "functions": results}
