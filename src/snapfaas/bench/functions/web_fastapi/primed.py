"""The web function (app.py, unchanged) primed for SnapStart, as AWS advises: a before-snapshot
hook does what the first request would otherwise do in every restored environment.

Measured with a probe handler around app.handler: the first request of a new environment imports 13 modules
(anyio's asyncio backend, streams and sockets: FastAPI runs a sync endpoint in anyio's worker
thread pool), ~50-60 ms of CPU that init never paid, so every restore paid it again. Importing
them before the snapshot moves that into the image. Nothing is invoked: no log line, metric or
trace is emitted at init.
"""

from snapshot_restore_py import register_before_snapshot

from app import handler  # noqa: F401  (the function's handler: primed.handler)


@register_before_snapshot
def prime() -> None:
    import anyio._backends._asyncio  # noqa: F401
    import anyio.streams.memory  # noqa: F401
    import anyio.streams.stapled  # noqa: F401
    import anyio.streams.tls  # noqa: F401
