"""The worker's synchronous bookkeeping decisions (snapfaas.worker.pool.Worker)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random

import pytest

from snapfaas.cluster.usage import RemoteUsage
from snapfaas.errors import Throttled
from snapfaas.worker.environment import MOVES, EnvState
from snapfaas.worker.pool import Placement, Pool, Worker, pool_key


@dataclasses.dataclass(frozen=True)
class FakeVersion:
    name: str
    version: str = "$LATEST"
    revision_id: str = "rev-1"
    timeout: int = 3


class FakeEnv:
    """Just what `Worker`'s decisions touch: version, state/move, last_used, alive, destroy."""

    ids = itertools.count(1)

    def __init__(self, version: FakeVersion, created_at: float) -> None:
        self.id = f"env-{next(self.ids)}"
        self.version = version
        self.state = EnvState.STARTING
        self.last_used = created_at
        self.destroyed = False
        self.alive = True  # the runtime process is still running
        self.credentials_expire_at: float | None = None  # on-demand credentials variables (epoch s)

    def move(self, state: EnvState) -> None:
        if state not in MOVES[self.state]:
            raise RuntimeError(f"illegal move {self.state} -> {state}")
        self.state = state

    async def destroy(self) -> None:
        self.destroyed = True
        self.move(EnvState.DEAD)

    def __repr__(self) -> str:
        return f"<FakeEnv {self.id} {self.version.name}:{self.version.version} {self.state.value}>"


class FakeFactory:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.created: list[FakeEnv] = []

    def create(self, version: FakeVersion) -> FakeEnv:
        env = FakeEnv(version, self.clock())
        self.created.append(env)
        return env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_worker(clock: Clock, max_environments: int = 4, keep_alive_s: float = 60.0) -> Worker:
    return Worker(FakeFactory(clock), max_environments, keep_alive_s, clock=clock)  # type: ignore[arg-type]


class MustWait(Exception):
    """`_take` told the request to wait (the host is full and nothing may be evicted)."""

    def __init__(self, placement: Placement) -> None:
        super().__init__(f"wait until {placement.wait_until}")
        self.placement = placement


def acquire(worker: Worker, version: FakeVersion, reserved: int | None = None) -> tuple[FakeEnv, list[FakeEnv], bool]:
    """The synchronous part of `Worker.invoke` up to a busy environment: (env, evicted, cold).
    Raises `MustWait` (the request withdrawn) where `invoke` would wait."""
    worker._admit(version.name, reserved)
    key = pool_key(version)  # type: ignore[arg-type]
    placement = worker._take(key)
    if placement.env is not None:
        return placement.env, placement.discard, False  # type: ignore[return-value]
    if not placement.start:
        worker._finish(version.name)
        worker._drop_if_vacant(placement.pool)
        raise MustWait(placement)
    try:
        env = worker.factory.create(version)  # type: ignore[arg-type]
    finally:
        worker.starting -= 1
        placement.pool.starting -= 1
    worker.pools.setdefault(key, Pool(key)).busy.add(env)  # type: ignore[arg-type]
    env.move(EnvState.BUSY)
    return env, placement.discard, True  # type: ignore[return-value]


def serve(worker: Worker, version: FakeVersion, reserved: int | None = None) -> FakeEnv:
    """One full, healthy invocation; returns the environment (now idle)."""
    env, evict, _ = acquire(worker, version, reserved)
    for e in evict:
        e.move(EnvState.DEAD)
    assert worker._release(env, version.name, healthy=True) is False  # type: ignore[arg-type]
    return env


F = FakeVersion("f")
G = FakeVersion("g")


