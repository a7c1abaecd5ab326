"""Scheduling decisions for queued asynchronous (``Event``) invocations: pure and synchronous.

`Backlog` holds the metadata of every queued event (never the payload) and decides, without
I/O, which event runs next and what happens after an attempt. `worker/events.py` does the
I/O around it (the event table in SQLite or PostgreSQL, claims, the function invocations,
destinations).

Rules (Lambda's, see "Error handling and automatic retries in Lambda"):

* **Function errors** (handler error, timeout, crash, a failing after-restore hook) count
  against ``MaximumRetryAttempts`` (0-2, default 2): the event runs at most that many extra
  times, the retries `EventTiming.function_error_delay` apart (Lambda: 1 then 2 minutes).
* **Throttles, not-ready versions and platform faults** do not count: the event is retried
  with exponential backoff (1 unit doubling to at most 300 units, Lambda's 1 s .. 5 min, with
  jitter) until it is ``MaximumEventAgeInSeconds`` old (60-21600, default 6 h).
* A throttle or not-ready answer closes a **gate** instead of pushing back every event: the
  function's gate for its reserved concurrency, the lane's gate (function + qualifier) for a
  version that is not ready, the global gate for the server's concurrency limit. While a gate
  is closed the events behind it wait in memory; when it opens one event probes. A finished
  invocation of the function (capacity freed) or a registry change opens the gates early.
* **A version that can never become ready** (a published version in state ``Failed``: its
  snapshot or its readiness check failed, and a published version never changes) drops the
  event at once with ``VersionFailed``, without a run and without waiting for its age. A
  ``Failed`` ``$LATEST`` or an alias to a ``Failed`` version delays it instead: an update of
  the code or of the alias can still make it ready.
* **Reserved concurrency**: a function never has more of its events running at once than its
  reserved concurrency (at least one, which probes the throttle gate). Extra attempts would
  only be throttled, or wait in the worker's admission, holding dispatch slots other
  functions could use.
* **Fairness**: functions take turns (round robin); within a function events run in the
  order they were accepted (FIFO by sequence number), lane by lane where gates allow.
* **Final drops** carry a reason: ``RetriesExhausted``, ``EventAgeExceeded``,
  ``VersionFailed`` or ``FunctionDeleted`` (the function, version or alias no longer exists).

Times are wall-clock seconds (`time.time`): they are stored and survive a restart.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
import math
import random
from collections.abc import Callable

LATEST = "$LATEST"
LaneKey = tuple[str, str]  # function, qualifier ($LATEST for unqualified)
GateKey = tuple[str, ...]  # (): the whole server; (function,); (function, qualifier)
EVERYTHING: GateKey = ()
BACKOFF_CAP_UNITS = 300  # Lambda: "to a maximum of 5 minutes"
FUNCTION_ERROR_DELAY_UNITS = 60  # Lambda: 1 minute before the first retry, 2 before the second


class Outcome(enum.Enum):
    """How one attempt to run an event ended."""

    SUCCESS = "Success"
    FUNCTION_ERROR = "FunctionError"  # counts against MaximumRetryAttempts
    THROTTLED = "Throttled"  # the function's reserved concurrency is exhausted
    SERVER_THROTTLED = "ServerThrottled"  # the server-wide concurrency limit is reached
    NOT_READY = "NotReady"  # version Pending, Inactive, Failed, or its snapshot is being made
    PLATFORM_FAULT = "PlatformFault"  # our own failure (ServiceError, a missing runtime)
    GONE = "Gone"  # function, version or alias deleted
    FAILED_VERSION = "FailedVersion"  # a published version named by the event is Failed: it never gets ready

    @property
    def ran(self) -> bool:
        """The function's code ran (it counts in ``approximateInvokeCount``)."""
        return self in (Outcome.SUCCESS, Outcome.FUNCTION_ERROR)


class DropReason(str, enum.Enum):
    RETRIES_EXHAUSTED = "RetriesExhausted"
    EVENT_AGE_EXCEEDED = "EventAgeExceeded"
    FUNCTION_DELETED = "FunctionDeleted"
    VERSION_FAILED = "VersionFailed"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """A function's (or version's, or alias's) ``FunctionEventInvokeConfig`` retry settings."""

    max_retry_attempts: int = 2
    max_event_age_s: int = 21600


