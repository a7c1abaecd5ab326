"""Scheduling rules of asynchronous invocations (snapfaas.worker.backlog), on a fake clock."""

from __future__ import annotations

import pytest

from snapfaas.worker.backlog import (
    BACKOFF_CAP_UNITS, Backlog, Decision, DropReason, EventTiming, Outcome, QueuedEvent, RetryPolicy, Verdict,
)

T0 = 1_000_000.0


def event(seq: int, function: str = "f", qualifier: str | None = None, at: float = T0) -> QueuedEvent:
    return QueuedEvent(seq, f"req-{seq}", function, qualifier, at, next_at=at)


def backlog(policies: dict[tuple[str, str], RetryPolicy] | None = None, jitter: float = 0.0) -> Backlog:
    table = {} if policies is None else policies
    return Backlog(EventTiming(1.0), lambda f, q: table.get((f, q), RetryPolicy()), rng=lambda: jitter)


def drain(b: Backlog, now: float) -> list[QueuedEvent]:
    out = []
    while (e := b.take(now)) is not None:
        out.append(e)
    return out


def test_backoff_doubles_from_one_unit_to_the_cap_with_jitter() -> None:
    timing = EventTiming(0.5)
    assert [timing.backoff(n, 0.999999) for n in range(4)] == pytest.approx([0.5, 1.0, 2.0, 4.0])
    assert timing.backoff(3, 0.0) == pytest.approx(2.0)  # jitter scales into [0.5, 1)
    assert timing.backoff(40, 0.999999) == pytest.approx(BACKOFF_CAP_UNITS * 0.5)
    assert EventTiming(1.0).function_error_delay(1) == 60 and EventTiming(1.0).function_error_delay(2) == 120


def test_functions_take_turns_and_each_is_fifo() -> None:
    b = backlog()
    for seq in range(1, 7):
        b.add(event(seq, "a"))
    b.add(event(7, "b"))
    b.add(event(8, "b"))
    order = [(e.function, e.seq) for e in drain(b, T0)]
    assert order == [("a", 1), ("b", 7), ("a", 2), ("b", 8), ("a", 3), ("a", 4), ("a", 5), ("a", 6)]
    assert len(b) == 8 and len(b.inflight) == 8


def test_function_error_is_retried_max_retry_attempts_times_then_dropped() -> None:
    b = backlog()
    b.add(event(1))
    now = T0
    runs = 0
    while True:
        e = b.take(now)
        if e is None:
            assert b.take(now + 59) is None or runs == 0  # not before the retry delay
            now = b.next_wakeup(now) or now
            continue
        runs += 1
        decision = b.settle(e, Outcome.FUNCTION_ERROR, now)
        if decision.verdict is not Verdict.RETRY:
            break
        assert e.next_at == now + 60 * e.attempts  # 1 minute, then 2
    assert decision == Decision(Verdict.DROP, DropReason.RETRIES_EXHAUSTED)
    assert runs == 3 and e.attempts == 3 and len(b) == 0


def test_max_retry_attempts_zero_drops_after_one_run() -> None:
    b = backlog({("f", "$LATEST"): RetryPolicy(max_retry_attempts=0)})
    b.add(event(1))
    e = b.take(T0)
    assert b.settle(e, Outcome.FUNCTION_ERROR, T0) == Decision(Verdict.DROP, DropReason.RETRIES_EXHAUSTED)


def test_a_function_error_retry_past_the_event_age_drops_at_once() -> None:
    b = backlog({("f", "$LATEST"): RetryPolicy(max_event_age_s=90)})
    b.add(event(1))
    e = b.take(T0 + 40)
    assert b.settle(e, Outcome.FUNCTION_ERROR, T0 + 40) == Decision(Verdict.DROP, DropReason.EVENT_AGE_EXCEEDED)


def test_throttle_closes_the_function_gate_without_blocking_others() -> None:
    b = backlog()
    for seq in (1, 2, 3):
        b.add(event(seq, "busy"))
    b.add(event(4, "other"))
    first = b.take(T0)
    assert first.seq == 1
    assert b.settle(first, Outcome.THROTTLED, T0).verdict is Verdict.RETRY
    assert first.retries == 1 and first.attempts == 0
    # the throttled function is gated; the other one still runs
    assert [e.seq for e in drain(b, T0)] == [4]
    opens = b.next_wakeup(T0)
    assert opens == pytest.approx(T0 + 0.5)  # backoff(0) with jitter 0
    # when the gate opens, the oldest event probes again (FIFO kept)
    again = b.take(opens)
    assert again is first
    b.settle(again, Outcome.THROTTLED, opens)
    assert b.next_wakeup(opens) == pytest.approx(opens + 1.0)  # the gate's backoff doubled


