"""Request bodies: read into a buffer bounded by the route's limit, with an idle timeout.

Every signed route has a body limit (`route_limit`): the request caps Lambda states for
CreateFunction / UpdateFunctionCode (70,167,211 bytes: a 50 MB zip, base64-encoded, in JSON),
the synchronous payload limit for Invoke, and `CONTROL_REQUEST_BYTES` for every other
operation. A ``Content-Length`` above the limit is refused before a byte of the body is read,
and a body that grows past it while streaming (chunked encoding) is refused as soon as it
crosses it, both with Lambda's 413 ``RequestEntityTooLargeException``. A client that sends
nothing for `ClientTimeouts.body_s`, or disconnects, ends the read with `UploadAborted`
(the caller logs one line and closes the connection: there is nobody to answer).

The body is read only after the request's headers passed the signature checks that need no
body (`snapfaas.api.auth.SigV4Verifier.check_headers`); handlers get it with `body_of`.
"""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from snapfaas.config import Limits
from snapfaas.errors import RequestTooLarge

MAX_REQUEST_BYTES = 70_167_211  # Lambda's CreateFunction request cap (a 50 MB zip, base64-encoded)
CONTROL_REQUEST_BYTES = 1024 * 1024  # every other control-plane operation (their JSON is a few KB)
LARGE_OPERATIONS = frozenset({"CreateFunction", "UpdateFunctionCode"})
PAYLOAD_OPERATIONS = frozenset({"InvokeFunction", "Echo"})
BODY = web.RequestKey("body", bytes)


class UploadAborted(Exception):
    """The client stopped sending its body (disconnected or idle past the body timeout)."""

    def __init__(self, reason: str, received: int, expected: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.received = received
        self.expected = expected


@dataclasses.dataclass(frozen=True)
class RouteLimit:
    operation: str  # Lambda's operation name, as its 413 message states it
    max_bytes: int

    def refusal(self) -> RequestTooLarge:
        return RequestTooLarge(f"Request must be smaller than {self.max_bytes} bytes for the {self.operation} operation")


def route_limit(operation: str, limits: Limits) -> RouteLimit:
    """The body limit of `operation` (``CreateFunction``, ``InvokeFunction``, ...)."""
    if operation in LARGE_OPERATIONS:
        return RouteLimit(operation, MAX_REQUEST_BYTES)
    if operation in PAYLOAD_OPERATIONS:
        return RouteLimit(operation, limits.sync_payload_bytes)
    return RouteLimit(operation, CONTROL_REQUEST_BYTES)


def check_declared_length(request: web.BaseRequest, limit: RouteLimit) -> None:
    """Refuse a request whose ``Content-Length`` exceeds `limit`, before reading anything."""
    declared = request.content_length
    if declared is not None and declared > limit.max_bytes:
        raise limit.refusal()


async def read_body(request: web.BaseRequest, limit: RouteLimit, idle_s: float) -> bytes:
    """The whole body, at most `limit.max_bytes`; raises `RequestTooLarge` or `UploadAborted`."""
    check_declared_length(request, limit)
    expected = request.content_length
    buffer = bytearray()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await request.content.readany()
        except TimeoutError as exc:
            raise UploadAborted(f"no body data for {idle_s:g} s", len(buffer), expected) from exc
        except (ConnectionError, web.RequestPayloadError) as exc:  # aborted, or ended short of Content-Length
            raise UploadAborted(f"client disconnected ({type(exc).__name__})", len(buffer), expected) from exc
        if not chunk:
            return bytes(buffer)
        if len(buffer) + len(chunk) > limit.max_bytes:
            raise limit.refusal()
        buffer += chunk


def body_of(request: web.Request) -> bytes:
    """The body the middleware read (`read_body`) before the handler ran."""
    return request.get(BODY, b"")
