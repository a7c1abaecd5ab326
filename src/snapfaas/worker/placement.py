"""Which idle environment of another version may be evicted when the host is full.

The rule that keeps pools from thrashing (issue 9): when every environment slot is taken and
a request finds no idle environment of its own version, the worker would rather wait a moment
for one of its own to come free than destroy another version's environment and start from
scratch, because that version will want its environment back a moment later. An idle
environment of another version is given up only when

- it has been idle for at least `MIN_IDLE_AGE_S` (its version does not need it now), or
- the requester's pool has no environment at all, or
- the requester's pool is below its **fair share** of the host and the victim's pool would
  still be at or above its own share without it. Shares split `capacity` between pools in
  proportion to their *demand*: requests being served, environments starting and requests
  waiting for an environment, averaged over the last seconds (`DemandAverage`). A pool with
  no recent demand has a share of about 0, so its idle environments go first.

Why averaged, and why "still at or above without it": under steady mixed traffic the pool a
request arrives for has every environment busy at that instant, and the other has one just
released, so instantaneous counts say "move an environment over" on almost every request:
that is the thrash. Averages stay at the traffic's real split, and the victim-side margin
of one environment keeps two pools at their shares from trading environments back and forth.

Everything here is a pure function of a snapshot of the pools, so it is tested without a
worker; `worker.pool.Worker` takes the snapshot and acts on the answer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

# How long an idle environment is protected from eviction by other versions. Under steady load
# an environment is idle for a few milliseconds between requests; one idle for a second is
# not needed by its version at the current rate. It also bounds how long a request waits for
# an environment of its own version before another version's is evicted for it.
MIN_IDLE_AGE_S = 1.0

# Time constant of the demand average (seconds): long enough to smooth out request-by-request
# fluctuations, short enough to follow a shift of traffic from one version to another.
DEMAND_TIME_CONSTANT_S = 2.0

K = TypeVar("K", bound=Hashable)
E = TypeVar("E")


@dataclasses.dataclass(frozen=True)
class PoolLoad:
    """One pool at the moment of the decision: `size` counts its environments (idle, busy and
    starting), `demand` its requests (served, starting and waiting for an environment),
    averaged over the last seconds."""

    size: int
    demand: float


@dataclasses.dataclass
class DemandAverage:
    """An exponentially weighted average of a pool's demand, sampled at each placement."""

    value: float = 0.0
    sampled_at: float | None = None

    def sample(self, current: int, now: float, time_constant_s: float = DEMAND_TIME_CONSTANT_S) -> float:
        if self.sampled_at is None:
            self.value = float(current)
        else:
            weight = 1.0 - math.exp(-max(0.0, now - self.sampled_at) / time_constant_s)
            self.value += weight * (current - self.value)
        self.sampled_at = now
        return self.value


@dataclasses.dataclass(frozen=True)
class IdleEnvironment(Generic[K, E]):
    pool: K
    last_used: float
    env: E


def fair_shares(loads: Mapping[K, PoolLoad], capacity: int) -> dict[K, float]:
    """Each pool's share of `capacity`, in proportion to its demand (0 for idle-only pools)."""
    total = sum(load.demand for load in loads.values())
    if total <= 0:
        return {key: 0.0 for key in loads}
    return {key: capacity * load.demand / total for key, load in loads.items()}


def choose_victim(
    requester: K,
    loads: Mapping[K, PoolLoad],
    idle: Iterable[IdleEnvironment[K, E]],
    capacity: int,
    now: float,
    min_idle_age_s: float = MIN_IDLE_AGE_S,
) -> IdleEnvironment[K, E] | None:
    """The idle environment of another pool to evict for `requester`, or None (wait).

    `loads` must include `requester`, with the request deciding counted in its demand.
    Among the eligible environments (see the module docstring) the least recently used goes.
    """
    shares = fair_shares(loads, capacity)
    mine = loads[requester]
    below_share = mine.size < shares[requester]
    eligible = [
        candidate for candidate in idle
        if candidate.pool != requester and (
            mine.size == 0
            or now - candidate.last_used >= min_idle_age_s
            or (below_share and loads[candidate.pool].size - 1 >= shares[candidate.pool])
        )
    ]
    return min(eligible, key=lambda c: c.last_used, default=None)


def next_eligible_at(requester: K, idle: Iterable[IdleEnvironment[K, E]], min_idle_age_s: float = MIN_IDLE_AGE_S) -> float | None:
    """When the first idle environment of another pool becomes old enough to evict (None if
    there is none): the latest a waiting request needs to look again without being woken."""
    return min((c.last_used + min_idle_age_s for c in idle if c.pool != requester), default=None)


__all__ = ["DEMAND_TIME_CONSTANT_S", "MIN_IDLE_AGE_S", "DemandAverage", "IdleEnvironment", "PoolLoad", "choose_victim",
           "fair_shares", "next_eligible_at"]
