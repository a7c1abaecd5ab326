"""`snapfaas demo`: start the platform on embedded defaults, deploy an example, show a cold and a
warm invoke side by side."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from snapfaas.bench.harness import PrivateServer

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
FIELD_RE = re.compile(r"(Duration|Init Duration|Max Memory Used): ([0-9.]+ (?:ms|MB))")


def _files(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): p.read_text() for p in directory.rglob("*.py")}


def _invoke(client: Any, name: str, payload: dict[str, Any], qualifier: str | None = None) -> tuple[float, dict[str, Any], dict[str, str]]:
    kwargs: dict[str, Any] = {"FunctionName": name, "Payload": json.dumps(payload).encode(), "LogType": "Tail"}
    if qualifier:
        kwargs["Qualifier"] = qualifier
    started = time.perf_counter()
    response = client.invoke(**kwargs)
    body = json.loads(response["Payload"].read())
    elapsed = (time.perf_counter() - started) * 1000
    log = base64.b64decode(response.get("LogResult", "")).decode(errors="replace")
    report = next((line for line in log.splitlines() if line.startswith("REPORT")), "")
    return elapsed, body, {k: v for k, v in FIELD_RE.findall(report)}


def run(console: Console, say: Callable[[str], None]) -> None:
    with console.status("starting snapfaas (private data dir, free port)"):
        server = PrivateServer(["--keep-alive", "120"]).__enter__()
    try:
        say(f"platform up at {server.connection.endpoint}")
        client = server.client()
        with console.status("deploying examples/hello"):
            server.deploy("hello", _files(EXAMPLES / "hello"))
        rows = []
        for label in ("cold start (new environment)", "warm (same environment)", "warm (same environment)"):
            elapsed, body, report = _invoke(client, "hello", {"name": "snapfaas"})
            rows.append((label, f"{elapsed:.1f} ms", report.get("Init Duration", "-"), report.get("Duration", "-"),
                         report.get("Max Memory Used", "-"), str(body.get("environment_age_s"))))
        table = Table(title="hello on $LATEST (on-demand)")
        for column in ("invoke", "round trip", "Init Duration", "Duration", "Max Memory", "environment age s"):
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        say("Cold start pays for a container and Python's init; warm invokes reuse the environment.")
    finally:
        server.__exit__(None, None, None)
