"""`python -m snapfaas`: the CLI (`snapfaas.cli.main`), ending without the interpreter's teardown.

Contract: when `main` is done (returned or raised SystemExit) and only the main thread is left,
every exit handler runs (`atexit`: logging's flush, weakref finalizers...), stdout and stderr are
flushed and the process ends with `os._exit` and main's exit status. The daemon and the commands
have released what they hold by then (servers stopped, threads joined, files closed); tearing
down the ~1000 modules they imported only cost ~0.5 s of CPU per process, paid at every daemon
stop. With another thread still alive the normal exit runs (it joins that thread); any other
exception propagates as usual.
"""

import atexit
import os
import sys
import threading

from snapfaas.cli import main


def _status(code: object) -> int:
    """The exit status `sys.exit(code)` gives (a message is printed to stderr, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


try:
    main()
except SystemExit as done:
    code = done.code
else:
    code = None
if threading.active_count() > 1:
    sys.exit(code)
status = _status(code)
atexit._run_exitfuncs()  # what the normal exit runs, in the same order
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the normal exit would only warn
        pass
os._exit(status)
