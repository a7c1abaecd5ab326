"""Asynchronous invocations under throttling (issue 9, item 2): is any accepted event lost?

In one run, against one private server with Lambda's retry timing:
- a stdlib function that prints its event's id and sleeps 0.2 s, reserved concurrency 1, an
  ``OnFailure`` file destination;
- the baseline: back-to-back synchronous invokes of that function from one caller, the most
  one environment can serve (events cannot drain faster with reserved concurrency 1);
- then `events` ``Event`` invokes from `callers` caller processes (each its own boto3 client),
  as fast as they can send; then the wait until the queue is empty.

Reports accepted (202) / refused, how many accepted events ran once, more than once or never,
how many went to the on-failure destination (and the daemon log's drop lines), the wall time
from starting the callers to the empty queue, and the drain rate against the synchronous baseline.
A run is counted from the function's log (the daemon writes it, outside the sandbox): one
``RUN <id>`` line per run; a "log lines dropped" notice in that log is reported, since it
would make the counts unreliable.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import multiprocessing
import re
import time
from collections.abc import Callable
from typing import Any

from snapfaas.bench.harness import PrivateServer
from snapfaas.client import Connection
from snapfaas.worker.event_store import EventStore

NAME = "bench-events"
HANDLER_S = 0.2
APP = """
import time

def handler(event, context):
    print("RUN " + event["id"])
    time.sleep(event.get("sleep", 0))
    return {"id": event["id"]}
"""
DESTINATION = "arn:aws:snapfaas:us-east-1:000000000000:file/bench-events"
RUN_RE = re.compile(r"\tRUN (\S+)$", re.MULTILINE)
Sent = tuple[str, int, str]  # event id, HTTP status, error code ("" when accepted)


def send_events(connection: Connection, caller: int, count: int, sleep: float) -> list[Sent]:
    """One caller process: `count` Event invokes back to back with its own client."""
    from botocore.exceptions import ClientError

    client = connection.lambda_client()
    out: list[Sent] = []
    for i in range(count):
        event_id = f"c{caller}-{i}"
        payload = json.dumps({"id": event_id, "sleep": sleep}).encode()
        try:
            response = client.invoke(FunctionName=NAME, InvocationType="Event", Payload=payload)
            out.append((event_id, int(response["StatusCode"]), ""))
        except ClientError as exc:
            out.append((event_id, int(exc.response["ResponseMetadata"]["HTTPStatusCode"]), exc.response["Error"]["Code"]))
    return out


def event_store(server: PrivateServer) -> EventStore:
    """The server's event queue, read through the same API the server uses (its events.db)."""
    return EventStore(server.data_dir / "events.db", node_id="bench-reader")


def function_log(server: PrivateServer) -> str:
    path = server.data_dir / "logs" / f"{NAME}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def sync_baseline(server: PrivateServer, requests: int) -> dict[str, Any]:
    client = server.client()
    client.invoke(FunctionName=NAME, Payload=json.dumps({"id": "warm", "sleep": HANDLER_S}).encode())["Payload"].read()
    started = time.perf_counter()
    for i in range(requests):
        payload = json.dumps({"id": f"sync-{i}", "sleep": HANDLER_S}).encode()
        client.invoke(FunctionName=NAME, Payload=payload)["Payload"].read()
    wall = time.perf_counter() - started
    return {"requests": requests, "wall_s": round(wall, 2), "per_s": round(requests / wall, 2)}


