"""Pure lease decisions (snapfaas.cluster.leases): claim, take-over, renew, given rows and the DB time."""

from __future__ import annotations

from snapfaas.cluster.leases import Claim, ClaimRow, Decision, decide_claim, is_live, still_held


def row(holder: str = "a", token: int = 1, until: float = 100.0) -> ClaimRow:
    return ClaimRow("publish", "f:1", holder, token, 1, until)


def test_a_free_lease_is_taken() -> None:
    assert decide_claim(None, "a", 50.0) == Decision.TAKE_NEW


def test_a_live_lease_of_another_node_is_busy() -> None:
    assert decide_claim(row("b", until=100.0), "a", 99.9) == Decision.BUSY


def test_an_expired_lease_is_taken_over() -> None:
    assert decide_claim(row("b", until=100.0), "a", 100.0) == Decision.TAKE_OVER
    assert decide_claim(row("b", until=100.0), "a", 150.0) == Decision.TAKE_OVER


def test_a_node_takes_its_own_lease_back_after_a_restart() -> None:
    assert decide_claim(row("a", until=100.0), "a", 10.0) == Decision.TAKE_OVER


def test_liveness_is_strictly_before_lease_until() -> None:
    assert is_live(row(until=100.0), 99.999)
    assert not is_live(row(until=100.0), 100.0)


def test_renewal_needs_the_same_holder_and_token() -> None:
    mine = Claim("publish", "f:1", "a", 3)
    assert still_held(row("a", token=3), mine)
    assert still_held(row("a", token=3, until=1.0), mine)  # expired but nobody took it
    assert not still_held(row("b", token=4), mine)  # taken over
    assert not still_held(row("a", token=4), mine)  # taken back by a restarted process of the same node
    assert not still_held(None, mine)  # released


# -- node usage (cluster/usage.py) ------------------------------------------------------------
from snapfaas.cluster.usage import TOTAL, UsageRow, aggregate  # noqa: E402


def test_usage_sums_the_other_live_nodes() -> None:
    rows = [UsageRow("a", TOTAL, 5, 100.0), UsageRow("a", "f", 5, 100.0),  # this node: not counted
            UsageRow("b", TOTAL, 3, 100.0), UsageRow("b", "f", 2, 100.0), UsageRow("b", "g", 1, 100.0),
            UsageRow("c", TOTAL, 1, 100.0), UsageRow("c", "f", 1, 100.0),
            UsageRow("d", TOTAL, 9, 50.0), UsageRow("d", "f", 9, 50.0)]  # expired: a dead node
    usage = aggregate(rows, "a", 60.0)
    assert usage.functions == {"f": 3, "g": 1}
    assert usage.total == 4
    assert usage.nodes == {"b", "c"}
    assert usage.of("h") == 0


# -- re-creation under a claim (snapshot/manager.py) ----------------------------------------
from snapfaas.registry.model import State  # noqa: E402
from snapfaas.snapshot.manager import RECREATING, needs_recreation  # noqa: E402


class V:
    def __init__(self, state: State, snapshot_id: str | None = None, reason: str | None = None) -> None:
        self.state, self.snapshot_id, self.state_reason = state, snapshot_id, reason


def test_a_recreation_is_needed_only_while_nobody_did_it() -> None:
    seen_inactive, seen_broken = V(State.INACTIVE), V(State.ACTIVE, "s-old")
    assert needs_recreation(V(State.INACTIVE), seen_inactive)  # type: ignore[arg-type]
    assert needs_recreation(V(State.ACTIVE, "s-old"), seen_broken)  # type: ignore[arg-type]
    assert not needs_recreation(V(State.ACTIVE, "s-new"), seen_inactive)  # type: ignore[arg-type]  # another node re-created it
    assert not needs_recreation(V(State.ACTIVE, "s-new"), seen_broken)  # type: ignore[arg-type]
    assert needs_recreation(V(State.PENDING, None, RECREATING), seen_inactive)  # type: ignore[arg-type]  # its node died
    assert not needs_recreation(V(State.FAILED), seen_inactive)  # type: ignore[arg-type]
