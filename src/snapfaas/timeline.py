"""Invoke timelines: wall-clock marks along one invoke, from its arrival to its response.

A debug switch (``snapfaas serve --invoke-timeline``; `ServerConfig.invoke_timeline`): the API's
middleware opens a `Timeline` per invoke request and makes it current for the request's task
(a context variable, so it follows the request through the worker, the pool, the factory and
the container); each step of the path calls `mark` with its name; when the answer is built the
middleware logs the whole timeline as one INFO line of the daemon's log (logger
``snapfaas.timeline``, at INFO whatever ``--log-level`` says when the switch is on)::

    invoke timeline <request id> (restore, 93.4 ms): parsed 0.0 | authenticated +0.9 | ...

Each figure is the time since the step before it, in ms (`perf_counter`), so the slow steps
read off the line directly; `parse` reads a line back (to take medians over many restores). With the switch off there is no current timeline and `mark` is one context-variable
read: nothing is allocated, timed or logged.

Work that runs in a worker thread marks the same timeline when it was handed over with
`carried` (a thread does not inherit the caller's context); its marks are ordered by time
with the others, and named as the thread's steps (``cgroup made [thread]``).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")
_current: contextvars.ContextVar[Timeline | None] = contextvars.ContextVar("snapfaas_timeline", default=None)


class Timeline:
    """The marks of one invoke: (step, perf_counter seconds), the first one at its creation.
    Thread-safe for appends (a list append under the GIL); `render` sorts by time."""

    def __init__(self, label: str, first_step: str = "parsed") -> None:
        self.label = label
        self.kind = "warm"  # "restore" or "init" once the invoke made a new environment
        self.marks: list[tuple[str, float]] = [(first_step, time.perf_counter())]

    def mark(self, step: str) -> None:
        self.marks.append((step, time.perf_counter()))

    def steps(self) -> list[tuple[str, float]]:
        """(step, ms since the step before it), in time order; the first is 0."""
        ordered = sorted(self.marks, key=lambda m: m[1])
        out: list[tuple[str, float]] = []
        previous = ordered[0][1]
        for step, at in ordered:
            out.append((step, (at - previous) * 1000))
            previous = at
        return out

    def total_ms(self) -> float:
        times = [at for _, at in self.marks]
        return (max(times) - min(times)) * 1000

    def render(self) -> str:
        parts = [f"{step} {ms:.1f}" if i == 0 else f"{step} +{ms:.1f}" for i, (step, ms) in enumerate(self.steps())]
        return f"invoke timeline {self.label} ({self.kind}, {self.total_ms():.1f} ms): " + " | ".join(parts)


def parse(line: str) -> tuple[str, list[tuple[str, float]]] | None:
    """The kind and the steps of a line `Timeline.render` wrote (anywhere in `line`), or None."""
    head, sep, body = line.partition("): ")
    at = head.find("invoke timeline ")
    if not sep or at < 0 or "(" not in head[at:]:
        return None
    kind = head[at:].rsplit("(", 1)[1].split(",", 1)[0]
    steps: list[tuple[str, float]] = []
    for part in body.strip().split(" | "):
        step, _, figure = part.rpartition(" ")
        try:
            steps.append((step, float(figure.lstrip("+"))))
        except ValueError:
            return None
    return kind, steps


def begin(label: str, first_step: str = "parsed") -> contextvars.Token[Timeline | None]:
    """Open a timeline for the current task (and what it awaits); `end` closes it."""
    return _current.set(Timeline(label, first_step))


def end(token: contextvars.Token[Timeline | None], last_step: str = "answered") -> None:
    """Mark `last_step`, log the timeline and make none current again."""
    timeline = _current.get()
    if timeline is not None:
        timeline.mark(last_step)
        logger.info("%s", timeline.render())
    _current.reset(token)


def current() -> Timeline | None:
    return _current.get()


def mark(step: str) -> None:
    """Mark `step` on the current timeline, if there is one (the switch is on)."""
    timeline = _current.get()
    if timeline is not None:
        timeline.mark(step)


def set_kind(kind: str) -> None:
    timeline = _current.get()
    if timeline is not None:
        timeline.kind = kind


def carried(action: Callable[[], T]) -> Callable[[], T]:
    """`action`, made to run in the caller's context (for a worker thread) when a timeline is
    current; `action` itself otherwise."""
    if _current.get() is None:
        return action
    context = contextvars.copy_context()
    return lambda: context.run(action)
