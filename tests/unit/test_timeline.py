"""Invoke timelines (snapfaas/timeline.py): off by default, marks follow the task and carried threads."""

from __future__ import annotations

import asyncio
import logging

import pytest

from snapfaas import timeline


def test_marks_without_a_timeline_do_nothing() -> None:
    assert timeline.current() is None
    timeline.mark("anything")
    timeline.set_kind("restore")
    action = lambda: 1  # noqa: E731
    assert timeline.carried(action) is action


def test_a_timeline_follows_awaits_and_carried_threads_and_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    async def step() -> None:
        timeline.mark("inner")

    async def invoke() -> timeline.Timeline:
        token = timeline.begin("req-1")
        opened = timeline.current()
        assert opened is not None
        timeline.set_kind("restore")
        await step()
        await asyncio.get_running_loop().run_in_executor(None, timeline.carried(lambda: timeline.mark("work [thread]")))
        await asyncio.create_task(step())  # a task made meanwhile copies the context
        timeline.end(token)
        assert timeline.current() is None
        return opened

    with caplog.at_level(logging.INFO, logger="snapfaas.timeline"):
        opened = asyncio.run(invoke())
    names = [name for name, _ in opened.steps()]
    assert names == ["parsed", "inner", "work [thread]", "inner", "answered"]
    lines = [r.getMessage() for r in caplog.records if r.name == "snapfaas.timeline"]
    assert len(lines) == 1 and lines[0].startswith("invoke timeline req-1 (restore, ")
    kind, steps = timeline.parse("INFO snapfaas.timeline " + lines[0])
    assert kind == "restore"
    assert [name for name, _ in steps] == names
    assert steps[0][1] == 0.0 and all(ms >= 0 for _, ms in steps)


def test_steps_are_ordered_by_time_whoever_marked_them() -> None:
    line = timeline.Timeline("r")
    line.marks = [("parsed", 1.0), ("late", 1.003), ("early", 1.001)]
    assert [(n, round(ms, 3)) for n, ms in line.steps()] == [("parsed", 0.0), ("early", 1.0), ("late", 2.0)]
    assert round(line.total_ms(), 3) == 3.0


def test_parse_refuses_other_lines() -> None:
    assert timeline.parse("GET /health 200") is None
    assert timeline.parse("invoke timeline x (warm, 1.0 ms): parsed zero") is None
