"""The code that runs inside an execution environment (stdlib only, synchronous).

This package is mounted read-only into every sandbox at ``/var/runtime/snapfaas_runtime`` and
started by its native pid 1 (``snapfaas-init``, built from ``init.c``) as
``python -m snapfaas_runtime.start``, or where that was not built as ``python -m snapfaas_runtime``
(the Python init, `init`). It must never import anything from the daemon side
(``snapfaas.*``); it uses relative imports only, so it works under any package name. The daemon
may import `protocol` from here, since both ends must agree on the framing.
"""