@dataclasses.dataclass(frozen=True)
class EventTiming:
    """Every retry delay, in units of `unit_s` (1 s, as on Lambda; tests shrink it)."""

    unit_s: float = 1.0

    def backoff(self, step: int, jitter: float) -> float:
        """Delay before retry number ``step + 1`` after throttles/faults: 1, 2, 4 .. 300 units,
        scaled by ``0.5 + jitter / 2`` (`jitter` in [0, 1))."""
        units = min(BACKOFF_CAP_UNITS, 2 ** min(step, 16))
        return units * self.unit_s * (0.5 + jitter / 2)

    def function_error_delay(self, attempts: int) -> float:
        """Delay after the `attempts`-th run ended in a function error (1 and 2 minutes)."""
        return FUNCTION_ERROR_DELAY_UNITS * self.unit_s * attempts


@dataclasses.dataclass(eq=False, slots=True)
class QueuedEvent:
    """What the scheduler knows of one queued event (the payload stays on disk)."""

    seq: int
    request_id: str
    function: str
    qualifier: str | None
    enqueued_at: float
    attempts: int = 0  # runs of the function so far (Lambda's approximateInvokeCount)
    retries: int = 0  # put back after a throttle, a not-ready version or a platform fault
    next_at: float = 0.0  # not before this time

    @property
    def lane(self) -> LaneKey:
        return (self.function, self.qualifier or LATEST)


class Verdict(enum.Enum):
    DONE = "done"  # succeeded: delete it
    RETRY = "retry"  # back in the queue with new counters and `next_at`
    DROP = "drop"  # final: delete it, log it, send it to the on-failure destination


@dataclasses.dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: DropReason | None = None


@dataclasses.dataclass
class Gate:
    until: float
    level: int  # consecutive closes: the next close waits backoff(level)


