"""The durable event table (snapfaas.worker.events.EventStore), including the upgrade of an
events.db written by the first release (no enqueue time, counters or next-attempt time)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from snapfaas.worker.backlog import Outcome
from snapfaas.worker.events import Attempt, EventStore


def test_an_old_events_db_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT, "
                "function TEXT, qualifier TEXT, payload BLOB)")
    old.execute("INSERT INTO events(request_id, function, qualifier, payload) VALUES ('r1', 'f', NULL, X'7B7D')")
    old.commit()
    old.close()
    store = EventStore(path, clock=lambda: 500.0)
    [event] = store.load()
    assert (event.seq, event.request_id, event.function, event.qualifier) == (1, "r1", "f", None)
    assert (event.enqueued_at, event.attempts, event.retries, event.next_at) == (500.0, 0, 0, 0.0)
    assert store.payload(1) == b"{}"
    new = store.insert("r2", "g", "live", b"[1]", 600.0)
    assert new.seq == 2 and new.enqueued_at == 600.0 and new.next_at == 600.0
    store.close()
    again = EventStore(path, clock=lambda: 999.0)  # reopening changes nothing
    assert [(e.seq, e.enqueued_at) for e in again.load()] == [(1, 500.0), (2, 600.0)]
    again.close()


def test_counters_and_the_last_failed_run_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = EventStore(path)
    event = store.insert("r1", "f", None, b'{"a": 1}', 100.0)
    assert store.last_run(event.seq) is None
    event.attempts, event.retries, event.next_at = 1, 0, 160.0
    store.update(event, Attempt(Outcome.FUNCTION_ERROR, "boom", "3", "Unhandled", b'{"errorMessage": "boom"}'))
    event.retries, event.next_at = 4, 170.0
    store.update(event, Attempt(Outcome.THROTTLED, "busy"))  # keeps the stored failed run
    store.close()
    store = EventStore(path)
    [loaded] = store.load()
    assert (loaded.attempts, loaded.retries, loaded.next_at) == (1, 4, 170.0)
    last = store.last_run(loaded.seq)
    assert last is not None and (last.status, last.executed_version, last.function_error) == (200, "3", "Unhandled")
    assert last.response == b'{"errorMessage": "boom"}'
    store.delete(loaded.seq)
    assert store.count() == 0 and store.payload(loaded.seq) is None
    store.close()
