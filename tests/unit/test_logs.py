"""The per-function log store (snapfaas.worker.logs): rotation, the writer thread, drops."""

from __future__ import annotations

import threading
from pathlib import Path

from snapfaas.worker.logs import LogStore


def test_read_sees_everything_appended_before_it(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    for i in range(500):
        store.append("f", "stream", [f"line {i}\n"])
    lines = store.read("f")
    assert len(lines) == 500 and lines[-1].endswith("\tstream\tline 499")
    assert store.read("f", 2) == lines[-2:]
    assert store.read("other") == []
    store.close()


def test_files_rotate_before_passing_the_cap_and_read_spans_the_rotation(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=4096)
    for i in range(400):
        store.append("f", "s", [f"message {i:04d} " + "x" * 40])
    lines = store.read("f")
    store.close()
    assert store.path("f").stat().st_size <= 4096 and store.rotated("f").stat().st_size <= 4096
    numbers = [int(line.split("\t")[2].split()[1]) for line in lines]
    assert numbers == list(range(numbers[0], 400)), "read returns the rotated lines, then the current ones, in order"
    assert 0 < numbers[0] and len(numbers) > 4096 // 100  # older generations are gone, one rotated is kept


def test_a_line_longer_than_the_cap_goes_alone_into_a_fresh_file(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=100)
    store.append("f", "s", ["short"])
    store.append("f", "s", ["y" * 500])
    store.flush()
    assert store.rotated("f").read_text().endswith("\tshort\n")
    assert store.path("f").read_text().endswith("y" * 500 + "\n")
    store.close()


def test_a_full_queue_drops_lines_and_says_how_many_once_drained(tmp_path: Path) -> None:
    store = LogStore(tmp_path, queue_bytes=10_000)
    with store._files:  # hold the writer at the file lock: the queue fills up
        store.append("f", "s", ["first"])
        store.append("g", "s", ["first of g"])
        for _ in range(1000):
            store.append("f", "s", ["z" * 100])
        assert store._pending_bytes <= 10_000
    lines = store.read("f")
    kept = sum(1 for line in lines if line.endswith("z" * 100))
    notices = [line for line in lines if "log lines dropped" in line]
    # The writer may have taken a first batch (and the drops counted so far) before it blocked
    # at the file lock: then a second notice counts the rest. Never more than that.
    assert 1 <= len(notices) <= 2
    dropped = sum(int(notice.split("\t")[2].split()[1]) for notice in notices)
    assert kept + dropped == 1000 and dropped > 0
    assert store.read("g")[0].endswith("first of g")
    store.close()


def test_append_does_not_wait_for_the_disk(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("f", "s", ["warm up"])
    store.flush()
    done = threading.Event()
    with store._files:  # the writer is stuck (a slow disk)
        worker = threading.Thread(target=lambda: (store.append("f", "s", ["while stuck"]), done.set()))
        worker.start()
        assert done.wait(10), "append blocked on the writer"
        worker.join()
    assert store.read("f")[-1].endswith("while stuck")
    store.close()


def test_delete_removes_both_generations_and_close_writes_the_rest(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=50)
    for i in range(10):
        store.append("f", "s", [f"{i}"])
    store.delete("f")
    assert not store.path("f").exists() and not store.rotated("f").exists()
    store.append("f", "s", ["after delete"])
    store.close()
    assert store.path("f").read_text().endswith("\tafter delete\n")
    store.append("f", "s", ["after close"])  # written in the caller's thread
    assert store.read("f")[-1].endswith("after close")


def test_an_entry_spanning_lines_reads_back_as_one(tmp_path: Path) -> None:
    """A multi-line record arrives with its inner newlines as \\r and stays one entry."""
    store = LogStore(tmp_path)
    store.append("f", "s", ["[ERROR]\tt\tr\tfailed\rTraceback (most recent call last):\r  x\n", "after\n"])
    lines = store.read("f")
    assert len(lines) == 2
    assert lines[0].endswith("\tfailed\rTraceback (most recent call last):\r  x")
    assert lines[1].endswith("\tafter")
    assert store.read("empty") == []


def test_lines_are_written_in_one_batch_and_readers_do_not_wait_for_the_batch_delay(tmp_path: Path,
                                                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = LogStore(tmp_path, max_delay_s=3600)  # the writer would batch for an hour
    writes: list[int] = []
    real = store._append_file
    monkeypatch.setattr(store, "_append_file", lambda function, lines: (writes.append(len(lines)), real(function, lines)))
    for i in range(20):
        store.append("f", "s", [f"line {i}\n"])
    lines = store.read("f")  # asks for an immediate write
    assert [line.split("\t")[2] for line in lines] == [f"line {i}" for i in range(20)]
    assert writes == [20], "queued appends are written together"
    store.close()


def test_followers_get_every_line_and_close_writes_what_is_queued(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_delay_s=3600)
    got: list[str] = []
    ended = threading.Event()
    _, stop = store.follow("f", lambda lines: got.extend(lines) if lines is not None else ended.set())
    for i in range(5):
        store.append("f", "s", [f"line {i}\n"])
    store.close()  # does not wait for the batch delay
    assert ended.is_set()
    assert [line.split("\t")[2] for line in got] == [f"line {i}" for i in range(5)]
    assert len(store.path("f").read_text().splitlines()) == 5
    stop()


def test_lines_queued_while_the_writer_lingers_or_idles_are_all_written_in_order(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_delay_s=0.01)
    got: list[str] = []
    arrived = threading.Condition()

    def deliver(lines: list[str] | None) -> None:
        with arrived:
            got.extend(lines or [])
            arrived.notify_all()
    _, stop = store.follow("f", deliver)
    expected: list[str] = []
    for round_ in range(4):  # each round lands after a write: in the writer's linger, or once it idles
        for i in range(3):
            expected.append(f"r{round_} {i}")
            store.append("f", "s", [expected[-1] + "\n"])
        with arrived:
            assert arrived.wait_for(lambda: len(got) == len(expected), 30), "the writer wrote without a reader asking"
    assert [line.split("\t")[2] for line in got] == expected
    stop()
    store.close()
    assert [line.split("\t")[2] for line in store.read("f")] == expected


def test_utc_stamp_format() -> None:
    from snapfaas.worker.logs import utc_stamp
    assert utc_stamp(1_700_000_000.123) == "2023-11-14T22:13:20.123Z"
    assert utc_stamp(1_700_000_001.5) == "2023-11-14T22:13:21.500Z"
    assert utc_stamp(1_700_000_000.0) == "2023-11-14T22:13:20.000Z"
