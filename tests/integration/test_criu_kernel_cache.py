"""`engine.prime_kernel_cache` against the real CRIU: afterwards a CRIU run loads its
kernel-feature cache instead of probing the kernel again."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
