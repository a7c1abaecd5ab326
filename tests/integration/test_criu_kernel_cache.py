"""`engine.prime_kernel_cache` against the real CRIU: afterwards a CRIU run loads its
kernel-feature cache instead of probing the kernel again."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from snapfaas.durable import write_atomic
from snapfaas.snapshot import engine
from tests.conftest import require_root


def test_after_priming_criu_loads_its_kernel_cache(tmp_path: Path) -> None:
    require_root()
    status = engine.probe()
    assert status.available and status.binary, status.describe()
    engine.KERNDAT_CACHE.with_name("criu.kdat.tmp").write_bytes(b"")  # what a killed CRIU leaves behind
    outcome = engine.prime_kernel_cache(status.binary)
    assert engine.KERNDAT_CACHE.stat().st_size > 0, outcome
    assert not engine.KERNDAT_CACHE.with_name("criu.kdat.tmp").exists(), outcome
    log = tmp_path / "check.log"
    subprocess.run([status.binary, "check", "-v4", "-o", str(log)], capture_output=True, timeout=60)
    assert f"Loaded kdat cache from {engine.KERNDAT_CACHE}" in log.read_text(), outcome


def test_another_builds_kernel_cache_is_left_in_place(tmp_path: Path) -> None:
    """CRIU patch 0009: a cache whose build magic is not this build's is ignored, not deleted
    (two CRIU builds on one host deleted each other's cache, and every restore of the
    installed build probed the kernel again)."""
    require_root()
    status = engine.probe()
    assert status.available and status.binary, status.describe()
    if "kernel-cache-of-another-build-kept" not in status.patches:
        pytest.skip("the installed CRIU predates patch 0009")
    outcome = engine.prime_kernel_cache(status.binary)
    ours = engine.KERNDAT_CACHE.read_bytes()
    assert len(ours) > 8, outcome
    foreign = ours[:4] + bytes(b ^ 0xFF for b in ours[4:8]) + ours[8:]  # struct kerndat_s: u32 magic1, magic2
    try:
        write_atomic(engine.KERNDAT_CACHE, foreign, mode=0o600)
        log = tmp_path / "check.log"
        subprocess.run([status.binary, "check", "-v4", "-o", str(log)], capture_output=True, timeout=60)
        assert "left in place" in log.read_text()
        assert engine.KERNDAT_CACHE.read_bytes() == foreign
    finally:
        engine.prime_kernel_cache(status.binary)
    assert engine.KERNDAT_CACHE.read_bytes()[:8] == ours[:8]  # this build's again (the probed values may vary)
