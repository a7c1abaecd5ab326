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
