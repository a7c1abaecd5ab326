"""The narrow interface `api/` uses to invoke functions.

`Invoker.invoke` takes a function reference as the caller gave it and returns an
`InvokeResult`; every failure that Lambda reports as an API error (not found, throttled, not
ready, payload too large, event queue full) is raised as a `snapfaas.errors` leaf. Function
errors are data in the result (``function_error``), never exceptions. ``Event`` invocations
are handed to `AsyncInvocations` (`self.events`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import random
from pathlib import Path

from snapfaas import request_ids, timeline
from snapfaas.config import Limits
from snapfaas.errors import Conflict, InvalidParameterValue, InvalidRequestContent, NotFound, RequestTooLarge
from snapfaas.registry.db import Registry
from snapfaas.registry.lookups import InvokeLookups
from snapfaas.registry.model import LATEST, FunctionVersion, State
from snapfaas.worker.async_invocations import AsyncInvocations, EventSettings
from snapfaas.worker.environment import InvokeRequest
from snapfaas.worker.logs import LogStore
from snapfaas.worker.pool import Worker

logger = logging.getLogger(__name__)
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")


@dataclasses.dataclass
class InvokeResult:
    status: int
    payload: bytes
    request_id: str
    executed_version: str | None = None
    function_error: str | None = None
    log_tail: str | None = None


class Invoker:
    def __init__(self, registry: Registry, worker: Worker, limits: Limits, events_db: Path | str,
                 logs: LogStore | None = None, event_settings: EventSettings | None = None) -> None:
        self.registry = registry
        self.worker = worker
        self.limits = limits
        self.lookups = InvokeLookups(registry)  # an invoke's registry reads, kept until the function changes
        self.lookups.attach()
        self.events = AsyncInvocations(self, events_db, logs, event_settings or EventSettings())

    async def start(self) -> None:
        await self.events.start()

    async def close(self) -> None:
        await self.events.close()
        self.lookups.detach()

    def resolve(self, name: str, qualifier: str | None) -> tuple[FunctionVersion, str]:
        """The version to run and the ARN as invoked (alias ARN when called through an alias)."""
        try:
            version, alias = self.lookups.resolve(name, qualifier)
        except NotFound as exc:
            raise NotFound(f"Function not found: {self.registry.function_arn(name, qualifier or LATEST)}") from exc
        if alias is not None and alias.routing:
            extra, weight = next(iter(alias.routing.items()))
            if random.random() < weight:
                version = self.lookups.version(name, extra)
        return version, self.registry.function_arn(name, qualifier)

    def check_ready(self, version: FunctionVersion) -> None:
        snapshots = self.worker.snapshots
        if snapshots is not None and version.uses_snapshot:
            snapshots.check_invocable(version)
        if version.state != State.ACTIVE:
            raise Conflict(
                "The operation cannot be performed at this time. The function is currently in the following state: "
                + version.state.value
            )

    def refuse_failed(self, name: str, qualifier: str | None) -> None:
        """An event is accepted for a Pending, Inactive or re-creating version (it waits until
        the version is ready) but not for a Failed one: refused as a synchronous invoke is."""
        version, _ = self.lookups.resolve(name, qualifier)
        if version.state == State.FAILED:
            raise Conflict("The operation cannot be performed at this time. The function is currently in the "
                           "following state: " + version.state.value)

    async def invoke(
        self,
        name: str,
        qualifier: str | None,
        payload: bytes,
        invocation_type: str = "RequestResponse",
        tail: bool = False,
        client_context: str | None = None,
        request_id: str | None = None,
    ) -> InvokeResult:
        """Run (or queue, for ``Event``) an invoke; `request_id` is the id another node gave a
        forwarded invoke (a fresh one otherwise)."""
        if invocation_type not in INVOCATION_TYPES:
            raise InvalidParameterValue(
                f"1 validation error detected: Value '{invocation_type}' at 'invocationType' failed to satisfy constraint: "
                "Member must satisfy enum value set: [Event, RequestResponse, DryRun]"
            )
        request_id = request_id or request_ids.new()
        version, invoked_arn = self.resolve(name, qualifier)
        limit = self.limits.event_payload_bytes if invocation_type == "Event" else self.limits.sync_payload_bytes
        if len(payload) > limit:
            if invocation_type == "Event":
                raise RequestTooLarge(f"{len(payload)} byte payload is too large for the Event invocation type (limit {limit} bytes)")
            raise RequestTooLarge(f"{len(payload)} byte payload is too large for the RequestResponse invocation type (limit {limit} bytes)")
        check_json(payload)
        context = decode_client_context(client_context)
        if invocation_type == "DryRun":
            return InvokeResult(204, b"", request_id)  # Lambda sends no X-Amz-Executed-Version for DryRun
        if invocation_type == "Event":
            self.refuse_failed(name, qualifier)
            await self.events.accept(request_id, name, qualifier, payload)
            return InvokeResult(202, b"", request_id)
        self.check_ready(version)
        reserved = self.lookups.reserved_concurrency(name)
        self.touch(version)
        timeline.mark("resolved")
        outcome = await self.worker.invoke(
            version,
            InvokeRequest(request_id, payload, invoked_arn, float(version.timeout), context),
            reserved,
        )
        tail_text = None
        if tail:
            raw = "".join(outcome.log_lines).encode()
            tail_text = base64.b64encode(raw[-self.limits.log_tail_bytes :]).decode()
        timeline.mark("outcome")
        return InvokeResult(200, outcome.payload, request_id, version.version, outcome.function_error, tail_text)

    def touch(self, version: FunctionVersion) -> None:
        if self.worker.snapshots is not None and version.uses_snapshot:
            self.worker.snapshots.touch(version)


def check_json(payload: bytes) -> None:
    """Lambda requires the event to be JSON; reject anything else before running code."""
    if not payload:
        return
    try:  # UTF-8 text first: json.loads of bytes detects their encoding in Python code on every call
        json.loads(str(payload, "utf-8"))
        return
    except ValueError:  # UnicodeDecodeError included: the bytes decide (UTF-16/32, a BOM) and word the refusal
        pass
    try:
        json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestContent("Could not parse request body into json: Could not parse payload into json: "
                                    f"{exc}") from exc


def decode_client_context(raw: str | None) -> str | None:
    if not raw:
        return None
    if len(raw) > 3583:
        raise InvalidParameterValue("Client context must be a base64-encoded JSON object of at most 3583 bytes")
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestContent("Client context must be valid Base64") from exc
