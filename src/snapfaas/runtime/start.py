"""The runtime process's entry point under the native pid 1: ``python -m snapfaas_runtime.start [custom]``.

The native init (``init.c``) forks and execs this. An exec'd process gets fresh AT_RANDOM bytes
from the kernel, so glibc's pointer guard and stack canary are the kernel's random ones again:
in a deterministic SnapStart init (``_SNAPFAAS_POINTER_GUARD``, see `snapshot.determinism`) the
runtime re-keys them itself here (`init.rekey_from_environ`), first thing, while only the
interpreter's start-up has run and it has one thread. It then runs Python's runtime, or with
``custom`` the Runtime API supervisor of a provided.* runtime. Its pid (fixed in a deterministic
init) was chosen by the native init.
"""

from __future__ import annotations

import sys

from .init import CUSTOM, rekey_from_environ, run_runtime


def main(argv: list[str] | None = None) -> None:
    custom = (sys.argv[1:] if argv is None else argv) == [CUSTOM]
    rekey_from_environ()
    run_runtime(custom)


if __name__ == "__main__":
    main()
