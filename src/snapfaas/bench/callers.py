"""Closed-loop Invoke traffic from separate caller processes, each with its own boto3 client,
checking every answer.

Each caller process sends its share of the requests back to back (a closed loop: the next one
leaves when the previous one is answered), as independent clients would: threads of one process
would queue on its GIL to sign requests and parse responses. Every request carries a unique
token that the function echoes back with the version that ran it and its log stream (which
names the environment), so an answer is judged against the request it belongs to:

- ``answered``: 200, no function error, the echoed token and version are the request's;
- ``throttled``: 429 (``<code>/<Reason>: <message>`` is kept, e.g.
  ``TooManyRequestsException/ConcurrentInvocationLimitExceeded: Rate Exceeded.``);
- ``mismatched``: 200 carrying another request's token, or a version the qualifier does not
  name (an answer that belongs to someone else);
- ``lost``: no answer: a connection error or read timeout, or a 5xx;
- ``error``: anything else (a function error, another 4xx): not expected from `ECHO_APP`.

The judging is synchronous and pure (`judge`, `judge_error`); the processes are I/O around it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import queue
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from snapfaas.client import Connection

# The function the traffic is sent to (stdlib only): echoes the token, the version that ran
# and the environment's log stream (``YYYY/MM/DD/[<version>]<environment id>``). As on AWS, a
# SnapStart (restored) environment has no log stream name, so only on-demand environments
# are named in the answers (`Traffic.environments`); the function log names every one.
ECHO_APP = """
def handler(event, context):
    return {"token": (event or {}).get("token"), "version": context.function_version,
            "stream": context.log_stream_name}
"""
LATEST = "$LATEST"
KINDS = ("answered", "throttled", "mismatched", "lost", "error")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One request as its caller saw it. `started` is CLOCK_MONOTONIC (shared by every process
    of the host), `environment` the answering environment's id (answered/mismatched only),
    `detail` the 429 reason or what went wrong."""

    qualifier: str
    kind: str
    started: float
    latency_ms: float
    environment: str | None = None
    detail: str = ""


def environment_of(stream: object) -> str | None:
    """The environment id at the end of a log stream name (``.../[<version>]<id>``)."""
    if not isinstance(stream, str) or "]" not in stream:
        return None
    return stream.rsplit("]", 1)[1] or None


def judge(token: str, expected_version: str, function_error: str | None, body: bytes) -> tuple[str, str | None, str]:
    """(kind, environment id, detail) of a 200 answer to the request carrying `token`."""
    try:
        answer = json.loads(body)
    except ValueError:
        return "error", None, f"body is not JSON: {body[:200]!r}"
    if function_error:
        return "error", None, f"{function_error}: {str(answer)[:200]}"
    if not isinstance(answer, dict):
        return "error", None, f"unexpected body: {body[:200]!r}"
    environment = environment_of(answer.get("stream"))
    if answer.get("token") != token:
        return "mismatched", environment, f"token {answer.get('token')!r} answered request {token!r}"
    if answer.get("version") != expected_version:
        return "mismatched", environment, f"version {answer.get('version')!r} answered a request for {expected_version!r}"
    return "answered", environment, ""


