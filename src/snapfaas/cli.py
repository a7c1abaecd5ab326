"""The `snapfaas` command line: parse arguments, build config objects, call into the package."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import click
from botocore.exceptions import ClientError
from rich.console import Console
from rich.table import Table

from snapfaas.config import ServerConfig, credentials_from_env, parse_runtime_overrides

console = Console()
err_console = Console(stderr=True)
DEFAULT_ENDPOINT = "http://127.0.0.1:9000"


@click.group(context_settings={"auto_envvar_prefix": "SNAPFAAS", "help_option_names": ["-h", "--help"]})
def main() -> None:
    """snapfaas: self-hosted Lambda-compatible functions with SnapStart."""


def connection_options(func: Any) -> Any:
    func = click.option("--endpoint-url", default=DEFAULT_ENDPOINT, show_default=True, help="Server URL.")(func)
    func = click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".snapfaas"), show_default=True,
                        help="Server data dir (to read generated credentials).")(func)
    func = click.option("--region", default="us-east-1", show_default=True)(func)
    return func


def connect(endpoint_url: str, data_dir: Path, region: str) -> Any:
    from snapfaas.client import Connection

    return Connection.discover(endpoint_url, data_dir, region, os.environ)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".snapfaas"), show_default=True)
@click.option("--runtime", "runtimes", multiple=True, metavar="NAME=PATH", help="Interpreter for a runtime, e.g. python3.12=/usr/bin/python3.12")
@click.option("--no-auth", is_flag=True, help="Accept unsigned requests (local experiments only).")
@click.option("--keep-alive", default=300.0, show_default=True, type=float, help="Seconds an idle environment is kept.")
@click.option("--max-environments", default=32, show_default=True, type=int, help="Account concurrency limit.")
@click.option("--region", default="us-east-1", show_default=True)
@click.option("--sandbox-dir", type=click.Path(path_type=Path), default=None,
              help="Sandbox-visible derived state (default /var/lib/snapfaas/sandbox/<hash of data dir>).")
@click.option("--snapshot-retention", default="14d", show_default=True,
              help="Drop a SnapStart version's snapshot after this long without invokes (e.g. 14d, 6h, 90s).")
@click.option("--no-snapstart", is_flag=True, help="Run without CRIU: SnapStart versions fail to publish.")
@click.option("--log-level", default="INFO", show_default=True)
def serve(host: str, port: int, data_dir: Path, runtimes: tuple[str, ...], no_auth: bool, keep_alive: float,
          max_environments: int, region: str, sandbox_dir: Path | None, snapshot_retention: str, no_snapstart: bool,
          log_level: str) -> None:
    """Run the platform (API + worker) in the foreground."""
    from snapfaas.server import Server

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_runtime_overrides(runtimes)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    config = ServerConfig(
        data_dir=data_dir.resolve(), host=host, port=port, region=region, auth=not no_auth,
        credentials=credentials_from_env(os.environ) or {}, runtimes=overrides, keep_alive_s=keep_alive,
        max_environments=max_environments, sandbox_root=sandbox_dir.resolve() if sandbox_dir else None,
        snapshot_retention_s=parse_duration(snapshot_retention), snapstart=not no_snapstart,
    )
    if os.geteuid() != 0:
        raise click.ClickException("snapfaas serve needs root (it runs functions in runc containers with user namespaces)")
    asyncio.run(Server(config, dict(os.environ), say=lambda s: click.echo(s, err=True)).run())


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``6h``, ``14d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    try:
        if raw and raw[-1] in units:
            return float(raw[:-1]) * units[raw[-1]]
        return float(raw)
    except ValueError as exc:
        raise click.BadParameter(f"not a duration: {text!r} (use e.g. 14d, 6h, 30m, 90s)") from exc


def zip_directory(path: Path) -> bytes:
    if path.is_file() and path.suffix == ".zip":
        return path.read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(path.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                archive.write(file, file.relative_to(path).as_posix())
    return buf.getvalue()


def fail_client_error(exc: ClientError) -> None:
    error = exc.response.get("Error", {})
    raise click.ClickException(f"{error.get('Code')}: {error.get('Message')}")


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True)
@click.option("--handler", default="app.handler", show_default=True)
@click.option("--runtime", default="python3.12", show_default=True)
@click.option("--memory", default=128, show_default=True, type=int)
@click.option("--timeout", default=3, show_default=True, type=int)
@click.option("--env", "env_vars", multiple=True, metavar="KEY=VALUE")
@click.option("--snapstart", is_flag=True, help="SnapStart.ApplyOn=PublishedVersions")
@click.option("--publish", is_flag=True, help="Publish a version after deploying.")
@connection_options
def deploy(source: Path, name: str, handler: str, runtime: str, memory: int, timeout: int, env_vars: tuple[str, ...],
           snapstart: bool, publish: bool, endpoint_url: str, data_dir: Path, region: str) -> None:
    """Zip SOURCE (a directory or .zip) and create or update function NAME."""
    client = connect(endpoint_url, data_dir, region).lambda_client()
    package = zip_directory(source)
    config: dict[str, Any] = {
        "Handler": handler, "Runtime": runtime, "MemorySize": memory, "Timeout": timeout,
        "Environment": {"Variables": dict(v.split("=", 1) for v in env_vars)},
        "SnapStart": {"ApplyOn": "PublishedVersions" if snapstart else "None"},
    }
    try:
        with console.status(f"deploying {name} ({len(package)} bytes)"):
            try:
                client.get_function(FunctionName=name)
                exists = True
            except client.exceptions.ResourceNotFoundException:
                exists = False
            if exists:
                client.update_function_code(FunctionName=name, ZipFile=package)
                client.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1})
                client.update_function_configuration(FunctionName=name, **config)
                client.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1})
            else:
                client.create_function(FunctionName=name, Role="arn:aws:iam::000000000000:role/snapfaas", Code={"ZipFile": package}, **config)
                client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1})
            version = None
            if publish:
                version = client.publish_version(FunctionName=name)["Version"]
                client.get_waiter("published_version_active").wait(FunctionName=name, Qualifier=version, WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    except ClientError as exc:
        fail_client_error(exc)
    console.print(f"[green]{'updated' if exists else 'created'}[/] {name}" + (f", published version {version}" if version else ""))


@main.command()
@click.argument("target")
@click.option("--payload", default="{}", show_default=True, help="JSON event.")
@click.option("--tail/--no-tail", default=True, show_default=True, help="Print the log tail.")
@connection_options
def invoke(target: str, payload: str, tail: bool, endpoint_url: str, data_dir: Path, region: str) -> None:
    """Invoke NAME[:QUALIFIER] and print the result."""
    client = connect(endpoint_url, data_dir, region).lambda_client()
    name, _, qualifier = target.partition(":")
    kwargs: dict[str, Any] = {"FunctionName": name, "Payload": payload.encode(), "LogType": "Tail" if tail else "None"}
    if qualifier:
        kwargs["Qualifier"] = qualifier
    started = time.perf_counter()
    try:
        response = client.invoke(**kwargs)
    except ClientError as exc:
        fail_client_error(exc)
    elapsed = (time.perf_counter() - started) * 1000
    body = response["Payload"].read().decode(errors="replace")
    if tail and response.get("LogResult"):
        err_console.print(base64.b64decode(response["LogResult"]).decode(errors="replace"), highlight=False, markup=False)
    err_console.print(f"[dim]version {response.get('ExecutedVersion')} - {elapsed:.1f} ms round trip[/]")
    click.echo(body)
    if response.get("FunctionError"):
        sys.exit(1)


@main.command()
@click.argument("name")
@click.option("-n", "--lines", default=100, show_default=True)
@connection_options
def logs(name: str, lines: int, endpoint_url: str, data_dir: Path, region: str) -> None:
    """Print the execution log of function NAME (START/END/REPORT and output)."""
    import urllib.error

    conn = connect(endpoint_url, data_dir, region)
    try:
        text = conn.signed_get(f"/snapfaas/v1/logs/{name}?limit={lines}").decode(errors="replace")
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{exc.code}: {exc.read().decode(errors='replace')}") from exc
    click.echo(text, nl=False)


@main.command(name="ls")
@connection_options
def list_functions(endpoint_url: str, data_dir: Path, region: str) -> None:
    """List functions and their versions."""
    client = connect(endpoint_url, data_dir, region).lambda_client()
    table = Table("Function", "Version", "Runtime", "Handler", "Memory", "Timeout", "SnapStart", "State", "Last modified")
    try:
        for page in client.get_paginator("list_functions").paginate(FunctionVersion="ALL"):
            for f in page["Functions"]:
                config = client.get_function_configuration(FunctionName=f["FunctionName"], Qualifier=f["Version"])
                snap = config["SnapStart"]
                table.add_row(f["FunctionName"], f["Version"], f["Runtime"], f["Handler"], f"{f['MemorySize']} MB",
                              f"{f['Timeout']} s", f"{snap['ApplyOn']} / {snap['OptimizationStatus']}",
                              config.get("State", ""), f["LastModified"])
    except ClientError as exc:
        fail_client_error(exc)
    console.print(table)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


@main.command()
@click.option("--cold-runs", default=5, show_default=True, type=int)
@click.option("--requests", default=400, show_default=True, type=int, help="Warm requests per path and concurrency level.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results"), show_default=True)
def bench(cold_runs: int, requests: int, out: Path) -> None:
    """Measure cold start and warm overhead against a bare HTTP baseline (same run, same server)."""
    from snapfaas.bench import platform

    result = platform.run(lambda s: err_console.print(s), cold_runs=cold_runs, requests=requests)
    out.mkdir(parents=True, exist_ok=True)
    (out / "platform.json").write_text(_json(result) + "\n")
    (out / "platform.md").write_text(platform.markdown(result))
    console.print(platform.markdown(result))
    err_console.print(f"results written to {out / 'platform.json'} and {out / 'platform.md'}")


@main.command()
def demo() -> None:
    """Start a private platform, deploy the example, and show cold vs warm invokes."""
    from snapfaas import demo as demo_module

    demo_module.run(console, lambda s: console.print(s))
