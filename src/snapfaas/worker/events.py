"""Durable queue for asynchronous (``Event``) invocations.

An accepted event is written to SQLite before the caller gets 202, and removed only after it
has been processed (successfully, or after its retries ran out), so a daemon crash loses
nothing: queued events are replayed at the next start. Like Lambda, a failed event is retried
twice; unlike Lambda (1 and 2 minutes), the delays here are `RETRY_DELAYS_S`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

logger = logging.getLogger(__name__)
RETRY_DELAYS_S = (1.0, 2.0)


@dataclasses.dataclass(frozen=True)
class QueuedEvent:
    seq: int
    request_id: str
    function: str
    qualifier: str | None
    payload: bytes


Handler = Callable[[QueuedEvent, int], Awaitable[bool]]  # -> True when done (no retry needed)


class EventQueue:
    def __init__(self, path: Path, handler: Handler, consumers: int = 4) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT, "
            "function TEXT, qualifier TEXT, payload BLOB)"
        )
        self._handler = handler
        self._queue: asyncio.Queue[QueuedEvent] = asyncio.Queue()
        self._consumers = consumers
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for row in self._db.execute("SELECT seq, request_id, function, qualifier, payload FROM events ORDER BY seq"):
            self._queue.put_nowait(QueuedEvent(*row))
        self._tasks = [asyncio.create_task(self._consume(), name=f"events-{i}") for i in range(self._consumers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._db.close()

    def pending(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def put(self, request_id: str, function: str, qualifier: str | None, payload: bytes) -> None:
        cur = self._db.execute(
            "INSERT INTO events(request_id, function, qualifier, payload) VALUES (?, ?, ?, ?)",
            (request_id, function, qualifier, payload),
        )
        self._queue.put_nowait(QueuedEvent(int(cur.lastrowid or 0), request_id, function, qualifier, payload))

    async def _consume(self) -> None:
        while True:
            event = await self._queue.get()
            for attempt in range(len(RETRY_DELAYS_S) + 1):
                try:
                    done = await self._handler(event, attempt)
                except Exception:  # a platform fault on one event must not stop the consumer
                    logger.exception("event %s for %s failed", event.request_id, event.function)
                    done = False
                if done:
                    break
                if attempt < len(RETRY_DELAYS_S):
                    await asyncio.sleep(RETRY_DELAYS_S[attempt])  # the retry delay itself, not synchronization
            self._db.execute("DELETE FROM events WHERE seq=?", (event.seq,))
