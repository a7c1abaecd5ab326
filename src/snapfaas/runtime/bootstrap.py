"""The runtime's main loop: init once, then serve invocations one at a time.

Sequence (Lambda's Runtime API semantics over the stdio channel of `protocol`):

1. init: import the handler module and resolve the handler. Failure -> ``init_error`` frame,
   exit 1. A SnapStart init first drops the variables only a deterministic init needed
   (`drop_init_variables`), runs the module's leading imports first and loads its code compiled
   in a child (`preimport`), so that versions share memory (snapshot/determinism.py on the worker side).
2. SnapStart (``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``) only: send ``hooks``, run before-snapshot hooks
   (LIFO), break TCP connections in place (`sockets.sweep`; UDP and listening sockets stay),
   clear ``ADDR_NO_RANDOMIZE`` (`restore_aslr`), send ``restore_ready`` and block until a ``restore`` frame arrives (the checkpoint is
   taken while blocked); then put broken connections on those fds (`sockets.break_connections`),
   reseed the RNGs if the ``restore`` frame asks for it (``reseed``: ``--reseed-after-restore``)
   and run after-restore hooks (FIFO). Failures send
   ``init_error`` (exit 64) or ``restore_error`` (exit 65).
3. ``ready``, then for each ``invoke`` frame: call the handler, answer ``response`` or
   ``error``; from the second one on at a lower CPU priority (`lower_priority`).

Logging: `applog` puts Lambda's handler on the root logger before init (Text or JSON lines
with the current request id); errors the runtime reports are logged in the same format.

Randomness after a restore: every restored copy of a snapshot starts from the same memory,
RNG states included. As on AWS, nothing is reseeded by default: restored copies draw the same
numbers until the function re-seeds ("generate unique content after initialization"). With
``--reseed-after-restore`` (the ``restore`` frame's ``reseed`` field) `reseed` gives Python's `random`, numpy's global RNG and the OpenSSL the
interpreter links (the one ``ssl``/``hashlib`` use; C extensions linking that same shared
libcrypto share it) fresh OS entropy before the after-restore hooks.

It cannot reach a *separate* OpenSSL. ``cryptography``'s wheels link their own copy
statically into their Rust extension (``cryptography.hazmat.bindings._rust``), and
``ssl.RAND_add`` does not touch it. After a restore that copy's DRBG state is the snapshot's
(same pid, so its fork detection does not fire either); it reseeds only on its own schedule
(OpenSSL 3 reseeds a thread's DRBG after 2**16 requests or 7 minutes), so until then restored
copies drawing from it produce the *same* bytes: RSA/EC/Ed25519 key generation, and
anything else ``cryptography`` takes from OpenSSL's RNG. ``os.urandom``/``secrets`` are
unaffected (the kernel's RNG), and so are ``AESGCM.generate_key``/``Fernet.generate_key``,
which use ``os.urandom``. A SnapStart function that imports ``cryptography`` and generates keys
after a restore should feed that OpenSSL fresh entropy in an after-restore hook::

    import os
    from cryptography.hazmat.bindings._rust import _openssl
    from snapshot_restore_py import register_after_restore

    @register_after_restore
    def reseed_cryptography():
        seed = os.urandom(48)
        _openssl.lib.RAND_add(seed, len(seed), 48.0)

(or generate its secret material with ``os.urandom``/``secrets`` only).
"""

from __future__ import annotations

import fcntl
import importlib
import json
import json.encoder as json_encoder
import os
import sys
import termios
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TextIO

from . import applog, protocol
from .context import LambdaContext
from .faults import Fault, error_of

if TYPE_CHECKING:
    from .phases import PhaseClock

Handler = Callable[[Any, LambdaContext], Any]
EXIT_INIT_ERROR = 1
EXIT_BEFORE_SNAPSHOT = 64
EXIT_AFTER_RESTORE = 65
EXTENSIONS_DIR = "/opt/extensions"  # executables there run next to the runtime (`extension_host`)
INVOKE_NICE = 10  # the invoke loop's nice value (`lower_priority`)


# The marks of the fixed phases, encoded once (`Channel.mark_logs`).
FIXED_MARKS = {tag: (protocol.LOG_MARK + tag + "\n").encode() for tag in ("init", "restore")}


