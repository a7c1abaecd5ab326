"""Environment pools and the invocation path.

Every bookkeeping decision (which environment serves a request, whom to throttle, which idle
environments to evict or reclaim) is made in a synchronous method with no ``await`` inside,
so it cannot interleave with another request (httpcore's pool pattern); the slow parts
(booting, invoking, killing) happen around those decisions.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from snapfaas.cluster.usage import RemoteUsage
from snapfaas.errors import ServiceError, SnapStartError, SnapStartNotReady, SnapStartTimeout, Throttled
from snapfaas.registry.model import FunctionVersion
from snapfaas.runtime import protocol
from snapfaas.worker.environment import (
    EnvironmentDied, EnvState, Environment, FrameStreamRejected, InvokeRequest, decode_error,
)
from snapfaas.snapshot.engine import criu_errors
from snapfaas.snapshot.sockets import DEFAULT_CONNECTION_MODE
from snapfaas.snapshot.vault import CacheLease
from snapfaas.snapshot.workingset import WorkingSetKeeper
from snapfaas import metrics, timeline
from snapfaas.worker import billing, platform_log
from snapfaas.worker.billing import Phase
from snapfaas.worker.factory import EarlyCgroup, EnvironmentFactory
from snapfaas.worker.placement import (
    MIN_IDLE_AGE_S, DemandAverage, IdleEnvironment, PoolLoad, choose_victim, next_eligible_at,
)

logger = logging.getLogger(__name__)
PoolKey = tuple[str, str, str]  # function, version, revision id
RESTORE_TIMEOUT_S = 10.0  # Lambda's bound on restore + after-restore hooks
INSPECT_TIMEOUT_S = 30.0  # a verify copy's runtime answers `inspect` within this
# Concurrent restores per CPU. Restores that map memory copy-on-write are short and partly
# wait on the kernel (namespaces, mounts), so a burst of 8 on 2 CPUs finishes soonest all at
# once (measured: p99 ~25% lower than 2 at a time); beyond 4 per CPU they queue.
RESTORE_SLOTS_PER_CPU = 4


class Credentials(Protocol):
    """Issues an environment's credentials variables (the key variables for on-demand, the
    container-credentials endpoint for SnapStart, see `snapfaas.identity`) and withdraws them."""

    def environ(self, identity: str, function: str, role: str, snap_start: bool = False) -> dict[str, str]: ...

    def expires(self, identity: str) -> float | None: ...

    def revoke(self, identity: str) -> None: ...


class NoCredentials:
    def environ(self, identity: str, function: str, role: str, snap_start: bool = False) -> dict[str, str]:
        return {}

    def expires(self, identity: str) -> float | None:
        return None

    def revoke(self, identity: str) -> None:
        return None


CREDENTIALS_MARGIN_S = 60.0  # an on-demand environment is retired when its credentials expire within its timeout + this


class SnapshotSource(Protocol):
    """What the worker needs from the snapshot manager."""

    async def images(self, version: FunctionVersion, slice_index: int | None = None) -> CacheLease: ...

    def restore_environ(self, version: FunctionVersion) -> Mapping[str, str]: ...

    def broken(self, version: FunctionVersion, detail: str) -> None: ...

    def check_invocable(self, version: FunctionVersion) -> None: ...

    def touch(self, version: FunctionVersion) -> None: ...


def pool_key(version: FunctionVersion) -> PoolKey:
    return (version.name, version.version, version.revision_id)


@dataclasses.dataclass
class InvokeOutcome:
    """What the API needs to answer an Invoke; function errors are data, not exceptions."""

    payload: bytes
    function_error: str | None
    log_lines: list[str]
    duration_ms: float
    init_ms: float | None
    max_memory_mb: int
    env_id: str
    restore_ms: float | None = None


@dataclasses.dataclass
class Sample:
    """One environment's part in ``snapfaas snapstart verify`` (`Worker.sample`)."""

    outcome: InvokeOutcome
    fingerprints: dict[str, Any] | None  # the runtime's `inspection`; None when it could not be had
    problem: str | None = None  # why there are no fingerprints


class Pool:
    """The environments of one version revision, and the requests waiting for one of them."""

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.idle: list[Environment] = []  # most recently used last
        self.busy: set[Environment] = set()
        self.starting = 0  # environments being created for this pool (also in `Worker.starting`)
        # admitted requests waiting for an environment, first come first served: a released
        # environment is handed to the first (result: the environment, still BUSY); a change
        # elsewhere (a slot freed, an environment idle) resolves them all with None: look again
        self.waiters: collections.deque[asyncio.Future[Environment | None]] = collections.deque()
        self.demand_average = DemandAverage()  # sampled at every placement (`Worker._take`)

    def __repr__(self) -> str:
        return (f"<Pool {self.key[0]}:{self.key[1]} [{len(self.busy)} busy, {len(self.idle)} idle,"
                f" {self.starting} starting, {len(self.waiters)} waiting]>")

    def __len__(self) -> int:
        return len(self.idle) + len(self.busy)

    @property
    def vacant(self) -> bool:
        """Nothing in it, nothing coming, nobody waiting: it may be dropped."""
        return not self.idle and not self.busy and not self.starting and not self.waiters

    def demand(self) -> int:
        """Requests being served, starting an environment or waiting for one."""
        return len(self.busy) + self.starting + len(self.waiters)

    def load(self) -> PoolLoad:
        """Size and demand (its average as last sampled) for `placement.choose_victim`."""
        return PoolLoad(size=len(self) + self.starting, demand=self.demand_average.value)


