"""The database circuit breaker (snapfaas.database.CircuitBreaker) with a fake clock: closed ->
open after a connection failure (calls fail at once) -> one probe after the back-off -> closed
on success, open again on failure. Integrity errors and domain errors do not open it."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from snapfaas.database import CLOSED, OPEN, PROBING, CircuitBreaker
from snapfaas.errors import NotFound, ServiceUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def down() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("connection refused\nis the server running?"))


def fail_connection(breaker: CircuitBreaker, step: str = "read") -> None:
    with pytest.raises(ServiceUnavailable, match=f"failed at step '{step}'"):
        with breaker.guard(step):
            raise down()


def test_a_connection_failure_opens_the_breaker_and_later_calls_fail_at_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(backoff_s=1.0, clock=clock)
    fail_connection(breaker)
    assert breaker.state == OPEN and breaker.counters.attempts == 1 and breaker.counters.opened == 1
    touched = []
    for _ in range(20):
        with pytest.raises(ServiceUnavailable, match="failed at step 'get function'") as refused:
            with breaker.guard("get function"):
                touched.append(1)  # never reached: the database is not tried
        assert "connection refused" not in str(refused.value)  # the driver's reason (host, port) stays in the log
    assert touched == []
    assert breaker.counters.attempts == 1 and breaker.counters.rejected == 20


def test_one_probe_after_the_backoff_closes_on_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker(backoff_s=1.0, clock=clock)
    fail_connection(breaker)
    clock.now += 1.0
    with breaker.guard("probe"):
        assert breaker.state == PROBING
        with pytest.raises(ServiceUnavailable):  # a second caller while the probe is out
            with breaker.guard("other"):
                pass
    assert breaker.state == CLOSED
    with breaker.guard("after"):
        pass
    assert breaker.counters.attempts == 3 and breaker.counters.rejected == 1


def test_a_failed_probe_opens_again_for_another_backoff() -> None:
    clock = Clock()
    breaker = CircuitBreaker(backoff_s=2.0, clock=clock)
    fail_connection(breaker)
    clock.now += 2.5
    fail_connection(breaker, "probe")
    assert breaker.state == OPEN and breaker.counters.failures == 2 and breaker.counters.opened == 2
    clock.now += 1.9
    with pytest.raises(ServiceUnavailable):
        with breaker.guard("too early"):
            pass
    clock.now += 0.1
    with breaker.guard("probe"):
        pass
    assert breaker.state == CLOSED


def test_statement_and_domain_errors_pass_through_and_keep_it_closed() -> None:
    breaker = CircuitBreaker(clock=Clock())
    with pytest.raises(IntegrityError):
        with breaker.guard("insert"):
            raise IntegrityError("INSERT", {}, Exception("duplicate key"))
    with pytest.raises(NotFound):
        with breaker.guard("read"):
            raise NotFound("Function not found: x")
    assert breaker.state == CLOSED and breaker.counters.failures == 0


def test_a_domain_error_from_the_probe_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(backoff_s=1.0, clock=clock)
    fail_connection(breaker)
    clock.now += 1
    with pytest.raises(NotFound):
        with breaker.guard("probe"):
            raise NotFound("the database answered")
    assert breaker.state == CLOSED
