"""Priming the cgroup attach lock (sandbox/cgroup.py): a no-op move of this process into the
cgroup it is in, in a worker thread, one at a time, turned off after a failure."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from snapfaas.sandbox import cgroup
from snapfaas.sandbox.cgroup import AttachPrimer, parse_proc_cgroup, prime_attach


def v1_tree(root: Path) -> Path:
    """A fake v1 cgroupfs holding this process's pids cgroup; returns its cgroup.procs."""
    (root / "memory").mkdir(parents=True)
    own = dict(parse_proc_cgroup(Path("/proc/self/cgroup").read_text()))
    procs = root / "pids" / own.get("pids", "/").lstrip("/") / "cgroup.procs"
    procs.parent.mkdir(parents=True, exist_ok=True)
    procs.write_text("")
    return procs


def test_writes_this_process_into_its_own_pids_cgroup(tmp_path: Path) -> None:
    if "pids" not in dict(parse_proc_cgroup(Path("/proc/self/cgroup").read_text())):
        pytest.skip("no v1 pids hierarchy on this host")
    procs = v1_tree(tmp_path)
    prime_attach(tmp_path)
    assert procs.read_text() == str(os.getpid())


def test_a_failure_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    with pytest.raises(OSError, match="priming the cgroup attach lock"):
        prime_attach(tmp_path)


def test_the_primer_runs_one_at_a_time_and_turns_off_after_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_prime(root: Path) -> None:
        calls.append(root)
        if len(calls) == 2:
            raise OSError(13, "priming the cgroup attach lock through x: Permission denied")

    monkeypatch.setattr(cgroup, "prime_attach", fake_prime)

    async def scenario() -> None:
        primer = AttachPrimer(tmp_path)
        first = primer.start()
        assert first is not None
        assert primer.start() is None  # one is running: not a second one
        await first
        await asyncio.sleep(0)  # its done callback, scheduled on the loop, runs
        assert calls == [tmp_path] and primer.enabled
        second = primer.start()
        assert second is not None
        with pytest.raises(OSError):
            await second
        await asyncio.sleep(0)
        assert not primer.enabled
        assert primer.start() is None
        assert len(calls) == 2

    asyncio.run(scenario())
