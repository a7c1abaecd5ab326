"""``GET /metrics``: the server's Prometheus metrics (`snapfaas.metrics` lists them).

Who may read them: the operator (SigV4, like every control-plane route), or a scraper that
presents the metrics token (``Authorization: Bearer <token>``: `snapfaas serve` keeps it in
``<data-dir>/metrics.token``, or reads ``--metrics-token-file``). The token grants this route
and nothing else; a function's credentials are denied it like every operator route.

The state part of a scrape is gathered here, on the event loop (the worker's pools and the
event queue are loop-owned), except snapshot sizes: a manifest may have to come from the
origin, so sizes are read in a thread once per snapshot and remembered.
"""

from __future__ import annotations

import collections
import hmac
import time

from aiohttp import web

from snapfaas.api.context import services
from snapfaas.metrics import CONTENT_TYPE, EnvironmentCount, ServerState, TierCount
from snapfaas.registry.model import FunctionVersion, State

PATH = "/metrics"


def bearer_allowed(authorization: str | None, token: str | None) -> bool:
    """True when `authorization` is ``Bearer <token>`` with the configured token (constant time)."""
    if not token or not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    return scheme == "Bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


async def gather(request: web.Request) -> ServerState:
    svc = services(request)
    worker = svc.invoker.worker
    counts: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for (function, version, _revision), pool in list(worker.pools.items()):
        count = counts[(function, version)]
        count[0] += len(pool.busy)
        count[1] += len(pool.idle)
        count[2] += pool.starting
    environments = [EnvironmentCount(f, v, busy, idle, starting) for (f, v), (busy, idle, starting) in sorted(counts.items())]
    versions: list[FunctionVersion] = [v for v in svc.registry.list_all_versions() if v.uses_snapshot]
    states = collections.Counter(v.state.value for v in versions)
    active = {v.snapshot_id: (v.name, v.version) for v in versions if v.state == State.ACTIVE and v.snapshot_id}
    tiers: dict[str, TierCount] = {}
    snapshot_bytes: dict[tuple[str, str], int] = {}
    snapshots = worker.snapshots
    if snapshots is not None:
        store = snapshots.vault.store
        for tier, counters in store.counters().items():
            tiers[tier] = TierCount(counters.hits, counters.misses, counters.bytes_read, counters.bytes_written,
                                    counters.evictions, counters.corrupt)
        sizes = await svc.metrics.snapshot_sizes.of(set(active), lambda sid: store.manifest(sid).raw_bytes)
        snapshot_bytes = {active[sid]: size for sid, size in sizes.items()}
    oldest = svc.invoker.events.queue.backlog.oldest_enqueued_at()
    return ServerState(
        environments=environments,
        capacity=worker.max_environments,
        snapstart_versions=dict(states),
        snapshot_bytes=snapshot_bytes,
        tiers=tiers,
        queue_depth=len(svc.invoker.events),
        queue_oldest_age_s=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
    )


async def metrics(request: web.Request) -> web.Response:
    """The exposition text (authenticated by the middleware or by `bearer_allowed`)."""
    svc = services(request)
    state = await gather(request)
    return web.Response(body=svc.metrics.render(state), headers={"Content-Type": CONTENT_TYPE})
