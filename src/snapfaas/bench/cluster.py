"""Cluster mode: warm invoke throughput with 1, 2 and 3 nodes, and what forwarding adds.

Nodes are `snapfaas serve` processes on this machine's loopback (different ports and data
dirs), sharing one PostgreSQL database (``--registry``; a private server is started when none
is given), one directory store origin and its secret, and the operator's keys. All share the
same cores, so throughput is reported per node (efficiency = rps of N nodes / (N x rps of 1
node)): an absolute speed-up cannot show on one machine.

* **Throughput**: `FUNCTIONS` stdlib functions; closed-loop callers (`CONCURRENCY` threads,
  each with its own keep-alive connection, SigV4 as boto3 signs) spread evenly over the
  nodes, as a load balancer would, each caller invoking one function. Warm-up first.
* **Forwarding**: one function; sequential invokes alternate between its rendezvous node
  (run locally) and another node (forwarded there), so load drift hits both alike; p50/p99 of
  each and the difference. The baseline is the local invoke in the same run.
* **Restore from the origin** (2 nodes): a SnapStart version is published through node 1
  (snapshotted there), with a name whose rendezvous node is node 2; its first invoke restores on
  node 2 with none of the snapshot's chunks (lazy, from the shared origin: the cold-cache
  restore), then a second environment is restored on node 2 while the first is busy (its tiers
  now hold the chunks: the warm-cache restore, the baseline). `RESTORE_ROUNDS` versions; the
  REPORT's Restore Duration and the invoke's round trip of each.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import os
import pwd
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from snapfaas.bench.harness import PrivateServer
from snapfaas.bench.load import LoadResult, Target
from snapfaas.client import Connection
from snapfaas.cluster import routing
from snapfaas.metrics import sample_value
from snapfaas.worker.platform_log import fields_of

FUNCTIONS = 6
CONCURRENCY = 6
APP = "def handler(event, context):\n    return {'ok': True}\n"
RESTORE_ROUNDS = 3
# ~30 MB of heap built at init: a snapshot with real pages to fetch
RESTORE_APP = ("import time\nHEAP = [str(i) * 8 for i in range(600_000)]\n"
               "def handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return {'n': len(HEAP)}\n")


class PrivatePostgres:
    """A throwaway PostgreSQL server (Debian's binaries) on a free loopback port; a context manager."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[4]))
        if not found:
            raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql (scripts/install-system-deps.sh installs it)")
        self.bindir = found[-1].parent
        self.owner = pwd.getpwnam("postgres")
        self.base = Path(tempfile.mkdtemp(prefix="snapfaas-bench-pg-"))
        self.password = secrets.token_hex(16)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["setpriv", f"--reuid={self.owner.pw_uid}", f"--regid={self.owner.pw_gid}", "--init-groups", *argv],
                       check=True, capture_output=True, cwd=self.base)

    def __enter__(self) -> str:
        os.chown(self.base, self.owner.pw_uid, self.owner.pw_gid)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
        data = self.base / "data"
        self._as_postgres(str(self.bindir / "initdb"), "-D", str(data), "-U", "snapfaas", "--auth=scram-sha-256",
                          f"--pwfile={pwfile}", "--no-sync")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.base}'\n"
                       "fsync = off\nsynchronous_commit = off\n")
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(self.base / "log"), "-w", "start")
        return f"postgresql://snapfaas:{self.password}@127.0.0.1:{self.port}/postgres"

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["setpriv", f"--reuid={self.owner.pw_uid}", f"--regid={self.owner.pw_gid}", "--init-groups",
                        str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, cwd=self.base)
        shutil.rmtree(self.base, ignore_errors=True)


def _node(index: int, registry: str, shared: Path, keys: tuple[str, str]) -> PrivateServer:
    server = PrivateServer(["--registry", registry, "--node-id", f"n{index}", "--store-origin", str(shared / "origin"),
                            "--store-secret-file", str(shared / "store.secret"), "--max-environments", "16"])
    server.connection = Connection(server.connection.endpoint, "us-east-1", *keys)
    return server


