"""The load suite's pure parts: judging answers, splitting traffic, counting environment starts."""

from __future__ import annotations

import json

import pytest

from snapfaas.bench.callers import Outcome, Traffic, environment_of, expected_version, judge, judge_error, plan
from snapfaas.bench.mixed_traffic import environments_started, verdict


def body(token: str, version: str = "$LATEST", stream: str = "2026/11/30/[$LATEST]abc123") -> bytes:
    return json.dumps({"token": token, "version": version, "stream": stream}).encode()


def test_an_answer_with_the_requests_token_and_version_is_answered() -> None:
    assert judge("t1", "$LATEST", None, body("t1")) == ("answered", "abc123", "")


def test_another_requests_token_or_version_is_mismatched() -> None:
    kind, env, detail = judge("t1", "$LATEST", None, body("t2"))
    assert (kind, env) == ("mismatched", "abc123") and "'t2'" in detail
    kind, _, detail = judge("t1", "1", None, body("t1", version="$LATEST"))
    assert kind == "mismatched" and "'$LATEST'" in detail


def test_function_errors_and_garbage_are_errors() -> None:
    assert judge("t1", "$LATEST", "Unhandled", b'{"errorType": "Runtime.ExitError"}')[0] == "error"
    assert judge("t1", "$LATEST", None, b"not json")[0] == "error"
    assert judge("t1", "$LATEST", None, b"[1]")[0] == "error"


def error_response(status: int, code: str, **extra: object) -> dict:
    return {"ResponseMetadata": {"HTTPStatusCode": status}, "Error": {"Code": code, "Message": "Rate Exceeded."}, **extra}


def test_429_is_throttled_with_its_reason_5xx_is_lost_other_4xx_error() -> None:
    response = error_response(429, "TooManyRequestsException", Reason="ConcurrentInvocationLimitExceeded")
    assert judge_error(response) == ("throttled", "TooManyRequestsException/ConcurrentInvocationLimitExceeded: Rate Exceeded.")
    assert judge_error(error_response(502, "ServiceException"))[0] == "lost"
    assert judge_error(error_response(404, "ResourceNotFoundException"))[0] == "error"


def test_environment_of_a_log_stream() -> None:
    assert environment_of("2026/11/30/[1]f00d") == "f00d"
    assert environment_of("2026/11/30/[1]") is None
    assert environment_of(None) is None


def test_plan_splits_evenly_and_every_caller_rotates_through_the_qualifiers() -> None:
    shares = plan(10, 3, ["$LATEST", "1", "live"])
    assert [len(s) for s in shares] == [4, 3, 3]
    assert shares[0] == ["$LATEST", "1", "live", "$LATEST"]
    assert shares[1][0] == "1" and shares[2][0] == "live"  # at the start every qualifier is in flight
    with pytest.raises(ValueError):
        plan(10, 0, ["$LATEST"])


def test_an_alias_expects_its_version() -> None:
    assert expected_version("live", {"live": "1"}) == "1"
    assert expected_version("$LATEST", {"live": "1"}) == "$LATEST"


def test_traffic_counts_latency_of_answered_only_and_wall_time() -> None:
    outcomes = [Outcome("$LATEST", "answered", 10.0, 100.0, "a"), Outcome("1", "answered", 10.5, 300.0, "b"),
                Outcome("1", "throttled", 10.6, 1.0, None, "x")]
    traffic = Traffic(2, outcomes, 0.8)
    assert traffic.counts() == {"answered": 2, "throttled": 1, "mismatched": 0, "lost": 0, "error": 0}
    assert traffic.latencies_ms() == [100.0, 300.0]
    assert traffic.environments() == {"a", "b"}
    assert traffic.answered_per_s == 2 / 0.8


def test_environment_starts_are_counted_per_environment_not_the_snapshot_init() -> None:
    log = [
        "2026-11-30T12:10:05.336Z\t2026/11/30/[1]c34c\tINIT_START Runtime Version: python3.12.snapfaas\tPhase: snapshot",
        "2026-11-30T12:10:06.395Z\t2026/11/30/[$LATEST]aa\tINIT_START Runtime Version: python3.12.snapfaas",
        "2026-11-30T12:10:06.396Z\t2026/11/30/[$LATEST]aa\tSTART RequestId: r1 Version: $LATEST",
        "2026-11-30T12:10:06.399Z\t2026/11/30/[1]bb\tRESTORE_START Runtime Version: python3.12.snapfaas",
        "2026-11-30T12:10:07.000Z\t2026/11/30/[1]cc\tRESTORE_START Runtime Version: python3.12.snapfaas",
        "2026-11-30T12:10:08.000Z\t2026/11/30/[1]cc\t[snapfaas] 3 log lines dropped: the function logged faster",
        "malformed line",
    ]
    started = environments_started(log)
    assert started.cold == {"aa"} and started.restored == {"bb", "cc"}
    assert started.total == 3 and started.dropped_notices == 1


def row(**overrides: object) -> dict:
    base = {"concurrency": 32, "lost": 0, "mismatched": 0, "environments_created": 64, "rps_vs_baseline": 0.8}
    return {**base, **overrides}


def test_verdict_holds_at_the_bars_and_fails_past_them() -> None:
    assert all(held for _, held in verdict(row()))
    failed = [text for text, held in verdict(row(environments_created=65, rps_vs_baseline=0.79, lost=1)) if not held]
    assert len(failed) == 3 and "0 mismatched" not in failed