@dataclasses.dataclass
class Placement:
    """`Worker._take`'s answer for one request: an idle environment of its pool (`env`, now
    BUSY), a reserved slot to start one in (`start`), or neither: wait for a handover or a
    change, at the latest until `wait_until` (the worker's clock). `discard` lists environments
    the caller must destroy first (dead idle ones, and those evicted for the new one)."""

    pool: Pool
    env: Environment | None = None
    start: bool = False
    wait_until: float | None = None
    discard: list[Environment] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class AdmissionWaiter:
    """A request queued for the concurrency limit; the future resolves once it is admitted."""

    function: str
    reserved: int | None
    future: asyncio.Future[None]


class Worker:
    """Routes invocations to environments, scaling out and reclaiming them.

    Parameters: `max_environments` bounds live environments and concurrent invocations
    (the account concurrency limit); `keep_alive_s` is how long an idle environment is kept;
    `admission_wait_s` is how long a request that finds a concurrency limit reached waits,
    queued first come first served, for a slot before it is throttled (0: at once, as Lambda).

    Placement (see `worker.placement`): a request reuses an idle environment of its own
    version; if there is none and the host is full it waits for one of its own to be handed
    over, unless another version's idle environment is evictable under the fair-share / idle
    age rule. That wait is bounded by `placement.MIN_IDLE_AGE_S`: by then some idle environment
    (there always is one for an admitted request) has become evictable.
    """

    def __init__(
        self,
        factory: EnvironmentFactory,
        max_environments: int,
        keep_alive_s: float,
        clock: Callable[[], float] = time.monotonic,
        credentials: Credentials | None = None,
        admission_wait_s: float = 0.0,
    ) -> None:
        self.factory = factory
        self.credentials = credentials or NoCredentials()
        self.snapshots: SnapshotSource | None = None  # set by the server when SnapStart is wired
        self.metrics: metrics.Metrics | None = None  # set by the server: every invocation is recorded
        self.working_sets: WorkingSetKeeper | None = None  # file pages read ahead at restore (set by the server)
        self.reseed_after_restore = False  # --reseed-after-restore: the runtime reseeds RNGs after a restore (AWS does not)
        self.snapstart_connections = DEFAULT_CONNECTION_MODE  # how restored copies see init's TCP connections (runtime/sockets.py)
        self.max_environments = max_environments
        self.keep_alive_s = keep_alive_s
        self.admission_wait_s = admission_wait_s
        self._admission_waiters: collections.deque[AdmissionWaiter] = collections.deque()
        # cluster mode (cluster/usage.py): the other nodes' admitted requests as last read, and the
        # cluster-wide account limit (--account-concurrency); single host: nothing remote, no such limit
        self.remote = RemoteUsage()
        self.account_limit: int | None = None
        self.clock = clock
        self.pools: dict[PoolKey, Pool] = {}
        self.inflight: collections.Counter[str] = collections.Counter()
        self.starting = 0
        self.publishing = 0  # slots held by snapshot (publish) init environments
        self.ending = 0  # environments dropped from the pools whose destroy has not finished
        self.destroying: set[Environment] = set()  # those environments (a Shutdown phase can take seconds)
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()  # queued publishes
        self.draining: set[Environment] = set()  # busy environments of retired pools
        # see RESTORE_SLOTS_PER_CPU; the queue wait counts as restore time
        self._restore_slots = asyncio.Semaphore(RESTORE_SLOTS_PER_CPU * max(1, os.cpu_count() or 1))
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # destroys started where nothing can await them
        self._closing = False

    def __repr__(self) -> str:
        idle = sum(len(p.idle) for p in self.pools.values())
        busy = sum(len(p.busy) for p in self.pools.values())
        return (f"<Worker [{busy} busy, {idle} idle, {self.starting} starting, {self.publishing} publishing"
                f" | {len(self.pools)} pools]>")

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop(), name="reaper")

    async def close(self) -> None:
        """Destroy every environment, busy ones included; idempotent.

        Safe while invocations are in flight: each one ends promptly (its environment is
        killed, so it reports Runtime.ExitError), and no environment is started afterwards
        (`invoke` raises `ServiceError`). Call it before waiting for in-flight requests.
        """
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
        self._wake()  # queued publishes see `_closing` and give up
        envs = [e for p in self.pools.values() for e in (*p.idle, *p.busy)] + list(self.draining)
        envs += list(self.destroying)  # in their Shutdown phase: killed now, and waited for
        self.pools.clear()
        await asyncio.gather(*(e.destroy() for e in envs), return_exceptions=True)
        self.factory.runc.remove_cgroups()

    def environments(self) -> list[Environment]:
        return [e for p in self.pools.values() for e in (*p.idle, *p.busy)]

    # -- synchronous decisions -------------------------------------------------------------
    def _admission_block(self, function: str, reserved: int | None) -> str | None:
        """The limit that keeps a request of `function` out now (Lambda's reason), or None.
        Reserved concurrency and the account limit count the other nodes' requests too (as last
        read, `remote`); the host's own slots are this node's."""
        if reserved is not None and self.inflight[function] + self.remote.of(function) >= reserved:
            return "ReservedFunctionConcurrentInvocationLimitExceeded"
        if self._host_full() or (self.account_limit is not None
                                 and sum(self.inflight.values()) + self.remote.total >= self.account_limit):
            return "ConcurrentInvocationLimitExceeded"
        return None

    def set_remote(self, usage: RemoteUsage) -> None:
        """A fresh view of the other nodes' usage; queued requests it now allows are admitted."""
        self.remote = usage
        self._wake()

    def _host_full(self) -> bool:
        """Every slot is taken by an admitted request or a publish's init environment."""
        return sum(self.inflight.values()) + self.publishing >= self.max_environments

    def _admit(self, function: str, reserved: int | None) -> None:
        """Count the request in, or raise `Throttled` with the limit's reason."""
        reason = self._admission_block(function, reserved)
        if reason is not None:
            raise Throttled("Rate Exceeded.", reason)
        self.inflight[function] += 1

    def _finish(self, function: str) -> None:
        """An admitted request is over (its slot is handed on by the next `_wake`)."""
        self.inflight[function] -= 1
        if self.inflight[function] <= 0:
            del self.inflight[function]

    def _grant_admissions(self) -> None:
        """Admit queued requests, oldest first, while their limits allow (a request blocked by
        its function's reserved concurrency does not hold up other functions')."""
        if not self._admission_waiters:
            return
        waiting: collections.deque[AdmissionWaiter] = collections.deque()
        while self._admission_waiters:
            if not self._closing and self._admission_block("", None) is not None:
                break  # nobody else fits: the rest keep their places
            waiter = self._admission_waiters.popleft()
            if waiter.future.done():
                continue
            if self._closing:
                waiter.future.set_exception(ServiceError("invoke failed at step 'admit': the worker is shutting down"))
            elif self._admission_block(waiter.function, waiter.reserved) is None:
                self.inflight[waiter.function] += 1
                waiter.future.set_result(None)
            else:
                waiting.append(waiter)
        waiting.extend(self._admission_waiters)
        self._admission_waiters = waiting

    def _live(self) -> int:
        """Environments that count against `max_environments`: pooled, starting, draining and
        the init environments of publishes."""
        return sum(len(p) for p in self.pools.values()) + self.starting + len(self.draining) + self.publishing

    def _evict_for(self, needed: int, pending: int = 0) -> list[Environment]:
        """Forget the least recently used idle environments, enough (if there are) to bring
        `_live() + pending` down to `max_environments - needed`; the caller destroys them."""
        excess = self._live() + pending - (self.max_environments - needed)
        if excess <= 0:
            return []
        candidates = sorted((e for p in self.pools.values() for e in p.idle), key=lambda e: e.last_used)
        evict = candidates[:excess]
        for env in evict:
            self._forget(env)
        return evict

    def _ended(self, count: int) -> None:
        """`count` environments the decisions handed out for destruction are destroyed."""
        self.ending -= count
        self._wake()

    def _claim_publish_slot(self) -> tuple[bool, list[Environment]]:
        """A slot for a publish's init environment if one is free or can be freed by evicting
        idle environments (returned for the caller to destroy before it starts anything);
        (False, []) if the caller must wait (every slot is busy, starting or still ending).

        Stricter than `_take` (an invoke cannot wait): environments still being destroyed
        count too, so a publish never starts a container while the limit's worth exist."""
        if self._closing:
            raise ServiceError("snapshot failed at step 'environment slot': the worker is shutting down")
        idle = sum(len(p.idle) for p in self.pools.values())
        if self._live() - idle + self.ending >= self.max_environments:
            return False, []
        evict = self._evict_for(1, pending=self.ending)
        self.ending += len(evict)
        self.publishing += 1
        return True, evict

    def _release_publish_slot(self) -> None:
        self.publishing -= 1
        self._wake()

    def _wake(self) -> None:
        """Something changed (a slot was freed, an environment ended or went idle): admit
        queued requests, and let queued publishes and requests waiting for an environment
        look again."""
        self._grant_admissions()
        _look_again(self._slot_waiters)
        for pool in self.pools.values():
            _look_again(pool.waiters)

    def _take(self, key: PoolKey) -> Placement:
        """Place one admitted request of `key` (see `Placement`): its pool's most recently used
        live idle environment; else a new one if a slot is free; else a new one in place of
        other pools' idle environments that `placement.choose_victim` allows evicting; else wait.
        The caller must not be among the pool's waiters while it asks."""
        if self._closing:
            raise ServiceError("invoke failed at step 'place': the worker is shutting down")
        pool = self.pools.get(key)
        if pool is None:  # (not setdefault: that builds a Pool for every request, to throw it away)
            pool = self.pools[key] = Pool(key)
        now = self.clock()
        for other in self.pools.values():
            other.demand_average.sample(other.demand() + (other is pool), now)
        placement = Placement(pool)
        while pool.idle:
            env = pool.idle.pop()
            if env.state is EnvState.IDLE and env.alive and self._credentials_last(env):
                env.move(EnvState.BUSY)
                pool.busy.add(env)
                placement.env = env
                break
            placement.discard.append(env)
        else:
            excess = self._live() + 1 - self.max_environments
            victims = self._victims(pool, excess, now) if excess > 0 else []
            if victims is None:
                placement.wait_until = next_eligible_at(key, self._idle_elsewhere(key))
            else:
                for env in victims:
                    self._forget(env)
                placement.discard.extend(victims)
                placement.start = True
                self.starting += 1
                pool.starting += 1
        self.ending += len(placement.discard)
        return placement

    @staticmethod
    def _credentials_last(env: Environment) -> bool:
        """Whether `env`'s credentials variables (on-demand) outlast one more invocation; an
        environment whose credentials are about to expire is retired, as Lambda recycles
        environments well before theirs do."""
        expires = env.credentials_expire_at
        return expires is None or expires - time.time() > env.version.timeout + CREDENTIALS_MARGIN_S

    def _idle_elsewhere(self, key: PoolKey) -> list[IdleEnvironment[PoolKey, Environment]]:
        """Idle environments of pools other than `key` (dead ones as if idle forever)."""
        return [IdleEnvironment(other, env.last_used if env.alive else -math.inf, env)
                for other, pool in self.pools.items() if other != key for env in pool.idle]

    def _victims(self, pool: Pool, count: int, now: float) -> list[Environment] | None:
        """`count` idle environments of other pools that may be evicted for a new environment
        of `pool`, or None if there are not that many (the request waits)."""
        idle = self._idle_elsewhere(pool.key)
        loads = {key: other.load() for key, other in self.pools.items()}  # sampled by `_take`, the request deciding counted
        chosen: list[Environment] = []
        for _ in range(count):
            victim = choose_victim(pool.key, loads, idle, self.max_environments, now)
            if victim is None:
                return None
            idle.remove(victim)
            old = loads[victim.pool]
            loads[victim.pool] = PoolLoad(old.size - 1, old.demand)
            chosen.append(victim.env)
        return chosen

    def _forget(self, env: Environment) -> None:
        pool = self.pools.get(pool_key(env.version))
        if pool is None:
            return
        if env in pool.idle:
            pool.idle.remove(env)
        pool.busy.discard(env)
        self._drop_if_vacant(pool)

    def _release(self, env: Environment, function: str, healthy: bool) -> bool:
        """The request `env` served (healthy: the environment can serve another) is over:
        hand `env` to the first request waiting for its pool, or park it idle; True if it must
        be destroyed instead."""
        self._finish(function)
        destroy = self._return(env, healthy)
        self._wake()  # an idle environment can be evicted for a publish, a destroyed one frees a slot
        return destroy

    def _return(self, env: Environment, healthy: bool) -> bool:
        """`env` (BUSY) serves no request any more: see `_release`."""
        self.draining.discard(env)
        pool = self.pools.get(pool_key(env.version))
        keep = healthy and not self._closing and pool is not None and env in pool.busy and self._credentials_last(env)
        if keep and pool is not None:
            while pool.waiters:
                waiter = pool.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(env)  # handed over: stays BUSY in `pool.busy`
                    return False
            pool.busy.discard(env)
            env.move(EnvState.IDLE)
            env.last_used = self.clock()
            pool.idle.append(env)
            return False
        if pool is not None:
            pool.busy.discard(env)
            self._drop_if_vacant(pool)
        self.ending += 1
        return True

    def _expired(self) -> list[Environment]:
        """Idle environments past keep-alive, or whose runtime died while idle (now forgotten)."""
        deadline = self.clock() - self.keep_alive_s
        out = []
        for pool in list(self.pools.values()):
            for env in [e for e in pool.idle if e.last_used <= deadline or not e.alive]:
                out.append(env)
                self._forget(env)
        self.ending += len(out)
        return out

    def _retire(self, function: str, version: str | None) -> list[Environment]:
        """Detach pools of a function (or one version); idle ones are returned for destruction."""
        out: list[Environment] = []
        for key in [k for k in self.pools if k[0] == function and (version is None or k[1] == version)]:
            pool = self.pools.pop(key)
            out.extend(pool.idle)
            _look_again(pool.waiters)  # they look again, and find (or make) the key's new pool
            # busy environments finish their request, then `_release` finds no pool and destroys them
            self.draining.update(pool.busy)
        self.ending += len(out)
        return out

    # -- I/O around the decisions ----------------------------------------------------------
    @contextlib.asynccontextmanager
    async def environment_slot(self) -> AsyncIterator[None]:
        """Hold one of the `max_environments` slots for an environment the worker does not pool
        (a publish's snapshot init environment): waits, queued, until a slot is free or an idle
        environment can be evicted for it (those are destroyed here). While held, invokes that
        would need the slot are throttled. Raises `ServiceError` if the worker shuts down."""
        while True:
            granted, evict = self._claim_publish_slot()
            if evict:
                await self._destroy(evict)
            if granted:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():  # cancelled while queued
                    waiter.cancel()
        try:
            yield
        finally:
            self._release_publish_slot()

    async def _destroy(self, envs: list[Environment]) -> None:
        """Destroy environments a decision handed out (counted in `ending` until done).

        The destruction runs to its end even if the caller is cancelled (a control-plane task
        that retires a version, say): an environment in its Shutdown phase must not be left
        half destroyed, and `close` must still find it in `destroying`."""
        self.destroying.update(envs)
        work = asyncio.ensure_future(asyncio.gather(*(e.destroy() for e in envs), return_exceptions=True))

        def done(_: asyncio.Future[Any]) -> None:
            self.destroying.difference_update(envs)
            self._ended(len(envs))

        work.add_done_callback(done)
        await asyncio.shield(work)

    async def retire(self, function: str, version: str | None = None) -> None:
        await self._destroy(self._retire(function, version))

    async def _reap_loop(self) -> None:
        period = max(0.5, min(self.keep_alive_s / 4, 5.0))
        while True:
            await asyncio.sleep(period)  # a periodic timer, not synchronization
            expired = self._expired()
            if expired:
                logger.info("reclaiming %d idle environment(s)", len(expired))
                await self._destroy(expired)

    async def _admission(self, function: str, reserved: int | None) -> None:
        """Count a request in (see `_admit`); if a limit is reached, wait queued up to
        `admission_wait_s` for a slot, then raise `Throttled` with the limit's reason.
        A function with reserved concurrency 0 is throttled at once."""
        try:
            self._admit(function, reserved)
            return
        except Throttled as throttled:
            if self.admission_wait_s <= 0 or reserved == 0:
                raise
            reason = throttled.reason
        waiter = AdmissionWaiter(function, reserved, asyncio.get_running_loop().create_future())
        self._admission_waiters.append(waiter)
        granted = lambda: waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None  # noqa: E731
        try:
            async with asyncio.timeout(self.admission_wait_s):
                await waiter.future
        except TimeoutError:
            if not granted():  # else admitted just as the wait ran out
                raise Throttled("Rate Exceeded.", self._admission_block(function, reserved) or reason) from None
        except asyncio.CancelledError:
            if granted():
                self._finish(function)
                self._wake()
            raise
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            with contextlib.suppress(ValueError):  # not left queued behind a full host
                self._admission_waiters.remove(waiter)

    async def _place(self, key: PoolKey) -> Placement:
        """`_take` until the request has an environment or a slot to start one: destroys what
        the decisions hand out, waits (a handover, a change, or `wait_until`) when told to."""
        while True:
            placement = self._take(key)
            try:
                if placement.discard:
                    await self._destroy(placement.discard)
            except BaseException:
                self._unplace(placement)
                raise
            if placement.env is not None or placement.start:
                return placement
            env = await self._wait_for_environment(placement)
            if env is not None:
                placement.env = env
                return placement

    async def _wait_for_environment(self, placement: Placement) -> Environment | None:
        """Queue on the pool until an environment is handed over (returned) or something
        changes or `wait_until` passes (None: take again)."""
        pool = placement.pool
        waiter: asyncio.Future[Environment | None] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        until = placement.wait_until if placement.wait_until is not None else self.clock() + MIN_IDLE_AGE_S
        handed = lambda: waiter.done() and not waiter.cancelled() and waiter.exception() is None and waiter.result() is not None  # noqa: E731
        try:
            async with asyncio.timeout(max(0.0, until - self.clock()) + 0.001):
                return await waiter
        except TimeoutError:
            return waiter.result() if handed() else None
        except asyncio.CancelledError:
            if handed():
                self._unplace(Placement(pool, env=waiter.result()))
            raise
        finally:
            if waiter in pool.waiters:
                pool.waiters.remove(waiter)
            if not waiter.done():
                waiter.cancel()
            self._drop_if_vacant(pool)

    def _unplace(self, placement: Placement) -> None:
        """Undo a placement whose request went away before using it."""
        if placement.env is not None and self._return(placement.env, healthy=True):
            task = asyncio.get_running_loop().create_task(self._destroy([placement.env]))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if placement.start:
            self.starting -= 1
            placement.pool.starting -= 1
            self._drop_if_vacant(placement.pool)
        self._wake()

    def _drop_if_vacant(self, pool: Pool) -> None:
        if pool.vacant and self.pools.get(pool.key) is pool:
            del self.pools[pool.key]

    async def invoke(self, version: FunctionVersion, request: InvokeRequest, reserved: int | None) -> InvokeOutcome:
        """Run one invocation; raises only `Throttled`, `ServiceError` (platform faults) or what
        making an environment raises (`RuntimeUnavailable`, `CodeUnavailable`: the version's
        code package cannot be had).
        Every call is recorded in `metrics` (when set): its outcome, start kind and durations."""
        started = time.monotonic()
        start: list[bool] = []  # [True] once a new environment was created for this request
        try:
            outcome = await self._invoke(version, request, reserved, start)
        except Throttled as throttled:
            self._record(version, request, "throttled", started, start, None)
            if self.metrics is not None:
                self.metrics.throttle(version.name, throttled.reason)
            raise
        except BaseException:
            self._record(version, request, "error", started, start, None)
            raise
        self._record(version, request, "function_error" if outcome.function_error else "success", started, start, outcome)
        return outcome

    def _record(self, version: FunctionVersion, request: InvokeRequest, outcome: str, started: float,
                new_environment: list[bool], result: InvokeOutcome | None) -> None:
        if self.metrics is None:
            return
        ran = result is not None
        self.metrics.invocation(metrics.Invocation(
            version.name, version.version, outcome,
            start=metrics.start_of(result.init_ms, result.restore_ms, bool(new_environment)) if ran else None,
            latency_s=time.monotonic() - started if ran else None,
            duration_ms=result.duration_ms if ran else None,
            init_ms=result.init_ms if ran else None,
            restore_ms=result.restore_ms if ran else None,
            request_id=request.request_id, at=time.time(), memory_size_mb=version.memory_size,
            max_memory_used_mb=result.max_memory_mb if ran else None,
        ))

    async def _invoke(self, version: FunctionVersion, request: InvokeRequest, reserved: int | None,
                      new_environment: list[bool]) -> InvokeOutcome:
        if self._closing:
            raise ServiceError("invoke failed at step 'admit': the worker is shutting down")
        await self._admission(version.name, reserved)
        timeline.mark("admitted")
        env: Environment | None = None
        healthy = False
        try:
            placement = await self._place(pool_key(version))
            timeline.mark("placed")
            env = placement.env
            phase: Phase | None = None
            if env is None:
                new_environment.append(True)
                try:
                    env = await self._new_environment(version)
                finally:
                    self.starting -= 1
                    placement.pool.starting -= 1
                    if env is None:
                        self._drop_if_vacant(placement.pool)
                    self._wake()
                self.pools.setdefault(pool_key(version), Pool(pool_key(version))).busy.add(env)
                env.move(EnvState.BUSY)
                if self._closing:  # close() ran while idle ones were being evicted
                    raise ServiceError("invoke failed at step 'create environment': the worker is shutting down")
                timeline.mark("environment built")
                started = await self._start(env, request)
                if isinstance(started, InvokeOutcome):
                    return started
                phase = started
            outcome, healthy = await self._run(env, request, phase)
            if healthy and phase is not None and phase.is_restore and self.working_sets is not None:
                self.working_sets.observe(env.version.snapshot_id, env.container.init_pid)
            return outcome
        finally:
            if env is not None:
                if self._release(env, version.name, healthy):
                    await self._destroy([env])
            else:
                self._finish(version.name)
                self._wake()

    async def sample(self, version: FunctionVersion, request: InvokeRequest, restored: bool) -> Sample:
        """``snapfaas snapstart verify``: one environment of `version` made for this call only,
        restored from the version's snapshot (`restored`) or initialized on demand, invoked once
        with `request`, asked for its fingerprints (``inspect``), then destroyed. It is never in
        a pool, so no invoke can reach it; it holds one of the `max_environments` slots while it
        lives. Raises what a restore raises (SnapStartError, SnapStartTimeout, SnapStartNotReady)."""
        if self._closing:
            raise ServiceError("verify failed at step 'create environment': the worker is shutting down")
        async with self.environment_slot():
            env = await self._new_environment(version, on_demand=not restored)
            try:
                env.move(EnvState.BUSY)
                phase = await self._start(env, request)
                if isinstance(phase, InvokeOutcome):
                    return Sample(phase, None, "init failed: " + phase.payload.decode(errors="replace")[:500])
                outcome, healthy = await self._run(env, request, phase)
                if not healthy:
                    return Sample(outcome, None, "the environment did not survive the invoke")
                return Sample(outcome, *await self._inspect(env))
            finally:
                await env.destroy()

    async def _start(self, env: Environment, request: InvokeRequest) -> Phase | InvokeOutcome:
        """Bring new `env` to its first invocation: restore it from its snapshot, or run init
        (an `InvokeOutcome` when init failed). Raises what a restore raises."""
        try:
            if env.restore_from is not None:
                return await self._restore(env)
            init = await self._boot(env, request)
            return init if isinstance(init, InvokeOutcome) else Phase("Init", init)
        finally:
            if env.network is not None:
                env.network.started()  # background namespace work may go on

    @staticmethod
    async def _inspect(env: Environment) -> tuple[dict[str, Any] | None, str | None]:
        """The runtime's ``inspection`` answer, or None and why not."""
        try:
            await env.send("inspect")
            frame = await env.next_frame(INSPECT_TIMEOUT_S)
        except TimeoutError:
            return None, f"the runtime did not answer the inspection within {INSPECT_TIMEOUT_S:.0f} s"
        except EnvironmentDied as died:
            return None, f"the runtime died during the inspection: {died.describe()}"
        if frame.kind != "inspection":
            return None, f"the runtime answered {frame.kind!r} to the inspection"
        try:
            found = json.loads(frame.payload)
        except ValueError as exc:
            return None, f"unreadable inspection: {exc}"
        return (found, None) if isinstance(found, dict) else (None, "unreadable inspection: not an object")

    async def _new_environment(self, version: FunctionVersion, on_demand: bool = False) -> Environment:
        """An on-demand environment, or one restored from the version's snapshot (unless `on_demand`)."""
        restoring = version.uses_snapshot and self.snapshots is not None and not on_demand
        if restoring and self.working_sets is not None:
            # the library pages the snapshot's first restore used: read ahead from now on, while
            # the code, network, images and bundle are prepared and runc and CRIU work
            self.working_sets.prefetch(version.snapshot_id, images=False)
        self.factory.prime_cgroup_attach()  # in a thread: its container's cgroup move will not wait for a grace period
        # its cgroup is made in a thread meanwhile (criu engine): the environment takes it, else it is discarded
        early = self.factory.begin_restore(version) if restoring else None
        try:
            return await self._prepare_environment(version, restoring, early)
        finally:
            if early is not None and not early.taken:
                await early.discard()

    async def _prepare_environment(self, version: FunctionVersion, restoring: bool, early: EarlyCgroup | None) -> Environment:
        slice_index = self.factory.slice_of(version.name)  # one registry lookup for the code, images and bundle
        await self.factory.stage_code(version, slice_index)  # off the event loop: the code may come from the store origin
        timeline.mark("code staged")
        async with self.factory.network_for_new_environment() as network:
            timeline.mark("network leased")
            if restoring and self.snapshots is not None:
                timeline.set_kind("restore")
                lease = await self.snapshots.images(version, slice_index)  # pinned until the restore is over (lazy: until destroyed)
                timeline.mark("images leased")
                if lease.mapped and self.working_sets is not None:  # the view's pages it used: pushed once exposed
                    self.working_sets.prefetch(version.snapshot_id, files=False)
                try:
                    env = self.factory.restored(version, lease.path, network, slice_index, early)
                except BaseException:
                    lease.release()
                    raise
                if not lease.mapped:  # eager: the images are free once the restore is over
                    env.release_images = lease.release
                env.on_destroy.append(lease.release)  # lazy: the process reads them until it is gone
                env.on_destroy.append(lambda: self.credentials.revoke(env.id))
                return env
            timeline.set_kind("init")
            identity = "env-" + secrets.token_hex(8)
            env = self.factory.create(version, extra_environ=self.credentials.environ(identity, version.name, version.role), network=network)
            env.credentials_expire_at = self.credentials.expires(identity)
            env.on_destroy.append(lambda: self.credentials.revoke(identity))
            return env

    def _restored_environ(self, env: Environment) -> dict[str, str]:
        """What differs between copies of one snapshot, sent to the runtime with ``restore``:
        fresh credentials (the process environment in the images is the snapshotted
        environment's; SnapStart functions get no log stream variable, as on Lambda)."""
        return dict(self.credentials.environ(env.id, env.version.name, env.version.role, snap_start=True))

    @staticmethod
    def _platform_output(env: Environment, lines: list[str]) -> None:
        """What runc and CRIU printed for a restore that failed: for the operator, not the function."""
        if lines:
            logger.warning("environment %s: restore output: %s", env.id, " | ".join(l.strip() for l in lines)[-1000:])

    async def _restore(self, env: Environment) -> Phase:
        """Resume a snapshot: runc restore, fresh credentials, after-restore hooks (preceded by
        a reseed of the RNGs under ``--reseed-after-restore``).

        Returns the restore phase (Restore Duration: all of it; billed: from the process
        resuming to the end of its after-restore hooks, see `billing`). Raises SnapStartTimeout (over 10 s),
        SnapStartError (an after-restore hook failed) or SnapStartNotReady (the restore itself
        failed: the snapshot is re-created in the background). The caller destroys `env`.
        The snapshot's cached images stay pinned (never evicted) until this returns.
        """
        try:
            return await self._restore_pinned(env)
        finally:
            env.release_images()

    async def _restore_pinned(self, env: Environment) -> Phase:
        assert env.restore_from is not None and self.snapshots is not None
        started = time.monotonic()
        env.log(f"RESTORE_START Runtime Version: {env.version.runtime}.snapfaas\n")
        env.begin_capture()
        updates = self._restored_environ(env)
        try:
            async with asyncio.timeout(RESTORE_TIMEOUT_S):
                async with self._restore_slots:  # bound a huge burst: queued restores count against the timeout
                    slot = time.monotonic()
                    timeline.mark("restore slot")
                    env.hold_output()
                    criu_environ = self.snapshots.restore_environ(env.version)
                    await env.container.start(restore_from=env.restore_from, environ=criu_environ)
                    timeline.mark("container restored")
                    env.start_readers()
                    await env.send("restore", json.dumps(updates).encode(), reseed=self.reseed_after_restore,
                                   connections=self.snapstart_connections)
                    timeline.mark("restore sent")
                    frame = await env.next_frame(None)  # "resumed": the process runs again
                    timeline.mark("resumed frame")
                env.release_output(to_function_log=True)
                resumed = time.monotonic()
                if frame.kind == "resumed":  # hooks run outside the slot
                    frame = await env.next_frame(None)
                ready = time.monotonic()
                timeline.mark("ready frame")
                await env.wait_mark("restore")
                timeline.mark("restore logs read")
                logger.debug("environment %s restore phases: queued %.1f ms, runc+criu to resumed %.1f ms, "
                             "hooks %.1f ms, logs %.1f ms", env.id, (slot - started) * 1000, (resumed - slot) * 1000,
                             (ready - resumed) * 1000, (time.monotonic() - ready) * 1000)
        except TimeoutError as exc:
            self._platform_output(env, env.release_output(to_function_log=False))
            env.log(f"RESTORE_REPORT Restore Duration: {RESTORE_TIMEOUT_S * 1000:.2f} ms\tStatus: timeout\n")
            raise SnapStartTimeout("Lambda couldn't restore the snapshot within the timeout limit (10 seconds).") from exc
        except FrameStreamRejected as rejected:  # the restored function's own doing, not the snapshot's
            self._platform_output(env, env.release_output(to_function_log=False))
            env.log(f"RESTORE_REPORT Status: error\t{rejected.describe()}\n")
            raise SnapStartError(f"The runtime failed after restore: {rejected.describe()}") from rejected
        except EnvironmentDied as died:
            detail = criu_errors(env.container.bundle / "restore.log")
            self._platform_output(env, env.release_output(to_function_log=False))
            env.log(f"RESTORE_REPORT Status: error\t{died.describe()}: {detail}\n")
            self.snapshots.broken(env.version, detail)
            raise SnapStartNotReady(
                "Lambda is initializing your function. It will be ready to invoke once your function state becomes ACTIVE."
            ) from died
        restore_ms = (time.monotonic() - started) * 1000
        if frame.kind == "restore_error":
            error = decode_error(frame.payload)
            env.log(f"RESTORE_REPORT Restore Duration: {restore_ms:.2f} ms\tStatus: error\tError Type: {error.get('errorType')}\n")
            raise SnapStartError(
                f"The afterRestore() runtime hook encountered an error: {error.get('errorMessage', '')}".rstrip(": ")
            )
        if frame.kind != "ready":
            raise SnapStartError(f"The runtime answered {frame.kind!r} after restore instead of becoming ready.")
        env.log(f"RESTORE_REPORT Restore Duration: {restore_ms:.2f} ms\n")
        return Phase("Restore", restore_ms, (ready - resumed) * 1000)

    async def _boot(self, env: Environment, request: InvokeRequest) -> float | InvokeOutcome:
        """Start the container and run init; the init time, or the failed invocation's outcome."""
        started = time.monotonic()
        env.log(f"INIT_START Runtime Version: {env.version.runtime}.snapfaas\n")
        env.begin_capture()
        await env.container.start()
        timeline.mark("container started")
        env.start_readers()
        init_timeout = max(10.0, float(env.version.timeout))
        try:
            frame = await env.next_frame(init_timeout)
            await env.wait_mark("init")
        except TimeoutError:
            return self._failed(env, request, started, "Runtime.InitTimeout",
                                {"errorType": "Runtime.InitTimeout", "errorMessage": f"RequestId: {request.request_id} Error: Init timed out after {init_timeout:.2f} seconds"})
        except EnvironmentDied as died:
            return self._failed(env, request, started, "Runtime.ExitError",
                                {"errorType": "Runtime.ExitError", "errorMessage": f"RequestId: {request.request_id} Error: {died.describe()}"})
        init_ms = (time.monotonic() - started) * 1000
        if frame.kind == "init_error":
            error = decode_error(frame.payload)
            error_type = frame.header.get("error_type") or error.get("errorType", "Runtime.Unknown")
            env.log(platform_log.init_report(init_ms, "error", error_type))
            return self._failed(env, request, started, error_type, error)
        if frame.kind != "ready":
            return self._failed(env, request, started, "Runtime.Unknown",
                                {"errorType": "Runtime.Unknown", "errorMessage": f"unexpected frame {frame.kind!r} during init"})
        return init_ms

    def _failed(self, env: Environment, request: InvokeRequest, started: float, error_type: str, error: dict[str, object]) -> InvokeOutcome:
        duration = (time.monotonic() - started) * 1000
        memory_mb = env.max_memory_mb()
        env.log(
            f"START RequestId: {request.request_id} Version: {env.version.version}\n",
            f"END RequestId: {request.request_id}\n",
            self._report(env, request.request_id, duration, None, memory_mb, status=error_type),
        )
        return InvokeOutcome(json.dumps(error).encode(), "Unhandled", env.end_capture(), duration, None,
                             memory_mb, env.id)

    def _report(self, env: Environment, request_id: str, duration_ms: float, phase: Phase | None,
                memory_mb: int, status: str | None = None) -> str:
        """The REPORT line; `memory_mb` is `env.max_memory_mb()`, read once per invoke by the caller."""
        parts = [
            f"REPORT RequestId: {request_id}",
            *billing.report_fields(duration_ms, phase),
            f"Memory Size: {env.version.memory_size} MB",
            f"Max Memory Used: {memory_mb} MB",
            *billing.phase_fields(phase),
        ]
        if status is not None:
            parts.append(f"Status: error\tError Type: {status}")
        return "\t".join(parts) + "\t\n"

    def _too_large(self) -> bytes:
        """Lambda's answer to a response over the limit (the environment reading it is destroyed:
        the rest of the payload is never read)."""
        return json.dumps({
            "errorMessage": f"Response payload size exceeded maximum allowed payload size ({self.factory.config.limits.response_bytes} bytes).",
            "errorType": "Function.ResponseSizeTooLarge",
        }).encode()

    async def _run(self, env: Environment, request: InvokeRequest, phase: Phase | None) -> tuple[InvokeOutcome, bool]:
        if phase is None:
            env.begin_capture()
        env.log(f"START RequestId: {request.request_id} Version: {env.version.version}\n")
        started = time.monotonic()
        deadline_ms = int(time.time() * 1000 + request.timeout_s * 1000)
        env.invocations += 1
        healthy = False
        error_type: str | None = None
        try:
            await env.send_invoke(request, deadline_ms)
            timeline.mark("invoke sent")
            frame = await env.next_frame(request.timeout_s)
            timeline.mark("response frame")
            if not env.logs_read(frame):
                await env.wait_mark(request.request_id)
                timeline.mark("invoke logs read")
            if frame.kind == "response":
                payload, function_error, healthy = frame.payload, None, True
            elif frame.kind == "error":
                payload, function_error, healthy = frame.payload, "Unhandled", True
            else:
                payload, function_error = b'{"errorType":"Runtime.Unknown","errorMessage":"unexpected frame"}', "Unhandled"
        except TimeoutError:
            duration = (time.monotonic() - started) * 1000
            message = f"RequestId: {request.request_id} Error: Task timed out after {request.timeout_s:.2f} seconds"
            payload = json.dumps({"errorType": "Sandbox.Timedout", "errorMessage": message}).encode()
            function_error, error_type = "Unhandled", "Sandbox.Timedout"
            env.log(f"{message}\n")
        except FrameStreamRejected as rejected:  # the environment is destroyed (not healthy)
            if rejected.oversized:
                payload, function_error = self._too_large(), "Unhandled"
            else:
                payload = json.dumps({
                    "errorType": "Runtime.ExitError",
                    "errorMessage": f"RequestId: {request.request_id} Error: {rejected.describe()}",
                }).encode()
                function_error, error_type = "Unhandled", "Runtime.ExitError"
        except EnvironmentDied as died:
            if env.restore_from is not None and self.snapshots is not None:
                self.snapshots.environment_died(env.version)  # a page its snapshot could not serve?
            kind = "Runtime.OutOfMemory" if died.oom else "Runtime.ExitError"
            payload = json.dumps({
                "errorType": kind,
                "errorMessage": f"RequestId: {request.request_id} Error: {died.describe()}",
            }).encode()
            function_error, error_type = "Unhandled", kind
        duration = (time.monotonic() - started) * 1000
        if healthy and len(payload) > self.factory.config.limits.response_bytes:  # not read past the limit: defensive
            payload, function_error, healthy = self._too_large(), "Unhandled", False
        memory_mb = env.max_memory_mb()
        env.log(f"END RequestId: {request.request_id}\n",
                self._report(env, request.request_id, duration, phase, memory_mb, error_type))
        init_ms = phase.ms if phase is not None and not phase.is_restore else None
        restore_ms = phase.ms if phase is not None and phase.is_restore else None
        return InvokeOutcome(payload, function_error, env.end_capture(), duration, init_ms, memory_mb, env.id,
                             restore_ms), healthy


def _look_again(waiters: collections.deque[asyncio.Future[Any]]) -> None:
    """Resolve every queued waiter with None: each looks at the state again."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)


__all__ = ["InvokeOutcome", "Sample", "Worker", "protocol"]
