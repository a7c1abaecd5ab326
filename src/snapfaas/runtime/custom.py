"""The supervisor of a custom (``provided.*``) runtime: serves the Runtime and Extensions APIs
on the sandbox's own loopback and bridges them to the worker's frame channel.

Sequence (Lambda's, for a zip with a ``bootstrap``):

1. Bind the API on `API_HOST`:`API_PORT` (the environment's own network namespace, so nothing
   outside it can reach the address; if the port is taken, as under ``--sandbox-network
   host``, an ephemeral one) and export it as ``AWS_LAMBDA_RUNTIME_API``.
2. Start every executable in ``/opt/extensions`` (alphabetical order) and wait until each
   registered (`Gateway.wait_registered`); one that fails to start or exits first fails init
   (``Extension.LaunchError`` / ``Extension.Crash``).
3. Start the runtime: ``/var/task/bootstrap``, else ``/opt/bootstrap``
   (``Runtime.InvalidEntrypoint`` when there is none or it cannot be executed), with
   Lambda's environment (``_HANDLER``, ``LAMBDA_TASK_ROOT``, ``AWS_LAMBDA_RUNTIME_API``, ...)
   minus the supervisor's own variables, its stdout and stderr going to the function's log.
4. Read frames from the worker: ``invoke`` -> `Gateway.deliver`, ``restore`` ->
   `Gateway.restore`, ``shutdown`` -> SIGTERM to the runtime, SHUTDOWN to the extensions,
   wait for them until the deadline, then exit. When the runtime exits, the supervisor exits
   with its status (the worker reports ``Runtime.ExitError`` as on Lambda).

Stdlib only, like the rest of this package; the HTTP server is ``http.server``'s threading
server speaking HTTP/1.1 (the runtime interface clients keep their connection open).
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from .bootstrap import EXTENSIONS_DIR, Channel, private_inbound
from .runtime_api import EXTENSION_PREFIX, RUNTIME_PREFIX, Gateway, Invocation, Reply, error_reply

API_HOST = "127.0.0.1"
API_PORT = 9002  # 9001 is the daemon's per-environment services listener (sandbox/network.py)
TASK_ROOT = "/var/task"
BOOTSTRAPS = ("/var/task/bootstrap", "/opt/bootstrap")
RESPONSE_LIMIT_VAR = "_SNAPFAAS_RESPONSE_LIMIT"  # set by the worker: the largest response body
PRIVATE_VARS = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")  # the supervisor's, not the function's (nor any _SNAPFAAS* one)
DEFAULT_RESPONSE_LIMIT = 6 * 1024 * 1024 + 100
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # any body beyond this is refused unread
CAUSE_CONTENT_TYPE = "application/vnd.aws.lambda.error.cause+json"
INVALID_BODY = Reply(400, b'{"errorMessage":"Invalid request body","errorType":"InvalidRequestFormat"}')  # RAPID's bytes, compact


def discover_extensions(directory: str = EXTENSIONS_DIR) -> list[str]:
    """Paths of the executables directly in `directory`, sorted by name (Lambda's order)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:  # no layer provides extensions
        return []
    paths = [os.path.join(directory, name) for name in names]
    return [p for p in paths if os.path.isfile(p) and os.access(p, os.X_OK)]


def find_bootstrap(candidates: tuple[str, ...] = BOOTSTRAPS) -> str | None:
    """The first bootstrap that exists (executable or not: exec reports the latter)."""
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def child_environ(environ: Mapping[str, str], api: str) -> dict[str, str]:
    """What the runtime and the extensions see: Lambda's variables plus the API address."""
    out = {k: v for k, v in environ.items() if k not in PRIVATE_VARS and not k.startswith("_SNAPFAAS")}
    out["AWS_LAMBDA_RUNTIME_API"] = api
    return out


def read_body(handler: http.server.BaseHTTPRequestHandler, limit: int) -> tuple[bytes | None, int]:
    """The request body (Content-Length or chunked) and its size; None when it is over `limit`
    (not read: the connection is closed after the reply)."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks, size = [], 0
        while True:
            line = handler.rfile.readline(1024)
            length = int(line.split(b";")[0].strip() or b"0", 16)
            if length == 0:
                while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            size += length
            if size > limit:
                handler.close_connection = True
                return None, size
            chunks.append(handler.rfile.read(length))
            handler.rfile.readline(1024)
        return b"".join(chunks), size
    size = int(handler.headers.get("Content-Length") or 0)
    if size < 0:
        raise ValueError(f"a negative Content-Length ({size})")
    if size > limit:
        handler.close_connection = True
        return None, size
    return (handler.rfile.read(size) if size else b""), size


class ApiHandler(http.server.BaseHTTPRequestHandler):
    """Routes HTTP requests to the server's `Gateway`."""

    protocol_version = "HTTP/1.1"
    # headers and body leave in separate writes: with Nagle's algorithm a keep-alive client
    # (awslambdaric's curl) would wait for its delayed ACK, ~40 ms per reply
    disable_nagle_algorithm = True
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """No access log: the function's log is the runtime's and the extensions' output."""

    def _reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.body or reply.status != 200:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def _not_found(self) -> None:
        self._reply(Reply(404, b"404 page not found\n", content_type="text/plain; charset=utf-8"))

    def _body(self, limit: int = MAX_REQUEST_BYTES) -> tuple[bytes | None, int]:
        try:
            return read_body(self, limit)
        except ValueError:  # a malformed chunk size
            self.close_connection = True
            return None, -1

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        gateway = self.server.gateway
        path = self.path.split("?", 1)[0]
        self._body()  # a GET body is ignored
        if path.startswith(RUNTIME_PREFIX) and not gateway.runtime_api:
            self._not_found()
        elif path == RUNTIME_PREFIX + "/invocation/next":
            self._reply(gateway.next_invocation())
        elif path == RUNTIME_PREFIX + "/restore/next" and gateway.snap_start:
            self._reply(gateway.restore_next())
        elif path == EXTENSION_PREFIX + "/event/next":
            self._reply(gateway.extension_next(self.headers.get("Lambda-Extension-Identifier")))
        elif self._known(path):
            self._reply(Reply(405, b"", content_type="text/plain"))
        else:
            self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        gateway = self.server.gateway
        path = self.path.split("?", 1)[0]
        parts = path.split("/")
        if path.startswith(RUNTIME_PREFIX) and not gateway.runtime_api:
            self._body()
            self._not_found()
            return
        invocation = len(parts) == 6 and path.startswith(RUNTIME_PREFIX + "/invocation/") and parts[5] in ("response", "error")
        if invocation and parts[5] == "response":
            body, size = self._body(gateway.response_limit)
            if size < 0:
                self._reply(INVALID_BODY)
                return
            self._reply(gateway.respond(parts[4], body, size))
            return
        body, size = self._body()
        if size < 0:
            self._reply(INVALID_BODY)
            return
        if body is None:
            self._reply(error_reply(413, "RequestEntityTooLarge", f"Exceeded maximum allowed payload size ({MAX_REQUEST_BYTES} bytes)."))
            return
        error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
        extension = self.headers.get("Lambda-Extension-Identifier")
        if invocation:
            cause = self.headers.get("Content-Type", "").split(";")[0].strip() == CAUSE_CONTENT_TYPE
            self._reply(gateway.fail_invocation(parts[4], body, error_type, cause))
        elif path == RUNTIME_PREFIX + "/init/error":
            self._reply(gateway.init_error(body, error_type))
        elif path == RUNTIME_PREFIX + "/restore/error" and gateway.snap_start:
            self._reply(gateway.restore_error(body, error_type))
        elif path == EXTENSION_PREFIX + "/register":
            self._reply(gateway.register(self.headers.get("Lambda-Extension-Name"), body))
        elif path in (EXTENSION_PREFIX + "/init/error", EXTENSION_PREFIX + "/exit/error"):
            kind = self.headers.get("Lambda-Extension-Function-Error-Type")
            self._reply(gateway.extension_error(extension, body, kind, path.endswith("/exit/error")))
        elif self._known(path):
            self._reply(Reply(405, b"", content_type="text/plain"))
        else:
            self._not_found()

    def _known(self, path: str) -> bool:
        known = {RUNTIME_PREFIX + "/invocation/next", RUNTIME_PREFIX + "/init/error", EXTENSION_PREFIX + "/register",
                 EXTENSION_PREFIX + "/event/next", EXTENSION_PREFIX + "/init/error", EXTENSION_PREFIX + "/exit/error"}
        if self.server.gateway.snap_start:
            known |= {RUNTIME_PREFIX + "/restore/next", RUNTIME_PREFIX + "/restore/error"}
        return path in known

    do_PUT = do_DELETE = do_PATCH = _not_found  # noqa: N815


class ApiServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, gateway: Gateway, host: str = API_HOST, port: int = API_PORT) -> None:
        self.gateway = gateway
        try:
            super().__init__((host, port), ApiHandler)
        except OSError:  # the port is taken (a shared network namespace): any free one
            super().__init__((host, 0), ApiHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (a runtime killed in a long poll, say) is not the
        function's business: socketserver would print a traceback into its log."""

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"


class Children:
    """The processes a supervisor started (extensions, the runtime): stdout and stderr on the
    function's log (fd 2: fd 1 carries frames), killed together when the environment ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping = False  # set once the environment ends: exits are expected from now on

    def spawn(self, path: str, environ: Mapping[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([path], env=dict(environ), cwd=TASK_ROOT if os.path.isdir(TASK_ROOT) else None,
                                stdin=subprocess.DEVNULL, stdout=2, stderr=2, close_fds=True)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        self.stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()


def start_extensions(gateway: Gateway, children: Children, directory: str, environ: Mapping[str, str]) -> bool:
    """Start the extensions in `directory` and wait until each registered; False when init
    failed meanwhile (an extension could not start or exited: `Gateway.extension_failed`)."""
    paths = discover_extensions(directory)
    gateway.expect([os.path.basename(p) for p in paths])
    for path in paths:
        name = os.path.basename(path)
        try:
            proc = children.spawn(path, environ)
        except OSError as exc:
            gateway.extension_failed(name, "Extension.LaunchError", f"fork/exec {path}: {(exc.strerror or str(exc)).lower()}")
            return False
        threading.Thread(target=_watch_extension, args=(gateway, children, name, proc), daemon=True,
                         name=f"ext-{name}").start()
    return gateway.wait_registered()


def _watch_extension(gateway: Gateway, children: Children, name: str, proc: subprocess.Popen[bytes]) -> None:
    status = proc.wait()
    if children.stopping:
        gateway.extension_exited(name)
    else:
        gateway.extension_failed(name, "Extension.Crash", f"Extension {name} exited before the environment was shut "
                                                          f"down (exit status {exit_code_of(status)})")


class FrameEmitter:
    """The `Gateway`'s way out: one frame to the worker, after `lines` for the function's log
    and the log mark of the phase that ends with it, under one lock (API threads emit)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.lock = threading.Lock()

    def __call__(self, kind: str, payload: bytes = b"", mark: str | None = None, lines: list[str] | None = None,
                 **fields: Any) -> None:
        with self.lock:
            for line in lines or []:
                self.channel.log.write(line)
            if mark is not None:
                self.channel.mark_logs(mark)
            self.channel.send(kind, payload, **fields)


class Supervisor:
    """Owns the channel, the API server, the runtime and extension processes."""

    def __init__(self, channel: Channel, environ: Mapping[str, str], extensions_dir: str = EXTENSIONS_DIR,
                 bootstraps: tuple[str, ...] = BOOTSTRAPS) -> None:
        self.channel = channel
        self.environ = dict(environ)
        self.extensions_dir = extensions_dir
        self.bootstraps = bootstraps
        self.emit = FrameEmitter(channel)
        limit = int(environ.get(RESPONSE_LIMIT_VAR) or DEFAULT_RESPONSE_LIMIT)
        self.gateway = Gateway(self.emit, snap_start=environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start",
                               response_limit=limit, metadata=register_metadata(environ))
        self.server = ApiServer(self.gateway)
        self.children = Children()
        self.runtime: subprocess.Popen[bytes] | None = None

    def start_runtime(self, environ: Mapping[str, str]) -> bool:
        path = find_bootstrap(self.bootstraps)
        if path is None:
            self.gateway.init_failed("Runtime.InvalidEntrypoint",
                                     f"Couldn't find valid bootstrap(s): [{' '.join(self.bootstraps)}]")
            return False
        try:
            self.runtime = self.children.spawn(path, environ)
        except OSError as exc:
            self.gateway.init_failed("Runtime.InvalidEntrypoint", f"fork/exec {path}: {(exc.strerror or str(exc)).lower()}")
            return False
        threading.Thread(target=self._watch_runtime, daemon=True, name="runtime").start()
        return True

    def _watch_runtime(self) -> None:
        assert self.runtime is not None
        status = self.runtime.wait()
        if not self.children.stopping:
            self.exit(exit_code_of(status))

    def exit(self, code: int) -> None:
        """End the environment: every child killed, this process gone with `code`."""
        self.children.kill_all()
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)

    def serve_frames(self) -> None:
        while True:
            frame = self.channel.receive()
            if frame is None:
                self.exit(0)
                return
            header, payload = frame
            if header["t"] == "invoke":
                self.gateway.deliver(Invocation.from_frame(header, payload))
            elif header["t"] == "restore":
                self.gateway.restore()
            elif header["t"] == "shutdown":
                self.shutdown(int(header["deadline_ms"]))

    def shutdown(self, deadline_ms: int) -> None:
        """Lambda's Shutdown phase: SIGTERM to the runtime, SHUTDOWN to the extensions, wait
        for them until the deadline, then end."""
        self.children.stopping = True
        if self.runtime is not None and self.runtime.poll() is None:
            self.runtime.send_signal(signal.SIGTERM)
        self.gateway.shutdown(deadline_ms)
        if self.runtime is not None:  # the runtime may finish its SIGTERM handling until the deadline too
            try:
                self.runtime.wait(max(deadline_ms / 1000 - time.time(), 0))
            except subprocess.TimeoutExpired:
                pass
        self.exit(0)

    def run(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True, name="runtime-api").start()
        environ = child_environ(self.environ, self.server.address)
        if not start_extensions(self.gateway, self.children, self.extensions_dir, environ) or not self.start_runtime(environ):
            self.exit(1)
        self.serve_frames()


def register_metadata(environ: Mapping[str, str]) -> dict[str, str]:
    """The body of ``/extension/register``'s answer."""
    return {"functionName": environ.get("AWS_LAMBDA_FUNCTION_NAME", ""),
            "functionVersion": environ.get("AWS_LAMBDA_FUNCTION_VERSION", ""),
            "handler": environ.get("_HANDLER", "")}


def exit_code_of(status: int) -> int:
    """Popen's status (negative: killed by that signal) in the shell convention."""
    return 128 - status if status < 0 else status


def main() -> None:
    outbound = os.fdopen(1, "wb", buffering=0, closefd=False)
    inbound = private_inbound()
    sys.stdout = sys.stderr
    channel = Channel(inbound, outbound, sys.stderr)
    Supervisor(channel, os.environ).run()

