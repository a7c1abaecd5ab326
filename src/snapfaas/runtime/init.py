"""pid 1 of the sandbox in Python: start the runtime as a child, reap orphans, exit as the runtime did.

The sandbox runs the native pid 1 (``init.c``, built by ``make``; the same contract, without a
second interpreter to checkpoint and restore) and falls back to this one only where that was
not built (`snapfaas.worker.factory` logs it). The runtime entry both use is `start`.

The first process of a pid namespace is special: the kernel drops every signal sent to it from
inside the namespace unless it installed a handler (SIGKILL and SIGSTOP always), and it adopts
every orphan. Lambda's runtime is not pid 1, so a handler can ``os.kill(os.getpid(), 9)`` itself
and orphaned subprocesses get reaped. To keep those semantics this process only forks the
runtime, reaps children, and exits with the runtime's status: its exit code, or 128 + the
signal number when a signal ended it (what runc reports for a signalled container, too).

Imports nothing beyond ``os`` before forking, so the parent shares almost every page with the
runtime and adds next to nothing to the function's memory use. The one exception: in a
deterministic SnapStart init (``_SNAPFAAS_POINTER_GUARD`` set, see `snapshot.determinism`) it
first re-keys glibc's pointer guard and (``_SNAPFAAS_STACK_CANARY``) its stack canary
(`pointerguard`), which the runtime then inherits, and
(``_SNAPFAAS_RUNTIME_PID``) forks the runtime at a fixed pid (`burn_pids_before`).
"""

from __future__ import annotations

import os


def exit_code(status: int) -> int:
    """The shell convention for a wait status: the exit code, or 128 + the killing signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def supervise(runtime_pid: int) -> int:
    """Reap children until the runtime exits; return the code this process must exit with."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # the runtime was already reaped: cannot happen, but never spin
            return 1
        if pid == runtime_pid:
            return exit_code(status)


POINTER_GUARD = "_SNAPFAAS_POINTER_GUARD"  # snapshot.determinism.POINTER_GUARD (this module imports no snapfaas code)
RUNTIME_PID = "_SNAPFAAS_RUNTIME_PID"  # snapshot.determinism.RUNTIME_PID
STACK_CANARY = "_SNAPFAAS_STACK_CANARY"  # snapshot.determinism.STACK_CANARY


def burn_pids_before(target: int) -> bool:
    """Fork children that exit at once until the next pid of this (fresh) pid namespace is
    `target`, so that the runtime forked next gets it: True if so.

    runc's init is a Go program whose threads take the namespace's first pids before it
    execs this process, a number that varies from start to start; the runtime's pid then
    varies too, and with it CRIU's per-process images and the pid in the runtime's memory.
    Pids are handed out in order in a namespace nobody else creates processes in, so the
    last child's pid tells where the counter is. False (nothing more done) if it is already
    past `target`."""
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        if pid >= target - 1:
            return pid == target - 1
CUSTOM = "custom"  # argv[1] for a provided.* runtime: the Runtime API supervisor (`custom`) instead of Python's


def rekey_from_environ() -> None:
    """In a deterministic SnapStart init (``_SNAPFAAS_POINTER_GUARD`` set), re-key this process's
    pointer guard and (``_SNAPFAAS_STACK_CANARY``) stack canary (`pointerguard.rekey`); says so
    on stderr if that could not be done. Call it while the process has one thread and has run
    only the interpreter's start-up."""
    guard = os.environ.get(POINTER_GUARD)
    if not guard:
        return
    from .pointerguard import rekey

    try:
        canary = os.environ.get(STACK_CANARY)
        rekeyed = rekey(int(guard, 16), int(canary, 16) if canary else None)
    except ValueError:  # not hex: the init is just less deterministic
        rekeyed = False
    if not rekeyed:  # said, so a snapshot that dedups badly against its other versions can be explained
        os.write(2, b"snapfaas init: glibc's pointer guard and stack canary were not re-keyed (deterministic init)\n")


def run_runtime(custom: bool) -> None:
    """Run the runtime in this process: Python's (`bootstrap`) or a custom runtime's supervisor."""
    if custom:
        from .custom import main as runtime_main
    else:
        from .bootstrap import main as runtime_main
    runtime_main()


def main(argv: list[str] | None = None) -> None:
    """The Python init (``python -m snapfaas_runtime [custom]``): the sandbox's pid 1 where the
    native one (``init.c``) was not built. In a deterministic init it re-keys itself before
    forking, so the runtime inherits the keys."""
    import sys

    custom = (sys.argv[1:] if argv is None else argv) == [CUSTOM]
    rekey_from_environ()
    target = os.environ.get(RUNTIME_PID, "")
    if target.isdigit() and os.getpid() == 1 and not burn_pids_before(int(target)):
        os.write(2, f"snapfaas init: the runtime could not get pid {target} (deterministic init)\n".encode())
    runtime_pid = os.fork()
    if runtime_pid == 0:
        run_runtime(custom)
        return
    # Our fds 0-2 stay the container's stdio pipes: runc records pid 1's stdio at checkpoint
    # and re-attaches those pipes at restore. We never read or write them, and we exit as soon
    # as the runtime does, so the worker still sees EOF when the runtime dies.
    os._exit(supervise(runtime_pid))
