"""Extensions for Python runtimes: the Extensions API served from the runtime process.

Python's runtime talks to the worker over the frame channel directly (`bootstrap`); with
executables in ``/opt/extensions`` it gets an `ExtensionChannel` instead, a `Channel` whose
frames go through the same `Gateway` a custom runtime's supervisor uses:

- before the handler module is imported, the extensions start (``AWS_LAMBDA_RUNTIME_API`` is
  exported for them and for the function) and init waits until each registered;
- ``ready`` goes out once every extension called ``/extension/event/next`` (with their
  EXTENSION lines in the log), an invocation's ``response``/``error`` once every extension
  subscribed to INVOKE called it again;
- a ``shutdown`` frame runs the Shutdown phase (SHUTDOWN events until the deadline), then the
  process exits.

The `bootstrap` loop is unchanged: it calls `receive`, `send` and `mark_logs` as on a plain
channel. Only on-demand environments get extensions this way (a SnapStart init does not start
them: the checkpoint would have to hold their processes and the API's listening socket).
"""

from __future__ import annotations

import os
import threading
from collections.abc import MutableMapping
from typing import Any

from .bootstrap import Channel
from .custom import EXTENSIONS_DIR, ApiServer, Children, FrameEmitter, child_environ, discover_extensions, register_metadata, start_extensions
from .runtime_api import Gateway, Invocation

NO_LIMIT = 1 << 62  # the worker enforces the response limit on the frame itself


class ExtensionChannel(Channel):
    """A `Channel` whose invocations and phase ends wait for the extensions (see module doc)."""

    def __init__(self, channel: Channel, environ: MutableMapping[str, str]) -> None:
        super().__init__(channel.inbound, channel.outbound, channel.log)
        self.raw = channel  # the worker's channel, beneath this one's overrides
        self._emit = FrameEmitter(channel)
        self.gateway = Gateway(self._emit, snap_start=False, response_limit=NO_LIMIT,
                               metadata=register_metadata(environ), runtime_api=False)
        self.server = ApiServer(self.gateway)
        self.children = Children()
        self.environ = environ

    def start(self, directory: str = EXTENSIONS_DIR) -> bool:
        """Serve the API, start the extensions and wait for their registration; False when
        init failed (``init_error`` went out)."""
        threading.Thread(target=self.server.serve_forever, daemon=True, name="extensions-api").start()
        self.environ["AWS_LAMBDA_RUNTIME_API"] = self.server.address
        ok = start_extensions(self.gateway, self.children, directory, child_environ(self.environ, self.server.address))
        threading.Thread(target=self._read_frames, daemon=True, name="frames").start()
        return ok

    def _read_frames(self) -> None:
        while True:
            frame = self.raw.receive()
            if frame is None:
                self.gateway.close()
                return
            header, payload = frame
            if header["t"] == "invoke":
                self.gateway.deliver(Invocation.from_frame(header, payload))
            elif header["t"] == "shutdown":
                self.children.stopping = True
                self.gateway.shutdown(int(header["deadline_ms"]))
                self.children.kill_all()
                self.log.flush()
                os._exit(0)

    # -- the runtime's side ------------------------------------------------------------------
    def receive(self) -> tuple[dict[str, Any], bytes] | None:
        invocation = self.gateway.take_invocation()
        if invocation is None:
            return None
        header = {"t": "invoke", "n": len(invocation.payload), "id": invocation.request_id, "arn": invocation.arn,
                  "deadline_ms": invocation.deadline_ms, "client_context": invocation.client_context,
                  "trace_id": invocation.trace_id, "identity": invocation.identity, "tenant_id": invocation.tenant_id}
        return header, invocation.payload

    def mark_logs(self, tag: str) -> None:
        """Marks of init and of invocations go out with their frame, once the extensions are
        done too (`Gateway` emits them); other phases' marks at once."""
        if tag == "init" or (self.gateway.current is not None and tag == self.gateway.current.request_id):
            return
        super().mark_logs(tag)

    def logs_read(self) -> bool:
        """Never: the extensions' log output may still be on its way (marks go out with the
        gateway's frames)."""
        return False

    def send(self, kind: str, payload: bytes = b"", **fields: Any) -> None:
        if kind == "ready":
            self.gateway.runtime_ready()
        elif kind == "response":
            self.gateway.respond(fields["id"], payload, len(payload))
        elif kind == "error":
            self.gateway.fail_invocation(fields["id"], payload, fields.get("error_type"), False, normalize=False)
        elif kind == "init_error":
            self.gateway.init_error(payload, fields.get("error_type"), normalize=False)
        else:
            self._emit(kind, payload, **fields)


def wrap(channel: Channel, environ: MutableMapping[str, str], snap_start: bool) -> Channel:
    """`channel` itself, or an `ExtensionChannel` with the extensions started when
    ``/opt/extensions`` has any (on-demand init only). Exits when they fail init."""
    if snap_start or not discover_extensions():
        return channel
    extended = ExtensionChannel(channel, environ)
    if not extended.start():
        extended.children.kill_all()
        channel.log.flush()
        os._exit(1)
    return extended