# -- admission -------------------------------------------------------------------------------
def test_reserved_concurrency_throttles(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=10)
    worker._admit("f", 2)
    worker._admit("f", 2)
    with pytest.raises(Throttled) as info:
        worker._admit("f", 2)
    assert info.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert info.value.extra() == {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"}
    assert (info.value.status, info.value.code) == (429, "TooManyRequestsException")
    assert worker.inflight["f"] == 2  # a throttled request is not counted
    worker._admit("g", 2)  # other functions are not affected
    assert worker.inflight["g"] == 1


def test_reserved_zero_disables_function(clock: Clock) -> None:
    worker = make_worker(clock)
    with pytest.raises(Throttled, match="Rate Exceeded"):
        worker._admit("f", 0)
    assert "f" not in worker.inflight or worker.inflight["f"] == 0


def test_account_concurrency_throttles(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=3)
    worker._admit("f", None)
    worker._admit("g", None)
    worker._admit("h", 5)
    with pytest.raises(Throttled) as info:
        worker._admit("i", None)
    assert info.value.reason == "ConcurrentInvocationLimitExceeded"
    # the reserved limit is reported first when both are exceeded
    with pytest.raises(Throttled) as info:
        worker._admit("f", 1)
    assert info.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert sum(worker.inflight.values()) == 3


def test_reserved_concurrency_counts_other_nodes(clock: Clock) -> None:
    """Cluster mode: the other nodes' admitted requests (as last read) count against the limit."""
    worker = make_worker(clock, max_environments=10)
    worker.set_remote(RemoteUsage({"f": 1}, 1, frozenset({"node-b"})))
    worker._admit("f", 2)
    with pytest.raises(Throttled) as info:
        worker._admit("f", 2)
    assert info.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"
    worker.set_remote(RemoteUsage())  # node b's request ended
    worker._admit("f", 2)
    assert worker.inflight["f"] == 2


def test_account_limit_counts_other_nodes(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=10)
    worker.account_limit = 4
    worker.set_remote(RemoteUsage({"x": 3}, 3, frozenset({"node-b"})))
    worker._admit("f", None)
    with pytest.raises(Throttled) as info:
        worker._admit("g", None)
    assert info.value.reason == "ConcurrentInvocationLimitExceeded"


def test_a_fresher_remote_view_admits_a_queued_request(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=10)
    worker.admission_wait_s = 30.0
    worker.set_remote(RemoteUsage({"f": 2}, 2, frozenset({"node-b"})))

    async def scenario() -> int:
        queued = asyncio.ensure_future(worker._admission("f", 2))
        await asyncio.sleep(0)
        assert not queued.done()
        worker.set_remote(RemoteUsage({"f": 1}, 1, frozenset({"node-b"})))
        await asyncio.wait_for(queued, 5)
        return worker.inflight["f"]

    assert asyncio.run(scenario()) == 1


def test_release_frees_admission(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=1)
    env = serve(worker, F)
    assert not worker.inflight  # the counter entry is removed at zero
    assert serve(worker, F) is env


# -- take / release --------------------------------------------------------------------------
def test_cold_then_warm(clock: Clock) -> None:
    worker = make_worker(clock)
    env, evict, cold = acquire(worker, F)
    assert cold and evict == []
    assert worker.starting == 0
    assert env.state is EnvState.BUSY
    pool = worker.pools[pool_key(F)]  # type: ignore[arg-type]
    assert pool.busy == {env} and pool.idle == []
    clock.now += 5
    assert worker._release(env, "f", healthy=True) is False  # type: ignore[arg-type]
    assert env.state is EnvState.IDLE and env.last_used == clock.now
    assert pool.idle == [env] and pool.busy == set()
    again, _, cold = acquire(worker, F)
    assert again is env and not cold
    assert env.state is EnvState.BUSY


def test_take_counts_starting_environments(clock: Clock) -> None:
    worker = make_worker(clock)
    worker._admit("f", None)
    placement = worker._take(pool_key(F))  # type: ignore[arg-type]
    assert (placement.env, placement.start, placement.discard) == (None, True, [])
    assert worker.starting == 1 and placement.pool.starting == 1
    assert pool_key(F) in worker.pools  # type: ignore[arg-type]


def test_idle_reuse_is_lifo(clock: Clock) -> None:
    worker = make_worker(clock)
    a, _, _ = acquire(worker, F)
    b, _, _ = acquire(worker, F)
    c, _, _ = acquire(worker, F)
    for env in (b, a, c):  # release order defines recency: c is the most recently used
        clock.now += 1
        worker._release(env, "f", healthy=True)  # type: ignore[arg-type]
    assert acquire(worker, F)[0] is c
    assert acquire(worker, F)[0] is a
    assert acquire(worker, F)[0] is b
    assert acquire(worker, F)[2] is True  # all busy now: a cold start


def test_pools_are_per_revision(clock: Clock) -> None:
    worker = make_worker(clock)
    env = serve(worker, F)
    new_revision = dataclasses.replace(F, revision_id="rev-2")
    other, _, cold = acquire(worker, new_revision)
    assert cold and other is not env
    v1 = dataclasses.replace(F, version="1")
    assert acquire(worker, v1)[2] is True


def test_take_discards_dead_idle_environments(clock: Clock) -> None:
    worker = make_worker(clock)
    a = serve(worker, F)
    b = serve(worker, F)
    assert a is b
    c, _, _ = acquire(worker, F)
    d, _, _ = acquire(worker, F)
    e, _, _ = acquire(worker, F)
    for env in (c, d, e):
        worker._release(env, "f", True)  # type: ignore[arg-type]
    e.alive = False  # its runtime exited while idle
    d.move(EnvState.DEAD)  # killed behind the pool's back
    got, discard, cold = acquire(worker, F)
    assert got is c and not cold
    assert discard == [e, d]  # the caller destroys them
    assert worker.pools[pool_key(F)].idle == []  # type: ignore[arg-type]
    # with nothing usable left, a cold start; the dead ones are not handed out again
    e2, _, _ = acquire(worker, F)
    worker._release(e2, "f", True)  # type: ignore[arg-type]
    e2.alive = False
    got, discard, cold = acquire(worker, F)
    assert cold and discard == [e2]


def test_expired_includes_dead_idle_environments(clock: Clock) -> None:
    worker = make_worker(clock, keep_alive_s=100)
    env = serve(worker, F)
    other = serve(worker, G)
    assert worker._expired() == []
    env.alive = False
    assert worker._expired() == [env]
    assert worker.environments() == [other]


def test_unhealthy_release_destroys(clock: Clock) -> None:
    worker = make_worker(clock)
    env, _, _ = acquire(worker, F)
    assert worker._release(env, "f", healthy=False) is True  # type: ignore[arg-type]
    assert pool_key(F) not in worker.pools  # type: ignore[arg-type]  # empty pool dropped
    assert not worker.inflight
    assert worker.environments() == []


def test_unhealthy_release_keeps_pool_with_other_environments(clock: Clock) -> None:
    worker = make_worker(clock)
    a, _, _ = acquire(worker, F)
    b, _, _ = acquire(worker, F)
    worker._release(a, "f", True)  # type: ignore[arg-type]
    assert worker._release(b, "f", healthy=False) is True  # type: ignore[arg-type]
    assert worker.pools[pool_key(F)].idle == [a]  # type: ignore[arg-type]
    assert worker.environments() == [a]


def test_release_while_closing_destroys(clock: Clock) -> None:
    worker = make_worker(clock)
    env, _, _ = acquire(worker, F)
    worker._closing = True
    assert worker._release(env, "f", healthy=True) is True  # type: ignore[arg-type]


# -- eviction --------------------------------------------------------------------------------
def test_eviction_at_capacity_picks_least_recently_used(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=3)
    envs = [acquire(worker, v)[0] for v in (F, F, G)]
    for env, at in zip(envs, (3.0, 1.0, 2.0), strict=True):
        clock.now = 1000 + at
        worker._release(env, env.version.name, True)  # type: ignore[arg-type]
    h = FakeVersion("h")
    env, evict, cold = acquire(worker, h)
    assert cold
    assert evict == [envs[1]]  # f's env released at t=1
    assert envs[1] not in worker.environments()
    assert len(worker.environments()) == 3
    # later (f and g unused since), the next one evicts g's env (t=2), removing g's now empty pool
    clock.now += 10
    _, evict, _ = acquire(worker, FakeVersion("i"))
    assert evict == [envs[2]]
    assert pool_key(G) not in worker.pools  # type: ignore[arg-type]


def test_no_eviction_below_capacity(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=3)
    serve(worker, F)
    serve(worker, G)
    _, evict, cold = acquire(worker, FakeVersion("h"))
    assert cold and evict == []
    assert len(worker.environments()) == 3


def test_busy_environments_are_never_evicted(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=2)
    busy, _, _ = acquire(worker, F)
    idle = serve(worker, G)
    clock.now += 10  # old enough for anyone to evict
    _, evict, _ = acquire(worker, FakeVersion("h"))
    assert evict == [idle]
    assert busy in worker.environments()


# -- keep-alive ------------------------------------------------------------------------------
def test_expiry(clock: Clock) -> None:
    worker = make_worker(clock, keep_alive_s=10)
    old = serve(worker, F)
    clock.now += 4
    newer = serve(worker, G)
    busy, _, _ = acquire(worker, FakeVersion("h"))
    busy.last_used = 0  # busy environments never expire, however old
    clock.now += 5.999
    assert worker._expired() == []
    clock.now += 0.001  # exactly keep_alive_s after `old` was released
    assert worker._expired() == [old]
    assert pool_key(F) not in worker.pools  # type: ignore[arg-type]
    assert worker._expired() == []
    clock.now += 4
    assert worker._expired() == [newer]
    assert worker.environments() == [busy]


def test_use_refreshes_keep_alive(clock: Clock) -> None:
    worker = make_worker(clock, keep_alive_s=10)
    env = serve(worker, F)
    clock.now += 9
    assert serve(worker, F) is env
    clock.now += 9
    assert worker._expired() == []
    clock.now += 1
    assert worker._expired() == [env]


# -- retire ----------------------------------------------------------------------------------
def test_retire_version(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=10)
    f1, f2 = dataclasses.replace(F, version="1"), dataclasses.replace(F, version="2")
    idle_f1, _, _ = acquire(worker, f1)
    busy_f1, _, _ = acquire(worker, f1)
    worker._release(idle_f1, "f", True)  # type: ignore[arg-type]
    idle_f2 = serve(worker, f2)
    idle_latest = serve(worker, F)
    idle_g = serve(worker, dataclasses.replace(G, version="1"))
    assert worker._retire("f", "1") == [idle_f1]
    assert pool_key(f1) not in worker.pools  # type: ignore[arg-type]
    assert set(worker.environments()) == {idle_f2, idle_latest, idle_g}
    # the busy one finishes its request, finds no pool, and must be destroyed
    assert worker._release(busy_f1, "f", healthy=True) is True  # type: ignore[arg-type]
    # a new request for the retired version gets a fresh environment
    assert acquire(worker, f1)[2] is True


def test_retire_function(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=10)
    envs = [serve(worker, dataclasses.replace(F, version=v)) for v in ("$LATEST", "1", "2")]
    g = serve(worker, G)
    assert sorted(e.id for e in worker._retire("f", None)) == sorted(e.id for e in envs)
    assert worker.environments() == [g]
    assert worker._retire("f", None) == []
    assert worker._retire("nope", "1") == []


def test_busy_env_of_retired_pool_is_destroyed_even_if_pool_recreated(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=10)
    old, _, _ = acquire(worker, F)
    worker._retire("f", None)
    new = serve(worker, F)  # same key, new pool
    assert worker._release(old, "f", healthy=True) is True  # type: ignore[arg-type]
    assert worker.pools[pool_key(F)].idle == [new]  # type: ignore[arg-type]


# -- invariants under a random workload ------------------------------------------------------
def test_capacity_invariants_under_random_load(clock: Clock) -> None:
    rng = random.Random(1234)
    limit = 5
    worker = make_worker(clock, max_environments=limit, keep_alive_s=30)
    versions = [FakeVersion(n, v) for n in ("a", "b", "c") for v in ("$LATEST", "1")]
    busy: list[tuple[FakeEnv, str]] = []
    throttled = 0
    for _ in range(3000):
        clock.now += rng.random() * 3
        action = rng.random()
        if action < 0.5:
            version = rng.choice(versions)
            reserved = 2 if version.name == "c" else None
            try:
                env, evict, _ = acquire(worker, version, reserved)
            except (Throttled, MustWait):
                throttled += 1
            else:
                for e in evict:
                    assert e.state is EnvState.IDLE
                    e.move(EnvState.DEAD)
                busy.append((env, version.name))
        elif action < 0.9 and busy:
            env, name = busy.pop(rng.randrange(len(busy)))
            if worker._release(env, name, healthy=rng.random() > 0.1):  # type: ignore[arg-type]
                env.move(EnvState.DEAD)
        else:
            for env in worker._expired():
                assert env.state is EnvState.IDLE
                assert clock.now - env.last_used >= 30
                env.move(EnvState.DEAD)
        live = worker.environments()
        assert len(live) + worker.starting <= limit
        assert sum(worker.inflight.values()) == len(busy) <= limit
        assert worker.inflight.get("c", 0) <= 2
        assert all(e.state is not EnvState.DEAD for e in live)
        assert {e for e, _ in busy} == {e for p in worker.pools.values() for e in p.busy}
        assert all(e.state is EnvState.IDLE for p in worker.pools.values() for e in p.idle)
        assert all(len(p) > 0 or not p.idle for p in worker.pools.values())
    assert throttled > 0


def test_retired_busy_environments_count_against_capacity(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=2)
    running: set[FakeEnv] = set()
    old, _, _ = acquire(worker, F)  # busy
    running.add(old)
    running.add(serve(worker, G))  # idle
    worker._retire("f", None)  # e.g. UpdateFunctionCode while `old` is still serving a request
    clock.now += 10  # g's idle environment is old enough to evict
    env, evict, cold = acquire(worker, FakeVersion("h"))
    running -= set(evict)
    running.add(env)
    assert len(running) <= 2, f"{len(running)} environments alive with max_environments=2"


# -- publish slots (snapshot init environments count against the limit) ----------------------
def test_publish_slot_takes_a_free_slot_and_throttles_invokes_at_the_limit(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=2)
    serve(worker, F)  # idle
    assert worker._claim_publish_slot() == (True, [])
    assert worker.publishing == 1
    acquire(worker, F)  # reuses the idle environment: now 1 busy + 1 publishing
    with pytest.raises(Throttled) as info:
        worker._admit("g", None)
    assert info.value.reason == "ConcurrentInvocationLimitExceeded"
    worker._release_publish_slot()
    worker._admit("g", None)


def test_publish_slot_evicts_the_least_recently_used_idle_environment(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=2)
    old = serve(worker, F)
    clock.now += 1
    new = serve(worker, G)
    granted, evict = worker._claim_publish_slot()
    assert granted and evict == [old]
    assert worker.environments() == [new] and worker.publishing == 1


def test_publish_slot_must_wait_while_every_slot_is_busy(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=2)
    acquire(worker, F)
    acquire(worker, G)
    assert worker._claim_publish_slot() == (False, [])
    assert worker.publishing == 0


def test_queued_publish_gets_the_slot_an_invoke_frees(clock: Clock) -> None:
    async def scenario() -> list[str]:
        worker = make_worker(clock, max_environments=1)
        events: list[str] = []
        env, _, _ = acquire(worker, F)

        async def publish() -> None:
            async with worker.environment_slot():
                events.append(f"publishing with {len(worker.environments())} pooled")
                assert worker.publishing == 1
            events.append("released")

        task = asyncio.create_task(publish())
        for _ in range(5):
            await asyncio.sleep(0)  # let the publish queue up
        assert events == [] and len(worker._slot_waiters) == 1
        worker._release(env, "f", healthy=True)  # type: ignore[arg-type]  # idle: evictable for the publish
        await asyncio.wait_for(task, 5)
        assert env.destroyed and worker.publishing == 0
        return events

    assert asyncio.run(scenario()) == ["publishing with 0 pooled", "released"]


def test_capacity_invariants_with_publishes_under_random_load(clock: Clock) -> None:
    rng = random.Random(99)
    limit = 3
    worker = make_worker(clock, max_environments=limit, keep_alive_s=30)
    versions = [FakeVersion(n) for n in ("a", "b")]
    busy: list[tuple[FakeEnv, str]] = []
    publishing = 0
    granted_total = 0
    for _ in range(3000):
        clock.now += rng.random()
        action = rng.random()
        if action < 0.4:
            try:
                env, evict, _ = acquire(worker, rng.choice(versions))
            except MustWait as wait:
                for e in wait.placement.discard:
                    e.move(EnvState.DEAD)
                worker._ended(len(wait.placement.discard))
                continue
            except Throttled:
                continue
            for e in evict:
                e.move(EnvState.DEAD)
            worker._ended(len(evict))  # their destroy finished
            busy.append((env, env.version.name))
        elif action < 0.6:
            granted, evict = worker._claim_publish_slot()
            for e in evict:
                assert e.state is EnvState.IDLE
                e.move(EnvState.DEAD)
            worker._ended(len(evict))
            publishing += granted
            granted_total += granted
        elif action < 0.75 and publishing:
            worker._release_publish_slot()
            publishing -= 1
        elif busy:
            env, name = busy.pop(rng.randrange(len(busy)))
            if worker._release(env, name, healthy=rng.random() > 0.2):  # type: ignore[arg-type]
                env.move(EnvState.DEAD)
                worker._ended(1)
        assert worker.publishing == publishing and worker.ending == 0
        assert len(worker.environments()) + worker.starting + worker.publishing <= limit
    assert granted_total > 0


def test_a_publish_waits_for_environments_still_being_destroyed(clock: Clock) -> None:
    worker = make_worker(clock, max_environments=1)
    env, _, _ = acquire(worker, F)
    assert worker._release(env, "f", healthy=False) is True  # type: ignore[arg-type]  # destroy under way
    assert worker.ending == 1
    assert worker._claim_publish_slot() == (False, [])  # its container still exists
    worker._ended(1)
    assert worker._claim_publish_slot() == (True, [])


# -- credentials variables ---------------------------------------------------------------------
def test_environment_whose_credentials_expire_soon_is_retired(clock: Clock) -> None:
    """On-demand credentials are fixed variables: an environment is not given another request
    (nor parked idle) once they would expire within the function's timeout plus a margin."""
    import time

    worker = make_worker(clock)
    lasting = serve(worker, F)
    lasting.credentials_expire_at = time.time() + 3600
    assert acquire(worker, F)[0] is lasting  # reused: an hour left
    lasting.credentials_expire_at = time.time() + F.timeout + 30  # less than timeout + margin left
    assert worker._release(lasting, "f", healthy=True) is True  # type: ignore[arg-type]
    parked = serve(worker, F)
    assert parked is not lasting
    parked.credentials_expire_at = time.time() + 10
    env, discard, cold = acquire(worker, F)
    assert cold and env is not parked and parked in discard
