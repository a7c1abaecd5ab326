"""Lease decisions of the shared event queue: pure and synchronous (no I/O, clocks passed in).

In cluster mode every node consumes one ``events`` table (PostgreSQL). A node **claims** a
stored event before it schedules it: it sets ``claimed_by`` to its node id and ``lease_until``
to the database's clock plus `LeaseTerms.lease_s`. While the event is held (queued in the
node's backlog or running) the node **renews** the lease every `LeaseTerms.renew_every_s`;
when the event is finished the row is deleted (or, for a retry, updated and kept claimed). A
node that dies stops renewing: once ``lease_until`` is past (database clock) any node may claim
the event, and it runs again (at least once).

Decisions made here, used by `snapfaas.worker.events`:

* `claim` - whether a row is claimable and what the claim writes. **A lost lease counts as a
  retry, not as an attempt**: the claimant that died may or may not have run the code, and a
  node failure is a platform fault, which Lambda's rules do not count against
  ``MaximumRetryAttempts`` (as an attempt interrupted by a single-host daemon crash is not).
  The event's ``retries`` counter goes up by one; ``attempts`` (``approximateInvokeCount``)
  counts completed runs only. ``MaximumEventAgeInSeconds`` still bounds the event.
* `ClaimPacing` - when the dispatcher asks the database for more events: at once while claims
  come back full and the node has room, every `ClaimPacing.idle_s` once a claim came back short
  (the queue looked empty: an idle node makes a few cheap queries a second, and a busy one does
  not query per finished event), backing off after database failures. Events a node accepts
  itself need no claim query: they are claimed as they are stored.
* `claim_size` - how many events a node holds at most: enough to keep its slots busy and to
  let functions take turns, not so many that other nodes starve.
* `ApproximateCount` - the cluster-wide queue length the 429 cap checks: the last database
  count plus this node's own inserts and deletes since. Other nodes' changes since the last
  refresh are missed, so the cap can be overshot by what the other nodes accept within one
  refresh interval (`COUNT_REFRESH_S`), and a freed slot may be seen that late.
"""

from __future__ import annotations

import dataclasses

DEFAULT_LEASE_S = 30.0
IDLE_POLL_S = 0.25  # a node with free slots and an empty-looking queue asks again after this
FAILURE_BACKOFF_S = (0.5, 8.0)  # database unavailable: first delay, cap (doubling)
COUNT_REFRESH_S = 1.0
MIN_HELD = 16


@dataclasses.dataclass(frozen=True)
class LeaseTerms:
    """How long a claim lasts without renewal; renewed every third of it."""

    lease_s: float = DEFAULT_LEASE_S

    def __post_init__(self) -> None:
        if self.lease_s <= 0:
            raise ValueError(f"an event lease must be positive, got {self.lease_s}")

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / 3

    def until(self, db_now: float) -> float:
        return db_now + self.lease_s


@dataclasses.dataclass(frozen=True)
class Holder:
    """The claim columns of a stored event as read."""

    seq: int
    claimed_by: str | None
    lease_until: float | None
    retries: int


@dataclasses.dataclass(frozen=True)
class Claim:
    """What claiming a row writes: the new lease and the new retry count."""

    seq: int
    lease_until: float
    retries: int
    taken_over: bool  # the row was claimed by a node whose lease ran out (or by this node's previous run)


def claimable(holder: Holder, db_now: float) -> bool:
    """Unclaimed, or its lease is over (database clock)."""
    return holder.claimed_by is None or holder.lease_until is None or holder.lease_until < db_now


def claim(holder: Holder, terms: LeaseTerms, db_now: float) -> Claim | None:
    """The claim of `holder` at `db_now`, or None when another node's lease still holds it.
    Taking over a lapsed lease counts one retry (see the module's contract)."""
    if not claimable(holder, db_now):
        return None
    taken_over = holder.claimed_by is not None
    return Claim(holder.seq, terms.until(db_now), holder.retries + (1 if taken_over else 0), taken_over)


def claim_size(held: int, capacity: int, stuck: bool) -> int:
    """How many more events a node should claim now.

    `held`: events it holds (queued + running); `capacity`: attempts it runs at once;
    `stuck`: it has free slots but nothing it holds can start now (every held event waits for
    a backoff, a gate or its function's reserved concurrency). Normally a node holds up to
    ``max(MIN_HELD, 2 * capacity)`` events, claimed in batches once it holds half of that or
    less (one claim per batch, not one per finished event); a stuck node may hold up to four
    times that, so events of other functions behind a throttled one still reach it."""
    target = max(MIN_HELD, 2 * capacity)
    if stuck:
        return max(0, 4 * target - held)
    return target - held if held <= target // 2 else 0


@dataclasses.dataclass
class ClaimPacing:
    """When the dispatcher next asks the database for events (monotonic seconds)."""

    idle_s: float = IDLE_POLL_S
    failure_backoff: tuple[float, float] = FAILURE_BACKOFF_S
    next_at: float = 0.0
    failures: int = 0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def claimed(self, asked: int, got: int, now: float) -> None:
        """A claim asked for `asked` events and got `got`: a full answer may have more behind
        it (ask again at once); a short one means the queue looks empty (wait `idle_s`)."""
        self.failures = 0
        self.next_at = now if got >= asked > 0 else now + self.idle_s

    def failed(self, now: float) -> float:
        """A claim failed (database unavailable): the delay before the next one."""
        first, cap = self.failure_backoff
        delay = min(cap, first * 2 ** self.failures)
        self.failures += 1
        self.next_at = now + delay
        return delay


@dataclasses.dataclass
class ApproximateCount:
    """Events stored cluster-wide, as this node knows it (see the module's contract)."""

    base: int = 0
    delta: int = 0
    refreshed_at: float = float("-inf")
    refresh_s: float = COUNT_REFRESH_S

    @property
    def value(self) -> int:
        return max(0, self.base + self.delta)

    def stale(self, now: float) -> bool:
        return now - self.refreshed_at >= self.refresh_s

    def refreshed(self, count: int, delta_then: int, now: float) -> None:
        """A database count taken when this node's own delta was `delta_then` (changes made
        by this node while the count ran are kept on top of it)."""
        self.base = count
        self.delta -= delta_then
        self.refreshed_at = now

    def added(self, n: int = 1) -> None:
        self.delta += n

    def removed(self, n: int = 1) -> None:
        self.delta -= n
