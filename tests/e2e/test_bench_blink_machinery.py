"""The measuring machinery of `snapfaas bench blink` run once against a real server, real runc
and CRIU, with a stdlib function: CPU per restore by component (`bench/cpu.py`, runc run through the CPU-accounting wrapper
of `bench/runcwrap.py` given as `--runc`) and density
(`bench/density.py`). No timing is asserted: the figures must exist and be plausible."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapfaas.bench import cpu, density, runcwrap
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, publish, wait_for
from tests.e2e.test_snapstart_memory import Gate
from tests.netpeer import NetPeer

APP = """
import urllib.request

BLOCK = bytearray(range(256)) * (16 * 4096)  # 16 MiB made at init: in the snapshot


def handler(event, context):
    touched = sum(BLOCK[::4096])  # one byte per page: every page of the block is mapped
    if event.get("gate"):
        urllib.request.urlopen(event["gate"] + "/arrived", timeout=60).read()
        urllib.request.urlopen(event["gate"] + "/release", timeout=60).read()  # hold until the test lets go
    return {"size": len(BLOCK), "touched": touched}
"""


@pytest.fixture(scope="module")
def runc_wrapper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the CPU-accounting runc wrapper, its log)"""
    return runcwrap.build(tmp_path_factory.mktemp("runc-wrap"))


@pytest.fixture(scope="module")
def blink_server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory,
                 runc_wrapper: tuple[Path, Path]) -> Iterator[ServerHandle]:
    require_root()
    # runc's restores: the wrapper accounts them (the criu engine's figures: test_snapstart_engine.py)
    yield from run_server(processes, tmp_path_factory.mktemp("blink"),
                          ["--keep-alive", "1", "--runc", str(runc_wrapper[0]), "--restore-engine", "runc"])


def test_cpu_per_restore_has_every_component(blink_server: ServerHandle, runc_wrapper: tuple[Path, Path]) -> None:
    lam = blink_server.client()
    create(lam, "blink-cpu", {"app.py": APP}, Runtime="python3.11", MemorySize=256, SnapStart=SNAPSTART)
    publish(lam, "blink-cpu")
    assert blink_server.proc is not None
    pid, state_dir = blink_server.proc.pid, blink_server.data_dir / "runc"

    def restore() -> None:
        response, body = invoke_json(lam, "blink-cpu", {}, Qualifier="1", LogType="Tail")
        assert_restored(response["LogResult"])
        assert body["size"] == 16 << 20

    result = cpu.measure(pid, state_dir, restore, cpu.settled(pid, state_dir), batches=1, per_batch=2, idle_window_s=0.5,
                         runc_log=runc_wrapper[1])
    parts = result["per_restore_ms"]
    assert set(parts) == {*cpu.COMPONENTS, "total"}
    assert all(value >= 0 for value in parts.values()), parts
    assert parts["runtime"] > 0 and parts["CRIU"] > 0, parts  # read from the environment's cgroup and threads
    assert parts["runc & helpers"] > 0 and parts["daemon"] > 0, parts  # read from the daemon's /proc counters
    assert parts["total"] == pytest.approx(sum(parts[c] for c in cpu.COMPONENTS), abs=0.05)
    assert parts["total"] < 60_000, parts  # a minute of CPU per restore would be a unit mistake
    (batch,) = result["batches"]
    assert batch["idle_daemon_ms_per_s"] >= 0
    # through the wrapper: each restore ran `runc restore` once, and its container was deleted
    calls = batch["counters"]["runc_calls"]
    assert calls["restore"][0] == 2 and calls["delete"][0] >= 2, calls
    by_command = result["runc_by_command_ms"]
    assert by_command["runc restore"] > 0 and by_command["runc delete"] > 0, by_command
    assert sum(by_command.values()) == pytest.approx(parts["runc & helpers"], abs=0.1), (by_command, parts)


def test_density_of_held_restored_environments(blink_server: ServerHandle, netpeer: NetPeer) -> None:
    lam = blink_server.client()
    create(lam, "blink-mem", {"app.py": APP}, Runtime="python3.11", MemorySize=256, Timeout=90, SnapStart=SNAPSTART)
    publish(lam, "blink-mem")
    assert blink_server.proc is not None
    pid, state_dir = blink_server.proc.pid, blink_server.data_dir / "runc"

    def start(n: int) -> Callable[[], None]:
        gate = Gate(netpeer)
        pool = concurrent.futures.ThreadPoolExecutor(n)
        calls = [pool.submit(invoke_json, lam, "blink-mem", {"gate": gate.url}, Qualifier="1", LogType="Tail")
                 for _ in range(n)]

        def finish() -> None:
            gate.open()
            try:
                for call in calls:
                    response, body = call.result(timeout=120)
                    assert_restored(response["LogResult"])
                    assert body["size"] == 16 << 20
            finally:
                pool.shutdown()
                gate.close()
        try:  # every handler has touched its memory and holds
            wait_for(lambda: gate.count("/arrived") >= n, 120, f"{n} handlers to hold")
        except BaseException:
            finish()
            raise
        return finish

    # the handlers hold at a gate (a socket wait, not the bench function's sleep) and `start`
    # returns once all of them arrived there: resumed is enough
    result = density.measure(state_dir, cpu.settled(pid, state_dir), start, 3, resume_timeout=120, held=density.resumed)
    one, three = result["1"], result["3"]
    assert one["environments"] == 1 and three["environments"] == 3
    assert one["processes"] >= 1 and three["processes"] >= 3
    for figures in (one, three):
        assert figures["rss_bytes"] >= figures["pss_bytes"] > 0, figures
        assert figures["pss_bytes"] >= 16 << 20, figures  # the block restored from the snapshot is mapped
        assert figures["cgroup_bytes"] > 0, figures
        pages = figures["footprint_bytes"] - figures["kernel_bytes"]  # distinct resident pages: each counted once
        assert figures["kernel_bytes"] > 0 and figures["pss_bytes"] <= pages <= figures["rss_bytes"], figures
        per = figures["per_environment"]  # every runtime has private pages; the native pid 1 next to none
        assert 0 <= per["init_private_bytes"] < per["runtime_private_bytes"], figures
        # the kernel memory by kind: the runtime's page tables and its threads' kernel stacks at least
        assert per["page_tables_bytes"] > 0 and per["kernel_stack_bytes"] > 0, figures
        assert per["page_tables_bytes"] + per["kernel_stack_bytes"] + per["slab_bytes"] <= per["kernel_bytes"] * 1.05, figures
    assert three["pss_bytes"] > one["pss_bytes"]  # each environment adds its private pages
    assert three["rss_bytes"] > 2 * one["rss_bytes"]  # RSS counts the shared pages in each
    assert result["ratios"]["pss_bytes"] == round(three["pss_bytes"] / one["pss_bytes"], 2)
    assert result["ratios"]["footprint_bytes"] == round(three["footprint_bytes"] / one["footprint_bytes"], 2)
