"""The eviction rule that keeps pools from thrashing (snapfaas.worker.placement), and the
worker following it under simulated closed-loop traffic."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random

import pytest

from snapfaas.errors import Throttled
from snapfaas.worker.environment import EnvState
from snapfaas.worker.placement import (
    MIN_IDLE_AGE_S, DemandAverage, IdleEnvironment, PoolLoad, choose_victim, fair_shares, next_eligible_at,
)
from snapfaas.worker.pool import InvokeOutcome, Worker

from tests.unit.test_pool import FakeEnv, FakeVersion


def idle(pool: str, last_used: float) -> IdleEnvironment[str, str]:
    return IdleEnvironment(pool, last_used, f"{pool}@{last_used}")


# -- the pure rule ---------------------------------------------------------------------------
def test_shares_follow_demand_and_idle_only_pools_get_none() -> None:
    shares = fair_shares({"a": PoolLoad(10, 3), "b": PoolLoad(2, 1), "c": PoolLoad(4, 0)}, 8)
    assert shares == {"a": 6.0, "b": 2.0, "c": 0.0}
    assert fair_shares({"a": PoolLoad(3, 0)}, 8) == {"a": 0.0}


def test_two_pools_at_their_shares_do_not_trade_environments() -> None:
    # steady 50/50 traffic on 8 slots: b has every environment busy and one more request;
    # a's just-released environment is young: the request waits for one of b's own
    loads = {"a": PoolLoad(4, 4), "b": PoolLoad(4, 5)}
    assert choose_victim("b", loads, [idle("a", 99.9)], 8, now=100.0) is None


def test_a_pool_below_its_share_takes_from_one_above_it() -> None:
    loads = {"a": PoolLoad(7, 2), "b": PoolLoad(1, 6)}  # shares: a 2, b 6
    victim = choose_victim("b", loads, [idle("a", 99.5), idle("a", 99.9)], 8, now=100.0)
    assert victim == idle("a", 99.5)  # the least recently used of the eligible ones


def test_a_pool_without_environments_gets_one() -> None:
    loads = {"a": PoolLoad(8, 8.0), "new": PoolLoad(0, 1)}  # new's share rounds below one
    assert choose_victim("new", loads, [idle("a", 99.99)], 8, now=100.0) == idle("a", 99.99)


def test_an_environment_idle_long_enough_goes_whatever_the_shares() -> None:
    loads = {"a": PoolLoad(4, 4), "b": PoolLoad(4, 5)}
    old = idle("a", 100.0 - MIN_IDLE_AGE_S)
    assert choose_victim("b", loads, [idle("a", 99.9), old], 8, now=100.0) == old
    assert next_eligible_at("b", [idle("a", 99.9), idle("b", 10.0)]) == pytest.approx(99.9 + MIN_IDLE_AGE_S)
    assert next_eligible_at("b", [idle("b", 10.0)]) is None


def test_own_idle_environments_are_never_victims() -> None:
    loads = {"a": PoolLoad(4, 0), "b": PoolLoad(4, 8)}
    assert choose_victim("a", loads, [idle("a", 0.0)], 8, now=100.0) is None


def test_demand_average_follows_a_shift_and_ignores_a_blip() -> None:
    average = DemandAverage()
    assert average.sample(10, now=0.0) == 10
    assert average.sample(0, now=0.01) > 9.9  # one instant of no demand hardly moves it
    for step in range(1, 60):
        average.sample(0, now=step * 0.2)
    assert average.value < 0.1  # a lasting shift is followed within seconds


# -- the worker under closed-loop traffic ----------------------------------------------------
class SimulatedWorker(Worker):
    """A real `Worker` whose environments are fakes: starting takes `start_s`, a request `run_s`."""

    def __init__(self, max_environments: int, admission_wait_s: float, run_s: float = 0.002, start_s: float = 0.005) -> None:
        super().__init__(None, max_environments, keep_alive_s=600, admission_wait_s=admission_wait_s)  # type: ignore[arg-type]
        self.run_s, self.start_s = run_s, start_s
        self.created: list[FakeEnv] = []

    async def _new_environment(self, version):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.start_s)
        env = FakeEnv(version, self.clock())
        env.restore_from = None  # type: ignore[attr-defined]
        env.network = None  # type: ignore[attr-defined]
        self.created.append(env)
        return env

    async def _boot(self, env, request):  # type: ignore[no-untyped-def]
        return self.start_s * 1000

    async def _run(self, env, request, phase):  # type: ignore[no-untyped-def]
        assert env.state is EnvState.BUSY and env.version.version == request
        await asyncio.sleep(self.run_s)
        return InvokeOutcome(request.encode(), None, [], self.run_s * 1000, None, 128, env.id), True


async def closed_loop(worker: SimulatedWorker, callers: int, requests_each: int, versions: list[FakeVersion],
                      seed: int) -> collections.Counter[str]:
    rng = random.Random(seed)
    outcomes: collections.Counter[str] = collections.Counter()

    async def caller() -> None:
        for _ in range(requests_each):
            version = rng.choice(versions)
            try:
                outcome = await worker.invoke(version, version.version, None)  # type: ignore[arg-type]
            except Throttled as throttled:
                outcomes[throttled.reason] += 1
            else:
                outcomes["answered" if outcome.payload == version.version.encode() else "mismatched"] += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return outcomes


MIXED = [FakeVersion("f", "$LATEST"), FakeVersion("f", "1")]


def simulate(max_environments: int, callers: int, requests_each: int, seed: int) -> tuple[collections.Counter[str], SimulatedWorker]:
    """Closed-loop mixed traffic against a fresh simulated worker with a long admission wait."""
    async def scenario() -> tuple[collections.Counter[str], SimulatedWorker]:
        worker = SimulatedWorker(max_environments=max_environments, admission_wait_s=10)
        outcomes = await closed_loop(worker, callers=callers, requests_each=requests_each, versions=MIXED, seed=seed)
        return outcomes, worker

    return asyncio.run(scenario())


def test_mixed_traffic_at_the_limit_creates_about_as_many_environments_as_callers() -> None:
    outcomes, worker = simulate(max_environments=16, callers=16, requests_each=60, seed=7)
    assert outcomes == {"answered": 16 * 60}
    # before the placement rule, each miss in one pool evicted the other's idle environment:
    # hundreds of environments for these 960 requests
    assert len(worker.created) <= 2 * 16, f"{len(worker.created)} environments created"
    assert len(worker.environments()) <= 16


def test_more_callers_than_slots_wait_for_a_slot_instead_of_a_429() -> None:
    outcomes, worker = simulate(max_environments=8, callers=16, requests_each=30, seed=11)
    assert outcomes == {"answered": 16 * 30}
    assert len(worker.created) <= 2 * 8, f"{len(worker.created)} environments created"


def test_a_full_host_answers_429_once_the_admission_wait_runs_out() -> None:
    async def scenario() -> list[object]:
        worker = SimulatedWorker(max_environments=1, admission_wait_s=0.05, run_s=5.0)
        first = asyncio.create_task(worker.invoke(MIXED[0], "$LATEST", None))  # type: ignore[arg-type]
        while not worker.inflight:
            await asyncio.sleep(0)
        results = await asyncio.gather(worker.invoke(MIXED[0], "$LATEST", None),  # type: ignore[arg-type]
                                       worker.invoke(MIXED[0], "$LATEST", 0), return_exceptions=True)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert not worker._admission_waiters and not worker.inflight
        return results

    host_full, disabled = asyncio.run(scenario())
    assert isinstance(host_full, Throttled) and host_full.reason == "ConcurrentInvocationLimitExceeded"
    assert isinstance(disabled, Throttled) and disabled.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"


def test_a_released_environment_goes_to_the_oldest_waiter_of_its_version() -> None:
    async def scenario() -> list[str]:
        worker = SimulatedWorker(max_environments=1, admission_wait_s=10, run_s=0.01)
        order: list[str] = []

        async def call(name: str) -> None:
            await worker.invoke(MIXED[0], "$LATEST", None)  # type: ignore[arg-type]
            order.append(name)

        tasks = []
        for name in ("first", "second", "third"):
            tasks.append(asyncio.create_task(call(name)))
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
        assert len(worker.created) == 1
        return order

    assert asyncio.run(scenario()) == ["first", "second", "third"]


def test_traffic_moving_to_another_version_takes_the_environments_along() -> None:
    async def scenario() -> SimulatedWorker:
        worker = SimulatedWorker(max_environments=8, admission_wait_s=10)
        await closed_loop(worker, callers=8, requests_each=20, versions=[MIXED[0]], seed=1)
        outcomes = await closed_loop(worker, callers=8, requests_each=20, versions=[MIXED[1]], seed=2)
        assert outcomes == {"answered": 160}
        return worker

    worker = asyncio.run(scenario())
    pools = {key[1]: len(pool) for key, pool in worker.pools.items()}
    assert pools.get("1", 0) >= 4 and len(worker.environments()) <= 8
    assert len(worker.created) <= 16
