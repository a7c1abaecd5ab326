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
body (`snapfaas.api.auth.SigV4Verifier.check_headers`). Those cannot tell a forged signature
from a good one (key ids are not secret), so an `Upload` keeps at most `SPOOL_THRESHOLD`
bytes in memory and streams the rest to an unlinked file in the spool directory, hashing as
it goes: the signature is verified from the digest, and only a verified body is loaded into
memory (`Upload.contents`). Handlers get it with `body_of`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import tempfile
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from snapfaas.config import Limits
from snapfaas.errors import RequestTooLarge

MAX_REQUEST_BYTES = 70_167_211  # Lambda's CreateFunction request cap (a 50 MB zip, base64-encoded)
CONTROL_REQUEST_BYTES = 1024 * 1024  # every other control-plane operation (their JSON is a few KB)
SPOOL_THRESHOLD = 256 * 1024  # a body past this goes to a file until its signature is verified
LARGE_OPERATIONS = frozenset({"CreateFunction", "UpdateFunctionCode", "PublishLayerVersion"})
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


class Upload:
    """A request body being received: its size, its SHA-256, and the bytes (in memory up to
    `SPOOL_THRESHOLD`, then in an unlinked file under `spool_dir`). Close it when done."""

    def __init__(self, spool_dir: Path | None) -> None:
        self.spool_dir = spool_dir
        self.size = 0
        self._digest = hashlib.sha256()
        self._memory = bytearray()
        self._file: BinaryIO | None = None

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    @property
    def spooled(self) -> bool:
        return self._file is not None

    def feed(self, chunk: bytes) -> None:
        """Append `chunk` (a page-cache write once spooled: it does not wait for the disk)."""
        self.size += len(chunk)
        self._digest.update(chunk)
        if self._file is None and len(self._memory) + len(chunk) <= SPOOL_THRESHOLD:
            self._memory += chunk
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.spool_dir, prefix="upload-")
            self._file.write(self._memory)
            self._memory = bytearray()
        self._file.write(chunk)

    async def contents(self) -> bytes:
        """The whole body (read back from the spool file in a thread if spooled)."""
        if self._file is None:
            return bytes(self._memory)
        spool = self._file
        return await asyncio.to_thread(_read_back, spool)

    def close(self) -> None:
        self._memory = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_back(spool: BinaryIO) -> bytes:
    spool.flush()
    spool.seek(0)
    return spool.read()


async def receive(request: web.BaseRequest, limit: RouteLimit, idle_s: float, spool_dir: Path | None = None) -> Upload:
    """The whole body as an `Upload` of at most `limit.max_bytes`; raises `RequestTooLarge`
    (before reading anything when ``Content-Length`` says so) or `UploadAborted`."""
    check_declared_length(request, limit)
    expected = request.content_length
    content = request.content
    upload = Upload(spool_dir)
    try:
        while True:
            try:
                if content.is_eof():  # the whole body has arrived (a small one usually has): no wait, no timer
                    chunk = content.read_nowait()
                else:
                    async with asyncio.timeout(idle_s):
                        chunk = await content.readany()
            except TimeoutError as exc:
                raise UploadAborted(f"no body data for {idle_s:g} s", upload.size, expected) from exc
            except (ConnectionError, web.RequestPayloadError) as exc:  # aborted, or ended short of Content-Length
                raise UploadAborted(f"client disconnected ({type(exc).__name__})", upload.size, expected) from exc
            if not chunk:
                return upload
            if upload.size + len(chunk) > limit.max_bytes:
                raise limit.refusal()
            upload.feed(chunk)
    except BaseException:
        upload.close()
        raise


def keep_body(request: web.Request, body: bytes) -> None:
    """Hand the received `body` to the handler: `body_of(request)`, and aiohttp's own
    ``await request.read()`` / ``.json()`` (whose stream the middleware has consumed) answer it."""
    request[BODY] = body
    request._read_bytes = body  # aiohttp's cache of the body read (pinned aiohttp; tested)


def body_of(request: web.Request) -> bytes:
    """The body the middleware received (`receive`) before the handler ran."""
    return request.get(BODY, b"")
