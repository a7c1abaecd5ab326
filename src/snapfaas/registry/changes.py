"""Cross-node change notifications of a PostgreSQL registry.

A registry mutation that calls observers also runs ``NOTIFY snapfaas_changes,
'<token>:<function>'`` in its transaction (registry/db.py `_note`), so the notification is
delivered to every listening session when, and only if, the change commits.

`ChangeListener` is one thread per node with a dedicated psycopg connection (autocommit,
``LISTEN snapfaas_changes``). For each notification from another registry (its token differs)
it calls the registry's observers on the event loop (``loop.call_soon_threadsafe``): observers
keep running on the loop thread, as for local changes. When the connection fails (PostgreSQL
restarted, network cut) it reconnects with a back-off and then calls the observers for *every*
function, since changes may have been missed meanwhile. States: ``connecting`` -> ``listening``
-> (failure) ``connecting`` ...; ``stopped`` after `stop`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from snapfaas.database import CONNECT_TIMEOUT_S
from snapfaas.errors import NotFound, ServiceUnavailable

if TYPE_CHECKING:
    from snapfaas.registry.db import Registry

logger = logging.getLogger(__name__)

CHANNEL = "snapfaas_changes"
POLL_S = 0.5  # how often the listening thread looks at the stop flag
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


def conninfo(registry: Registry) -> str:
    """The libpq URL of the registry's engine (the listener connects with psycopg directly)."""
    return registry.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    def __init__(self, registry: Registry, loop: asyncio.AbstractEventLoop) -> None:
        self.registry = registry
        self.loop = loop
        self.state = "connecting"
        self.connections = 0  # successful LISTENs (1 + reconnects)
        self.received = 0  # other nodes' notifications dispatched
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-changes", daemon=True)
        self._listening = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def wait_listening(self, timeout: float) -> bool:
        """Whether the first LISTEN is in place within `timeout` seconds (for start-up and tests)."""
        return self._listening.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL_S + CONNECT_TIMEOUT_S + 1)
        self.state = "stopped"

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        import psycopg  # only a PostgreSQL registry listens: a SQLite daemon never loads it (~0.4 s CPU per start)

        delay = RETRY_MIN_S
        while not self._stop.is_set():
            try:
                # keepalives: a peer that vanished without a reset (network cut) is noticed in ~25 s
                with psycopg.connect(conninfo(self.registry), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                     application_name="snapfaas-changes", keepalives=1, keepalives_idle=10,
                                     keepalives_interval=5, keepalives_count=3) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.state = "listening"
                    self.connections += 1
                    missed = self.connections > 1  # changes committed while we were away are unknown
                    logger.info("registry change listener: listening%s",
                                " again (observers are called for every function)" if missed else "")
                    self._listening.set()
                    delay = RETRY_MIN_S
                    while not self._stop.is_set():
                        if missed:
                            missed = not self._dispatch_all()
                        for notice in conn.notifies(timeout=POLL_S):
                            self._received(notice.payload)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                self.state = "connecting"
                logger.warning("registry change listener failed at step 'listen': %s; reconnecting in %.1f s",
                               str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, delay)
            except Exception:  # a bug here must not end cross-node notifications for good: log, start over
                self.state = "connecting"
                logger.exception("registry change listener failed at step 'dispatch'; reconnecting in %.1f s", delay)
            else:
                continue
            self._stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _received(self, payload: str) -> None:
        token, _, name = payload.partition(":")
        if not name or token == self.registry.listener_token:
            return  # our own change: its observers already ran after the commit
        self.received += 1
        logger.info("registry: function %s changed on another node", name)
        self._call_soon(name)

    def _dispatch_all(self) -> bool:
        """Observers for every function; False if the functions could not be listed (yet)."""
        try:
            names = self.registry.function_names()
        except (ServiceUnavailable, SQLAlchemyError) as exc:  # tried again at the next poll
            logger.warning("registry change listener failed at step 'list functions after reconnect': %s", exc)
            return False
        try:
            self.loop.call_soon_threadsafe(self.registry._changed_all, names)
        except RuntimeError:  # the loop is closed: the server is stopping
            self._stop.set()
        return True

    def _call_soon(self, name: str) -> None:
        try:
            self.loop.call_soon_threadsafe(self.registry._changed, name, True)
        except RuntimeError:  # the loop is closed: the server is stopping
            self._stop.set()


class StaleEnvironments:
    """A remote observer: after another node changed or deleted function `name`, retire this
    node's warm environments of versions whose revision is no longer the registry's (or that
    no longer exist). The node's own control plane retires them itself for local changes.

    `worker` is the `snapfaas.worker.pool.Worker` (its ``pools`` are keyed by
    ``(function, version, revision id)`` and ``retire(function, version)`` is a coroutine).
    Runs on the event loop."""

    def __init__(self, registry: Registry, worker: Any) -> None:
        self.registry = registry
        self.worker = worker
        self.retired = 0  # (function, version) retirements ordered
        self._tasks: set[asyncio.Task[None]] = set()

    def known(self) -> set[str]:
        """Functions this node has warm environments of (after missed notifications, deleted
        ones among them are looked at too)."""
        return {key[0] for key in self.worker.pools}

    def stale(self, name: str) -> list[str]:
        """Versions of `name` with warm environments of a revision the registry no longer has."""
        out: list[str] = []
        for function, version, revision in list(self.worker.pools):
            if function != name or version in out:
                continue
            try:
                current = self.registry.get_version(function, version).revision_id
            except NotFound:
                current = None
            except ServiceUnavailable:
                return []  # cannot tell now; keep-alive reaping still ends them
            if current != revision:
                out.append(version)
        return out

    def __call__(self, name: str) -> None:
        for version in self.stale(name):
            self.retired += 1
            task = asyncio.get_running_loop().create_task(self.worker.retire(name, version),
                                                          name=f"retire-stale-{name}:{version}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
