"""`snapfaas deploy --snapstart`: watch a SnapStart publish phase by phase, then summarize it.

The server answers ``GET /snapfaas/v1/snapstart/NAME:VERSION/publish`` (`snapshot.progress`);
this module polls it, draws the phases live (rich), and at the end prints the snapshot's size
and the version's scan findings (the ``scan/[VERSION]`` lines of the function's log).
`render` and `findings_of` are pure, for tests.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from snapfaas.snapshot.progress import PHASES

POLL_S = 0.25
TITLES = {"scan": "safety scan", "queued": "waiting for a slot", "init": "init", "hooks": "before-snapshot hooks",
          "checkpoint": "checkpoint (CRIU)", "upload": "upload to the store"}


def render(progress: dict[str, Any]) -> Table:
    """The phases done (with their seconds), the current one, and those not reached."""
    table = Table(show_header=False, box=None, padding=(0, 1))
    done = {p["Phase"]: p["Seconds"] for p in progress.get("Phases", [])}
    current = progress.get("Phase")
    for phase in PHASES:
        if phase in done:
            table.add_row("[green]✓[/]", TITLES[phase], f"{done[phase]:.2f} s")
        elif phase == current:
            table.add_row("[yellow]…[/]", TITLES[phase], f"{progress.get('PhaseElapsedSeconds') or 0:.1f} s")
    if current == "failed":
        table.add_row("[red]✗[/]", "failed", progress.get("Reason") or progress.get("StateReason") or "")
    return table


def findings_of(log_lines: list[str], version: str) -> list[str]:
    """The scan findings logged for `version` (stream ``scan/[VERSION]``)."""
    out = []
    for line in log_lines:
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[1] == f"scan/[{version}]":
            out.append(parts[2])
    return out


def watch(get: Callable[[str], bytes], name: str, version: str, console: Console,
          timeout_s: float = 900.0) -> dict[str, Any]:
    """Poll the publish of NAME:VERSION until its state leaves Pending (live display on
    `console`); the last progress. `get` is a signed GET of a path returning the body."""
    path = f"/snapfaas/v1/snapstart/{urllib.parse.quote(name)}:{version}/publish"
    deadline = time.monotonic() + timeout_s
    progress: dict[str, Any] = json.loads(get(path))
    with Live(render(progress), console=console, refresh_per_second=8, transient=False) as live:
        while progress.get("State") == "Pending" and time.monotonic() < deadline:
            time.sleep(POLL_S)
            progress = json.loads(get(path))
            live.update(render(progress))
    return progress


def summarize(progress: dict[str, Any], findings: list[str], console: Console) -> None:
    size = progress.get("SnapshotBytes")
    if progress.get("State") == "Active":
        total = progress.get("TotalSeconds")
        console.print(f"[green]snapshot ready[/]: {size / 1e6:.1f} MB" if size else "[green]snapshot ready[/]",
                      f"in {total:.1f} s" if total is not None else "")
    if findings:
        console.print(f"snapshot safety scan: {len(findings)} finding(s)")
        for line in findings:
            console.print(f"  {line}", highlight=False, markup=False)
    else:
        console.print("[dim]snapshot safety scan: no findings[/]")