def judge_error(response: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, detail) of an error response (botocore's `ClientError.response`)."""
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    code = response.get("Error", {}).get("Code", "")
    message = response.get("Error", {}).get("Message", "")
    if status == 429:
        return "throttled", f"{code}/{response.get('Reason', '')}: {message}"
    if status >= 500:
        return "lost", f"{status} {code}: {message}"
    return "error", f"{status} {code}: {message}"


def plan(requests: int, callers: int, qualifiers: Sequence[str]) -> list[list[str]]:
    """Each caller's qualifiers in order: `requests` split as evenly as possible; caller k's
    i-th request goes to ``qualifiers[(k + i) % len(qualifiers)]``, so at any moment the callers
    together send every qualifier."""
    if callers < 1 or not qualifiers:
        raise ValueError("plan needs at least one caller and one qualifier")
    shares = [requests // callers + (1 if k < requests % callers else 0) for k in range(callers)]
    return [[qualifiers[(k + i) % len(qualifiers)] for i in range(share)] for k, share in enumerate(shares)]


def expected_version(qualifier: str, aliases: Mapping[str, str]) -> str:
    """The version an invoke of `qualifier` must run: an alias's target, else the qualifier."""
    return aliases.get(qualifier, qualifier)


def _call(client: Any, function: str, qualifier: str, expected: str, token: str) -> Outcome:
    kwargs: dict[str, Any] = {"FunctionName": function, "Payload": json.dumps({"token": token}).encode()}
    if qualifier != LATEST:
        kwargs["Qualifier"] = qualifier  # $LATEST is sent unqualified, as most callers do
    started = time.monotonic()
    try:
        response = client.invoke(**kwargs)
        body = response["Payload"].read()
    except ClientError as exc:
        kind, detail = judge_error(exc.response)
        return Outcome(qualifier, kind, started, (time.monotonic() - started) * 1000, None, detail)
    except BotoCoreError as exc:  # no answer: connection refused/reset, read timeout
        return Outcome(qualifier, "lost", started, (time.monotonic() - started) * 1000, None,
                       f"{type(exc).__name__}: {exc}")
    latency = (time.monotonic() - started) * 1000
    kind, environment, detail = judge(token, expected, response.get("FunctionError"), body)
    return Outcome(qualifier, kind, started, latency, environment, detail)


def _caller(slot: int, connection: Connection, function: str, qualifiers: list[str], aliases: dict[str, str],
            read_timeout: int, barrier: Any, results: Any) -> None:
    """One caller process: its own client, then its share back to back; its outcomes (or the
    step that failed) go to `results` as (slot, outcomes, failure)."""
    outcomes: list[Outcome] = []
    failure = ""
    try:
        client = connection.lambda_client(read_timeout=read_timeout)
        barrier.wait(120)
        for i, qualifier in enumerate(qualifiers):
            token = f"{slot}.{i}.{secrets.token_hex(8)}"
            outcomes.append(_call(client, function, qualifier, expected_version(qualifier, aliases), token))
    except Exception as exc:  # noqa: BLE001 (not swallowed: the parent raises it, naming the caller and step)
        failure = f"caller {slot} failed at step 'request {len(outcomes)}': {type(exc).__name__}: {exc}"
    results.put((slot, outcomes, failure))


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Every outcome of one closed-loop run; `wall_s` from the first request out to the last
    answer in."""

    callers: int
    outcomes: list[Outcome]
    wall_s: float

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    def counts(self) -> dict[str, int]:
        return {kind: self.count(kind) for kind in KINDS}

    def environments(self) -> set[str]:
        """Environments that answered at least one request."""
        return {o.environment for o in self.outcomes if o.environment}

    def details(self, kind: str) -> collections.Counter[str]:
        return collections.Counter(o.detail for o in self.outcomes if o.kind == kind)

    def latencies_ms(self) -> list[float]:
        """Of answered requests only (a 429 is quick and would flatter the figures)."""
        return sorted(o.latency_ms for o in self.outcomes if o.kind == "answered")

    def percentile(self, q: float) -> float:
        data = self.latencies_ms()
        if not data:
            return float("nan")
        return data[min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))]

    @property
    def answered_per_s(self) -> float:
        return self.count("answered") / self.wall_s if self.wall_s > 0 else 0.0


def run_traffic(connection: Connection, function: str, qualifiers: Sequence[str], callers: int, requests: int,
                aliases: Mapping[str, str] | None = None, read_timeout: int = 120) -> Traffic:
    """`requests` invokes of `function` from `callers` processes (see `plan`), started together.

    `aliases` maps each alias among `qualifiers` to its version (to check who answered). A
    request unanswered after `read_timeout` s is lost. Raises RuntimeError naming the caller
    and step if a caller process itself failed."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(callers)
    results = context.Queue()
    shares = plan(requests, callers, qualifiers)
    procs = [context.Process(target=_caller, name=f"caller-{k}", daemon=True,
                             args=(k, connection, function, share, dict(aliases or {}), read_timeout, barrier, results))
             for k, share in enumerate(shares)]
    for proc in procs:
        proc.start()
    collected: dict[int, tuple[list[Outcome], str]] = {}
    try:
        while len(collected) < len(procs):  # read before joining: a full pipe would block a caller's exit
            try:
                slot, share, failure = results.get(timeout=1)
                collected[slot] = (share, failure)
            except queue.Empty:  # still running, unless one died without reporting (killed)
                dead = [p.name for k, p in enumerate(procs) if k not in collected and p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"traffic failed at step 'collect': {', '.join(dead)} died without reporting") from None
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    failures = [failure for _, failure in collected.values() if failure]
    if failures:
        raise RuntimeError("; ".join(failures))
    outcomes = [o for slot in sorted(collected) for o in collected[slot][0]]
    if not outcomes:
        return Traffic(callers, [], 0.0)
    first = min(o.started for o in outcomes)
    last = max(o.started + o.latency_ms / 1000 for o in outcomes)
    return Traffic(callers, outcomes, last - first)