def test_a_lone_throttled_event_backs_off_exponentially() -> None:
    b = backlog(jitter=0.999999)
    b.add(event(1))
    now, waits = T0, []
    for _ in range(6):
        e = b.take(now)
        assert e is not None and b.take(now) is None
        b.settle(e, Outcome.THROTTLED, now)
        wake = b.next_wakeup(now)
        waits.append(round(wake - now, 3))
        assert b.take(wake - 0.001) is None  # held until the gate opens
        now = wake
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    b.expired(now + BACKOFF_CAP_UNITS + 64)  # a gate open for longer than the cap is forgotten
    assert b.gates == {}


def test_success_opens_the_gate_for_the_rest() -> None:
    b = backlog()
    for seq in (1, 2, 3):
        b.add(event(seq))
    running = b.take(T0)
    probe = b.take(T0)
    b.settle(probe, Outcome.THROTTLED, T0)
    assert b.take(T0) is None
    assert b.settle(running, Outcome.SUCCESS, T0) == Decision(Verdict.DONE)
    assert [e.seq for e in drain(b, T0)] == [2, 3]


def test_not_ready_gates_only_that_qualifier() -> None:
    b = backlog()
    b.add(event(1, "f", "2"))
    b.add(event(2, "f", "2"))
    b.add(event(3, "f", None))
    e = b.take(T0)
    assert e.seq == 1
    b.settle(e, Outcome.NOT_READY, T0)
    assert [x.seq for x in drain(b, T0)] == [3]


def test_server_throttle_holds_everything() -> None:
    b = backlog()
    b.add(event(1, "a"))
    b.add(event(2, "b"))
    e = b.take(T0)
    b.settle(e, Outcome.SERVER_THROTTLED, T0)
    assert b.take(T0) is None
    assert {x.seq for x in drain(b, b.next_wakeup(T0))} == {1, 2}


def test_refresh_opens_gates_and_rereads_policies() -> None:
    policies: dict[tuple[str, str], RetryPolicy] = {}
    b = backlog(policies)
    b.add(event(1))
    e = b.take(T0)
    b.settle(e, Outcome.THROTTLED, T0)
    assert b.take(T0) is None
    policies[("f", "$LATEST")] = RetryPolicy(max_retry_attempts=0)
    b.refresh("f")
    again = b.take(T0)
    assert again is e
    assert b.settle(again, Outcome.FUNCTION_ERROR, T0).reason is DropReason.RETRIES_EXHAUSTED


def test_throttled_events_expire_at_their_age() -> None:
    b = backlog({("f", "$LATEST"): RetryPolicy(max_event_age_s=60)})
    b.add(event(1))
    b.add(event(2, at=T0 + 30))
    e = b.take(T0)
    b.settle(e, Outcome.THROTTLED, T0)
    # gated: the next wakeup is never later than the oldest event's deadline
    assert b.next_wakeup(T0) <= T0 + 60
    assert b.expired(T0 + 59) == []
    assert [x.seq for x in b.expired(T0 + 60)] == [1]
    assert [x.seq for x in b.expired(T0 + 90)] == [2]
    assert len(b) == 0 and b.next_wakeup(T0 + 90) is None


def test_a_throttle_at_the_deadline_drops_the_event() -> None:
    b = backlog({("f", "$LATEST"): RetryPolicy(max_event_age_s=60)})
    b.add(event(1))
    e = b.take(T0 + 61)
    assert b.settle(e, Outcome.THROTTLED, T0 + 61) == Decision(Verdict.DROP, DropReason.EVENT_AGE_EXCEEDED)


def test_platform_faults_back_off_per_event_until_the_deadline() -> None:
    b = backlog({("f", "$LATEST"): RetryPolicy(max_event_age_s=60)})
    b.add(event(1))
    b.add(event(2))
    e = b.take(T0)
    b.settle(e, Outcome.PLATFORM_FAULT, T0)
    assert e.next_at == pytest.approx(T0 + 0.5)
    assert [x.seq for x in drain(b, T0)] == [2]  # no gate: other events are not held
    e.retries = 20
    b.inflight[e.seq] = e
    b.lanes[e.lane].waiting.clear()
    b._queued -= 1
    b.settle(e, Outcome.PLATFORM_FAULT, T0 + 10)
    assert e.next_at == T0 + 60  # clamped to the deadline, where it expires


