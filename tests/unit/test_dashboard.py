"""Dashboard sign-in sessions and chart data (pure parts)."""

from __future__ import annotations

from snapfaas.dashboard.sessions import MAX_FAILURES, SESSION_S, Sessions
from snapfaas.dashboard.views import chart_series
from snapfaas.metrics import Invocation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sign_in_only_with_the_operator_pair_and_sessions_expire() -> None:
    clock = Clock()
    sessions = Sessions({"AKIDOP": "s3cret"}, clock)
    assert sessions.sign_in("AKIDOP", "wrong", "1.2.3.4") is None
    assert sessions.sign_in("AKIDOTHER", "s3cret", "1.2.3.4") is None
    token = sessions.sign_in("AKIDOP", "s3cret", "1.2.3.4")
    assert token and sessions.valid(token) and not sessions.valid(token + "x") and not sessions.valid(None)
    clock.now += SESSION_S + 1
    assert not sessions.valid(token)
    other = sessions.sign_in("AKIDOP", "s3cret", "1.2.3.4")
    sessions.sign_out(other)
    assert not sessions.valid(other)


def test_guessing_is_braked_per_client() -> None:
    clock = Clock()
    sessions = Sessions({"AKIDOP": "s3cret"}, clock)
    for _ in range(MAX_FAILURES):
        assert sessions.sign_in("AKIDOP", "guess", "6.6.6.6") is None
    assert sessions.sign_in("AKIDOP", "s3cret", "6.6.6.6") is None  # even the right pair, for a while
    assert sessions.sign_in("AKIDOP", "s3cret", "1.1.1.1")  # another client is not affected
    clock.now += 301
    assert sessions.sign_in("AKIDOP", "s3cret", "6.6.6.6")


def test_chart_series_per_start_kind_of_one_version() -> None:
    events = [
        Invocation("f", "1", "success", "restore", latency_s=0.1, at=10.0),
        Invocation("f", "1", "success", "warm", latency_s=0.002, at=11.0),
        Invocation("f", "1", "function_error", "warm", latency_s=0.003, at=12.0),
        Invocation("f", "1", "throttled", at=13.0),  # ran no code: no point
        Invocation("f", "$LATEST", "success", "cold", latency_s=2.0, at=9.0),
    ]
    chart = chart_series(events, "1")
    assert chart["points"] == 3
    assert chart["series"] == {"cold": [], "restore": [{"x": 10.0, "y": 100.0}],
                               "warm": [{"x": 11.0, "y": 2.0}, {"x": 12.0, "y": 3.0}]}
