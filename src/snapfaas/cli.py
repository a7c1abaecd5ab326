"""The `snapfaas` command line: parse arguments, build config objects, call into the package."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import struct
import sys
import time
import urllib.error
import zipfile
from pathlib import Path
from typing import Any

import click
from botocore.exceptions import ClientError
from rich.console import Console
from rich.table import Table

from snapfaas.config import (
    AWS_SNAPSTART_RUNTIMES, ServerConfig, credentials_from_env, parse_runtime_overrides, parse_size, parse_snapstart_runtimes,
)
from snapfaas.sandbox.ids import DEFAULT_BASE, DEFAULT_SLICES, SUBGID, SUBUID
from snapfaas.snapshot.sockets import CONNECTION_MODES, DEFAULT_CONNECTION_MODE

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
@click.option("--restore-prefetch/--no-restore-prefetch", default=True, show_default=True,
              help="Read ahead the library pages a snapshot's first restore used, at each restore.")
@click.option("--admission-wait", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a request that finds a concurrency limit reached waits, queued, for a slot before "
                   "answering 429 (0: at once, as Lambda).")
@click.option("--region", default="us-east-1", show_default=True)
@click.option("--sandbox-dir", type=click.Path(path_type=Path), default=None,
              help="Sandbox-visible derived state (default /var/lib/snapfaas/sandbox/<hash of data dir>).")
@click.option("--snapshot-retention", default="14d", show_default=True,
              help="Drop a SnapStart version's snapshot after this long without invokes (e.g. 14d, 6h, 90s).")
@click.option("--no-snapstart", is_flag=True, help="Run without CRIU: SnapStart versions fail to publish.")
@click.option("--snapstart-runtimes", default=",".join(AWS_SNAPSTART_RUNTIMES), show_default=True, metavar="NAME,...",
              help="Runtimes SnapStart is accepted for (AWS: python3.12 and later); e.g. python3.11,python3.12,python3.13.")
@click.option("--reseed-after-restore", is_flag=True,
              help="After each SnapStart restore give random, numpy's global RNG and OpenSSL fresh entropy. AWS does "
                   "not: by default restored copies share the snapshot's RNG states, as on Lambda.")
@click.option("--snapshot-init-floor", default="130s", show_default=True,
              help="Snapshot init is bounded by max(this, Timeout), as on Lambda (lower it only for testing).")
@click.option("--scan-block-on", type=click.Choice(["error", "warning", "info", "never"]), default="never", show_default=True,
              help="Snapshot-safety scan at SnapStart publish: findings at or above this severity fail the publish.")
@click.option("--snapshot-init-aslr/--no-snapshot-init-aslr", default=True, show_default=True,
              help="Address space randomization (and glibc's random tcache key) in the init environment of a "
                   "SnapStart publish, as on Lambda. --no-snapshot-init-aslr lays init memory out the same way each "
                   "time, so versions of a function share far more snapshot chunks, at the cost of a predictable "
                   "layout for every snapshot (restored and on-demand environments are unaffected).")
@click.option("--runc", "runc_binary", default="runc", show_default=True, metavar="PATH",
              help="The runc binary the daemon runs (a name on PATH or a path), e.g. a wrapper that accounts its CPU.")
@click.option("--invoke-timeline", is_flag=True,
              help="Debug: log each invoke's steps (arrival, auth, pool, restore steps, response) with their "
                   "wall times, one INFO line per invoke (logger snapfaas.timeline).")
@click.option("--criu", "criu_binary", default="criu", show_default=True, metavar="PATH",
              help="The CRIU binary SnapStart uses (a path, or a name looked up in /usr/local/sbin, /usr/sbin and "
                   "the other system directories), e.g. a candidate build to compare against the installed one. "
                   "runc (publishes, --restore-engine runc) runs the `criu` on PATH.")
@click.option("--restore-engine", type=click.Choice(["runc", "criu"]), default="criu", show_default=True,
              help="What restores a SnapStart environment: runc (`runc restore`, `runc kill`, `runc delete` per "
                   "environment) or criu (the daemon drives CRIU's RPC itself, doing runc's cgroup, mount, network "
                   "and stdio set-up; less CPU per restore; cgroup v1 hosts, elsewhere it falls back to runc).")
@click.option("--restore-memory", type=click.Choice(["map", "copy"]), default="map", show_default=True,
              help="How a SnapStart restore brings back memory: map the snapshot's pages copy-on-write "
                   "(needs snapfaas's CRIU patch; falls back to copy without it) or copy every page.")
@click.option("--sandbox-network", type=click.Choice(["isolated", "host"]), default="isolated", show_default=True,
              help="isolated: each environment gets its own network namespace (NAT out; no host, link-local or other "
                   "environments). host: share the host's network (unsafe; for benchmarks and debugging).")
@click.option("--snapstart-connections", type=click.Choice(CONNECTION_MODES), default=DEFAULT_CONNECTION_MODE,
              show_default=True,
              help="How a restored SnapStart environment sees a TCP connection its init left open: reset (the first "
                   "use raises ECONNRESET, as on AWS, where the peer forgot the connection), closed (reads return "
                   "EOF) or blackhole (writes vanish, reads wait for the client's timeout).")
@click.option("--event-queue-max", default=100_000, show_default=True, type=click.IntRange(min=1),
              help="Most asynchronous (Event) invocations held at once; beyond it Invoke answers 429.")
@click.option("--event-retry-base", default=1.0, type=click.FloatRange(min=0.001), hidden=True,
              help="Seconds per unit of the async retry delays (Lambda: 1 s backoff start, 60 s before a retry "
                   "after a function error); for tests.")
@click.option("--event-lease", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Cluster mode: seconds a node's claim of a queued event lasts without renewal (renewed every third "
                   "of it); the events of a node that dies run elsewhere after this.")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None,
              help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="PEM private key for --tls-cert.")
@click.option("--replay-cache", is_flag=True,
              help="Refuse a second use of a request signature within its validity window (5 minutes either side).")
@click.option("--id-range-base", default=DEFAULT_BASE, show_default=True, type=int,
              help="First host uid/gid of the range sandboxes map to (must not overlap /etc/subuid or /etc/subgid).")
@click.option("--id-range-slices", default=DEFAULT_SLICES, show_default=True, type=int,
              help="Slices of 65536 ids in that range: one per function (base + slices*65536 must stay below 2**31).")
@click.option("--subuid-file", type=click.Path(path_type=Path), default=SUBUID, show_default=True,
              help="Subordinate uid file checked at start: the daemon refuses to start if its range overlaps an entry.")
@click.option("--subgid-file", type=click.Path(path_type=Path), default=SUBGID, show_default=True,
              help="Subordinate gid file checked likewise.")
@click.option("--log-max-bytes", default="16M", show_default=True,
              help="Rotate a function's log file before it passes this size (one rotated generation is kept).")
@click.option("--snapshot-cache-bytes", default=None,
              help="Byte budget of the plaintext snapshot RAM cache of --restore-loading eager (e.g. 2G); least recently used snapshots "
                   "are evicted beyond it. Default: a quarter of MemTotal.")
@click.option("--store-origin", default=None, metavar="DIR|s3://BUCKET/PREFIX",
              help="Where snapshot chunks and manifests live for good: a directory or an S3 bucket/prefix "
                   "(credentials from the standard AWS variables/profiles). Default: <data-dir>/store.")
@click.option("--store-s3-endpoint-url", default=None, metavar="URL",
              help="S3 endpoint of an S3-compatible service (with an s3:// --store-origin).")
@click.option("--metrics-token-file", type=click.Path(path_type=Path), default=None,
              help="File holding the bearer token that reads GET /metrics (created 0600 if absent). "
                   "Default: <data-dir>/metrics.token.")
@click.option("--store-cache-dir", type=click.Path(path_type=Path), default=None,
              help="Local disk cache of sealed (encrypted) snapshot chunks. Default: <data-dir>/store-cache.")
@click.option("--store-cache-bytes", default="4G", show_default=True, help="Byte budget of that disk cache (LRU).")
@click.option("--store-memory-bytes", default="256M", show_default=True,
              help="Byte budget of the store's plaintext chunk memory tier (LRU), below the kernel's page cache "
                   "of the snapshot view.")
@click.option("--code-cache-bytes", default="2G", show_default=True,
              help="Byte budget of this node's cache of code and layer zips (<data-dir>/code, LRU); the packages "
                   "themselves live in the store origin and are fetched again when needed.")
@click.option("--restore-loading", type=click.Choice(["lazy", "eager"]), default="lazy", show_default=True,
              help="lazy: restores start at once from the snapshot view (a FUSE file system over the store) and "
                   "fetch memory pages when the process touches them; eager: the whole snapshot is copied into a "
                   "RAM cache (--snapshot-cache-bytes) before the restore starts.")
@click.option("--client-header-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds a client has to send a whole request head once it started; then the connection is closed.")
@click.option("--client-body-timeout", default=20.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Longest pause (seconds) between two chunks of a request body; then the upload is dropped.")
@click.option("--client-idle-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds an idle keep-alive client connection is kept open.")
@click.option("--store-secret-file", type=click.Path(path_type=Path), default=None,
              help="The snapshot store's deployment secret (created 0600 if absent). Every node of a cluster needs the "
                   "same file; a node whose secret differs from the one recorded in the shared database refuses to "
                   "start. Default: <data-dir>/store.secret.")
@click.option("--registry", "registry_url", default=None, metavar="postgresql://USER:PASSWORD@HOST:PORT/DB",
              envvar="SNAPFAAS_REGISTRY",
              help="The registry database shared by a cluster's nodes (PostgreSQL; also from $SNAPFAAS_REGISTRY, "
                   "which keeps the password out of the process list). Default: SQLite <data-dir>/state.db.")
@click.option("--node-id", default=None, metavar="ID",
              help="This node's id in the cluster (letters, digits, '.', '_', '-'). Default: generated once and kept "
                   "in <data-dir>/node-id.")
@click.option("--advertise-url", default=None, metavar="URL",
              help="Where the other nodes reach this node's API (e.g. http://10.0.0.2:9000). Default: the server's own "
                   "scheme://host:port.")
@click.option("--lease-ttl", default="30s", show_default=True,
              help="Publish and garbage-collection leases expire this long after their holder's last renewal "
                   "(a dead node's publish is taken over after it).")
@click.option("--account-concurrency", default=None, type=click.IntRange(min=1),
              help="Cluster-wide account concurrency limit (default: only --max-environments on each node).")
@click.option("--log-level", default="INFO", show_default=True)
def serve(**opts: Any) -> None:
    """Run the platform (API + worker) in the foreground."""
    from snapfaas.sandbox.ids import IdRange
    from snapfaas.server import Server

    logging.basicConfig(level=opts["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if opts["invoke_timeline"]:  # the switch asks for these lines whatever the log level
        logging.getLogger("snapfaas.timeline").setLevel(logging.INFO)
    try:
        overrides = parse_runtime_overrides(opts["runtimes"])
        log_cap = parse_size(opts["log_max_bytes"])
        cache_budget = parse_size(opts["snapshot_cache_bytes"]) if opts["snapshot_cache_bytes"] is not None else None
        store_cache_bytes = parse_size(opts["store_cache_bytes"])
        store_memory_bytes = parse_size(opts["store_memory_bytes"])
        code_cache_bytes = parse_size(opts["code_cache_bytes"])
        snapstart_runtimes = parse_snapstart_runtimes(opts["snapstart_runtimes"])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    sandbox_dir = opts["sandbox_dir"]
    config = ServerConfig(
        data_dir=_absolute(opts["data_dir"]),
        host=opts["host"],
        port=opts["port"],
        region=opts["region"],
        auth=not opts["no_auth"],
        credentials=credentials_from_env(os.environ) or {},
        runtimes=overrides,
        keep_alive_s=opts["keep_alive"],
        max_environments=opts["max_environments"],
        admission_wait_s=opts["admission_wait"],
        restore_prefetch=opts["restore_prefetch"],
        sandbox_root=_absolute(sandbox_dir) if sandbox_dir else None,
        snapshot_retention_s=parse_duration(opts["snapshot_retention"]),
        snapstart=not opts["no_snapstart"],
        snapstart_runtimes=snapstart_runtimes,
        reseed_after_restore=opts["reseed_after_restore"],
        scan_block_on=None if opts["scan_block_on"] == "never" else opts["scan_block_on"],
        snapshot_init_floor_s=parse_duration(opts["snapshot_init_floor"]),
        restore_memory=opts["restore_memory"],
        runc_binary=opts["runc_binary"],
        criu_binary=opts["criu_binary"],
        restore_engine=opts["restore_engine"],
        invoke_timeline=opts["invoke_timeline"],
        restore_loading=opts["restore_loading"],
        snapshot_init_aslr=opts["snapshot_init_aslr"],
        sandbox_network=opts["sandbox_network"],
        snapstart_connections=opts["snapstart_connections"],
        event_queue_max=opts["event_queue_max"],
        event_retry_base_s=opts["event_retry_base"],
        event_lease_s=opts["event_lease"],
        tls_cert=opts["tls_cert"].resolve() if opts["tls_cert"] else None,
        tls_key=opts["tls_key"].resolve() if opts["tls_key"] else None,
        replay_cache=opts["replay_cache"],
        id_range_base=opts["id_range_base"],
        id_range_slices=opts["id_range_slices"],
        subuid_file=opts["subuid_file"],
        subgid_file=opts["subgid_file"],
        log_max_bytes=log_cap,
        snapshot_cache_bytes=cache_budget,
        client_header_timeout_s=opts["client_header_timeout"],
        client_body_timeout_s=opts["client_body_timeout"],
        client_idle_timeout_s=opts["client_idle_timeout"],
        store_origin=_origin_option(opts["store_origin"], follow=False),
        store_s3_endpoint_url=opts["store_s3_endpoint_url"],
        store_cache_dir=_absolute(opts["store_cache_dir"]) if opts["store_cache_dir"] else None,
        store_cache_bytes=store_cache_bytes,
        store_memory_bytes=store_memory_bytes,
        code_cache_bytes=code_cache_bytes,
        store_secret_file=_absolute(opts["store_secret_file"]) if opts["store_secret_file"] else None,
        registry_url=_registry_option(opts["registry_url"]),
        node_id=opts["node_id"],
        advertise_url=opts["advertise_url"],
        lease_ttl_s=parse_duration(opts["lease_ttl"]),
        account_concurrency=opts["account_concurrency"],
        metrics_token_file=_absolute(opts["metrics_token_file"]) if opts["metrics_token_file"] else None,
    )
    from snapfaas.cluster.nodes import check_advertise_url, check_node_id

    try:
        if config.node_id is not None:
            check_node_id(config.node_id)
        if config.advertise_url is not None:
            check_advertise_url(config.advertise_url)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if config.lease_ttl_s < 1:
        raise click.BadParameter("--lease-ttl: at least 1s")
    if config.store_s3_endpoint_url and not config.store_origin_url.startswith("s3://"):
        raise click.UsageError("--store-s3-endpoint-url needs an s3:// --store-origin")
    try:
        IdRange(opts["id_range_base"], opts["id_range_slices"])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if (config.tls_cert is None) != (config.tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if config.tls_cert is not None and config.tls_key is not None:
        from snapfaas.transport import TlsConfigError, server_ssl_context

        try:
            server_ssl_context(config.tls_cert, config.tls_key)  # fail before anything starts
        except TlsConfigError as exc:
            raise click.ClickException(str(exc)) from exc
    if os.geteuid() != 0:
        raise click.ClickException("snapfaas serve needs root (it runs functions in runc containers with user namespaces)")
    from snapfaas.errors import SnapfaasError

    try:
        asyncio.run(Server(config, dict(os.environ), say=lambda s: click.echo(s, err=True)).run())
    except SnapfaasError as exc:  # a refused start (untrusted directory, network set-up, ...): say why, no traceback
        raise click.ClickException(f"snapfaas serve stopped: {exc.message}") from exc


def _origin_option(value: str | None, follow: bool = True) -> str | None:
    """An s3:// origin as given; a directory made absolute (the daemon may change directory),
    with its symlinks resolved unless `follow` is False (see `_absolute`)."""
    if value is None or value.startswith("s3://"):
        return value
    return str(Path(value).resolve() if follow else _absolute(Path(value)))


def _absolute(path: Path) -> Path:
    """`path` made absolute without following symlinks: the daemon's directories are checked
    component by component (hostpaths), which must see a symlink to refuse it. Resolving it
    here would hand the checks its target instead (a root-owned directory such as /etc passes
    them, and the daemon would take it over: chmod 0700, its state files written into it)."""
    return Path(os.path.abspath(path))


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


EXTENDED_TIMESTAMP = 0x5455  # Info-ZIP's "UT" extra field (registry.artifacts reads it back)


def zip_directory(path: Path) -> bytes:
    """`path` zipped for CreateFunction / UpdateFunctionCode (a .zip file is sent as it is).

    Bytecode in ``__pycache__`` goes along (what ``pip install --target`` compiled), and each
    entry records its file's mtime to the second in Info-ZIP's extended timestamp, as ``zip -r``
    writes it: Python uses a shipped .pyc only if its source's mtime is the one it was compiled
    against (the extracted tree keeps the entries' times), and the DOS time alone moves in
    2-second steps. A stale or foreign-version .pyc is harmless: Python compiles the source."""
    if path.is_file() and path.suffix == ".zip":
        return path.read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(path.rglob("*")):
            if not file.is_file():
                continue
            info = zipfile.ZipInfo.from_file(file, file.relative_to(path).as_posix(), strict_timestamps=False)
            info.compress_type = zipfile.ZIP_DEFLATED
            mtime = int(file.stat().st_mtime)
            if 0 <= mtime < 2**31:  # the field's signed 32-bit seconds
                info.extra = struct.pack("<HHBi", EXTENDED_TIMESTAMP, 5, 1, mtime)
            archive.writestr(info, file.read_bytes())
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
@click.option("--snapstart", is_flag=True,
              help="SnapStart.ApplyOn=PublishedVersions, and publish a version: its publish is shown phase by phase "
                   "(init, hooks, checkpoint, upload), then its snapshot size and scan findings.")
@click.option("--publish", is_flag=True, help="Publish a version after deploying (implied by --snapstart).")
@click.option("--scan-fail-on", type=click.Choice(["error", "warning", "info", "never"]), default="never", show_default=True,
              help="With --snapstart: do not deploy when the snapshot safety scan finds issues at or above this severity.")
@connection_options
def deploy(source: Path, name: str, handler: str, runtime: str, memory: int, timeout: int, env_vars: tuple[str, ...],
           snapstart: bool, publish: bool, scan_fail_on: str, endpoint_url: str, data_dir: Path, region: str) -> None:
    """Zip SOURCE (a directory or .zip) and create or update function NAME."""
    conn = connect(endpoint_url, data_dir, region)
    client = conn.lambda_client()
    package = zip_directory(source)
    if snapstart:
        _scan_before_deploy(package, scan_fail_on)
    config: dict[str, Any] = {
        "Handler": handler, "Runtime": runtime, "MemorySize": memory, "Timeout": timeout,
        "Environment": {"Variables": dict(v.split("=", 1) for v in env_vars)},
        "SnapStart": {"ApplyOn": "PublishedVersions" if snapstart else "None"},
    }
    version = None
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
            if publish and not snapstart:
                version = client.publish_version(FunctionName=name)["Version"]
                client.get_waiter("published_version_active").wait(FunctionName=name, Qualifier=version, WaiterConfig={"Delay": 1, "MaxAttempts": 300})
        console.print(f"[green]{'updated' if exists else 'created'}[/] {name}" + (f", published version {version}" if version else ""))
        if snapstart:
            version = client.publish_version(FunctionName=name)["Version"]
            console.print(f"publishing version {version} with SnapStart")
            _show_publish(conn, name, version)
    except ClientError as exc:
        fail_client_error(exc)


def _show_publish(conn: Any, name: str, version: str) -> None:
    """Watch a SnapStart publish to its end; print its snapshot size and scan findings (exit 1 if it failed)."""
    import urllib.error
    import urllib.parse

    from snapfaas import publish_view

    try:
        progress = publish_view.watch(conn.signed_get, name, version, console)
        query = urllib.parse.urlencode({"version": version, "limit": "0"})
        lines = conn.signed_get(f"/snapfaas/v1/logs/{urllib.parse.quote(name)}?{query}").decode(errors="replace").splitlines()
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"publish progress: {exc.code}: {exc.read().decode(errors='replace')}") from exc
    publish_view.summarize(progress, publish_view.findings_of(lines, version), console)
    if progress.get("State") != "Active":
        raise click.ClickException(f"version {version} is {progress.get('State')}: {progress.get('StateReason')}")


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
        tail_text = base64.b64decode(response["LogResult"]).decode(errors="replace").replace("\r", "\n")  # an entry's inner lines
        err_console.print(tail_text, highlight=False, markup=False)
    err_console.print(f"[dim]version {response.get('ExecutedVersion')} - {elapsed:.1f} ms round trip[/]")
    click.echo(body)
    if response.get("FunctionError"):
        sys.exit(1)


@main.command()
@click.argument("name")
@click.option("-n", "--lines", default=100, show_default=True, help="Print the last N selected lines (0: all).")
@click.option("--since", default=None, metavar="WHEN", help="Only lines from then on: 30s, 10m, 2h, 1d or an ISO 8601 time.")
@click.option("--version", "version", default=None, metavar="V", help="Only lines of version V ($LATEST, 3).")
@click.option("--request-id", default=None, metavar="ID", help="Only the lines of one invocation.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they are written (Ctrl-C ends).")
@connection_options
def logs(name: str, lines: int, since: str | None, version: str | None, request_id: str | None, follow: bool,
         endpoint_url: str, data_dir: Path, region: str) -> None:
    """Print the execution log of function NAME (START/END/REPORT and output)."""
    import urllib.error
    import urllib.parse

    query = {"limit": str(lines), "since": since, "version": version, "request_id": request_id, "follow": "1" if follow else None}
    path = f"/snapfaas/v1/logs/{urllib.parse.quote(name)}?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
    conn = connect(endpoint_url, data_dir, region)
    try:
        with conn.signed_open("GET", path, timeout=None if follow else 30) as response:
            for raw in response:  # lines as they arrive
                click.echo(raw.decode(errors="replace").rstrip("\n").replace("\r", "\n"))  # a traceback's lines are kept as \r
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{exc.code}: {exc.read().decode(errors='replace')}") from exc
    except KeyboardInterrupt:
        pass


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
@click.argument("suite", type=click.Choice(["all", "platform", "snapstart", "blink", "engine", "store", "loading", "network",
                                           "events", "clients", "load", "cluster", "template"]),
                default="all")
@click.option("--cold-runs", default=5, show_default=True, type=int, help="platform: cold-start samples.")
@click.option("--requests", default=None, type=click.IntRange(min=1),
              help="platform, blink: warm requests per path and concurrency (default 400); load: invokes per row (default 10000).")
@click.option("--concurrency", default="8,16,32", show_default=True, help="load: caller processes per row, comma-separated.")
@click.option("--max-environments", default=None, type=click.IntRange(min=1),
              help="load: the servers' --max-environments (default: each row's concurrency).")
@click.option("--runs", default=3, show_default=True, type=int, help="snapstart, store, loading, network, blink (at least 5): samples per figure.")
@click.option("--only", multiple=True,
              help="snapstart, store, loading, template: reference functions to run (stdlib, numpy-scipy, torch); blink: torch, numpy-scipy, web, web-primed.")
@click.option("--runtime-python", type=click.Path(path_type=Path), default=Path(".bench-runtime/py311/bin/python"),
              show_default=True, help="snapstart, store: Python 3.11 with numpy, scipy, torch (scripts/make-bench-runtime.sh).")
@click.option("--tiers", default=None, metavar="TIER,...",
              help="loading: only these tiers (memory, memory_cold, disk, origin, origin_cold; default: all). "
                   "store: 'none' skips the timed restores (sizes and version deltas only).")
@click.option("--parts", default=None, metavar="PART,...",
              help="blink: only these parts (speedup, cpu, burst, density, warm; default: all); the results go to "
                   "OUT/blink-<parts>.*, not OUT/blink.*.")
@click.option("--cold-cache", is_flag=True, help="snapstart: drop the page cache before every cold/restore sample.")
@click.option("--events", "event_count", default=2000, show_default=True, type=int,
              help="events: Event invokes sent (reserved concurrency 1, 0.2 s handler).")
@click.option("--registry", "registry_url", default=None, metavar="postgresql://...",
              help="cluster: an existing PostgreSQL database for the nodes (default: a private server is started).")
@click.option("--baseline-rev", default="05747f3", show_default=True, metavar="REV|none",
              help="blink: the revision (of this git checkout) whose code measures the 'before issue 14' CPU per restore "
                   "in the same run, as a second server; 'none': the figures recorded on another day.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results"), show_default=True)
def bench(suite: str, cold_runs: int, requests: int | None, concurrency: str, max_environments: int | None, runs: int,
          only: tuple[str, ...], runtime_python: Path, tiers: str | None, parts: str | None, cold_cache: bool, event_count: int,
          registry_url: str | None, baseline_rev: str, out: Path) -> None:
    """Measure against baselines in the same run; results go to OUT/*.json and OUT/*.md."""
    from snapfaas.bench import events, mixed_traffic, network, platform, snapstart

    try:
        concurrencies = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {concurrency!r}", param_hint="--concurrency") from None
    if not concurrencies or min(concurrencies) < 1:
        raise click.BadParameter(f"expected positive integers, got {concurrency!r}", param_hint="--concurrency")
    out.mkdir(parents=True, exist_ok=True)
    say = lambda s: err_console.print(s, markup=False)  # noqa: E731  (progress lines start with "[name]")
    if suite in ("all", "platform"):
        result = platform.run(say, cold_runs=cold_runs, requests=requests or 400)
        _write_results(out, "platform", result, platform.markdown(result))
    if suite in ("all", "snapstart"):
        if not runtime_python.exists():
            raise click.ClickException(f"{runtime_python} is missing: run scripts/make-bench-runtime.sh (or make bench)")
        result = snapstart.run(say, str(runtime_python.absolute()), runs=runs, only=list(only) or None,
                               cold_cache=cold_cache)
        _write_results(out, "snapstart-cold-cache" if cold_cache else "snapstart", result, snapstart.markdown(result))
    if suite in ("all", "blink"):  # every issue-14 target with a verdict per target
        from snapfaas.bench import blink

        if not runtime_python.exists():
            raise click.ClickException(f"{runtime_python} is missing: run scripts/make-bench-runtime.sh (or make bench)")
        chosen_parts = [p.strip() for p in parts.split(",") if p.strip()] if parts else None
        unknown = sorted(set(chosen_parts or ()) - set(blink.PARTS))
        if unknown:
            raise click.BadParameter(f"unknown parts {unknown} (known: {', '.join(blink.PARTS)})", param_hint="--parts")
        result = blink.run(say, str(runtime_python.absolute()), runs=max(runs, 5), only=list(only) or None,
                           requests=requests or 400, baseline_rev=None if baseline_rev == "none" else baseline_rev,
                           parts=chosen_parts)
        subset = chosen_parts and set(chosen_parts) != set(blink.PARTS)
        _write_results(out, "blink-" + "-".join(result["parts"]) if subset else "blink", result, blink.markdown(result))
    if suite == "engine":  # --restore-engine runc vs criu, A/B (not part of "all": blink measures the default)
        from snapfaas.bench import engine as engine_bench

        if not runtime_python.exists():
            raise click.ClickException(f"{runtime_python} is missing: run scripts/make-bench-runtime.sh (or make bench)")
        result = engine_bench.run(say, str(runtime_python.absolute()), runs=max(runs, 5), only=list(only) or None)
        _write_results(out, "engine", result, engine_bench.markdown(result))
    if suite == "template":  # the fork floor of a template tier (not part of "all": a design question, answered)
        from snapfaas.bench import template

        if not runtime_python.exists():
            raise click.ClickException(f"{runtime_python} is missing: run scripts/make-bench-runtime.sh (or make bench)")
        result = template.run(say, str(runtime_python.absolute()), runs=max(runs, 21), only=list(only) or None)
        _write_results(out, "template", result, template.markdown(result))
    if suite == "store":  # snapshot store: sizes, dedup across versions, restores by tier (not part of "all": slow)
        from snapfaas.bench import store

        if not runtime_python.exists():
            raise click.ClickException(f"{runtime_python} is missing: run scripts/make-bench-runtime.sh (or make bench)")
        if tiers not in (None, "none"):
            raise click.BadParameter(f"store takes --tiers none or no --tiers, got {tiers!r}", param_hint="--tiers")
        result = store.run(say, str(runtime_python.absolute()), runs=runs, only=list(only) or None, restores=tiers is None)
        _write_results(out, "store", result, store.markdown(result))
    if suite == "loading":  # eager vs lazy vs lazy + prefetch restores by tier (not part of "all": slow)
        from snapfaas.bench import loading

        if not runtime_python.exists():
            raise click.ClickException(f"{runtime_python} is missing: run scripts/make-bench-runtime.sh (or make bench)")
        chosen = [t.strip() for t in tiers.split(",") if t.strip()] if tiers else None
        if chosen and set(chosen) - set(loading.TIERS):
            raise click.BadParameter(f"choose from {', '.join(loading.TIERS)}, got {tiers!r}", param_hint="--tiers")
        result = loading.run(say, str(runtime_python.absolute()), runs=runs, only=list(only) or None, tiers=chosen)
        _write_results(out, "loading", result, loading.markdown(result))
    if suite in ("all", "network"):
        result = network.run(say, runs=max(runs, 5))
        _write_results(out, "network", result, network.markdown(result))
    if suite == "clients":  # slow and aborted uploads: daemon RSS (not part of "all")
        from snapfaas.bench import clients

        result = clients.run(say)
        _write_results(out, "clients", result, clients.markdown(result))
    if suite in ("all", "events"):
        result = events.run(say, events=event_count)
        _write_results(out, "events", result, events.markdown(result))
    if suite in ("all", "load"):
        result = mixed_traffic.run(say, requests=requests or 10_000, concurrencies=concurrencies,
                                   max_environments=max_environments)
        _write_results(out, "load", result, mixed_traffic.markdown(result))
    if suite == "cluster":  # 1, 2, 3 nodes on this machine and forwarding latency (not part of "all")
        from snapfaas.bench import cluster as cluster_bench

        result = cluster_bench.run(say, registry=registry_url)
        _write_results(out, "cluster", result, cluster_bench.markdown(result))


def _write_results(out: Path, name: str, result: dict[str, Any], text: str) -> None:
    (out / f"{name}.json").write_text(_json(result) + "\n")
    (out / f"{name}.md").write_text(text)
    console.print(text)
    err_console.print(f"results written to {out / (name + '.json')} and {out / (name + '.md')}")


@main.command()
@click.option("--runtime-python", type=click.Path(path_type=Path), default=Path(".bench-runtime/py311/bin/python"),
              show_default=True, help="Python 3.11 with torch (scripts/make-bench-runtime.sh builds it).")
def demo(runtime_python: Path) -> None:
    """Start a private platform; compare a torch function's cold start with a SnapStart restore."""
    from snapfaas import demo as demo_module

    if not runtime_python.exists():
        raise click.ClickException(f"{runtime_python} is missing: run scripts/make-bench-runtime.sh (make demo does)")
    demo_module.run(console, lambda s: console.print(s), runtime_python)


# -- snapshot store operator tools (snapfaas.snapshot.catalog) ------------------------------------

def store_options(func: Any) -> Any:
    """Where the store is: the same data dir and --store-* settings as `snapfaas serve`."""
    func = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)
    func = click.option("--store-cache-dir", type=click.Path(path_type=Path), default=None,
                        help="The server's --store-cache-dir (default <data-dir>/store-cache).")(func)
    func = click.option("--store-s3-endpoint-url", default=None, help="The server's --store-s3-endpoint-url.")(func)
    func = click.option("--store-origin", default=None, help="The server's --store-origin (default <data-dir>/store).")(func)
    func = click.option("--registry", "registry_url", default=None, envvar="SNAPFAAS_REGISTRY",
                        metavar="postgresql://...",
                        help="The server's --registry (default: <data-dir>/state.db).")(func)
    func = click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".snapfaas"), show_default=True,
                        help="The server's data dir (its registry and store secret are read directly).")(func)
    return func


def _registry_option(value: str | None) -> str | None:
    """--registry: a PostgreSQL URL (the embedded SQLite registry needs no option)."""
    from snapfaas.database import is_postgres_url

    if value is None or value == "":
        return None
    if not is_postgres_url(value):
        raise click.BadParameter("--registry takes a postgresql://user:password@host:port/database URL "
                                 "(without it the registry is the data dir's SQLite state.db)")
    return value


def open_catalog(data_dir: Path, store_origin: str | None, store_s3_endpoint_url: str | None,
                 store_cache_dir: Path | None, registry_url: str | None = None) -> Any:
    from snapfaas.snapshot.catalog import Catalog
    from snapfaas.errors import SnapfaasError

    try:
        return Catalog.open(data_dir.resolve(), _origin_option(store_origin), store_s3_endpoint_url,
                            store_cache_dir.resolve() if store_cache_dir else None,
                            registry_url=_registry_option(registry_url))
    except SnapfaasError as exc:
        raise click.ClickException(exc.message) from exc


def _catalog_call(catalog: Any, call: Any) -> Any:
    from snapfaas.errors import SnapfaasError

    try:
        return call()
    except SnapfaasError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        catalog.close()


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


@main.group()
def snapshot() -> None:
    """SnapStart snapshots: in the store (ls, inspect: read from the data dir; the server may be running)
    and on the running server (expire)."""


@snapshot.command(name="ls")
@store_options
def snapshot_ls(data_dir: Path, store_origin: str | None, store_s3_endpoint_url: str | None,
                store_cache_dir: Path | None, as_json: bool, registry_url: str | None) -> None:
    """List the snapshots in the store."""
    catalog = open_catalog(data_dir, store_origin, store_s3_endpoint_url, store_cache_dir, registry_url)
    rows = _catalog_call(catalog, catalog.snapshots)
    if as_json:
        click.echo(_json(rows))
        return
    table = Table("Function", "Version", "Snapshot", "Raw size", "Memory", "Referenced", "Created")
    for row in rows:
        if "error" in row:
            table.add_row("?", "?", row["snapshot"], "-", "-", "-", row["error"])
            continue
        table.add_row(str(row["function"]), str(row["version"]), row["snapshot"], _mb(row["raw_bytes"]),
                      str(row["restore_memory"]), "yes" if row["referenced"] else "no (awaits gc)",
                      time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created"])))
    console.print(table)


@snapshot.command(name="inspect")
@click.argument("target", metavar="NAME:VERSION")
@store_options
def snapshot_inspect(target: str, data_dir: Path, store_origin: str | None, store_s3_endpoint_url: str | None,
                     store_cache_dir: Path | None, as_json: bool, registry_url: str | None) -> None:
    """Raw and stored size, chunks, chunks shared with other snapshots, bytes per tier, working-set size."""
    catalog = open_catalog(data_dir, store_origin, store_s3_endpoint_url, store_cache_dir, registry_url)
    info = _catalog_call(catalog, lambda: catalog.inspect(target))
    if as_json:
        click.echo(_json(info))
        return
    table = Table("Field", "Value")
    for key in ("snapshot_id", "function", "version", "restore_memory", "referenced", "files"):
        table.add_row(key, str(info[key]))
    table.add_row("raw size", f"{_mb(info['raw_bytes'])} ({_mb(info['hole_bytes'])} zero chunks, not stored)")
    table.add_row("stored size", f"{_mb(info['stored_bytes'])} ({info['stored_bytes'] / max(info['raw_bytes'], 1):.1%} of raw)")
    table.add_row("chunks", f"{info['chunks']} distinct ({info['chunk_refs']} references)")
    table.add_row("shared with other snapshots", f"{info['shared_chunks']} chunks, {_mb(info['shared_bytes'])}")
    for tier, usage in info["tiers"].items():
        table.add_row(f"in {tier}", f"{usage['chunks']} chunks, {_mb(usage['bytes'])}")
    table.add_row("working set", _working_set_text(info["working_set"]))
    console.print(table)


def _working_set_text(working_set: dict[str, Any] | None) -> str:
    if working_set is None:
        return "none recorded"
    if "files" in working_set:
        return f"{_mb(working_set['bytes'])} of {working_set['files']} host files (sections: {', '.join(working_set['sections'])})"
    return f"no host files (version {working_set['version']}, sections: {', '.join(working_set['sections']) or '-'})"


def _operator_call(conn: Any, path: str, body: dict[str, Any], timeout: float = 30, error_exit: int = 1) -> dict[str, Any]:
    """POST an operator-only snapfaas route; a Lambda-style error becomes a ClickException
    (exit status `error_exit`)."""
    import urllib.error
    import urllib.parse

    try:
        raw = conn.signed_request("POST", urllib.parse.quote(path, safe="/:"), json.dumps(body).encode(), timeout=timeout)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            error = json.loads(text)
            text = f"{exc.headers.get('x-amzn-ErrorType') or exc.code}: {error.get('Message') or error.get('message') or text}"
        except ValueError:
            pass
        failure = click.ClickException(text)
        failure.exit_code = error_exit
        raise failure from exc
    return json.loads(raw)


@snapshot.command(name="expire")
@click.argument("target", metavar="NAME:VERSION")
@connection_options
def snapshot_expire(target: str, endpoint_url: str, data_dir: Path, region: str) -> None:
    """Force the snapshot of NAME:VERSION Inactive, as after the retention period: the next invoke
    answers SnapStartNotReadyException and re-creates it (to test that handling)."""
    conn = connect(endpoint_url, data_dir, region)
    config = _operator_call(conn, f"/snapfaas/v1/snapshots/{target}/expire", {})
    console.print(f"{target}: State {config.get('State')} ({config.get('StateReasonCode')}): {config.get('StateReason')}")


@main.group()
def snapstart() -> None:
    """SnapStart checks against a running server (operator credentials)."""


@snapstart.command(name="verify")
@click.argument("target", metavar="NAME:VERSION")
@click.option("--copies", default=3, show_default=True, type=click.IntRange(2, 16),
              help="Fresh environments restored from the snapshot and compared.")
@click.option("--payload", default="{}", show_default=True, help="JSON event each copy is invoked with.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@connection_options
def snapstart_verify(target: str, copies: int, payload: str, as_json: bool, endpoint_url: str, data_dir: Path,
                     region: str) -> None:
    """Restore N fresh copies of NAME:VERSION's snapshot, invoke each, and report what they share
    that they should not (RNG states, OpenSSL output, values captured at init from entropy, the
    clock or credentials). Exit status 0: nothing found; 1: findings; 2: an error, or nothing could be compared."""
    try:
        json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from exc
    conn = connect(endpoint_url, data_dir, region)
    with err_console.status(f"restoring {copies} copies of {target}"):
        report = _operator_call(conn, f"/snapfaas/v1/snapstart/{target}/verify", {"Copies": copies, "Payload": payload},
                                timeout=1800, error_exit=2)
    findings, problems = report.get("Findings", []), report.get("Problems", [])
    if as_json:
        click.echo(_json(report))
    else:
        title = (f"{report['FunctionName']}:{report['Version']}: {report['Copies']} restored copies, "
                 f"{report['Checked']} fingerprints, reseed after restore {'on' if report['ReseedAfterRestore'] else 'off'}")
        if findings:
            table = Table("What", "Kind", "Finding", title=title)
            for f in findings:
                table.add_row(f["Name"], f["Kind"], f["Detail"])
            console.print(table)
        else:
            console.print(f"{title}: nothing shared that should differ")
        for problem in problems:
            err_console.print(f"[yellow]problem:[/] {problem}")
    if report.get("Checked", 0) == 0:
        sys.exit(2)
    if findings:
        sys.exit(1)


@main.group()
def store() -> None:
    """The snapshot chunk store (read from the data dir; the server may be running)."""


@store.command(name="stats")
@store_options
def store_stats(data_dir: Path, store_origin: str | None, store_s3_endpoint_url: str | None,
                store_cache_dir: Path | None, as_json: bool, registry_url: str | None) -> None:
    """Bytes per tier, dedup ratio and the server's tier counters."""
    catalog = open_catalog(data_dir, store_origin, store_s3_endpoint_url, store_cache_dir, registry_url)
    stats = _catalog_call(catalog, catalog.stats)
    if as_json:
        click.echo(_json(stats))
        return
    console.print(f"origin {stats['origin']}: {stats['snapshots']} snapshots and {stats['code_packages']} code packages, raw {_mb(stats['raw_bytes'])}, "
                  f"unique {_mb(stats['unique_bytes'])} in {stats['unique_chunks']} chunks, stored {_mb(stats['stored_bytes'])}; "
                  f"dedup {stats['dedup_ratio']:.2f}x, stored/unique {stats['compression_ratio']:.2f}")
    usage = Table("Tier", "Chunks", "Bytes", "Budget")
    for tier, row in stats["usage"].items():
        usage.add_row(tier, str(row["chunks"]), _mb(row["bytes"]), _mb(row["budget"]))
    console.print(usage)
    saved = stats["server_counters"]
    if saved is None:
        console.print("no tier counters yet (the server writes them periodically and at shutdown)")
        return
    counters = Table("Tier", "Hits", "Misses", "Bytes read", "Bytes written", "Corrupt", "Evictions",
                     title=f"server counters as of {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(saved['written']))} UTC")
    for tier, c in saved["counters"].items():
        counters.add_row(tier, str(c["hits"]), str(c["misses"]), _mb(c["bytes_read"]), _mb(c["bytes_written"]),
                         str(c["corrupt"]), str(c["evictions"]))
    console.print(counters)


@store.command(name="gc")
@click.option("--grace", default="10m", show_default=True,
              help="Spare unreferenced manifests and chunks younger than this (a server may be publishing them).")
@store_options
def store_gc(grace: str, data_dir: Path, store_origin: str | None, store_s3_endpoint_url: str | None,
             store_cache_dir: Path | None, as_json: bool, registry_url: str | None) -> None:
    """Delete manifests no version references and chunks no remaining manifest needs (under the
    cluster's gc lease: refused while a server collects)."""
    grace_s = parse_duration(grace)
    leases = _gc_leases(_registry_option(registry_url), data_dir)
    catalog = open_catalog(data_dir, store_origin, store_s3_endpoint_url, store_cache_dir, registry_url)
    try:
        report = _catalog_call(catalog, lambda: catalog.collect(grace_s, leases))
    finally:
        if leases is not None:
            leases.engine.dispose()
    if as_json:
        click.echo(_json(report))
        return
    console.print(f"deleted {report['manifests_deleted']} manifests and {report['chunks_deleted']} chunks "
                  f"({_mb(report['bytes_freed'])}); kept {report['chunks_kept']} chunks; "
                  f"{report['cache_entries_dropped']} cache entries dropped"
                  + ("" if report["disk_cache_collected"] else " (disk cache in use by the server: left to it)"))


def _gc_leases(registry_url: str | None, data_dir: Path) -> Any:
    """Leases for an offline collection: in the cluster's database, or the data dir's state.db
    (None when no server has created it: there is nobody to coordinate with)."""
    import socket

    from snapfaas.cluster.leases import Leases
    from snapfaas.database import is_postgres_url, open_engine
    from snapfaas.errors import SnapfaasError

    if registry_url is not None and not is_postgres_url(registry_url):
        raise click.BadParameter(f"--registry: not a postgresql:// URL: {registry_url!r}")
    target: str | Path | None = registry_url
    if target is None:
        target = data_dir.resolve() / "state.db"
        if not target.exists():
            return None
    try:
        return Leases(open_engine(target), f"cli-{socket.gethostname()}-{os.getpid()}")
    except SnapfaasError as exc:
        raise click.ClickException(exc.message) from exc


# -- snapshot safety scan (snapfaas.scan) ------------------------------------------------------
@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "sarif"]), default="table", show_default=True)
@click.option("--fail-on", type=click.Choice(["error", "warning", "info", "never"]), default="error", show_default=True,
              help="Exit with status 1 when a finding at or above this severity is reported.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report to FILE instead of stdout.")
@click.option("--include-deps", is_flag=True, help="Also scan third-party distributions vendored next to the code (*.dist-info).")
@click.option("--show-suppressed", is_flag=True, help="table: also list findings silenced by ignore comments or after-restore hooks.")
def scan(paths: tuple[Path, ...], fmt: str, fail_on: str, output: Path | None, include_deps: bool, show_suppressed: bool) -> None:
    """Find snapshot-unsafe init code in PATHS (files, directories of *.py, .zip packages).

    Reports state created at import that every SnapStart restore would share: random values,
    UUIDs, timestamps, credentials, connections, threads. Rules: docs/scan-rules.md.
    """
    from snapfaas.scan import scan_paths
    from snapfaas.scan.report import print_table, render, render_table

    result = scan_paths(paths, include_deps=include_deps)
    if output is not None:
        output.write_text(render_table(result, show_suppressed=show_suppressed) if fmt == "table" else render(result, fmt))
        err_console.print(f"{result.summary()}; report written to {output}", highlight=False)
    elif fmt == "table":
        print_table(result, console, show_suppressed)
    else:
        click.echo(render(result, fmt), nl=False)
    sys.exit(result.exit_code(fail_on))


def _scan_before_deploy(package: bytes, fail_on: str) -> None:
    """`deploy --snapstart`: print the package's scan findings; refuse at or above `fail_on`."""
    from snapfaas.scan import check_package

    blocking = check_package(package, fail_on, err_console)
    if blocking:
        raise click.ClickException(f"snapshot safety scan: {len(blocking)} finding(s) at or above {fail_on!r}; "
                                   "not deploying (see --scan-fail-on)")


@main.group()
def cluster() -> None:
    """Cluster mode: the nodes sharing a PostgreSQL --registry."""


@cluster.command("status")
@click.option("--registry", "registry_url", default=None, metavar="postgresql://...",
              help="Read the nodes from the cluster's database directly (no server needed). Without it the "
                   "server at --endpoint-url is asked (operator keys).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@connection_options
def cluster_status(registry_url: str | None, as_json: bool, endpoint_url: str, data_dir: Path, region: str) -> None:
    """The nodes: state (live/suspect/out), heartbeat age, environments, in-flight invokes, cached bytes."""
    from snapfaas.database import is_postgres_url

    if registry_url is not None:
        if not is_postgres_url(registry_url):
            raise click.BadParameter("--registry expects a postgresql:// URL")
        from snapfaas.api.cluster import node_json
        from snapfaas.cluster.membership import Membership
        from snapfaas.database import open_engine
        from snapfaas.errors import SnapfaasError
        from sqlalchemy.exc import SQLAlchemyError

        engine = open_engine(registry_url)
        try:
            membership = Membership(engine, "-", "-")
            membership.refresh()
            data: dict[str, Any] = {"NodeId": None, "Clustered": True,
                                    "Nodes": [node_json(v) for v in membership.nodes()]}
        except SnapfaasError as exc:
            raise click.ClickException(exc.message) from exc
        except SQLAlchemyError as exc:  # e.g. no node ever joined (no table): say so, no traceback
            reason = str(exc).strip().splitlines()[0]
            raise click.ClickException(f"cluster status failed at step 'read nodes': {reason}") from exc
        finally:
            engine.dispose()
    else:
        try:
            data = json.loads(connect(endpoint_url, data_dir, region).signed_get("/snapfaas/v1/cluster-status"))
        except urllib.error.HTTPError as exc:
            raise click.ClickException(f"cluster status failed: {exc.code} {exc.read().decode(errors='replace')}") from exc
        except OSError as exc:
            raise click.ClickException(f"cluster status failed at step 'connect': {exc}") from exc
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(title="snapfaas cluster" + ("" if data.get("Clustered") else " (single node: no --registry)"))
    for column in ("node", "url", "state", "heartbeat age", "busy/idle/capacity", "in-flight", "cached"):
        table.add_column(column, justify="right" if column in ("heartbeat age", "in-flight", "cached") else "left")
    colors = {"live": "green", "suspect": "yellow", "out": "red"}
    for node in data["Nodes"]:
        here = " *" if node["NodeId"] == data.get("NodeId") else ""
        table.add_row(node["NodeId"] + here, node["Url"], f"[{colors.get(node['State'], 'white')}]{node['State']}[/]",
                      f"{node['HeartbeatAgeSeconds']:.1f} s", f"{node['Busy']}/{node['Idle']}/{node['Capacity']}",
                      str(node["InFlight"]), _human_bytes(int(node["CachedBytes"])))
    console.print(table)


def _human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)