def test_gone_drops_as_deleted_and_remove_lanes_takes_queued_events() -> None:
    b = backlog()
    b.add(event(1, "f", "1"))
    b.add(event(2, "f", "1"))
    b.add(event(3, "f", None))
    e = b.take(T0)
    assert b.settle(e, Outcome.GONE, T0) == Decision(Verdict.DROP, DropReason.FUNCTION_DELETED)
    gone = b.remove_lanes("f", keep=lambda q: q != "1")
    assert [x.seq for x in gone] == [2]
    assert [x.seq for x in drain(b, T0)] == [3]
    assert b.remove_lanes("f", keep=lambda q: False) == []
    assert b.by_function == {} and list(b.ring) == []


def test_a_big_backlog_does_not_starve_a_late_function() -> None:
    b = backlog()
    for seq in range(1, 10_001):
        b.add(event(seq, "flood"))
    b.add(event(20_000, "late", at=T0 + 1))
    first_ten = [e.function for e in (b.take(T0 + 1) for _ in range(10))]
    assert "late" in first_ten[:2]


def test_abandon_forgets_a_running_event() -> None:
    b = backlog()
    b.add(event(1))
    e = b.take(T0)
    b.abandon(e)
    assert len(b) == 0


def test_a_failed_version_drops_at_once_without_an_attempt() -> None:
    b = backlog()
    b.add(event(1, "f", "3"))
    e = b.take(T0)
    b.settle(e, Outcome.NOT_READY, T0)  # Pending: delayed, no attempt consumed
    e = b.take(b.next_wakeup(T0))
    assert e.attempts == 0 and e.retries == 1
    assert b.settle(e, Outcome.FAILED_VERSION, T0 + 1) == Decision(Verdict.DROP, DropReason.VERSION_FAILED)
    assert e.attempts == 0 and len(b) == 0


def test_reserved_concurrency_caps_a_functions_running_events() -> None:
    limits: dict[str, int | None] = {"one": 1, "zero": 0}
    b = Backlog(EventTiming(1.0), lambda f, q: RetryPolicy(), rng=lambda: 0.0, limit_for=limits.get)
    for seq in (1, 2, 3):
        b.add(event(seq, "one"))
    for seq in (4, 5):
        b.add(event(seq, "zero"))
    b.add(event(6, "free"))
    b.add(event(7, "free"))
    # one of "one", one probe of "zero" (reserved 0), every event of the unreserved function
    assert sorted(e.seq for e in drain(b, T0)) == [1, 4, 6, 7]
    assert b.running == {"one": 1, "zero": 1, "free": 2}
    # waiting for a running attempt is not a timed wakeup: no spinning dispatcher
    wake = b.next_wakeup(T0)
    assert wake is not None and wake > T0 + 3600
    first = b.inflight[1]
    assert b.settle(first, Outcome.SUCCESS, T0).verdict is Verdict.DONE
    assert [e.seq for e in drain(b, T0)] == [2]
    limits["one"] = 2  # PutFunctionConcurrency: the registry observer refreshes the function
    b.refresh("one")
    assert [e.seq for e in drain(b, T0)] == [3]
    assert b.running["one"] == 2
    b.abandon(b.inflight[2])
    assert b.running["one"] == 1


def test_a_throttle_does_not_consume_an_attempt_however_often() -> None:
    b = backlog(jitter=0.0)
    b.add(event(1))
    now = T0
    for _ in range(20):
        e = b.take(now)
        assert b.settle(e, Outcome.THROTTLED, now).verdict is Verdict.RETRY
        now = b.next_wakeup(now)
    assert e.attempts == 0 and e.retries == 20
    assert b.settle(b.take(now), Outcome.SUCCESS, now) == Decision(Verdict.DONE)


def test_withdraw_takes_out_a_queued_event_that_another_node_took_over() -> None:
    b = backlog()
    due, later, other = event(1), event(2), event(3, "g")
    later.next_at = T0 + 50
    for e in (due, later, other):
        b.add(e)
    assert b.withdraw(later) and b.withdraw(due)
    assert not b.withdraw(due)  # not queued any more
    assert len(b) == 1 and "f" not in b.by_function
    running = b.take(T0 + 100)
    assert running is other and not b.withdraw(other)  # a running event is left to its attempt
    assert len(b) == 1 and b.take(T0 + 100) is None
def test_oldest_enqueued_at_counts_queued_and_running_events() -> None:
    b = backlog()
    assert b.oldest_enqueued_at() is None
    b.add(event(1, at=T0 + 5))
    b.add(event(2, "g", at=T0 + 1))
    b.add(event(3, at=T0 + 9))
    assert b.oldest_enqueued_at() == T0 + 1
    running = drain(b, T0 + 10)  # every due event starts: they are running now, no longer queued
    assert running and b.oldest_enqueued_at() == T0 + 1