class Channel:
    """The runtime's end of the stdio channel."""

    def __init__(self, inbound: BinaryIO, outbound: BinaryIO, log: TextIO) -> None:
        self.inbound, self.outbound, self.log = inbound, outbound, log

    def send(self, kind: str, payload: bytes = b"", **fields: Any) -> None:
        self.outbound.write(protocol.encode(kind, payload, **fields))
        self.outbound.flush()

    def receive(self) -> tuple[dict[str, Any], bytes] | None:
        return protocol.read_frame(self.inbound)

    def mark_logs(self, tag: str) -> None:
        """Tell the worker that everything logged during `tag` has been written.

        After the flush the mark is one write of its bytes to the log's descriptor (prebuilt
        for the fixed phases, `FIXED_MARKS`), not through the text stream: the after-restore
        mark then touches no encoder, text or buffer state (fewer private pages per restored
        environment). A log without a descriptor gets it through the stream."""
        sys.stdout.flush()
        self.log.flush()
        mark = FIXED_MARKS.get(tag)
        if mark is None:
            mark = (protocol.LOG_MARK + tag + "\n").encode()
        try:
            fd = self.log.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
            self.log.write(mark.decode())
            self.log.flush()
            return
        while mark:  # a blocking pipe takes a mark (< PIPE_BUF) whole; a short write is retried
            mark = mark[os.write(fd, mark):]

    def logs_read(self) -> bool:
        """Whether everything logged so far (Python's buffers flushed first) has already left
        the log pipe. Only meaningful when the worker reads that pipe itself (the invoke
        frame's ``log_direct``): the worker has then logged it all, and a response sent with
        ``logs_read`` needs no log mark before it (one write and one worker wake-up less per
        invocation). False when it cannot tell."""
        sys.stdout.flush()
        self.log.flush()
        try:
            unread = fcntl.ioctl(self.log.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except (OSError, ValueError):  # not a pipe (or closed): mark as always
            return False
        return int.from_bytes(unread, sys.byteorder) == 0


def load_handler(spec: str, early_imports: bool = False) -> Handler:
    """Import ``module.function`` the way Lambda's Python runtime does, with its error types.
    `early_imports` (SnapStart init): run the module's leading imports first and load code
    compiled in a child (`preimport`)."""
    try:
        module_name, func_name = spec.rsplit(".", 1)
    except ValueError as exc:
        raise Fault(Fault.MALFORMED_HANDLER, f"Bad handler '{spec}': {exc}") from exc
    if module_name.split(".")[0] in sys.builtin_module_names:
        raise Fault(
            Fault.BUILTIN_CONFLICT,
            f"Cannot use built-in module {module_name} as a handler module",
        )
    module_path = module_name.replace("/", ".")
    try:
        if early_imports:
            from . import preimport

            with preimport.prepared(module_path, os.getcwd()):
                module = importlib.import_module(module_path)
        else:
            module = importlib.import_module(module_path)
    except ImportError as exc:
        raise Fault(Fault.IMPORT_MODULE, f"Unable to import module '{module_path}': {exc}") from exc
    except SyntaxError as exc:
        trace = [f'  File "{exc.filename}" Line {exc.lineno}\n', f"    {exc.text}"] if exc.text else []
        raise Fault(Fault.SYNTAX, f"Syntax error in module '{module_path}': {exc}", trace) from exc
    handler = getattr(module, func_name, None)
    if handler is None:
        raise Fault(Fault.HANDLER_NOT_FOUND, f"Handler '{func_name}' missing on module '{module_path}'")
    return handler


HOOKS_MODULE = "snapshot_restore_py"


def run_hooks(kind: str) -> None:
    """Run the snapshot_restore_py hooks of `kind` ("before" LIFO, "after" FIFO).

    Only if the function imported the module: a hook is registered through it, so without it
    there is nothing to run, and importing it here would compile it (no bytecode is written in
    the sandbox) in every restored copy (torch: 165 -> 154 page faults between the resume and
    the end of the hooks; the CPU, ~1.1 ms, is within noise)."""
    hooks = sys.modules.get(HOOKS_MODULE)
    if hooks is None:
        return
    if kind == "before":
        registry = hooks.get_before_snapshot()
        while registry:
            func, args, kwargs = registry.pop()
            func(*args, **kwargs)
    else:
        for func, args, kwargs in list(hooks.get_after_restore()):
            func(*args, **kwargs)


INIT_VARS = "_SNAPFAAS_INIT_VARS"  # set by the worker (snapshot/determinism.py): variables only init needed
ADDR_NO_RANDOMIZE = 0x0040000
PERSONALITY_QUERY = 0xFFFFFFFF


def drop_init_variables(environ: MutableMapping[str, str]) -> None:
    """Remove the variables the worker added for a deterministic SnapStart init (the hash
    seed, glibc tunables: read at interpreter start, not meant for user code or the programs
    it runs) and their list."""
    for name in environ.pop(INIT_VARS, "").split(","):
        if name:
            environ.pop(name, None)


def _personality() -> tuple[Any, int] | None:
    """libc and this process's personality flags, or None when they cannot be had."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    current = libc.personality(ctypes.c_ulong(PERSONALITY_QUERY))
    return None if current == -1 else (libc, current)


def fixed_layout() -> bool:
    """Whether this process runs without address space randomization (a publish's init under
    ``--no-snapshot-init-aslr``)."""
    found = _personality()
    return found is not None and bool(found[1] & ADDR_NO_RANDOMIZE)


def restore_aslr() -> None:
    """Clear ``ADDR_NO_RANDOMIZE`` (a deterministic init runs without ASLR) before the
    checkpoint: it takes effect at the next exec, so programs a restored function runs get a
    randomized layout. This process keeps its layout (the snapshot's)."""
    import ctypes

    found = _personality()  # None: no libc to call, nothing was changed either
    if found is not None and found[1] & ADDR_NO_RANDOMIZE:
        libc, current = found
        libc.personality(ctypes.c_ulong(current & ~ADDR_NO_RANDOMIZE))


OPENSSL_MODULES = ("_ssl", "_hashlib")  # Python's bindings of the interpreter's (shared) OpenSSL


def reseed() -> None:
    """Make restored copies of one snapshot diverge: fresh OS entropy for the global RNGs.

    numpy's global RNG exists only once `numpy.random` is imported (numpy 2 imports it lazily,
    on first attribute access); if init did not import it, its first use after the restore
    seeds it from OS entropy anyway, and importing it here would cost ~10 ms per restore.
    OpenSSL's DRBG follows the same switch: once init loaded the interpreter's OpenSSL
    (`OPENSSL_MODULES`), 48 fresh bytes go into it with ``RAND_add`` (a restored copy keeps the
    pid of the snapshotted process, so OpenSSL's own fork detection never reseeds it); if
    init did not load it, its DRBG is first seeded after the restore, from OS entropy.
    """
    import random

    random.seed(os.urandom(32))
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed(int.from_bytes(os.urandom(4), "little"))
    if any(name in sys.modules for name in OPENSSL_MODULES):
        import ssl

        ssl.RAND_add(os.urandom(48), 48.0)


def _json_default(value: Any) -> Any:
    """What Lambda's Python runtime serializes beyond plain JSON: Decimal (DynamoDB numbers)."""
    import decimal

    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_RESULT_ENCODER = json.JSONEncoder(default=_json_default)  # built once: json.dumps with `default` builds one per call
# The C encoder `_RESULT_ENCODER.encode` builds on every call, built once with its own
# circular-reference markers (emptied after a failed encoding, which can leave some behind):
# the same text, without JSONEncoder's Python methods, i.e. fewer objects touched per invoke,
# each a page written in every restored environment. None where json has no C accelerator.
_RESULT_MARKERS: dict[int, Any] = {}
_C_RESULT_ENCODER = (json_encoder.c_make_encoder(_RESULT_MARKERS, _json_default, json_encoder.encode_basestring_ascii,
                                                 None, ": ", ", ", False, False, True)
                     if json_encoder.c_make_encoder is not None else None)


def encode_result(result: Any) -> bytes:
    """The handler's result as Lambda's runtime serializes it (``json.dumps`` with Decimal
    support); Fault MARSHAL if it cannot be."""
    try:
        if _C_RESULT_ENCODER is None:
            return _RESULT_ENCODER.encode(result).encode()
        try:
            return "".join(_C_RESULT_ENCODER(result, 0)).encode()
        except BaseException:
            _RESULT_MARKERS.clear()
            raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise Fault(Fault.MARSHAL, f"Unable to marshal response: {exc}") from exc


def serve(channel: Channel, handler: Handler, environ: Mapping[str, str], clock: PhaseClock | None = None,
          nice: int | None = None) -> None:
    """Answer invocations until the channel closes. `clock` (the phases debug switch): its
    phases so far and the first invocation's go to that invocation's log, then it is dropped.
    `nice`: the invoke loop's nice value (`lower_priority`), set once the first invocation is
    answered: init, a restore and the first invocation after either (what a cold start or a
    restore is measured by, and what a burst of restores waits for) keep the priority the
    process started with; warm invocations run at `nice`."""
    channel.send("ready")
    invoked = False
    while True:
        if nice is not None and invoked:
            lower_priority(nice)
            nice = None
        frame = channel.receive()
        if frame is None:
            return
        header, payload = frame
        if header["t"] == "inspect":  # only ever sent by `snapfaas snapstart verify`, to its own copies
            loaded = frozenset(sys.modules)
            from . import inspection

            task_root = environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
            channel.send("inspection", json.dumps(inspection.fingerprint(task_root, loaded)).encode())
            continue
        if header["t"] != "invoke":
            continue
        invoked = True
        request_id = header["id"]
        applog.RequestId.current = request_id
        environ_trace = header.get("trace_id")
        if environ_trace:
            os.environ[TRACE_VARIABLE] = environ_trace
        else:
            clear_trace()
        try:
            event = protocol.decode_json(payload) if payload else None
            context = LambdaContext(header, environ)
            if clock is not None:
                clock.mark("invoke read")
            result = handler(event, context)
            body = encode_result(result)
        except Exception as exc:  # user code may raise anything; it becomes Lambda's error object
            error = error_of(exc, request_id)
            channel.log.write(applog.error_entry(error, environ))
            if clock is not None:
                _report_phases(channel, clock)
                clock = None
            channel.mark_logs(request_id)
            channel.send("error", json.dumps(error).encode(), id=request_id, error_type=error["errorType"])
            continue
        if clock is not None:
            _report_phases(channel, clock)
            clock = None
        if header.get("log_direct") and channel.logs_read():
            channel.send("response", body, id=request_id, logs_read=True)
            continue
        channel.mark_logs(request_id)
        channel.send("response", body, id=request_id)


TRACE_VARIABLE = "_X_AMZN_TRACE_ID"  # the invocation's X-Ray trace header, as on Lambda
_TRACE_KEY = os.environ.encodekey(TRACE_VARIABLE) if hasattr(os.environ, "encodekey") else None


def clear_trace() -> None:
    """Remove `TRACE_VARIABLE` from the environment if it is there. ``os.environ.pop(name,
    None)`` raises and catches a KeyError inside when it is not, which it usually is not (the
    platform sends no trace header yet): the environment's own mapping is asked first."""
    data = getattr(os.environ, "_data", None)
    if _TRACE_KEY is None or not isinstance(data, dict) or _TRACE_KEY in data:
        os.environ.pop(TRACE_VARIABLE, None)


PHASES_SWITCH = "SNAPFAAS_RUNTIME_PHASES"  # phases.SWITCH (that module is imported only when the switch is on)


def phase_clock(environ: Mapping[str, str]) -> PhaseClock | None:
    """A `phases.PhaseClock` if the function's environment turns the phases log on, else None."""
    if environ.get(PHASES_SWITCH) != "1":
        return None
    from .phases import PhaseClock

    return PhaseClock()


def _report_phases(channel: Channel, clock: PhaseClock) -> None:
    """End the first invocation's phase and log every phase of `clock`."""
    clock.mark("first invoke")
    channel.log.write(clock.report())


def shrink_heap() -> None:
    """Prepare the heap for the checkpoint: collect cyclic garbage, give free memory back to
    the kernel (CRIU dumps each resident anonymous page), then freeze the garbage collector's
    view of what init built.

    Restored environments map the snapshot's pages copy-on-write, so writing to an init-time
    object costs a page copy. A full collection after the restore would write the GC header
    of every object init created (~all of a torch heap); `gc.freeze()` moves them to the
    permanent generation, which collections skip - the pattern CPython documents for
    fork-without-exec servers. Trade-off: cycles among init-time objects that become garbage
    later are not collected."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    gc.freeze()


def fail(channel: Channel, kind: str, phase: str, error: dict[str, Any], exit_code: int) -> NoReturn:
    """Report a phase-level failure (``init_error`` / ``restore_error``) and exit."""
    channel.log.write(applog.error_entry(error, os.environ))
    channel.mark_logs(phase)
    channel.send(kind, json.dumps(error).encode(), error_type=error["errorType"])
    sys.exit(exit_code)


def hook_fault(error_type: str, exc: BaseException) -> dict[str, Any]:
    return Fault(error_type, f"{type(exc).__name__}: {exc}", error_of(exc, None)["stackTrace"]).to_error("")


REHEARSAL_VARIABLE = "_SNAPFAAS_REHEARSAL"
# Python 3.11 quickens a code object after 8 calls (each call before that writes the code
# object's warm-up counter) and specializes an instruction after ~32 more runs of it (each run
# before that writes the instruction's counter): what runs fewer times before the checkpoint
# writes its code (in libpython's .data for the frozen os/_collections_abc code) in every
# restored copy. 48 runs quicken and specialize what the rehearsal runs.
REHEARSALS = 48
# a frame of each shape the resumed process reads first: the restore frame, the first invoke
REHEARSAL_FRAMES = (protocol.encode("restore", b'{"AWS_ACCESS_KEY_ID":"x"}', connections="closed")
                    + protocol.encode("invoke", b"{}", id="x", deadline_ms=0, arn="x"))


def rehearse(channel: Channel, runs: int = REHEARSALS) -> None:
    """Before the checkpoint: run `runs` times what every restored copy runs first after the
    resume and on its first invoke, without its effects: read and decode frames, send a frame
    and a log mark (a channel of the same stream types as the real one: frames read from
    memory, frames and marks written to a pipe nobody reads, closed after), break no
    connections, encode a result, build an invocation context, set and remove an environment
    variable, ask whether the log pipe is read. A first run builds things once (the context
    class's shared attribute keys, type attribute caches, glibc's own environment array) and
    further runs quicken and specialize the code (`REHEARSALS`): in the snapshot, not written
    again in every restored environment (fewer private pages per environment: measured ~80
    KiB for torch for one run)."""
    import io

    from . import sockets

    read_end, write_end = os.pipe()  # 48 frames and marks fit in its buffer: writes never block
    try:
        with (os.fdopen(write_end, "wb", buffering=0, closefd=False) as sink,
              open(write_end, "w", buffering=1, encoding="utf-8", closefd=False) as log):
            rehearsal = Channel(io.BytesIO(), sink, log)
            for _ in range(runs):
                rehearsal.inbound = io.BufferedReader(io.BytesIO(REHEARSAL_FRAMES))
                while (frame := rehearsal.receive()) is not None:
                    header, payload = frame
                    header.get("connections", "closed")
                    protocol.decode_json(payload)
                rehearsal.send("resumed")
                sockets.break_connections([], "closed")
                rehearsal.mark_logs("restore")
                encode_result({"statusCode": 200})
                LambdaContext({"id": "", "deadline_ms": 0}, os.environ)
                os.environ[REHEARSAL_VARIABLE] = "1"
                os.environ.pop(REHEARSAL_VARIABLE, None)
                channel.logs_read()
    finally:
        os.close(read_end)
        os.close(write_end)


def snap_start_barrier(channel: Channel, clock: PhaseClock | None = None) -> None:
    channel.send("hooks")  # the publish's progress: init code done, before-snapshot hooks next
    try:
        run_hooks("before")
    except Exception as exc:  # a hook can raise anything
        fail(channel, "init_error", "init", hook_fault(Fault.BEFORE_SNAPSHOT, exc), EXIT_BEFORE_SNAPSHOT)
    from . import sockets  # only SnapStart pays for importing socket/fcntl

    swept = sockets.sweep()  # connections broken in place; UDP/listening sockets stay for CRIU
    restore_aslr()
    rehearse(channel)
    shrink_heap()
    channel.mark_logs("init")
    channel.send("restore_ready", closed=swept.peers, kept=swept.kept)
    frame = channel.receive()
    if frame is None:
        sys.exit(0)
    if clock is not None:  # the restored process's counters start at the resume: this phase is the restorer's
        clock.begin("restore")
        clock.mark("restored")
    header, payload = frame
    channel.send("resumed")
    for failure in sockets.break_connections(swept.connections, header.get("connections", "closed")):
        print(f"[WARNING] SnapStart: {failure}", file=channel.log)
    for key, value in (protocol.decode_json(payload) if payload else {}).items():
        if value is None:
            os.environ.pop(key, None)
        elif os.environ.get(key) != value:  # the same in every copy (the endpoint URI): kept, not rewritten
            os.environ[key] = value
    if clock is not None:
        clock.mark("credentials")
    try:
        if header.get("reseed"):
            reseed()
        run_hooks("after")
    except Exception as exc:  # a hook can raise anything
        fail(channel, "restore_error", "restore", hook_fault(Fault.AFTER_RESTORE, exc), EXIT_AFTER_RESTORE)
    if clock is not None:
        clock.mark("hooks")
    channel.mark_logs("restore")
    if clock is not None:
        clock.mark("log mark")


def lower_priority(nice: int = INVOKE_NICE) -> None:
    """Run the invoke loop (this thread, and the threads and processes it starts) at `nice`.

    Under load the worker's single event-loop thread is what bounds warm throughput, and the
    environments it wakes compete with it for the same cores; at a lower priority they get
    the CPU after the loop instead of sharing it evenly (same-server A/B at concurrency 8 on
    2 cores: invoke/echo throughput ratio up ~0.15 in the median of six pairs; the loop's
    involuntary context switches did not drop, so it is the CPU share, not wake-up
    preemption). `serve` calls it once the first invocation is answered: init, the
    before-snapshot hooks, the restore, the after-restore hooks and the first invocation keep
    the priority the process started with. Raising one's own nice value needs no
    capability; a refusal (a seccomp filter that denies it) leaves the priority as it was.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), nice))
    except OSError:  # EPERM/EACCES from a filter: the loop runs at its old priority, which is correct, only slower
        return


