"""The Runtime/Extensions API state machine (`runtime.runtime_api.Gateway`) with a recording
`emit`; long-polling calls run in threads and the test waits (with a deadline) for their effects."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from snapfaas.runtime.runtime_api import Gateway, Invocation, Reply, error_body, error_without_cause, valid_error_type

WAIT_S = 10


class Recorder:
    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes, str | None, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def __call__(self, kind: str, payload: bytes = b"", mark: str | None = None, lines: list[str] | None = None,
                 **fields: Any) -> None:
        with self.cond:
            self.frames.append((kind, payload, mark, {**fields, "lines": lines or []}))
            self.cond.notify_all()

    def kinds(self) -> list[str]:
        with self.cond:
            return [f[0] for f in self.frames]

    def wait_for(self, kind: str, count: int = 1) -> tuple[str, bytes, str | None, dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: sum(f[0] == kind for f in self.frames) >= count, WAIT_S), self.frames
            return [f for f in self.frames if f[0] == kind][count - 1]


def gateway(snap_start: bool = False, limit: int = 100) -> tuple[Gateway, Recorder]:
    rec = Recorder()
    return Gateway(rec, snap_start=snap_start, response_limit=limit,
                   metadata={"functionName": "f", "functionVersion": "$LATEST", "handler": "h"}), rec


def background(call: Callable[[], Reply]) -> tuple[threading.Thread, list[Reply]]:
    out: list[Reply] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def finished(thread: threading.Thread, out: list[Reply]) -> Reply:
    thread.join(WAIT_S)
    assert out, "the call did not return"
    return out[0]


def invocation(request_id: str = "r1") -> Invocation:
    return Invocation(request_id, b'{"a": 1}', int(time.time() * 1000) + 5000, "arn:f", "Root=1", None,
                      {"cognitoIdentityId": "i"})


def body(reply: Reply) -> Any:
    return json.loads(reply.body)


def test_next_ends_init_then_delivers_an_invocation_with_its_headers() -> None:
    gw, rec = gateway()
    thread, out = background(gw.next_invocation)
    kind, _, mark, fields = rec.wait_for("ready")
    assert mark == "init" and fields["extensions"] == 0
    gw.deliver(invocation())
    reply = finished(thread, out)
    assert reply.status == 200 and reply.body == b'{"a": 1}'
    assert reply.headers["Lambda-Runtime-Aws-Request-Id"] == "r1"
    assert reply.headers["Lambda-Runtime-Trace-Id"] == "Root=1"
    assert json.loads(reply.headers["Lambda-Runtime-Cognito-Identity"]) == {"cognitoIdentityId": "i"}
    assert "Lambda-Runtime-Client-Context" not in reply.headers
    assert gw.respond("other", b"{}", 2).status == 400
    assert gw.respond("r1", b'"ok"', 4).status == 202
    kind, payload, mark, fields = rec.wait_for("response")
    assert (payload, mark, fields["id"]) == (b'"ok"', "r1", "r1")
    assert body(gw.respond("r1", b"{}", 2)) == {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"}


def test_error_response_keeps_the_body_and_normalizes_the_type() -> None:
    gw, rec = gateway()
    thread, out = background(gw.next_invocation)
    gw.deliver(invocation())
    finished(thread, out)
    assert gw.fail_invocation("r1", b'{"errorMessage": "m"}', "NotAType", False).status == 202
    _, payload, _, fields = rec.wait_for("error")
    assert payload == b'{"errorMessage": "m"}' and fields["error_type"] == "Runtime.Unknown"


def test_oversized_response_is_413_and_fails_the_invocation() -> None:
    gw, rec = gateway(limit=10)
    thread, out = background(gw.next_invocation)
    gw.deliver(invocation())
    finished(thread, out)
    reply = gw.respond("r1", None, 11)
    assert reply.status == 413 and body(reply)["errorType"] == "RequestEntityTooLarge"
    _, payload, _, fields = rec.wait_for("error")
    assert fields["error_type"] == "Function.ResponseSizeTooLarge"
    assert json.loads(payload)["errorMessage"] == "Response payload size exceeded maximum allowed payload size (10 bytes)."


def test_init_error_only_while_starting() -> None:
    gw, rec = gateway()
    assert gw.init_error(b"not json", "Runtime.Custom").status == 202
    kind, payload, mark, fields = rec.wait_for("init_error")
    assert json.loads(payload) == {"errorMessage": "not json", "errorType": "Runtime.Custom"}
    assert mark == "init" and fields["error_type"] == "Runtime.Custom"
    reply = gw.init_error(b"{}", None)
    assert reply.status == 403 and body(reply)["errorMessage"] == (
        "State transition from InitError to InitError failed for runtime. Error: State transition is not allowed")


def test_restore_next_blocks_until_restored_and_only_once() -> None:
    gw, rec = gateway(snap_start=True)
    thread, out = background(gw.restore_next)
    assert rec.wait_for("restore_ready")[2] == "init"
    assert not out
    gw.restore()
    assert finished(thread, out).status == 200
    assert rec.kinds() == ["restore_ready", "resumed"]
    assert gw.restore_next().status == 403
    thread, out = background(gw.next_invocation)
    assert rec.wait_for("ready")[2] == "restore"
    assert gw.restore_error(b"{}", None).status == 403  # only while restoring
    gw.deliver(invocation())
    assert finished(thread, out).status == 200


def test_next_in_a_snap_start_init_walks_the_restore_gate() -> None:
    gw, rec = gateway(snap_start=True)
    thread, out = background(gw.next_invocation)
    rec.wait_for("restore_ready")
    gw.restore()
    rec.wait_for("ready")
    assert rec.kinds() == ["restore_ready", "resumed", "ready"]
    gw.deliver(invocation())
    assert finished(thread, out).status == 200


def test_extensions_gate_init_and_each_invocation() -> None:
    gw, rec = gateway()
    gw.expect(["ext"])
    registered = gw.register("ext", b'{"events": ["INVOKE", "SHUTDOWN"]}')
    assert registered.status == 200 and body(registered) == {"functionName": "f", "functionVersion": "$LATEST", "handler": "h"}
    ext_id = registered.headers["Lambda-Extension-Identifier"]
    assert gw.wait_registered(0)
    runtime, runtime_out = background(gw.next_invocation)
    with gw.cond:
        assert gw.cond.wait_for(lambda: gw.runtime == "Ready", WAIT_S)
    assert "ready" not in rec.kinds()  # the extension has not called next yet
    ext, ext_out = background(lambda: gw.extension_next(ext_id))
    _, _, _, fields = rec.wait_for("ready")
    assert fields["extensions"] == 1
    assert fields["lines"] == ["EXTENSION\tName: ext\tState: Ready\tEvents: [INVOKE,SHUTDOWN]\n"]
    gw.deliver(invocation())
    assert finished(runtime, runtime_out).status == 200
    event = body(finished(ext, ext_out))
    assert event["eventType"] == "INVOKE" and event["requestId"] == "r1" and event["tracing"]["value"] == "Root=1"
    assert gw.respond("r1", b"1", 1).status == 202
    assert "response" not in rec.kinds()  # the extension is still working on the invocation
    ext, ext_out = background(lambda: gw.extension_next(ext_id))
    rec.wait_for("response")
    shutdown = threading.Thread(target=lambda: gw.shutdown(int(time.time() * 1000) + WAIT_S * 1000), daemon=True)
    shutdown.start()
    assert body(finished(ext, ext_out))["eventType"] == "SHUTDOWN"
    assert shutdown.is_alive()  # until the extension calls next again
    background(lambda: gw.extension_next(ext_id))
    shutdown.join(WAIT_S)
    assert not shutdown.is_alive()


def test_extension_request_errors() -> None:
    gw, _ = gateway()
    assert body(gw.register("", b"{}"))["errorType"] == "Extension.InvalidExtensionName"
    assert body(gw.register("x", b"[]"))["errorType"] == "InvalidRequestFormat"
    assert body(gw.register("x", b'{"events": ["SHUTDOWN"]}'))["errorType"] == "Extension.InvalidEventType"  # internal
    assert gw.register("x", b'{"events": ["INVOKE"]}').status == 200
    assert body(gw.register("x", b"{}"))["errorType"] == "Extension.InvalidExtensionState"
    assert body(gw.extension_next(None))["errorType"] == "Extension.MissingExtensionIdentifier"
    assert body(gw.extension_next("nope"))["errorType"] == "Extension.InvalidExtensionIdentifier"
    unknown = gw.extension_next("00000000-0000-0000-0000-000000000000")
    assert body(unknown) == {"errorMessage": "Unknown extension 00000000-0000-0000-0000-000000000000",
                             "errorType": "Extension.UnknownExtensionIdentifier"}


def test_extension_failure_during_init_fails_it() -> None:
    gw, rec = gateway()
    gw.expect(["a"])
    gw.extension_failed("a", "Extension.Crash", "gone")
    assert not gw.wait_registered(0)
    _, payload, _, fields = rec.wait_for("init_error")
    assert fields["error_type"] == "Extension.Crash" and json.loads(payload)["errorMessage"] == "gone"


@pytest.mark.parametrize(("value", "families", "expected"), [
    ("Runtime.ImportModuleError", ("Runtime.", "Function."), "Runtime.ImportModuleError"),
    ("Function.X", ("Runtime.", "Function."), "Function.X"),
    ("ValueError", ("Runtime.", "Function."), "Runtime.Unknown"),
    (None, ("Runtime.", "Function."), "Runtime.Unknown"),
    ("Extension.Bad", ("Extension.",), "Extension.Bad"),
    ("Runtime.X", ("Extension.",), "Extension.Unknown"),
])
def test_valid_error_type(value: str | None, families: tuple[str, ...], expected: str) -> None:
    assert valid_error_type(value, families) == expected


def test_error_bodies() -> None:
    assert error_body(b'{"errorType": "T"}', "X") == b'{"errorType": "T"}'
    assert json.loads(error_body(b"text", "X")) == {"errorMessage": "text", "errorType": "X"}
    assert json.loads(error_without_cause(b'{"errorMessage": "m", "errorCause": {"paths": []}}')) == {"errorMessage": "m"}
    assert json.loads(error_without_cause(b"[")) == "Invalid error body"
