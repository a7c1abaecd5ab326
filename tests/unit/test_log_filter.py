"""Selecting log lines by time, version and request (snapfaas.worker.log_filter), and the log
store's follow hand-over (every line once: in the read or delivered)."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest

from snapfaas.worker.log_filter import LogFilter, parse_since, stamp_of, version_of
from snapfaas.worker.logs import LogStore

S1 = "2026/12/01/[1]aaa"
S2 = "2026/12/01/[$LATEST]bbb"
LOG = [
    f"2026-12-01T10:00:00.000Z\t{S1}\tRESTORE_START Runtime Version: python:3.11.snapfaas",
    f"2026-12-01T10:00:01.000Z\t{S1}\tSTART RequestId: r1 Version: 1",
    f"2026-12-01T10:00:01.100Z\t{S2}\tSTART RequestId: r2 Version: $LATEST",
    f"2026-12-01T10:00:01.200Z\t{S1}\tprinted by r1",
    f"2026-12-01T10:00:01.300Z\t{S2}\tprinted by r2",
    f"2026-12-01T10:00:01.400Z\t{S1}\tEND RequestId: r1",
    f"2026-12-01T10:00:01.500Z\t{S1}\tREPORT RequestId: r1\tDuration: 1.00 ms\t",
    f"2026-12-01T10:00:02.000Z\t{S2}\tEND RequestId: r2",
    f"2026-12-01T10:00:02.100Z\t{S2}\tREPORT RequestId: r2\tDuration: 2.00 ms\t",
    f"2026-12-01T10:00:03.000Z\t{S1}\tSTART RequestId: r3 Version: 1",
    f"2026-12-01T10:00:03.100Z\t{S1}\tprinted by r3",
]


def test_parse_since() -> None:
    now = 1_000_000.0
    assert parse_since("90s", now) == now - 90
    assert parse_since("10m", now) == now - 600
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1d", now) == now - 86400
    assert parse_since("2026-12-01T10:00:01Z", now) == dt.datetime(2026, 12, 1, 10, 0, 1, tzinfo=dt.timezone.utc).timestamp()
    assert parse_since("2026-12-01T10:00:01", now) == parse_since("2026-12-01T10:00:01+00:00", now)  # naive = UTC
    for bad in ("yesterday", "10 minutes", "-5m", ""):
        with pytest.raises(ValueError, match="expected a duration"):
            parse_since(bad, now)


def test_helpers() -> None:
    assert version_of(S1) == "1" and version_of(S2) == "$LATEST" and version_of("no-brackets") is None
    assert stamp_of(LOG[1]) == dt.datetime(2026, 12, 1, 10, 0, 1, tzinfo=dt.timezone.utc).timestamp()
    assert stamp_of("garbage") is None


def test_no_filter_keeps_everything() -> None:
    assert LogFilter().select(LOG) == LOG


def test_by_request_follows_start_to_report_in_its_stream() -> None:
    assert [line.split("\t", 2)[2] for line in LogFilter(request_id="r1").select(LOG)] == [
        "START RequestId: r1 Version: 1", "printed by r1", "END RequestId: r1", "REPORT RequestId: r1\tDuration: 1.00 ms\t"]
    assert [line.split("\t", 2)[2] for line in LogFilter(request_id="r2").select(LOG)] == [
        "START RequestId: r2 Version: $LATEST", "printed by r2", "END RequestId: r2", "REPORT RequestId: r2\tDuration: 2.00 ms\t"]
    assert len(LogFilter(request_id="r3").select(LOG)) == 2  # still running: what it printed so far
    assert LogFilter(request_id="nope").select(LOG) == []


def test_by_version_and_since_and_combined() -> None:
    assert all(version_of(line.split("\t")[1]) == "$LATEST" for line in LogFilter(version="$LATEST").select(LOG))
    assert len(LogFilter(version="$LATEST").select(LOG)) == 4
    since = parse_since("2026-12-01T10:00:02Z", 0)
    assert LogFilter(since=since).select(LOG) == LOG[7:]
    # a request's lines before `since` are left out, but membership is still tracked through them
    assert [line.split("\t", 2)[2] for line in LogFilter(since=since, request_id="r2").select(LOG)] == [
        "END RequestId: r2", "REPORT RequestId: r2\tDuration: 2.00 ms\t"]


def test_fed_line_by_line_gives_the_same_answer() -> None:
    whole = LogFilter(request_id="r1").select(LOG)
    live = LogFilter(request_id="r1")
    assert [line for line in LOG if live.accepts(line)] == whole


def test_json_log_format_requests() -> None:
    stream = "2026/12/01/[1]ccc"
    records = [
        {"type": "platform.start", "record": {"requestId": "j1", "version": "1"}},
        {"timestamp": "x", "level": "INFO", "message": "hello", "requestId": "j1"},
        {"type": "platform.runtimeDone", "record": {"requestId": "j1", "status": "success"}},
        {"type": "platform.report", "record": {"requestId": "j1", "metrics": {}}},
        {"type": "platform.start", "record": {"requestId": "j2", "version": "1"}},
    ]
    lines = [f"2026-12-01T10:00:0{i}.000Z\t{stream}\t{json.dumps(r)}" for i, r in enumerate(records)]
    assert LogFilter(request_id="j1").select(lines) == lines[:4]
    assert LogFilter(request_id="j2").select(lines) == lines[4:]


def test_follow_hands_over_every_line_exactly_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = LogStore(tmp_path)
    store.append("f", "s", [f"before {i}" for i in range(50)])
    got: list[str] = []
    closed = threading.Event()

    def deliver(batch: list[str] | None) -> None:
        if batch is None:
            closed.set()
        else:
            got.extend(batch)

    writer = threading.Thread(target=lambda: [store.append("f", "s", [f"during {i}"]) for i in range(200)])
    writer.start()
    lines, stop = store.follow("f", deliver)
    writer.join()
    store.append("g", "s", ["another function's line"])
    store.flush()
    messages = [line.split("\t", 2)[2] for line in lines + got]
    assert sorted(messages) == sorted([f"before {i}" for i in range(50)] + [f"during {i}" for i in range(200)])
    stop()
    store.append("f", "s", ["after stop"])
    store.flush()
    assert not any("after stop" in line for line in got)
    _, stop2 = store.follow("f", deliver)
    store.close()
    assert closed.is_set()