def run(say: Callable[[str], None], events: int = 2000, callers: int = 8, baseline_requests: int = 100,
        drain_timeout_s: float = 3600.0) -> dict[str, Any]:
    with PrivateServer(["--keep-alive", "600"]) as server:
        server.deploy(NAME, {"app.py": APP}, Timeout=30)
        client = server.client()
        client.put_function_concurrency(FunctionName=NAME, ReservedConcurrentExecutions=1)
        client.put_function_event_invoke_config(FunctionName=NAME,
                                                DestinationConfig={"OnFailure": {"Destination": DESTINATION}})
        say(f"baseline: {baseline_requests} synchronous invokes back to back ({HANDLER_S} s handler)")
        baseline = sync_baseline(server, baseline_requests)
        say(f"  {baseline['per_s']} invokes/s")

        shares = [events // callers + (1 if c < events % callers else 0) for c in range(callers)]
        say(f"sending {events} Event invokes from {callers} caller processes (reserved concurrency 1)")
        started = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(callers, mp_context=context) as pool:
            futures = [pool.submit(send_events, server.connection, c, n, HANDLER_S) for c, n in enumerate(shares)]
            sent = [s for f in futures for s in f.result()]
        send_s = time.perf_counter() - started
        accepted = [event_id for event_id, status, _ in sent if status == 202]
        refused = collections.Counter(f"{status} {code}" for _, status, code in sent if status != 202)
        say(f"  {len(accepted)} accepted in {send_s:.1f} s; waiting for the queue to empty")

        deadline = time.monotonic() + drain_timeout_s
        last_note = 0.0
        store = event_store(server)
        try:
            while (left := store.count()) > 0:
                if time.monotonic() > deadline:
                    say(f"  gave up after {drain_timeout_s:.0f} s with {left} event(s) still queued")
                    break
                if time.monotonic() - last_note > 30:
                    say(f"  {left} event(s) queued")
                    last_note = time.monotonic()
                time.sleep(0.5)  # polling the queue's table
            wall_s = time.perf_counter() - started
            left = store.count()
        finally:
            store.close()
        time.sleep(2)  # let the log writer finish its last batch before counting
        log = function_log(server)
        daemon_log = (server.tmp / "server.log").read_text(errors="replace")
        destination = server.data_dir / "destinations" / "bench-events.jsonl"
        records = [json.loads(line) for line in destination.read_text().splitlines()] if destination.exists() else []

    runs = collections.Counter(RUN_RE.findall(log))
    return _result(events, callers, baseline, sent, accepted, refused, runs, left, send_s, wall_s,
                   failure_records=records, dropped_log_lines=daemon_log.count(" dropped ("),
                   log_drop_notice="log lines dropped" in log)


def _result(events: int, callers: int, baseline: dict[str, Any], sent: list[Sent], accepted: list[str],
            refused: collections.Counter[str], runs: collections.Counter[str], left: int, send_s: float,
            wall_s: float, failure_records: list[dict[str, Any]], dropped_log_lines: int,
            log_drop_notice: bool) -> dict[str, Any]:
    failed = {r["requestPayload"]["id"] for r in failure_records if isinstance(r.get("requestPayload"), dict)}
    once = sum(1 for i in accepted if runs[i] == 1)
    more = sum(1 for i in accepted if runs[i] > 1)
    never = [i for i in accepted if runs[i] == 0]
    lost = [i for i in never if i not in failed]
    drain_rate = len(accepted) / wall_s if wall_s else 0.0
    return {
        "benchmark": "events", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "events": events, "callers": callers, "handler_s": HANDLER_S, "reserved_concurrency": 1,
        "accepted": len(accepted), "refused": dict(refused), "ran_once": once, "ran_more_than_once": more,
        "never_ran": len(never), "failed_to_destination": len(failed), "lost": len(lost), "lost_ids": lost[:20],
        "still_queued": left, "daemon_log_drops": dropped_log_lines, "function_log_dropped_lines": log_drop_notice,
        "send_s": round(send_s, 2), "wall_s": round(wall_s, 2), "drain_per_s": round(drain_rate, 2),
        "sync_baseline": baseline, "drain_vs_sync_ratio": round(drain_rate / baseline["per_s"], 3),
        "floor_s": round(len(accepted) * HANDLER_S, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    r = result
    refused = ", ".join(f"{n} x {k}" for k, n in r["refused"].items()) or "none"
    lines = [
        f"Asynchronous events benchmark ({r['timestamp']}, one run, same machine: 2 cores shared with other "
        "workloads, so times are indicative)",
        "",
        f"{r['events']} `Event` invokes from {r['callers']} caller processes (each its own boto3 client) to a "
        f"function with reserved concurrency {r['reserved_concurrency']} and a {r['handler_s']} s handler; "
        "Lambda's retry timing (backoff from 1 s, up to 5 min).",
        "",
        "| accepted (202) | refused | ran once | ran more than once | lost | failed to destination | still queued |",
        "|---|---|---|---|---|---|---|",
        f"| {r['accepted']} | {refused} | {r['ran_once']} | {r['ran_more_than_once']} | {r['lost']} | "
        f"{r['failed_to_destination']} | {r['still_queued']} |",
        "",
        f"Wall time from starting the callers to an empty queue: {r['wall_s']} s (sending took {r['send_s']} s; the "
        f"handler alone needs {r['floor_s']} s at concurrency 1). Drain rate {r['drain_per_s']} events/s vs. "
        f"{r['sync_baseline']['per_s']} invokes/s for {r['sync_baseline']['requests']} back-to-back synchronous "
        f"invokes of the same function in the same run: ratio {r['drain_vs_sync_ratio']}.",
        "",
        f"Daemon log drop lines: {r['daemon_log_drops']}. Function log lost lines: "
        f"{'yes (counts unreliable)' if r['function_log_dropped_lines'] else 'none'}.",
    ]
    return "\n".join(lines) + "\n"