class Lane:
    """Events of one function + qualifier: due ones by sequence number, the others by time."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.ready: list[tuple[int, QueuedEvent]] = []
        self.waiting: list[tuple[float, int, QueuedEvent]] = []

    def __len__(self) -> int:
        return len(self.ready) + len(self.waiting)

    def push(self, event: QueuedEvent) -> None:
        heapq.heappush(self.waiting, (event.next_at, event.seq, event))

    def promote(self, now: float) -> None:
        while self.waiting and self.waiting[0][0] <= now:
            _, seq, event = heapq.heappop(self.waiting)
            heapq.heappush(self.ready, (seq, event))

    def deadline(self, event: QueuedEvent) -> float:
        return event.enqueued_at + self.policy.max_event_age_s

    def events(self) -> list[QueuedEvent]:
        return [e for _, e in self.ready] + [e for _, _, e in self.waiting]


class Backlog:
    """The in-memory schedule of queued events. Every method is synchronous and does no I/O.

    `policy_for(function, qualifier)` gives a lane's retry policy (read when the lane is
    created and on `refresh`); `limit_for(function)` the function's reserved concurrency
    (None: unreserved; read when its first event arrives and on `refresh`); `rng` returns
    jitter in [0, 1).
    """

    def __init__(self, timing: EventTiming, policy_for: Callable[[str, str], RetryPolicy],
                 rng: Callable[[], float] = random.random,
                 limit_for: Callable[[str], int | None] = lambda function: None) -> None:
        self.timing = timing
        self.policy_for = policy_for
        self.limit_for = limit_for
        self.rng = rng
        self.limits: dict[str, int | None] = {}  # running events allowed per function with queued ones
        self.running: collections.Counter[str] = collections.Counter()  # running events per function
        self.lanes: dict[LaneKey, Lane] = {}
        self.by_function: dict[str, set[LaneKey]] = {}
        self.ring: collections.deque[str] = collections.deque()  # functions with queued events
        self.gates: dict[GateKey, Gate] = {}
        self.inflight: dict[int, QueuedEvent] = {}
        self._queued = 0

    def __len__(self) -> int:
        """Events held: queued plus running (what the queue cap counts)."""
        return self._queued + len(self.inflight)

    def oldest_enqueued_at(self) -> float | None:
        """When the oldest event held (queued or running) was accepted; None when empty."""
        stamps = [event.enqueued_at for lane in self.lanes.values() for event in lane.events()]
        stamps.extend(event.enqueued_at for event in self.inflight.values())
        return min(stamps, default=None)

    def __repr__(self) -> str:
        return f"<Backlog {self._queued} queued, {len(self.inflight)} running, {len(self.ring)} functions>"

    # -- membership -------------------------------------------------------------------------
    def add(self, event: QueuedEvent) -> None:
        key = event.lane
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(self.policy_for(*key))
            if event.function not in self.by_function:
                self.by_function[event.function] = set()
                self.ring.append(event.function)
                self.limits[event.function] = _limit(self.limit_for(event.function))
            self.by_function[event.function].add(key)
        lane.push(event)
        self._queued += 1

    def _drop_lane_if_empty(self, key: LaneKey) -> None:
        lane = self.lanes.get(key)
        if lane is None or len(lane):
            return
        del self.lanes[key]  # its gates stay: a running event may come back (see `_prune_gates`)
        keys = self.by_function[key[0]]
        keys.discard(key)
        if not keys:
            del self.by_function[key[0]]
            self.limits.pop(key[0], None)
            self.ring.remove(key[0])

    def policy(self, event: QueuedEvent) -> RetryPolicy:
        lane = self.lanes.get(event.lane)
        return lane.policy if lane is not None else self.policy_for(*event.lane)

    def deadline(self, event: QueuedEvent) -> float:
        return event.enqueued_at + self.policy(event).max_event_age_s

    def remove_lanes(self, function: str, keep: Callable[[str], bool]) -> list[QueuedEvent]:
        """Take out the queued events of `function` whose qualifier `keep` rejects (their
        target was deleted). Running ones are not touched: their attempt finds out itself."""
        out: list[QueuedEvent] = []
        for key in list(self.by_function.get(function, ())):
            if keep(key[1]):
                continue
            lane = self.lanes[key]
            out.extend(lane.events())
            self._queued -= len(lane)
            lane.ready.clear()
            lane.waiting.clear()
            self._drop_lane_if_empty(key)
        out.sort(key=lambda e: e.seq)
        return out

    def withdraw(self, event: QueuedEvent) -> bool:
        """Take one queued event out (in cluster mode another node holds it now). False if it
        is not queued here (running ones are not touched: their attempt finds out itself)."""
        lane = self.lanes.get(event.lane)
        if lane is None:
            return False
        for heap in (lane.ready, lane.waiting):
            for i, item in enumerate(heap):
                if item[-1] is event:
                    heap[i] = heap[-1]
                    heap.pop()
                    heapq.heapify(heap)
                    self._queued -= 1
                    self._drop_lane_if_empty(event.lane)
                    return True
        return False

    def qualifiers(self, function: str) -> list[str]:
        return sorted(q for _, q in self.by_function.get(function, ()))

    def refresh(self, function: str) -> None:
        """Something about `function` changed (concurrency, state, config): re-read its lanes'
        policies and let its gated events probe now (gate levels are kept)."""
        for key in self.by_function.get(function, ()):
            self.lanes[key].policy = self.policy_for(*key)
        if function in self.limits:
            self.limits[function] = _limit(self.limit_for(function))
        for gate_key in [k for k in self.gates if k and k[0] == function]:
            self.gates[gate_key].until = 0.0
        if EVERYTHING in self.gates:
            self.gates[EVERYTHING].until = 0.0

    # -- dispatch ---------------------------------------------------------------------------
    def _closed(self, key: GateKey, now: float) -> bool:
        gate = self.gates.get(key)
        return gate is not None and gate.until > now

    def _saturated(self, function: str) -> bool:
        """As many of `function`'s events run as its reserved concurrency allows."""
        limit = self.limits.get(function)
        return limit is not None and self.running[function] >= limit

    def _start(self, event: QueuedEvent) -> None:
        self.inflight[event.seq] = event
        self.running[event.function] += 1

    def _stop(self, event: QueuedEvent) -> None:
        if self.inflight.pop(event.seq, None) is None:
            return
        self.running[event.function] -= 1
        if self.running[event.function] <= 0:
            del self.running[event.function]

    def take(self, now: float) -> QueuedEvent | None:
        """The next event to run (now running), or None: functions in turn, each one's
        oldest due event among its open lanes, unless its reserved concurrency is in use."""
        if self._closed(EVERYTHING, now):
            return None
        for _ in range(len(self.ring)):
            function = self.ring[0]
            self.ring.rotate(-1)
            if self._closed((function,), now) or self._saturated(function):
                continue
            best: tuple[int, LaneKey] | None = None
            for key in self.by_function[function]:
                lane = self.lanes[key]
                lane.promote(now)
                if lane.ready and not self._closed(key, now) and (best is None or lane.ready[0][0] < best[0]):
                    best = (lane.ready[0][0], key)
            if best is None:
                continue
            _, event = heapq.heappop(self.lanes[best[1]].ready)
            self._queued -= 1
            self._start(event)
            self._drop_lane_if_empty(best[1])
            return event
        return None

    def _prune_gates(self, now: float) -> None:
        """Forget gates open for longer than the longest backoff (their level no longer matters)."""
        stale = now - BACKOFF_CAP_UNITS * self.timing.unit_s
        for key in [k for k, g in self.gates.items() if g.until < stale]:
            del self.gates[key]

    def expired(self, now: float) -> list[QueuedEvent]:
        """Remove and return queued events older than their lane's MaximumEventAgeInSeconds."""
        self._prune_gates(now)
        out: list[QueuedEvent] = []
        for key, lane in list(self.lanes.items()):
            lane.promote(now)
            while lane.ready and lane.deadline(lane.ready[0][1]) <= now:
                out.append(heapq.heappop(lane.ready)[1])
                self._queued -= 1
            self._drop_lane_if_empty(key)
        return out

    def next_wakeup(self, now: float) -> float | None:
        """When `take` or `expired` may next have something to do (``now`` if at once). A
        function whose reserved concurrency is in use waits for one of its attempts to
        finish (which wakes the dispatcher), not for a time."""
        soonest = math.inf
        global_gate = self.gates.get(EVERYTHING)
        for key, lane in self.lanes.items():
            lane.promote(now)
            if lane.waiting:
                soonest = min(soonest, lane.waiting[0][0])
            if lane.ready:
                soonest = min(soonest, lane.deadline(lane.ready[0][1]))
                if self._saturated(key[0]):
                    continue
                opens = max((g.until for g in (global_gate, self.gates.get((key[0],)), self.gates.get(key))
                             if g is not None), default=0.0)
                soonest = min(soonest, max(now, opens))
        return None if soonest == math.inf else soonest

    # -- after an attempt ---------------------------------------------------------------------
    def _close(self, key: GateKey, now: float) -> None:
        gate = self.gates.setdefault(key, Gate(0.0, 0))
        gate.until = now + self.timing.backoff(gate.level, self.rng())
        gate.level += 1

    def _open(self, function: str, lane: LaneKey) -> None:
        """An invocation of `function` finished: capacity was freed, the version is ready."""
        for key in (EVERYTHING, (function,), lane):
            self.gates.pop(key, None)

    def settle(self, event: QueuedEvent, outcome: Outcome, now: float) -> Decision:
        """Apply the rules to a finished attempt of a running event. On RETRY the event is
        queued again with updated counters; otherwise it has left the backlog."""
        self._stop(event)
        policy = self.policy(event)
        deadline = event.enqueued_at + policy.max_event_age_s
        if outcome.ran:
            event.attempts += 1
            self._open(event.function, event.lane)
        if outcome is Outcome.SUCCESS:
            return Decision(Verdict.DONE)
        if outcome is Outcome.GONE:
            return Decision(Verdict.DROP, DropReason.FUNCTION_DELETED)
        if outcome is Outcome.FAILED_VERSION:
            return Decision(Verdict.DROP, DropReason.VERSION_FAILED)
        if outcome is Outcome.FUNCTION_ERROR:
            if event.attempts > policy.max_retry_attempts:
                return Decision(Verdict.DROP, DropReason.RETRIES_EXHAUSTED)
            event.next_at = now + self.timing.function_error_delay(event.attempts)
            if event.next_at >= deadline:
                return Decision(Verdict.DROP, DropReason.EVENT_AGE_EXCEEDED)
            self.add(event)
            return Decision(Verdict.RETRY)
        if now >= deadline:
            return Decision(Verdict.DROP, DropReason.EVENT_AGE_EXCEEDED)
        event.retries += 1
        if outcome is Outcome.PLATFORM_FAULT:
            event.next_at = min(deadline, now + self.timing.backoff(event.retries - 1, self.rng()))
        else:
            gate = {Outcome.THROTTLED: (event.function,), Outcome.SERVER_THROTTLED: EVERYTHING,
                    Outcome.NOT_READY: event.lane}[outcome]
            self._close(gate, now)
            event.next_at = now  # due; the gate holds it
        self.add(event)
        return Decision(Verdict.RETRY)

    def abandon(self, event: QueuedEvent) -> None:
        """A running attempt was cancelled (shutdown): forget it; it stays stored and reruns."""
        self._stop(event)


def _limit(reserved: int | None) -> int | None:
    """Events of a function allowed to run at once: its reserved concurrency, at least 1 (a
    function reserved to 0 still has one attempt probe its throttle gate, with backoff)."""
    return None if reserved is None else max(1, reserved)
