"""The code that runs inside an execution environment (stdlib only, synchronous).

This package is mounted read-only into every sandbox at ``/var/runtime/snapfaas_runtime`` and
started as ``python -m snapfaas_runtime``. It must never import anything from the daemon side
(``snapfaas.*``); it uses relative imports only, so it works under any package name. The daemon
may import `protocol` from here, since both ends must agree on the framing.
"""
