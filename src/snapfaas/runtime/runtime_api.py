"""Lambda's Runtime API (2018-06-01) and Extensions API (2020-01-01), as a state machine.

`Gateway` holds the state of one execution environment of a custom (``provided.*``) runtime:
the runtime process, its extensions, the invocation in flight. `custom` serves it over HTTP
inside the sandbox (``AWS_LAMBDA_RUNTIME_API``) and bridges it to the worker's frame channel
(`protocol`): every HTTP call becomes one synchronous `Gateway` method that returns a `Reply`
(status, JSON body, headers) and may emit frames through the `emit` callback. Methods that
long-poll (``/invocation/next``, ``/restore/next``, ``/extension/event/next``) block on the
gateway's condition until the worker delivers what they wait for.

Runtime states (the names RAPID prints in its "State transition" errors)::

    Started --/next----------------------------------------------> Ready --invoke--> Running
       |  \\--/restore/next (snap-start)--> RestoreReady --restore--> Restoring --/next--> Ready
       +--/init/error--> InitError                      Restoring --/restore/error--> RestoreError
    Running --/response--> InvocationResponse --/next--> Ready
    Running --/error-----> InvocationErrorResponse --/next--> Ready

A snap-start runtime that calls ``/next`` without ``/restore/next`` walks the restore gate
inside ``/next`` (RAPID's "not interested in restore phase").

Phases the worker sees (frames): ``ready`` once the runtime called ``/next`` *and* every
extension called ``/extension/event/next`` (init done); an invocation's ``response``/``error``
once the runtime answered *and* every extension subscribed to INVOKE called ``event/next``
again; ``init_error`` for ``/init/error`` (runtime or extension) and for an extension that
crashed or failed to start; ``restore_ready``/``restore_error`` for SnapStart.

Error replies follow RAPID: a wrong or stale request id is 400 ``InvalidRequestID``, a call in
the wrong state 403 ``InvalidStateTransition``, a response over the limit 413
``RequestEntityTooLarge`` (the invocation then fails with ``Function.ResponseSizeTooLarge``),
extension misuse 403 ``Extension.*``; unknown paths are 404 (`custom`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

RUNTIME_PREFIX = "/2018-06-01/runtime"
EXTENSION_PREFIX = "/2020-01-01/extension"
SHUTDOWN_EVENTS = ("INVOKE", "SHUTDOWN")  # an external extension may subscribe to both
INTERNAL_EVENTS = ("INVOKE",)  # an extension running inside the runtime process: no SHUTDOWN
TRANSITION = "State transition from {0} to {1} failed for runtime. Error: State transition is not allowed"
EXT_TRANSITION = "State transition from {0} to {1} failed for extension {2}. Error: State transition is not allowed"
Emit = Callable[..., None]  # emit(kind, payload, mark=None, **fields): one frame, after a log mark


@dataclasses.dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"


def error_payload(error_type: str, message: str) -> bytes:
    """Lambda's error document ``{"errorMessage", "errorType"}``."""
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


def error_reply(status: int, error_type: str, message: str) -> Reply:
    return Reply(status, error_payload(error_type, message))


def accepted() -> Reply:
    return Reply(202, b'{"status":"OK"}')


def invalid_request_id() -> Reply:
    return error_reply(400, "InvalidRequestID", "Invalid request ID")


def valid_error_type(value: str | None, families: tuple[str, ...] = ("Runtime.", "Function.")) -> str:
    """RAPID keeps an error type header only if it names a Runtime.*/Function.* (extension:
    Extension.*) error; anything else is reported as ``<Family>.Unknown``."""
    if value and value.startswith(families) and len(value) <= 128 and value.isprintable():
        return value
    return families[0] + "Unknown"


