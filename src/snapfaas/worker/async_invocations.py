"""Asynchronous (``Event``) invocations: accepting, attempting and concluding them.

`AsyncInvocations` is the I/O side of Lambda's asynchronous invocation model:

* `accept` stores an event (or refuses it with 429 ``TooManyRequestsException`` when the
  queue already holds ``event_queue_max`` events: this server's, or in cluster mode the whole
  cluster's, counted approximately as `snapfaas.worker.event_leases` describes);
* `_attempt` runs one attempt and classifies how it ended (`backlog.Outcome`): the scheduling
  rules in `snapfaas.worker.backlog` decide what follows;
* `_conclude` handles an event that left the queue: a success goes to the ``OnSuccess``
  destination; a drop is logged to the daemon log and to the function's log (an
  ``EVENT_DROPPED`` line naming the request id, reason and attempts) and goes to the
  ``OnFailure`` destination (see `snapfaas.destinations`).

It watches the registry: when a function changes (concurrency, state, configuration, deletion)
its retry policies are re-read, its throttle gates open, and events whose function, version
or alias was deleted are dropped at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from snapfaas import destinations
from snapfaas.errors import (
    Conflict, InvalidParameterValue, NotFound, ServiceUnavailable, SnapfaasError, SnapStartError, SnapStartNotReady,
    SnapStartTimeout, Throttled,
)
from snapfaas.registry.model import LATEST, State
from snapfaas.worker.backlog import Backlog, EventTiming, Outcome, QueuedEvent, RetryPolicy, Verdict
from snapfaas.worker.environment import InvokeRequest
from snapfaas.worker.event_leases import LeaseTerms
from snapfaas.worker.event_store import EventStore
from snapfaas.worker.events import Attempt, EventQueue, Finished
from snapfaas.worker.logs import LogStore

if TYPE_CHECKING:
    from snapfaas.worker.invoker import Invoker

logger = logging.getLogger(__name__)
DROP_LOG_PREFIX = "EVENT_DROPPED"


@dataclasses.dataclass(frozen=True)
class EventSettings:
    """Server settings of the asynchronous path (`ServerConfig.event_*`)."""

    queue_max: int = 100_000
    timing: EventTiming = dataclasses.field(default_factory=EventTiming)
    destinations_dir: Path | None = None  # file destinations; None: refused at delivery (logged)
    node_id: str = "local"  # this node's name in the claims of the event table
    lease: LeaseTerms = dataclasses.field(default_factory=LeaseTerms)  # claims of the shared (PostgreSQL) queue


class AsyncInvocations:
    def __init__(self, invoker: Invoker, database: Path | str, logs: LogStore | None, settings: EventSettings) -> None:
        """`database`: the events.db file (embedded) or the cluster's ``postgresql://`` URL."""
        self.invoker = invoker
        self.registry = invoker.registry
        self.logs = logs
        self.settings = settings
        parts = self.registry.arn_prefix.split(":")  # arn:aws:lambda:<region>:<account>:function:
        self.region, self.account = parts[3], parts[4]
        backlog = Backlog(settings.timing, self._policy_for, limit_for=self._reserved)
        store = EventStore(database, settings.node_id, settings.lease)
        self.queue = EventQueue(store, backlog, self._attempt, self._conclude,
                                capacity=lambda: invoker.worker.max_environments)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.registry.observers.append(self._changed)

    def __len__(self) -> int:
        return len(self.queue)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.queue.start()

    async def close(self) -> None:
        if self._changed in self.registry.observers:
            self.registry.observers.remove(self._changed)
        await self.queue.close()

    # -- accepting ------------------------------------------------------------------------------
    async def accept(self, request_id: str, function: str, qualifier: str | None, payload: bytes) -> QueuedEvent:
        """Store an event for `function` (which the caller has resolved); 429 when full, 503
        when the (cluster's) database is unavailable."""
        if len(self.queue) >= self.settings.queue_max:
            scope = "cluster" if self.queue.store.shared else "server"
            raise Throttled(
                f"Rate Exceeded. The asynchronous invocation queue of this {scope} is full "
                f"({self.settings.queue_max} events); retry later.",
                "CallerRateLimitExceeded",
            )
        return await self.queue.put(request_id, function, qualifier, payload)

    # -- policies and registry changes ------------------------------------------------------------
    def _policy_for(self, function: str, qualifier: str) -> RetryPolicy:
        config = self.registry.get_event_config(function, qualifier)
        if config is None:
            return RetryPolicy()
        default = RetryPolicy()
        return RetryPolicy(
            default.max_retry_attempts if config.max_retry_attempts is None else config.max_retry_attempts,
            default.max_event_age_s if config.max_event_age_s is None else config.max_event_age_s,
        )

    def _reserved(self, function: str) -> int | None:
        try:
            return self.registry.function_info(function).reserved_concurrency
        except NotFound:
            return None  # deleted: its events find out at their next attempt

    def _resolves(self, function: str, qualifier: str) -> bool:
        try:
            self.registry.resolve(function, qualifier)
        except NotFound:
            return False
        return True

    def _changed(self, function: str) -> None:
        """Registry observer. Runs the change on the event loop even if the registry was
        written from another thread (the queue's state belongs to the loop)."""
        loop = self._loop
        if loop is None:
            return  # not started: nothing is queued in memory yet
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            self._apply_change(function)
        else:
            loop.call_soon_threadsafe(self._apply_change, function)

    def _apply_change(self, function: str) -> None:
        self.queue.changed(function, lambda qualifier: self._resolves(function, qualifier))

    # -- one attempt ------------------------------------------------------------------------------
    async def _attempt(self, event: QueuedEvent) -> Attempt:
        """Run `event` once; every failure is classified, nothing is raised."""
        inv = self.invoker
        try:
            version, invoked_arn = inv.resolve(event.function, event.qualifier)
            if version.state == State.FAILED and not version.is_latest and event.qualifier == version.version:
                return Attempt(Outcome.FAILED_VERSION,
                               f"version {version.version} is Failed and can never become ready: {version.state_reason}")
            inv.check_ready(version)
            info = self.registry.function_info(event.function)
        except NotFound as exc:
            return Attempt(Outcome.GONE, exc.message)
        except (SnapStartNotReady, Conflict) as exc:
            return Attempt(Outcome.NOT_READY, exc.message)
        try:
            payload = await self.queue.payload(event.seq)
        except ServiceUnavailable as exc:
            return Attempt(Outcome.PLATFORM_FAULT, exc.message)
        if payload is None:
            return Attempt(Outcome.GONE, "the event is no longer stored")
        inv.touch(version)
        request = InvokeRequest(event.request_id, payload, invoked_arn, float(version.timeout))
        try:
            outcome = await inv.worker.invoke(version, request, info.reserved_concurrency)
        except Throttled as exc:
            server_wide = exc.reason == "ConcurrentInvocationLimitExceeded"
            return Attempt(Outcome.SERVER_THROTTLED if server_wide else Outcome.THROTTLED, f"{exc.reason}: {exc.message}")
        except SnapStartNotReady as exc:
            return Attempt(Outcome.NOT_READY, exc.message)
        except (SnapStartError, SnapStartTimeout) as exc:  # the function's after-restore hook: its error
            body = json.dumps({"errorType": exc.code, "errorMessage": exc.message}).encode()
            return Attempt(Outcome.FUNCTION_ERROR, exc.message, version.version, "Unhandled", body)
        except SnapfaasError as exc:
            logger.warning("event %s for %s failed at step 'invoke': %s: %s", event.request_id, event.function,
                           exc.code, exc.message)
            return Attempt(Outcome.PLATFORM_FAULT, f"{exc.code}: {exc.message}")
        if outcome.function_error is not None:
            detail = _error_summary(outcome.payload)
            return Attempt(Outcome.FUNCTION_ERROR, detail, version.version, outcome.function_error, outcome.payload)
        return Attempt(Outcome.SUCCESS, "", version.version, None, outcome.payload)

    # -- after the last attempt ---------------------------------------------------------------------
    async def _conclude(self, finished: Finished) -> None:
        event, decision, attempt = finished.event, finished.decision, finished.attempt
        qualifier = event.qualifier or LATEST
        config = self.registry.get_event_config(event.function, qualifier)
        if decision.verdict is Verdict.DONE:
            if config is not None and config.on_success:
                await self._deliver(config.on_success, await self._record(finished, "Success"), event)
            return
        assert decision.reason is not None
        reason = decision.reason.value
        detail = attempt.detail if attempt is not None and attempt.detail else _drop_detail(reason)
        logger.warning("event %s for %s:%s dropped (%s) after %d attempt(s) and %d retry(ies), age %.0f s: %s",
                       event.request_id, event.function, qualifier, reason, event.attempts, event.retries,
                       finished.age_s, detail)
        if self.logs is not None:
            line = (f"{DROP_LOG_PREFIX} RequestId: {event.request_id}\tReason: {reason}\tAttempts: {event.attempts}\t"
                    f"Retries: {event.retries}\tAge: {finished.age_s:.0f} s\tDetail: {detail}")
            await asyncio.to_thread(self.logs.append, event.function, f"events/[{qualifier}]", [line])
        if config is not None and config.on_failure:
            await self._deliver(config.on_failure, await self._record(finished, reason), event)

    async def _record(self, finished: Finished, condition: str) -> dict[str, object]:
        event, attempt = finished.event, finished.attempt
        ran = attempt if attempt is not None and attempt.outcome.ran else None
        last = None if ran is not None else await self.queue.last_run(event.seq)
        common = dict(
            request_id=event.request_id,
            function_arn=self.registry.function_arn(event.function, event.qualifier or LATEST),
            condition=condition,
            invoke_count=event.attempts,
            request_payload=await self.queue.payload(event.seq),
            now=time.time(),
        )
        if ran is not None:
            return destinations.invocation_record(**common, status=200, executed_version=ran.executed_version,
                                                  function_error=ran.function_error, response=ran.response)
        if last is not None:
            return destinations.invocation_record(**common, status=last.status, executed_version=last.executed_version,
                                                  function_error=last.function_error, response=last.response)
        return destinations.invocation_record(**common)

    async def _deliver(self, arn: str, record: dict[str, object], source: QueuedEvent) -> None:
        """Send `record` to the destination `arn`; a failed delivery is logged, never raised."""
        try:
            target = destinations.parse(arn, self.region, self.account)
            if isinstance(target, destinations.FileDestination):
                if self.settings.destinations_dir is None:
                    raise InvalidParameterValue("file destinations are not enabled on this server")
                path = target.path(self.settings.destinations_dir)
                await asyncio.to_thread(destinations.append_line, path, json.dumps(record).encode())
                return
            self.registry.resolve(target.name, target.qualifier)
            payload = destinations.fit(record, self.invoker.limits.event_payload_bytes)
            await self.accept(str(uuid.uuid4()), target.name, target.qualifier, payload)
        except (SnapfaasError, OSError) as exc:
            message = exc.message if isinstance(exc, SnapfaasError) else str(exc)
            logger.warning("event %s for %s: delivery to destination %s failed at step 'deliver': %s",
                           source.request_id, source.function, arn, message)


def _error_summary(payload: bytes) -> str:
    try:
        error = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return "function error"
    if isinstance(error, dict):
        return f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"[:500]
    return "function error"


def _drop_detail(reason: str) -> str:
    return {
        "EventAgeExceeded": "the event reached MaximumEventAgeInSeconds before it could run successfully",
        "FunctionDeleted": "the function, version or alias was deleted",
        "RetriesExhausted": "MaximumRetryAttempts reached",
        "VersionFailed": "the version is Failed and can never become ready",
    }.get(reason, reason)
