"""Slow and aborted clients: the daemon's memory under 50 stalled and 50 aborted 60 MB uploads.

Each upload is a CreateFunction request declaring a 60 MB body (under Lambda's 70,167,211-byte
cap, so its length alone does not refuse it) that sends the first `SENT_BYTES` of it and then
either stalls (keeps the connection open, sending nothing) or aborts (closes with a reset).
Two kinds of client:

- ``unauthenticated``: an unknown access key. The daemon answers 403 from the headers alone and
  never buffers the body (it discards what arrives for at most the body timeout, then closes).
- ``signed``: the operator's access key id and a current date with a forged signature, which
  pass every check the headers alone allow (key ids are not secret). The daemon must read the
  body to verify the signature: it keeps 256 KiB in memory and spools the rest to disk.

The baseline is the same daemon's RSS (``VmRSS`` of its process) before each scenario; the
figures are the peak during the scenario (sampled every 20 ms) and the RSS once every
connection is gone. Meanwhile a client keeps invoking a function, which must keep answering.
The same helpers drive the e2e test (`tests/e2e/test_slow_clients.py`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from snapfaas.bench.harness import PrivateServer

MIB = 1024 * 1024
DECLARED_BYTES = 60 * MIB
SENT_BYTES = 16 * MIB
UPLOADS = 50
UNKNOWN_KEY = "SFIAUNKNOWN000000000"
ECHO_APP = "def handler(event, context):\n    return event\n"


@dataclasses.dataclass(frozen=True)
class Scenario:
    signed: bool  # the operator's key id (forged signature) vs an unknown key
    ending: str  # "stall": keep the connection, send nothing more; "abort": close with a reset

    @property
    def label(self) -> str:
        return f"{'signed' if self.signed else 'unauthenticated'}, {'stalled' if self.ending == 'stall' else 'aborted'}"


SCENARIOS = [Scenario(False, "stall"), Scenario(False, "abort"), Scenario(True, "stall"), Scenario(True, "abort")]


def rss_bytes(pid: int) -> int:
    """``VmRSS`` of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS in /proc/{pid}/status")


class RssSampler:
    """Samples a process's RSS every `interval_s` in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes(self.pid))


def upload_head(port: int, access_key: str, declared: int = DECLARED_BYTES) -> bytes:
    """Headers of a CreateFunction declaring `declared` bytes, signed with a forged signature."""
    amz_date = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    authorization = (f"AWS4-HMAC-SHA256 Credential={access_key}/{amz_date[:8]}/us-east-1/lambda/aws4_request, "
                     f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}")
    return (f"POST /2015-03-31/functions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\nX-Amz-Date: {amz_date}\r\nAuthorization: {authorization}\r\n\r\n").encode()


def one_upload(port: int, access_key: str, ending: str, sent: int = SENT_BYTES,
               io_timeout_s: float = 60) -> tuple[socket.socket | None, int]:
    """Open a connection, send the head and up to `sent` body bytes (as far as the server takes
    them), then stall or abort. Returns the stalled socket (None once aborted) and the bytes sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=io_timeout_s)
    done = 0
    piece = b"{" + b"x" * (MIB - 1)
    try:
        sock.sendall(upload_head(port, access_key))
        while done < sent:
            sock.sendall(piece[: min(MIB, sent - done)])
            done += min(MIB, sent - done)
    except OSError:
        pass  # the server refused the upload and closed: what it does to unauthenticated ones
    if ending == "abort":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close = RST
        sock.close()
        return None, done
    return sock, done