def _live(server: PrivateServer) -> set[str]:
    nodes = json.loads(server.connection.signed_get("/snapfaas/v1/cluster-status"))["Nodes"]
    return {n["NodeId"] for n in nodes if n["State"] == "live"}


def _wait_live(servers: list[PrivateServer], count: int) -> None:
    deadline = time.monotonic() + 60
    while not all(len(_live(s)) == count for s in servers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {count} nodes did not see each other within 60 s")
        time.sleep(0.2)  # membership converges within a heartbeat or two


def _deploy_everywhere(servers: list[PrivateServer], name: str) -> None:
    """Create `name` unless the (shared) registry already knows it."""
    for server in servers:
        client = server.client()
        try:
            client.get_function(FunctionName=name)
        except client.exceptions.ResourceNotFoundException:
            server.deploy(name, {"app.py": APP})


def _throughput(servers: list[PrivateServer], seconds: float) -> dict[str, Any]:
    """Closed loop for `seconds`: caller i on node i % N invoking function i % FUNCTIONS."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(CONCURRENCY)]
    errors = [0] * CONCURRENCY
    ran_on: list[dict[str, int]] = [{} for _ in range(CONCURRENCY)]

    def caller(slot: int) -> None:
        server = servers[slot % len(servers)]
        conn_info = server.connection
        target = Target(conn_info.endpoint, f"/2015-03-31/functions/bench{slot % FUNCTIONS}/invocations", b"{}",
                        conn_info.access_key_id, conn_info.secret_access_key)
        parts = urlsplit(target.endpoint)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        while not stop.is_set():
            started = time.perf_counter()
            conn.request("POST", target.path, body=target.body, headers=target.signed_headers())
            response = conn.getresponse()
            response.read()
            latencies[slot].append((time.perf_counter() - started) * 1000)
            node = response.getheader("X-Snapfaas-Node") or "?"
            ran_on[slot][node] = ran_on[slot].get(node, 0) + 1
            if response.status != 200:
                errors[slot] += 1
        conn.close()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(CONCURRENCY)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)  # the measuring window (a benchmark's duration, not a synchronization)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    result = LoadResult(CONCURRENCY, [x for lat in latencies for x in lat], wall, sum(errors))
    spread: dict[str, int] = {}
    for counts in ran_on:
        for node, n in counts.items():
            spread[node] = spread.get(node, 0) + n
    return {**result.summary(), "ran_on": dict(sorted(spread.items()))}


def _latency(servers: list[PrivateServer], samples: int) -> dict[str, Any]:
    """Sequential invokes of one function through its own node and through another."""
    name = "bench0"
    client = servers[0].client()
    owner = client.invoke(FunctionName=name, Payload=b"{}")["ResponseMetadata"]["HTTPHeaders"]["x-snapfaas-node"]
    local = next(s for s in servers if _node_id(s) == owner)
    remote = next(s for s in servers if _node_id(s) != owner)
    paths = {}
    for label, server in (("local", local), ("forwarded", remote)):
        info = server.connection
        target = Target(info.endpoint, f"/2015-03-31/functions/{name}/invocations", b"{}", info.access_key_id,
                        info.secret_access_key)
        parts = urlsplit(info.endpoint)
        paths[label] = (target, http.client.HTTPConnection(parts.hostname, parts.port, timeout=60))
    times: dict[str, list[float]] = {"local": [], "forwarded": []}
    for i in range(samples + 20):
        for label in (("local", "forwarded") if i % 2 == 0 else ("forwarded", "local")):
            target, conn = paths[label]
            started = time.perf_counter()
            conn.request("POST", target.path, body=target.body, headers=target.signed_headers())
            response = conn.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status == 200 and response.getheader("X-Snapfaas-Node") == owner
            if i >= 20:  # warm-up left out
                times[label].append(elapsed)
    out = {label: LoadResult(1, values, 1.0, 0).summary() for label, values in times.items()}
    for figure in ("p50_ms", "p99_ms"):
        out.setdefault("added", {})[figure] = round(out["forwarded"][figure] - out["local"][figure], 3)
    return out


def _timed_restore(server: PrivateServer, name: str, version: str, payload: bytes) -> dict[str, Any]:
    started = time.perf_counter()
    response = server.client().invoke(FunctionName=name, Qualifier=version, Payload=payload, LogType="Tail")
    response["Payload"].read()
    elapsed = (time.perf_counter() - started) * 1000
    report = next((line for line in base64.b64decode(response["LogResult"]).decode(errors="replace").splitlines()
                   if line.startswith("REPORT ")), "")
    fields = fields_of(report.partition(" ")[2])
    return {"node": response["ResponseMetadata"]["HTTPHeaders"]["x-snapfaas-node"], "round_trip_ms": round(elapsed, 2),
            "restore_ms": float(fields["Restore Duration"].split()[0]) if "Restore Duration" in fields else None}


def _busy_on(server: PrivateServer, name: str, version: str) -> float:
    text = server.connection.signed_get("/metrics").decode()
    return sample_value(text, "snapfaas_environments", function=name, version=version, state="busy") or 0


def _restores(servers: list[PrivateServer]) -> dict[str, Any]:
    """Cold-cache (lazy from the origin) vs warm-cache restores on node 2 of versions published on node 1."""
    publisher, restorer = servers[0], servers[1]
    ids = [_node_id(publisher), _node_id(restorer)]
    rows = []
    for r in range(RESTORE_ROUNDS):
        name = routing.name_preferring(f"snapbench{r}x", "1", ids[1], ids[0])
        publisher.deploy(name, {"app.py": RESTORE_APP}, SnapStart={"ApplyOn": "PublishedVersions"}, Timeout=60)
        client = publisher.client()
        version = client.publish_version(FunctionName=name)["Version"]
        client.get_waiter("published_version_active").wait(FunctionName=name, Qualifier=version,
                                                           WaiterConfig={"Delay": 1, "MaxAttempts": 300})
        cold = _timed_restore(restorer, name, version, b"{}")
        holder: dict[str, Any] = {}
        busy = threading.Thread(target=lambda: holder.update(_timed_restore(restorer, name, version, b'{"sleep": 4}')))
        busy.start()
        deadline = time.monotonic() + 30
        while _busy_on(restorer, name, version) < 1:  # the first environment is taken: the next one restores
            if time.monotonic() > deadline:
                raise RuntimeError("the first environment never became busy")
            time.sleep(0.05)
        warm = _timed_restore(restorer, name, version, b"{}")
        busy.join()
        for sample in (cold, warm):
            if sample["node"] != ids[1] or sample["restore_ms"] is None:
                raise RuntimeError(f"expected a restore on {ids[1]}, got {sample}")
        rows.append({"function": name, "cold_cache": cold, "warm_cache": warm})

    def median(key: str, field: str) -> float:
        return round(statistics.median(row[key][field] for row in rows), 2)

    summary = {k: {f: median(k, f) for f in ("restore_ms", "round_trip_ms")} for k in ("cold_cache", "warm_cache")}
    summary["ratio_restore"] = round(summary["cold_cache"]["restore_ms"] / summary["warm_cache"]["restore_ms"], 2)
    return {"rounds": rows, "median": summary}


def _node_id(server: PrivateServer) -> str:
    return json.loads(server.connection.signed_get("/snapfaas/v1/cluster-status"))["NodeId"]


def run(say: Callable[[str], None], registry: str | None = None, seconds: float = 10.0, samples: int = 300) -> dict[str, Any]:
    shared = Path(tempfile.mkdtemp(prefix="snapfaas-bench-cluster-"))
    (shared / "store.secret").write_bytes(secrets.token_bytes(32))
    (shared / "store.secret").chmod(0o600)
    keys = ("SFIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
    postgres = PrivatePostgres() if registry is None else None
    servers: list[PrivateServer] = []
    result: dict[str, Any] = {"timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "cpus": os.cpu_count(), "functions": FUNCTIONS, "concurrency": CONCURRENCY,
                              "seconds": seconds, "throughput": {}}
    try:
        url = postgres.__enter__() if postgres is not None else registry
        assert url is not None
        for count in (1, 2, 3):
            say(f"[cluster] starting node {count}")
            server = _node(count, url, shared, keys)
            servers.append(server)
            server.start()
            _wait_live(servers, count)
            for i in range(FUNCTIONS):
                _deploy_everywhere(servers, f"bench{i}")
            say(f"[cluster] {count} node(s): warm-up, then {seconds:.0f} s of closed-loop invokes")
            _throughput(servers, min(3.0, seconds))
            result["throughput"][str(count)] = _throughput(servers, seconds)
            if count == 2:
                say(f"[cluster] forwarded vs local latency, {samples} samples each")
                result["latency"] = _latency(servers, samples)
                say(f"[cluster] restores from the origin: {RESTORE_ROUNDS} versions published on n1, restored on n2")
                result["restores"] = _restores(servers)
        one = result["throughput"]["1"]["rps"]
        for count, row in result["throughput"].items():
            row["efficiency_per_node"] = round(row["rps"] / (int(count) * one), 3) if one else None
    finally:
        for server in servers:
            server.__exit__()
        if postgres is not None:
            postgres.__exit__()
        shutil.rmtree(shared, ignore_errors=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Cluster benchmark ({result['timestamp']}, one run). All nodes run on this one machine "
        f"({result['cpus']} cores, shared with other work), over loopback: per-node efficiency, not speed-up, "
        "is the meaningful figure.",
        "",
        f"Warm invoke throughput: {result['concurrency']} closed-loop callers spread evenly over the nodes, "
        f"{result['functions']} stdlib functions, {result['seconds']:.0f} s per row.",
        "",
        "| nodes | invokes/s | per-node efficiency | p50 | p99 | errors | ran on |",
        "|---|---|---|---|---|---|---|",
    ]
    for count, row in result["throughput"].items():
        lines.append(f"| {count} | {row['rps']} | {row['efficiency_per_node']} | {row['p50_ms']} ms | {row['p99_ms']} ms | "
                     f"{row['errors']} | {', '.join(f'{k}: {v}' for k, v in row['ran_on'].items())} |")
    lat = result.get("latency")
    if lat:
        lines += ["", "Forwarded vs local invoke (2 nodes, sequential, alternating; the local invoke is the baseline):", "",
                  "| path | p50 | p99 | samples |", "|---|---|---|---|",
                  f"| local (on the version's node) | {lat['local']['p50_ms']} ms | {lat['local']['p99_ms']} ms | "
                  f"{lat['local']['requests']} |",
                  f"| forwarded (through another node) | {lat['forwarded']['p50_ms']} ms | {lat['forwarded']['p99_ms']} ms | "
                  f"{lat['forwarded']['requests']} |",
                  f"| added by forwarding | {lat['added']['p50_ms']:+} ms | {lat['added']['p99_ms']:+} ms | |"]
    restores = result.get("restores")
    if restores:
        med = restores["median"]
        lines += ["", f"First restore on a node with an empty cache (lazy from the shared origin) vs a warm one (the "
                  f"same node's second environment, chunks in its tiers; the baseline), ~30 MB heap, median of "
                  f"{len(restores['rounds'])} versions:", "",
                  "| restore on node 2 | Restore Duration | invoke round trip |", "|---|---|---|",
                  f"| empty cache (from the origin) | {med['cold_cache']['restore_ms']} ms | {med['cold_cache']['round_trip_ms']} ms |",
                  f"| warm cache (baseline) | {med['warm_cache']['restore_ms']} ms | {med['warm_cache']['round_trip_ms']} ms |",
                  f"| ratio | {med['ratio_restore']}x | |"]
    return "\n".join(lines) + "\n"