def private_inbound() -> BinaryIO:
    """The worker -> runtime channel on a private, non-inheritable fd; fd 0 becomes /dev/null.

    User code and its subprocesses then read an empty stdin, as on Lambda, instead of blocking
    on (or consuming) invoke frames. The channel pipe itself is unchanged, and pid 1 (`init`)
    still holds it as fd 0, which is what runc records for checkpoint/restore.
    """
    channel_fd = os.dup(0)  # os.dup makes non-inheritable descriptors
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return os.fdopen(channel_fd, "rb")


CHANNEL_FDS_VARIABLE = "_SNAPFAAS_CHANNEL_FDS"  # sandbox.container's name for it (not imported here)


def direct_channel(fds: str) -> tuple[BinaryIO, BinaryIO, TextIO]:
    """The channel and the log on the pipes the worker passed into the container beside its
    stdio (``<in>,<out>,<log>`` fd numbers: runc copies stdio through its own process, these go
    straight to the worker). They move to private, non-inheritable fds; fd 0 becomes /dev/null
    and fds 1 and 2 the log pipe, so whatever user code or its subprocesses write to either is
    logged, in order with the log mark."""
    numbers = [int(fd) for fd in fds.split(",")]
    inbound_fd, outbound_fd, log_fd = (os.dup(fd) for fd in numbers)  # os.dup: non-inheritable
    for fd in numbers:
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    log = open(2, "w", buffering=1, encoding=sys.stderr.encoding, errors=sys.stderr.errors, closefd=False)
    sys.stderr = log
    return os.fdopen(inbound_fd, "rb"), os.fdopen(outbound_fd, "wb", buffering=0), log


