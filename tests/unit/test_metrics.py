"""The metrics registry: what each recorded event and each scraped state turns into."""

from __future__ import annotations

import asyncio

import pytest

from snapfaas import metrics
from snapfaas.api.metrics import bearer_allowed
from snapfaas.metrics import EnvironmentCount, Invocation, Metrics, ServerState, TierCount, sample_value
from snapfaas.store import StoreError


def state(**changes: object) -> ServerState:
    base = dict(environments=[EnvironmentCount("fn", "1", busy=2, idle=1, starting=1)], capacity=8,
                snapstart_versions={"Active": 2, "Failed": 1}, snapshot_bytes={("fn", "1"): 1234},
                tiers={"memory": TierCount(5, 2, 4096, 0, 1, 0), "origin": TierCount(2, 0, 100, 777, 0, 1)},
                queue_depth=3, queue_oldest_age_s=1.5)
    base.update(changes)
    return ServerState(**base)  # type: ignore[arg-type]


def test_start_kinds() -> None:
    assert metrics.start_of(None, 12.0, True) == "restore"
    assert metrics.start_of(900.0, None, True) == "cold"
    assert metrics.start_of(None, None, True) == "cold"  # a new environment whose init failed
    assert metrics.start_of(None, None, False) == "warm"


def test_invocations_record_outcome_start_and_durations() -> None:
    m = Metrics()
    m.invocation(Invocation("fn", "1", "success", "restore", latency_s=0.05, duration_ms=3.0, restore_ms=40.0))
    m.invocation(Invocation("fn", "1", "success", "warm", latency_s=0.002, duration_ms=1.0))
    m.invocation(Invocation("fn", "$LATEST", "function_error", "cold", latency_s=1.2, duration_ms=5.0, init_ms=1100.0))
    m.invocation(Invocation("fn", "1", "throttled"))
    m.throttle("fn", "ReservedFunctionConcurrentInvocationLimitExceeded")
    text = m.render().decode()
    assert sample_value(text, "snapfaas_invocations_total", function="fn", version="1", outcome="success") == 2
    assert sample_value(text, "snapfaas_invocations_total", function="fn", version="$LATEST", outcome="function_error") == 1
    assert sample_value(text, "snapfaas_invocations_total", function="fn", version="1", outcome="throttled") == 1
    assert sample_value(text, "snapfaas_invocation_latency_seconds_count", function="fn", version="1", start="restore") == 1
    assert sample_value(text, "snapfaas_invocation_latency_seconds_count", function="fn", version="1", start="warm") == 1
    assert sample_value(text, "snapfaas_invocation_latency_seconds_sum", function="fn", version="$LATEST", start="cold") == 1.2
    assert sample_value(text, "snapfaas_restore_duration_seconds_sum", function="fn", version="1") == 0.04
    assert sample_value(text, "snapfaas_init_duration_seconds_count", function="fn", version="$LATEST") == 1
    assert sample_value(text, "snapfaas_invocation_duration_seconds_count", function="fn", version="1") == 2
    assert sample_value(text, "snapfaas_throttles_total", function="fn",
                        reason="ReservedFunctionConcurrentInvocationLimitExceeded") == 1
    # a throttled invocation ran no code: no latency sample for it
    assert sample_value(text, "snapfaas_invocation_latency_seconds_count", function="fn", version="1", start="cold") is None
    with pytest.raises(ValueError, match="unknown outcome"):
        m.invocation(Invocation("fn", "1", "exploded"))


def test_forget_removes_only_that_function() -> None:
    m = Metrics()
    m.invocation(Invocation("gone", "1", "success", "warm", latency_s=0.001, duration_ms=1.0))
    m.throttle("gone", "ConcurrentInvocationLimitExceeded")
    m.invocation(Invocation("kept", "1", "success", "warm", latency_s=0.001, duration_ms=1.0))
    m.forget("gone")
    m.forget("never-seen")
    text = m.render().decode()
    assert 'function="gone"' not in text
    assert sample_value(text, "snapfaas_invocations_total", function="kept", version="1", outcome="success") == 1


def test_state_metrics_equal_the_state_given() -> None:
    text = Metrics().render(state()).decode()
    assert sample_value(text, "snapfaas_environments", function="fn", version="1", state="busy") == 2
    assert sample_value(text, "snapfaas_environments", function="fn", version="1", state="idle") == 1
    assert sample_value(text, "snapfaas_environments_starting", function="fn", version="1") == 1
    assert sample_value(text, "snapfaas_environments_capacity") == 8
    assert sample_value(text, "snapfaas_snapstart_versions", state="Active") == 2
    assert sample_value(text, "snapfaas_snapstart_versions", state="Pending") == 0
    assert sample_value(text, "snapfaas_snapshot_bytes", function="fn", version="1") == 1234
    assert sample_value(text, "snapfaas_store_hits_total", tier="memory") == 5
    assert sample_value(text, "snapfaas_store_misses_total", tier="memory") == 2
    assert sample_value(text, "snapfaas_store_read_bytes_total", tier="memory") == 4096
    assert sample_value(text, "snapfaas_store_corrupt_total", tier="origin") == 1
    assert sample_value(text, "snapfaas_store_written_bytes_total", tier="origin") == 777
    assert sample_value(text, "snapfaas_store_hits_total", tier="disk") == 0  # no disk tier: zeros, not missing
    assert sample_value(text, "snapfaas_event_queue_depth") == 3
    assert sample_value(text, "snapfaas_event_queue_oldest_age_seconds") == 1.5
    assert "# TYPE snapfaas_store_hits_total counter" in text
    # without a state, none of them (the event metrics are still there)
    bare = Metrics().render().decode()
    assert "snapfaas_environments_capacity" not in bare and "# TYPE snapfaas_invocations_total counter" in bare


def test_snapshot_sizes_read_once_and_forget_gone_ones() -> None:
    reads: list[str] = []

    def read(sid: str) -> int:
        reads.append(sid)
        if sid == "broken":
            raise StoreError("origin down")
        return len(sid) * 100

    sizes = metrics.SnapshotSizes()
    assert asyncio.run(sizes.of({"a", "bb", "broken"}, read)) == {"a": 100, "bb": 200}
    assert asyncio.run(sizes.of({"a", "bb", "broken"}, read)) == {"a": 100, "bb": 200}
    assert sorted(reads) == ["a", "bb", "broken", "broken"]  # an unreadable one is tried again
    assert asyncio.run(sizes.of({"bb"}, read)) == {"bb": 200}
    assert set(sizes.known) == {"bb"}


def test_bearer_token_check() -> None:
    token = "t" * 43
    assert bearer_allowed(f"Bearer {token}", token)
    assert not bearer_allowed(f"Bearer {token}x", token)
    assert not bearer_allowed(f"Basic {token}", token)
    assert not bearer_allowed(None, token)
    assert not bearer_allowed(f"Bearer {token}", None)  # no token configured (--no-auth): never by token
    assert not bearer_allowed("Bearer ", "")
