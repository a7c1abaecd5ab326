"""Lease decisions of the shared event queue (snapfaas.worker.event_leases): pure, fake clock."""

from __future__ import annotations

import pytest

from snapfaas.worker.event_leases import (
    MIN_HELD, ApproximateCount, ClaimPacing, Holder, LeaseTerms, claim, claim_size, claimable,
)


def test_a_row_is_claimable_when_unclaimed_or_its_lease_has_lapsed() -> None:
    assert claimable(Holder(1, None, None, 0), db_now=100.0)
    assert not claimable(Holder(1, "a", 100.5, 0), db_now=100.0)
    assert not claimable(Holder(1, "a", 100.0, 0), db_now=100.0)  # lapses strictly after lease_until
    assert claimable(Holder(1, "a", 99.9, 0), db_now=100.0)
    assert claimable(Holder(1, "a", None, 0), db_now=100.0)  # a claim without a lease never holds


def test_a_fresh_claim_counts_nothing_and_a_takeover_counts_one_retry() -> None:
    terms = LeaseTerms(30.0)
    fresh = claim(Holder(7, None, None, 2), terms, db_now=1000.0)
    assert fresh is not None and (fresh.seq, fresh.lease_until, fresh.retries, fresh.taken_over) == (7, 1030.0, 2, False)
    lapsed = claim(Holder(7, "dead-node", 999.0, 2), terms, db_now=1000.0)
    assert lapsed is not None and (lapsed.retries, lapsed.taken_over, lapsed.lease_until) == (3, True, 1030.0)
    assert claim(Holder(7, "live-node", 1001.0, 2), terms, db_now=1000.0) is None


def test_lease_terms() -> None:
    assert LeaseTerms(3.0).renew_every_s == 1.0
    with pytest.raises(ValueError, match="positive"):
        LeaseTerms(0.0)


def test_claim_size_refills_in_batches_and_lets_a_stuck_node_look_further() -> None:
    capacity = 4
    target = max(MIN_HELD, 2 * capacity)
    assert claim_size(0, capacity, stuck=False) == target
    assert claim_size(target // 2, capacity, stuck=False) == target - target // 2
    assert claim_size(target // 2 + 1, capacity, stuck=False) == 0  # busy and well stocked: no query per event
    assert claim_size(target, capacity, stuck=True) == 3 * target  # free slots, nothing startable
    assert claim_size(4 * target, capacity, stuck=True) == 0  # bounded: never the whole queue
    assert claim_size(0, 64, stuck=False) == 128


def test_pacing_polls_an_idle_queue_at_the_idle_interval_and_backs_off_on_failures() -> None:
    pacing = ClaimPacing(idle_s=0.25, failure_backoff=(0.5, 4.0))
    assert pacing.due(0.0)
    pacing.claimed(asked=16, got=16, now=10.0)  # full: there may be more, ask again at once
    assert pacing.due(10.0)
    pacing.claimed(asked=16, got=3, now=10.0)  # short: the queue looks empty
    assert not pacing.due(10.2) and pacing.due(10.25)
    delays = [pacing.failed(20.0) for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert not pacing.due(23.9) and pacing.due(24.0)
    pacing.claimed(asked=16, got=0, now=30.0)
    assert pacing.failures == 0 and pacing.due(30.25)


def test_the_approximate_count_adds_own_changes_to_the_last_database_count() -> None:
    count = ApproximateCount(refresh_s=1.0)
    assert count.stale(0.0)
    count.refreshed(100, delta_then=0, now=0.0)
    assert count.value == 100 and not count.stale(0.5) and count.stale(1.0)
    count.added(5)
    count.removed(2)
    assert count.value == 103
    delta_at_query = count.delta  # a count query starts now ...
    count.added(1)  # ... this node accepts one more while it runs ...
    count.refreshed(250, delta_then=delta_at_query, now=1.0)  # ... and the database says 250 (others' work too)
    assert count.value == 251
    count.removed(400)
    assert count.value == 0  # never negative
