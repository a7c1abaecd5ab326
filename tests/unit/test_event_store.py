"""The durable event table (snapfaas.worker.event_store.EventStore), including the upgrade of an
events.db written by the first release (no enqueue time, counters or next-attempt time)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from snapfaas.worker.backlog import Outcome
from snapfaas.worker.event_store import Attempt, EventStore
from snapfaas.worker.event_store import events as events_table


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


MAIN_SCHEMA = (  # events.db as main wrote it before the queue moved to SQLAlchemy (no claim columns)
    "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT, function TEXT, qualifier TEXT, "
    "payload BLOB, enqueued_at REAL, attempts INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0, "
    "next_at REAL NOT NULL DEFAULT 0, last_status INTEGER, last_version TEXT, last_error TEXT, last_response BLOB)",
    "CREATE INDEX events_by_function ON events(function)",
)


def test_pending_events_of_an_events_db_from_main_are_all_claimed_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    old = sqlite3.connect(path)
    for statement in MAIN_SCHEMA:
        old.execute(statement)
    for i in range(5):
        old.execute("INSERT INTO events(request_id, function, qualifier, payload, enqueued_at, attempts, retries, "
                    "next_at, last_status, last_version, last_error, last_response) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?, ?)", (f"r{i}", "f" if i % 2 else "g", None if i < 3 else "7", b'{"i": %d}' % i, 100.0 + i,
                                  i % 2, i, 200.0 + i, 200 if i == 1 else None, "3" if i == 1 else None,
                                  "Unhandled" if i == 1 else None, b"boom" if i == 1 else None))
    old.commit()
    old.close()
    store = EventStore(path, node_id="n1")
    assert store.recover() == 0  # nothing was claimed in the old file
    claimed = store.claim(None, None)
    assert sorted(e.seq for e in claimed) == [1, 2, 3, 4, 5]
    by_seq = {e.seq: e for e in claimed}
    for i in range(5):
        e = by_seq[i + 1]
        assert (e.request_id, e.function, e.qualifier) == (f"r{i}", "f" if i % 2 else "g", None if i < 3 else "7")
        assert (e.enqueued_at, e.attempts, e.retries, e.next_at) == (100.0 + i, i % 2, i, 200.0 + i)
        assert store.payload(e.seq) == b'{"i": %d}' % i and store.holder(e.seq) == "n1"
    last = store.last_run(2)
    assert last is not None and (last.executed_version, last.function_error, last.response) == ("3", "Unhandled", b"boom")
    assert store.claim(None, None) == []  # claimed already
    store.close()
    again = EventStore(path, node_id="n1")  # the daemon was killed: its claims come back, each counted as one retry
    assert again.recover() == 5
    assert [e.retries for e in again.claim(None, None)] == [1, 2, 3, 4, 5]
    again.close()


def test_claims_take_functions_in_turns_and_only_due_events(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db", node_id="n1")
    for i in range(4):
        store.insert(f"a{i}", "a", None, b"{}", 100.0, claim=False)
    store.insert("b0", "b", None, b"{}", 100.0, claim=False)
    late = store.insert("c0", "c", None, b"{}", 100.0, claim=False)
    event = store.claim(1, 1000.0)[0]
    assert event.request_id == "a0"
    event.next_at = 5000.0  # a retry in the future: released by another run, not due yet
    store.update(event, Attempt(Outcome.THROTTLED, ""))
    store.release([event.seq])
    with store.engine.begin() as conn:
        conn.execute(events_table.update().where(events_table.c.seq == late.seq).values(next_at=5000.0))
    got = [e.request_id for e in store.claim(3, 1000.0)]
    assert got == ["a1", "b0", "a2"]  # each function's oldest first, then the next ones
    assert [e.request_id for e in store.claim(None, 6000.0)] == ["a0", "c0", "a3"]
    store.close()