def start_uploads(port: int, access_key: str, ending: str, count: int = UPLOADS,
                  sent: int = SENT_BYTES) -> tuple[list[socket.socket], int]:
    """`count` concurrent uploads; the stalled sockets (empty when aborting) and the bytes sent."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(lambda _: one_upload(port, access_key, ending, sent), range(count)))
    return [sock for sock, _ in results if sock is not None], sum(done for _, done in results)


def wait_closed(socks: list[socket.socket], deadline_s: float) -> int:
    """Wait until the server closed every socket (or the deadline passed); the number it closed.
    Closes every socket before returning."""
    open_socks = list(socks)
    end = time.monotonic() + deadline_s
    closed = 0
    while open_socks and time.monotonic() < end:
        readable, _, _ = select.select(open_socks, [], [], min(1.0, max(0.0, end - time.monotonic())))
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:  # EOF or reset: the server closed it
                open_socks.remove(sock)
                closed += 1
    for sock in socks:
        sock.close()
    return closed


class BackgroundInvokes(threading.Thread):
    """Invokes a function in a loop until stopped; counts answers and failures."""

    def __init__(self, client: Any, name: str) -> None:
        super().__init__(daemon=True)
        self.client, self.name = client, name
        self.ok = self.failed = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                response = self.client.invoke(FunctionName=self.name, Payload=b'{"ping": 1}')
                good = response["Payload"].read() == b'{"ping": 1}' and "FunctionError" not in response
            except (BotoCoreError, ClientError, OSError):  # a refused or failed invoke: counted, not raised
                good = False
            self.ok += good
            self.failed += not good
            time.sleep(0.05)  # a steady trickle of normal traffic, not a load test

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(server: PrivateServer, scenario: Scenario, function: str, close_deadline_s: float,
            count: int = UPLOADS, sent: int = SENT_BYTES) -> dict[str, Any]:
    """One scenario against a running daemon: RSS before / peak / after, connections closed by
    the server, invokes answered meanwhile, bytes the clients managed to send."""
    assert server.proc is not None
    pid = server.proc.pid
    key = server.connection.access_key_id if scenario.signed else UNKNOWN_KEY
    before = rss_bytes(pid)
    invoker = BackgroundInvokes(server.client(), function)
    started = time.monotonic()
    with RssSampler(pid) as sampler:
        invoker.start()
        stalled, sent_total = start_uploads(server.port, key, scenario.ending, count, sent)
        closed = wait_closed(stalled, close_deadline_s)
        seconds = time.monotonic() - started
        invoker.stop()
    return {"scenario": scenario.label, "uploads": count, "declared_mb": DECLARED_BYTES // MIB,
            "sent_mb": round(sent_total / count / MIB, 1), "rss_before_mb": round(before / MIB, 1),
            "rss_peak_mb": round(sampler.peak / MIB, 1), "rss_after_mb": round(rss_bytes(pid) / MIB, 1),
            "stalled": len(stalled), "closed_by_server": closed, "seconds_until_closed": round(seconds, 1),
            "invokes_ok": invoker.ok, "invokes_failed": invoker.failed}


def run(say: Callable[[str], None], header_timeout_s: float = 5, body_timeout_s: float = 5) -> dict[str, Any]:
    args = ["--keep-alive", "60", "--client-header-timeout", str(header_timeout_s),
            "--client-body-timeout", str(body_timeout_s), "--client-idle-timeout", "30"]
    with PrivateServer(args) as server:
        server.deploy("bench-echo", {"app.py": ECHO_APP})
        client = server.client()
        for _ in range(5):  # warm: the invoke path's memory is part of the baseline
            client.invoke(FunctionName="bench-echo", Payload=b"{}")["Payload"].read()
        rows = []
        for scenario in SCENARIOS:
            say(f"{UPLOADS} {scenario.label} uploads of {DECLARED_BYTES // MIB} MB")
            rows.append(measure(server, scenario, "bench-echo", close_deadline_s=10 * body_timeout_s + 60))
        log = (server.tmp / "server.log").read_text()
        uploads_left = len(list((server.data_dir / "uploads").iterdir()))
    return {"benchmark": "clients", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s, "rows": rows,
            "aborted_upload_log_lines": log.count("aborted upload from"), "tracebacks_in_log": log.count("Traceback"),
            "spool_files_left": uploads_left}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Slow clients benchmark ({result['timestamp']}, one run; body timeout {result['body_timeout_s']:g} s, "
        f"header timeout {result['header_timeout_s']:g} s; 2 cores shared with other work)",
        "",
        "Each scenario: 50 concurrent CreateFunction uploads declaring 60 MB, sending part of it, then stalling or "
        "aborting; a client invokes a function meanwhile. Baseline: the daemon's RSS before the scenario.",
        "",
        "| scenario | uploads | MB sent each (of 60) | RSS before | peak during | after | peak / before | "
        "closed by server | invokes ok / failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        closed = f"{row['closed_by_server']} of {row['stalled']} in {row['seconds_until_closed']} s" if row["stalled"] else "aborted by the client"
        lines.append(f"| {row['scenario']} | {row['uploads']} | {row['sent_mb']} | {row['rss_before_mb']} MB | "
                     f"{row['rss_peak_mb']} MB | {row['rss_after_mb']} MB | "
                     f"{round(row['rss_peak_mb'] / row['rss_before_mb'], 2)}x | {closed} | "
                     f"{row['invokes_ok']} / {row['invokes_failed']} |")
    lines += ["", f"Daemon log: {result['aborted_upload_log_lines']} 'aborted upload' lines (one per signed upload "
                  f"that was read and then stalled or aborted), {result['tracebacks_in_log']} tracebacks; "
                  f"{result['spool_files_left']} spool files left in <data-dir>/uploads."]
    return "\n".join(lines) + "\n"
