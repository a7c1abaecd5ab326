"""`snapfaas demo`: start a private platform, deploy a heavy function (torch + a model built at
init), and compare an on-demand cold start on $LATEST with a SnapStart restore of a published
version, plus warm invokes of both."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from snapfaas.bench.harness import PrivateServer, bench_runtime_args, timed_invoke

FUNCTION = Path(__file__).resolve().parent / "bench" / "functions" / "torch_mlp"


def _invoke(client: Any, name: str, qualifier: str | None = None) -> tuple[float, dict[str, str]]:
    result = timed_invoke(client, name, qualifier, json.dumps({"x": [0.1] * 64}).encode())
    return result.elapsed_ms, result.fields


def run(console: Console, say: Callable[[str], None], runtime_python: Path) -> None:
    with console.status("starting snapfaas (private data dir, free port)"):
        server = PrivateServer(["--keep-alive", "120", *bench_runtime_args(runtime_python.absolute())]).__enter__()
    try:
        say(f"platform up at {server.connection.endpoint}; deploying a torch function (MLP built at init)")
        client = server.client()
        files = {p.name: p.read_text() for p in FUNCTION.glob("*.py")}
        with console.status("creating the function"):
            server.deploy("torch-mlp", files, Runtime="python3.11", MemorySize=1024, Timeout=60,
                          SnapStart={"ApplyOn": "PublishedVersions"})
        rows = []
        for label in ("$LATEST cold start", "$LATEST warm"):
            elapsed, report = _invoke(client, "torch-mlp")
            rows.append((label, report, elapsed))
        with console.status("publishing version 1: init once, checkpoint with CRIU, encrypt"):
            started = time.perf_counter()
            client.publish_version(FunctionName="torch-mlp")
            client.get_waiter("published_version_active").wait(FunctionName="torch-mlp", Qualifier="1",
                                                                 WaiterConfig={"Delay": 1, "MaxAttempts": 300})
        say(f"version 1 is Active with SnapStart On (snapshot taken in {time.perf_counter() - started:.1f} s)")
        for label in ("v1 SnapStart restore", "v1 warm"):
            elapsed, report = _invoke(client, "torch-mlp", "1")
            rows.append((label, report, elapsed))
        table = Table(title="torch function: cold start vs SnapStart restore")
        for column in ("invoke", "Init Duration", "Restore Duration", "Duration", "Max Memory", "round trip"):
            table.add_column(column, justify="right" if column != "invoke" else "left")
        for label, report, elapsed in rows:
            table.add_row(label, report.get("Init Duration", "-"), report.get("Restore Duration", "-"),
                          report.get("Duration", "-"), report.get("Max Memory Used", "-"), f"{elapsed:.1f} ms")
        console.print(table)
        cold, restore = rows[0][2], rows[2][2]
        say(f"SnapStart restore answered {cold / restore:.1f}x faster than the on-demand cold start "
            "(one sample each; `snapfaas bench` measures medians against the engine floor).")
        say("A restored environment maps the snapshot's memory copy-on-write: its Max Memory counts "
            "only the pages it has written; the rest stay shared with the snapshot and every other copy.")
    finally:
        server.__exit__(None, None, None)
