"""Cache tiers: byte budgets with least-recently-used eviction, in memory and on a real disk
directory (including the order surviving a restart)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapfaas.store.errors import StoreError
from snapfaas.store.tiers import DiskTier, MemoryTier


def test_memory_tier_evicts_least_recently_used_past_its_budget() -> None:
    tier = MemoryTier(budget=300)
    for name in "abc":
        tier.put(name, name.encode() * 100)
    assert tier.get("a") == b"a" * 100  # a is now the most recent
    tier.put("d", b"d" * 100)
    assert tier.get("b") is None and tier.names() == ["c", "a", "d"]
    assert tier.usage().bytes == 300 and tier.evictions == 1
    tier.put("big", b"x" * 301)  # bigger than the whole budget: not cached, nothing evicted
    assert tier.get("big") is None and tier.usage().chunks == 3
    tier.put("e", b"e" * 150)  # 450 bytes: the two least recent (c, a) go
    assert tier.names() == ["d", "e"] and tier.usage().bytes == 250 and tier.evictions == 3
    tier.discard("e")
    assert tier.names() == ["d"] and tier.usage().bytes == 100


def test_memory_tier_with_no_budget_holds_nothing() -> None:
    tier = MemoryTier(budget=0)
    tier.put("a", b"a")
    assert tier.get("a") is None


def test_memory_tier_marks_only_the_copy_that_was_verified() -> None:
    tier = MemoryTier(100)
    tier.put("a", b"x" * 10, verified=True)
    assert tier.lookup("a") == (b"x" * 10, True)
    tier.put("a", b"y" * 10)  # another copy under the name: not verified, whatever came before
    assert tier.lookup("a") == (b"y" * 10, False)
    tier.mark_verified("a", b"z" * 10)  # not the copy held: no mark
    assert tier.lookup("a") == (b"y" * 10, False)
    held = tier.get("a")
    assert held is not None
    tier.mark_verified("a", held)
    assert tier.lookup("a") == (b"y" * 10, True)
    tier.discard("a")
    tier.put("a", b"w" * 10)
    assert tier.lookup("a") == (b"w" * 10, False) and tier.lookup("b") is None
    tier.put("b", b"v" * 95, verified=True)  # evicts "a"; its mark goes with it
    tier.put("a", b"w" * 4)
    assert tier.lookup("a") == (b"w" * 4, False)


def test_disk_tier_keeps_its_budget_and_files_match_its_index(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "cache", budget=3000)
    names = [f"{index:02x}" * 32 for index in range(5)]
    for name in names[:3]:
        tier.put(name, b"x" * 1000)
    assert tier.get(names[0]) == b"x" * 1000
    tier.put(names[3], b"y" * 1000)  # evicts names[1], the least recently used
    assert tier.get(names[1]) is None
    on_disk = sorted(path.name for path in (tmp_path / "cache").rglob("*") if path.is_file() and path.name != ".lock")
    assert on_disk == sorted([names[0], names[2], names[3]])
    assert tier.usage().bytes == 3000 and tier.evictions == 1
    tier.put(names[4], b"z" * 3001)
    assert tier.get(names[4]) is None
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


def test_disk_tier_restart_keeps_recency_order_and_drops_partial_writes(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    tier = DiskTier(root, budget=10_000)
    names = [f"{index:02x}" * 32 for index in range(3)]
    for index, name in enumerate(names):
        tier.put(name, b"x" * 1000)
        os.utime(tier._path(name), (1000 + index, 1000 + index))
    tier.get(names[0])  # touched: most recent now, on disk too
    leftover = root / names[1][:2] / (names[1] + ".tmpabc")
    leftover.write_bytes(b"partial")
    with pytest.raises(StoreError, match="in use by another store"):
        DiskTier(root, budget=2000)
    tier.close()
    again = DiskTier(root, budget=2000)  # restart with a smaller budget: the least recent goes
    assert not leftover.exists()
    assert again.names() == [names[2], names[0]]
    assert again.get(names[1]) is None and again.usage().bytes == 2000


def test_disk_tier_discard_and_externally_deleted_files_are_misses(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "cache", budget=10_000)
    name = "ab" * 32
    tier.put(name, b"blob")
    tier._path(name).unlink()
    assert tier.get(name) is None and tier.usage().chunks == 0
    tier.put(name, b"blob")
    tier.discard(name)
    assert tier.get(name) is None and not tier._path(name).exists()