def main() -> None:
    direct = os.environ.pop(CHANNEL_FDS_VARIABLE, "")
    if direct:
        inbound, outbound, log = direct_channel(direct)
    else:
        # fd 1 carries frames; everything user code prints goes to stderr (the log stream).
        outbound = os.fdopen(1, "wb", buffering=0, closefd=False)
        inbound = private_inbound()
        log = sys.stderr
    sys.stdout = log
    sys.stdin = open(os.devnull)
    channel = Channel(inbound, outbound, log)
    environ = os.environ
    drop_init_variables(environ)
    clock = phase_clock(environ)
    applog.install(environ, log)  # before the handler module is imported, as Lambda's runtime does
    snap_start = environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start"
    if not snap_start and os.path.isdir(EXTENSIONS_DIR):  # extensions (from layers) start before init
        from . import extension_host

        channel = extension_host.wrap(channel, environ, snap_start)
    early_imports = snap_start and fixed_layout()
    if early_imports:
        # what the snapshot barrier imports, imported before the handler's code is loaded: imported
        # after it, its code objects went into holes the module's code left (which differ by
        # version), and its names into the interned-string table after the module's own names
        from . import sockets  # noqa: F401
    try:
        # leading imports first only for a fixed-layout (deterministic) init: it makes versions share chunks
        handler = load_handler(environ["_HANDLER"], early_imports=early_imports)
    except Fault as fault:
        fail(channel, "init_error", "init", fault.to_error(""), EXIT_INIT_ERROR)
    except Exception as exc:  # module-level user code raised
        fail(channel, "init_error", "init", error_of(exc, ""), EXIT_INIT_ERROR)
    if snap_start:
        snap_start_barrier(channel, clock)
    else:
        if clock is not None:
            clock.begin("init")
            clock.mark("init")
        channel.mark_logs("init")
    serve(channel, handler, environ, clock, nice=INVOKE_NICE)
