"""The snapshot store benchmark's pure helpers: sizes and version deltas from manifests, tier
ratios, the markdown table, and dropping the disk cache's blobs (not its lock)."""

from __future__ import annotations

from pathlib import Path

from snapfaas.bench import store as bench_store
from snapfaas.store.manifest import DIR, FILE, ChunkRef, FileEntry, Manifest

KIB = 1024


def _ref(offset: int, name: str | None, stored: int = 100, length: int = 512 * KIB) -> ChunkRef:
    return ChunkRef(offset, length, name, None if name is None else name.encode(), 0 if name is None else stored)


def _manifest(snapshot_id: str, names: list[str | None], stored: int = 100) -> Manifest:
    chunks = [_ref(i * 512 * KIB, name, stored) for i, name in enumerate(names)]
    files = [FileEntry("img", DIR, mode=0o700),
             FileEntry("img/pages-1.img", FILE, mode=0o600, size=len(names) * 512 * KIB, chunks=chunks)]
    return Manifest(snapshot_id, files)


def test_image_summary_counts_holes_duplicates_and_stored_fraction() -> None:
    manifest = _manifest("s1", ["a", None, "b", "a", None], stored=100)
    summary = bench_store.image_summary(manifest)
    assert summary["raw_bytes"] == 5 * 512 * KIB
    assert summary["hole_chunks"] == 2
    assert summary["hole_bytes"] == 2 * 512 * KIB
    assert summary["chunk_refs"] == 3
    assert summary["chunks"] == 2
    assert summary["stored_bytes"] == 200  # a duplicate chunk is stored once
    assert summary["stored_over_raw"] == round(200 / (5 * 512 * KIB), 4)


def test_version_delta_counts_only_chunks_the_old_version_lacks() -> None:
    old = _manifest("v1", ["a", "b", "c", None])
    new = _manifest("v2", ["a", "b", "d", "d", None], stored=50)
    delta = bench_store.version_delta(old, new)
    assert delta == {"chunks": 3, "new_chunks": 1, "new_chunk_fraction": round(1 / 3, 4),
                     "stored_bytes": 150, "new_bytes": 50, "new_byte_fraction": round(50 / 150, 4),
                     "by_file": {"img/pages-1.img": 1}}


def test_version_delta_of_identical_versions_is_zero() -> None:
    old = _manifest("v1", ["a", "b"])
    delta = bench_store.version_delta(old, _manifest("v2", ["a", "b"]))
    assert delta["new_chunks"] == 0 and delta["new_bytes"] == 0 and delta["new_chunk_fraction"] == 0.0
    assert delta["by_file"] == {}


def test_tier_ratios_are_medians_over_the_ram_tier() -> None:
    restore = {tier: bench_store.stats(values) for tier, values in
               {"ram": [50, 40, 60], "disk": [100, 80, 120], "origin": [150, 160, 140], "origin_cold": [400]}.items()}
    assert restore["ram"] == {"median": 50, "min": 40, "max": 60, "n": 3}
    assert bench_store.tier_ratios(restore) == {"disk": 2.0, "origin": 3.0, "origin_cold": 8.0}


def _result() -> dict:
    size = bench_store.image_summary(_manifest("s1", ["a", None, "b"]))
    restore = {tier: bench_store.stats([v]) for tier, v in zip(bench_store.TIERS, [50.0, 100.0, 150.0, 400.0])}
    return {"timestamp": "2026-01-01T00:00:00Z", "runs": 1, "functions": {"stdlib": {
        "size": size, "version_2": bench_store.version_delta(_manifest("s1", ["a", "b"]), _manifest("s2", ["a", "c"])),
        "version_3": bench_store.version_delta(_manifest("s1", ["a", "b"]), _manifest("s3", ["a", "b"])),
        "restore_e2e_ms": restore, "ratios_over_ram": bench_store.tier_ratios(restore),
        "chunks_fetched": {"disk": {"reads": 2, "distinct": 2}, "origin": {"median": 2, "distinct": 2}},
    }}}


def test_markdown_rows_have_as_many_cells_as_their_header() -> None:
    text = bench_store.markdown(_result())
    tables = [[line for line in block.splitlines() if line.startswith("|")] for block in text.split("\n\n")]
    tables = [table for table in tables if table]
    assert len(tables) == 2
    for table in tables:
        widths = {line.count("|") for line in table}
        assert len(widths) == 1, table
    assert "| stdlib | 1.5 MiB |" in text
    assert "1 / 2 (**50.0%**)" in text
    assert "| 50.0 ms | 100.0 ms | 150.0 ms | 400.0 ms | 2.0x | 3.0x | 8.0x |" in text
    assert "| 0 / 2 (0.0%) |" in text  # version 3: a comment only


def test_markdown_without_restores_has_only_the_size_table() -> None:
    result = _result()
    for name in ("restore_e2e_ms", "ratios_over_ram", "chunks_fetched"):
        del result["functions"]["stdlib"][name]
    text = bench_store.markdown(result)
    assert "1 / 2 (**50.0%**)" in text and "Restore e2e" not in text


def test_drop_disk_cache_removes_blobs_and_keeps_the_lock(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_bytes(b"")
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "abcdef").write_bytes(b"blob")
    (tmp_path / "cd").mkdir()
    (tmp_path / "cd" / "cd0123").write_bytes(b"blob")
    assert len(bench_store.disk_blobs(tmp_path)) == 2
    assert bench_store.drop_disk_cache(tmp_path) == 2
    assert bench_store.disk_blobs(tmp_path) == []
    assert (tmp_path / ".lock").exists()