@dataclasses.dataclass
class Invocation:
    """One invoke as the worker delivered it (the ``invoke`` frame's header and payload)."""

    request_id: str
    payload: bytes
    deadline_ms: int
    arn: str = ""
    trace_id: str | None = None
    client_context: str | None = None
    identity: Any = None
    tenant_id: str | None = None

    @classmethod
    def from_frame(cls, header: Mapping[str, Any], payload: bytes) -> Invocation:
        return cls(str(header["id"]), payload, int(header["deadline_ms"]), header.get("arn") or "",
                   header.get("trace_id"), header.get("client_context"), header.get("identity"), header.get("tenant_id"))

    def next_headers(self) -> dict[str, str]:
        """``/invocation/next``'s headers; the optional ones only when set."""
        headers = {
            "Lambda-Runtime-Aws-Request-Id": self.request_id,
            "Lambda-Runtime-Deadline-Ms": str(self.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.arn,
        }
        if self.trace_id:
            headers["Lambda-Runtime-Trace-Id"] = self.trace_id
        if self.client_context:
            headers["Lambda-Runtime-Client-Context"] = self.client_context
        if self.identity:
            headers["Lambda-Runtime-Cognito-Identity"] = self.identity if isinstance(self.identity, str) else json.dumps(self.identity)
        if self.tenant_id:
            headers["Lambda-Runtime-Aws-Tenant-Id"] = self.tenant_id
        return headers

    def extension_event(self) -> dict[str, Any]:
        event: dict[str, Any] = {"eventType": "INVOKE", "deadlineMs": self.deadline_ms, "requestId": self.request_id,
                                 "invokedFunctionArn": self.arn}
        if self.trace_id:
            event["tracing"] = {"type": "X-Amzn-Trace-Id", "value": self.trace_id}
        return event


@dataclasses.dataclass
class Extension:
    """One registered extension. `outstanding` counts events handed to it (or queued) that it
    has not yet acknowledged by calling ``event/next`` again."""

    name: str
    id: str
    events: tuple[str, ...]
    external: bool
    state: str = "Registered"  # -> Ready (first event/next) -> ... ; Exited once it reported exit/error or died
    queue: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    outstanding: int = 0
    holding: bool = False  # it took an event and has not called next since

    @property
    def done(self) -> bool:
        return self.state == "Exited" or (self.state == "Ready" and self.outstanding == 0)

    def log_line(self) -> str:
        """The line Lambda's log shows for an extension at the end of init."""
        return f"EXTENSION\tName: {self.name}\tState: {self.state}\tEvents: [{','.join(self.events)}]\n"


class Gateway:
    """The Runtime and Extensions API state of one environment. Thread-safe: HTTP handler
    threads and the frame loop call in concurrently; everything runs under one condition.

    `emit(kind, payload=b"", mark=None, **fields)` sends one frame to the worker, after writing
    log mark `mark` (the phase whose output is complete). `response_limit`: the largest
    response body (Lambda's 6 MB); `metadata`: the register response's body fields."""

    def __init__(self, emit: Emit, *, snap_start: bool, response_limit: int, metadata: Mapping[str, str],
                 clock: Callable[[], float] = time.time, runtime_api: bool = True) -> None:
        """`runtime_api`: the runtime talks HTTP (a custom runtime); False when the runtime
        drives the gateway in-process (Python's, with extensions: `extension_host`), and the
        HTTP server then serves the Extensions API only."""
        self.emit = emit
        self.runtime_api = runtime_api
        self.snap_start = snap_start
        self.response_limit = response_limit
        self.metadata = dict(metadata)
        self.clock = clock
        self.cond = threading.Condition()
        self.runtime = "Started"
        self.expected: set[str] = set()  # external extensions started and not yet registered
        self.extensions: dict[str, Extension] = {}  # by identifier
        self.registration_open = True
        self.init_done = False  # `ready` sent
        self.failed = False  # an init/restore error went out: nothing more is reported
        self.pending: Invocation | None = None  # delivered by the worker, not yet taken by /next
        self.current: Invocation | None = None  # the one the runtime holds (or held)
        self.answer: tuple[str, bytes, dict[str, Any]] | None = None  # held until extensions are done
        self.restored = False
        self.shutting_down = False
        self.closed = False

    # -- worker side -------------------------------------------------------------------------
    def expect(self, names: list[str]) -> None:
        """External extensions about to start: init waits until each registered (or failed)."""
        with self.cond:
            self.expected.update(names)

    def wait_registered(self, timeout: float | None = None) -> bool:
        """Block until every expected extension registered; False if init failed meanwhile."""
        with self.cond:
            self.cond.wait_for(lambda: not self.expected or self.failed, timeout)
            return not self.failed

    def extension_failed(self, name: str, error_type: str, message: str) -> None:
        """An extension process could not start or died: fatal during init, logged later."""
        with self.cond:
            self._exited(name)
            if not self.init_done:
                self._fail_init(error_type, error_payload(error_type, message))
            self._progress()

    def extension_exited(self, name: str) -> None:
        """An extension exited while the environment ends: nobody waits for it any more."""
        with self.cond:
            self._exited(name)
            self.cond.notify_all()

    def init_failed(self, error_type: str, message: str) -> None:
        """Init failed outside the API (e.g. no bootstrap to start)."""
        with self.cond:
            self._fail_init(error_type, error_payload(error_type, message))

    def deliver(self, invocation: Invocation) -> None:
        """The worker's ``invoke``: handed to the runtime's ``/next`` and, as an INVOKE event, to
        every extension subscribed to it."""
        with self.cond:
            self.pending = invocation
            for ext in self.extensions.values():
                if "INVOKE" in ext.events and ext.state != "Exited":
                    ext.queue.append(invocation.extension_event())
                    ext.outstanding += 1
            self.cond.notify_all()

    def restore(self) -> None:
        """The worker's ``restore``: the environment runs again; release ``/restore/next``."""
        with self.cond:
            self.restored = True
            self.cond.notify_all()

    def shutdown(self, deadline_ms: int) -> None:
        """SHUTDOWN to the extensions subscribed to it; returns once each called ``event/next``
        again (or exited), or at the deadline (epoch ms)."""
        with self.cond:
            self.shutting_down = True
            waiting = []
            for ext in self.extensions.values():
                if "SHUTDOWN" in ext.events and ext.state != "Exited":
                    ext.queue.append({"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": deadline_ms})
                    ext.outstanding += 1
                    waiting.append(ext)
            self.cond.notify_all()
            remaining = deadline_ms / 1000 - self.clock()
            self.cond.wait_for(lambda: all(ext.done for ext in waiting), max(remaining, 0))

    # -- runtime API -------------------------------------------------------------------------
    def next_invocation(self) -> Reply:
        """``GET /invocation/next``: ends init (or the restore, or the previous invocation's
        runtime part), then blocks until the worker delivers an invocation."""
        with self.cond:
            refused = self.runtime_ready()
            if refused is not None:
                return refused
            invocation = self.take_invocation()
            if invocation is None:  # the worker is gone: nothing will come
                return error_reply(500, "InternalServerError", "Internal Server Error")
            return Reply(200, invocation.payload, invocation.next_headers())

    def runtime_ready(self) -> Reply | None:
        """The runtime's side of ``/next`` without the wait: None, or the refusal."""
        with self.cond:
            if self.runtime in ("Running", "RestoreReady", "InitError", "RestoreError"):
                return error_reply(403, "InvalidStateTransition", TRANSITION.format(self.runtime, "Ready"))
            if self.runtime == "Started" and self.snap_start:  # restore gate without /restore/next
                self._restore_gate()
            self.runtime = "Ready"
            self._progress()
            return None

    def take_invocation(self) -> Invocation | None:
        """Block until the worker delivers an invocation (None once it closed the channel)."""
        with self.cond:
            self.cond.wait_for(lambda: self.pending is not None or self.closed)
            if self.pending is None:
                return None
            self.current, self.pending = self.pending, None
            self.answer = None
            self.runtime = "Running"
            return self.current

    def close(self) -> None:
        """The worker closed the channel: release every long poll that waits for it."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def respond(self, request_id: str, body: bytes | None, size: int) -> Reply:
        """``POST /invocation/{id}/response``. `body` is None when the request's `size` is over
        the limit (it was not read): 413, and the invocation fails as on Lambda."""
        with self.cond:
            if self.current is None or request_id != self.current.request_id or self.runtime != "Running":
                return invalid_request_id()
            self.runtime = "InvocationResponse"
            if body is None or size > self.response_limit:
                error = {"errorMessage": f"Response payload size exceeded maximum allowed payload size ({self.response_limit} bytes).",
                         "errorType": "Function.ResponseSizeTooLarge"}
                self.answer = ("error", json.dumps(error).encode(), {"error_type": error["errorType"]})
                self._progress()
                return error_reply(413, "RequestEntityTooLarge",
                                   f"Exceeded maximum allowed payload size ({self.response_limit} bytes).")
            self.answer = ("response", body, {})
            self._progress()
            return accepted()

    def fail_invocation(self, request_id: str, body: bytes, error_type: str | None, cause_content: bool,
                        normalize: bool = True) -> Reply:
        """``POST /invocation/{id}/error``: the invoke answers with the posted error body and
        ``X-Amz-Function-Error: Unhandled``. `cause_content`: the body was sent as
        ``application/vnd.aws.lambda.error.cause+json`` (an error plus an X-Ray cause)."""
        with self.cond:
            if self.current is None or request_id != self.current.request_id or self.runtime != "Running":
                return invalid_request_id()
            self.runtime = "InvocationErrorResponse"
            payload = body
            if cause_content:
                payload = error_without_cause(body)
            kind = valid_error_type(error_type) if normalize else error_type
            self.answer = ("error", payload, {"error_type": kind})
            self._progress()
            return accepted()

    def init_error(self, body: bytes, error_type: str | None, normalize: bool = True) -> Reply:
        """``POST /init/error``: init failed; the runtime exits next. `normalize`: keep only
        Runtime.*/Function.* error types (RAPID's rule for what a runtime posts)."""
        with self.cond:
            if self.runtime != "Started" or self.failed:
                return error_reply(403, "InvalidStateTransition", TRANSITION.format(self.runtime, "InitError"))
            self.runtime = "InitError"
            kind = valid_error_type(error_type) if normalize or not error_type else error_type
            self._fail_init(kind, error_body(body, kind))
            return accepted()

    def restore_next(self) -> Reply:
        """``GET /restore/next`` (snap-start only): init and before-snapshot hooks are done;
        blocks until the environment is restored, then 200 with an empty body."""
        with self.cond:
            if self.runtime != "Started" or self.failed:
                return error_reply(403, "InvalidStateTransition", TRANSITION.format(self.runtime, "RestoreReady"))
            self._restore_gate()
            return Reply(200, b"")

    def restore_error(self, body: bytes, error_type: str | None) -> Reply:
        """``POST /restore/error`` (snap-start only): an after-restore hook failed."""
        with self.cond:
            if self.runtime != "Restoring":
                return error_reply(403, "InvalidStateTransition", TRANSITION.format(self.runtime, "RestoreError"))
            self.runtime = "RestoreError"
            self.failed = True
            kind = valid_error_type(error_type)
            self.emit("restore_error", error_body(body, kind), mark="restore", error_type=kind)
            return accepted()

    # -- extensions API ----------------------------------------------------------------------
    def register(self, name: str | None, body: bytes) -> Reply:
        """``POST /extension/register``: an extension announces itself and its events."""
        if not name:
            return error_reply(403, "Extension.InvalidExtensionName", "Empty extension name")
        try:
            request = json.loads(body or b"null")
            if not isinstance(request, dict):
                raise ValueError("the body must be a JSON object")
            events = request.get("events", [])
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                raise ValueError("events must be a list of strings")
            if request.get("configurationKeys"):
                raise ValueError("configurationKeys are deprecated; use environment variables instead")
        except ValueError as exc:
            return error_reply(403, "InvalidRequestFormat", str(exc))
        with self.cond:
            external = name in self.expected or any(e.name == name and e.external for e in self.extensions.values())
            allowed = SHUTDOWN_EVENTS if external else INTERNAL_EVENTS
            for event in events:
                if event not in allowed:
                    return error_reply(403, "Extension.InvalidEventType", f"{event}: ErrEventNotSupported")
            if not self.registration_open:
                return error_reply(403, "Extension.RegistrationClosed", "Extension registration closed already")
            if any(e.name == name for e in self.extensions.values()):
                return error_reply(403, "Extension.InvalidExtensionState",
                                   EXT_TRANSITION.format("Registered", "Registered", name))
            ext = Extension(name, str(uuid.uuid4()), tuple(dict.fromkeys(events)), external)
            self.extensions[ext.id] = ext
            self.expected.discard(name)
            self.cond.notify_all()
            return Reply(200, json.dumps(self.metadata).encode(), {"Lambda-Extension-Identifier": ext.id})

    def _extension(self, identifier: str | None) -> Extension | Reply:
        if not identifier:
            return error_reply(403, "Extension.MissingExtensionIdentifier", "Missing Lambda-Extension-Identifier header")
        try:
            uuid.UUID(identifier)
        except ValueError:
            return error_reply(403, "Extension.InvalidExtensionIdentifier", "Invalid Lambda-Extension-Identifier")
        ext = self.extensions.get(identifier)
        if ext is None:
            return error_reply(403, "Extension.UnknownExtensionIdentifier", f"Unknown extension {identifier}")
        return ext

    def extension_next(self, identifier: str | None) -> Reply:
        """``GET /extension/event/next``: acknowledges the previous event (or ends the
        extension's init) and blocks until the next INVOKE/SHUTDOWN event."""
        with self.cond:
            ext = self._extension(identifier)
            if isinstance(ext, Reply):
                return ext
            if ext.state == "Exited":
                return error_reply(403, "Extension.InvalidExtensionState", EXT_TRANSITION.format("Exited", "Ready", ext.id))
            ext.state = "Ready"
            if ext.holding:
                ext.holding = False
                ext.outstanding -= 1
            self._progress()
            self.cond.notify_all()
            self.cond.wait_for(lambda: bool(ext.queue))
            event = ext.queue.pop(0)
            ext.holding = True
            return Reply(200, json.dumps(event).encode(), {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())})

    def extension_error(self, identifier: str | None, body: bytes, error_type: str | None, exiting: bool) -> Reply:
        """``POST /extension/init/error`` and ``/extension/exit/error``: during init, init fails
        with the extension's error type; an exit error later only takes the extension out of
        the invocations' barrier (it is about to exit)."""
        with self.cond:
            ext = self._extension(identifier)
            if isinstance(ext, Reply):
                return ext
            if not exiting and self.init_done:
                return error_reply(403, "Extension.InvalidExtensionState", EXT_TRANSITION.format(ext.state, "InitError", ext.id))
            kind = valid_error_type(error_type, ("Extension.",))
            ext.state = "Exited"
            if not self.init_done:
                self._fail_init(kind, error_body(body, kind))
            self._progress()
            self.cond.notify_all()
            return accepted()

    # -- progress ------------------------------------------------------------------------------
    def _restore_gate(self) -> None:
        """Init and the before-snapshot hooks are done: tell the worker (it checkpoints now), block
        until the environment runs again after a restore, then tell the worker it resumed."""
        self.runtime = "RestoreReady"
        self.emit("restore_ready", mark="init")
        self.cond.wait_for(lambda: self.restored)
        self.runtime = "Restoring"
        self.emit("resumed")

    def _exited(self, name: str) -> None:
        """Extension `name` is gone: nobody waits for its registration or its events any more."""
        self.expected.discard(name)
        for ext in self.extensions.values():
            if ext.name == name:
                ext.state = "Exited"

    def _fail_init(self, error_type: str, payload: bytes) -> None:
        if self.failed or self.init_done:
            return
        self.failed = True
        self.registration_open = False
        self.emit("init_error", payload, mark="init", error_type=error_type, lines=self._extension_lines())
        self.cond.notify_all()

    def _extension_lines(self) -> list[str]:
        return [ext.log_line() for ext in self.extensions.values()]

    def _progress(self) -> None:
        """Send what the state now allows: ``ready`` once runtime and extensions finished init,
        an invocation's answer once the runtime answered and the extensions are done."""
        extensions_done = all(ext.done for ext in self.extensions.values()) and not self.expected
        if not self.init_done and not self.failed and self.runtime == "Ready" and extensions_done:
            self.init_done = True
            self.registration_open = False
            tag = "restore" if self.restored else "init"
            self.emit("ready", mark=tag, lines=self._extension_lines(), extensions=len(self.extensions))
        if self.answer is not None and self.init_done and extensions_done and self.current is not None:
            kind, payload, fields = self.answer
            self.answer = None
            self.emit(kind, payload, mark=self.current.request_id, id=self.current.request_id, **fields)
        self.cond.notify_all()


def error_body(body: bytes, error_type: str) -> bytes:
    """What an init/restore error answers the invoke with: the posted JSON object, else one
    built from the error type and the body as text."""
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return body
    return json.dumps({"errorMessage": body.decode(errors="replace"), "errorType": error_type}).encode()


def error_without_cause(body: bytes) -> bytes:
    """An ``error.cause+json`` body minus its X-Ray ``errorCause`` (RAPID forwards the rest);
    RAPID's "Invalid error body" when it is not a JSON object."""
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return json.dumps("Invalid error body").encode()
    value.pop("errorCause", None)
    return json.dumps(value).encode()
