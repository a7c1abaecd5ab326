"""The server's Prometheus metrics (``GET /metrics``, text exposition format 0.0.4).

Two kinds of numbers, one registry per server (never prometheus_client's global one):

* **Events**, recorded as they happen by `Metrics.invocation` (called by the worker for every
  invocation it admits or refuses) and `Metrics.throttle`: counters and histograms.
* **State**, taken when scraped (`ServerState`: the live worker pools, the registry's SnapStart
  versions, the snapshot store's tier counters, the event queue; gathered by `api/metrics.py`)
  and exposed by `StateCollector`: gauges and counters that equal what the server holds then.

Metric names follow Prometheus' conventions (``snapfaas_`` prefix, base units: seconds and
bytes, ``_total`` for counters). Labels: ``function`` (name), ``version`` (the executed
version: ``$LATEST`` or a number), ``outcome``, ``start``, ``state``, ``tier``, ``reason``.
A deleted function's series are removed (`forget`), so a scrape shows only what exists.

========================================  ===========  =========================================
name                                      type         meaning
========================================  ===========  =========================================
snapfaas_invocations_total                counter      invocations by function, version, outcome
                                                       (success, function_error, throttled, error)
snapfaas_invocation_latency_seconds       histogram    admission to answer of invocations that
                                                       ran code, by start (cold, restore, warm)
snapfaas_invocation_duration_seconds      histogram    the handler's Duration (REPORT's)
snapfaas_init_duration_seconds            histogram    on-demand Init Duration (cold starts)
snapfaas_restore_duration_seconds         histogram    SnapStart Restore Duration
snapfaas_throttles_total                  counter      429 answers by function and Lambda reason
snapfaas_environments                     gauge        live environments by function, version,
                                                       state (busy, idle)
snapfaas_environments_starting            gauge        environments being created, by function
                                                       and version
snapfaas_environments_capacity            gauge        the server's environment limit
snapfaas_snapstart_versions               gauge        SnapStart versions by state (Pending,
                                                       Active, Inactive, Failed)
snapfaas_snapshot_bytes                   gauge        an Active snapshot's image bytes
snapfaas_store_hits_total                 counter      chunk reads served by a tier
snapfaas_store_misses_total               counter      chunk reads a tier could not serve
snapfaas_store_read_bytes_total           counter      bytes served by a tier
snapfaas_store_written_bytes_total        counter      bytes stored into a tier (publishes, fills)
snapfaas_store_evictions_total            counter      chunks a tier evicted for its budget
snapfaas_store_corrupt_total              counter      chunks that failed verification in a tier
snapfaas_event_queue_depth                gauge        asynchronous events waiting or running
snapfaas_event_queue_oldest_age_seconds   gauge        age of the oldest queued event (0: none)
========================================  ===========  =========================================
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from snapfaas.store import StoreError

logger = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("success", "function_error", "throttled", "error")
STARTS = ("cold", "restore", "warm")
# Latency buckets (seconds) spanning a warm invoke (~1 ms) to a torch cold start (seconds).
RECENT = 5000  # invocations kept for the dashboard (all functions together)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TIERS = ("memory", "disk", "origin")


@dataclasses.dataclass(frozen=True)
class Invocation:
    """What the worker knows at the end of one invocation. `start` is None when no environment
    ran code (refused before one was placed); durations are milliseconds, as the REPORT says."""

    function: str
    version: str
    outcome: str
    start: str | None = None
    latency_s: float | None = None
    duration_ms: float | None = None
    init_ms: float | None = None
    restore_ms: float | None = None
    request_id: str | None = None
    at: float = 0.0  # epoch seconds it ended (the dashboard's time axis)
    memory_size_mb: int | None = None
    max_memory_used_mb: int | None = None


def start_of(init_ms: float | None, restore_ms: float | None, new_environment: bool) -> str:
    """An invocation's start kind: a restore, a cold start (a new environment without a
    snapshot, whether or not its init succeeded) or warm (an environment that already ran)."""
    if restore_ms is not None:
        return "restore"
    if init_ms is not None or new_environment:
        return "cold"
    return "warm"


@dataclasses.dataclass(frozen=True)
class EnvironmentCount:
    function: str
    version: str
    busy: int
    idle: int
    starting: int


@dataclasses.dataclass(frozen=True)
class TierCount:
    hits: int
    misses: int
    bytes_read: int
    bytes_written: int
    evictions: int
    corrupt: int


@dataclasses.dataclass(frozen=True)
class ServerState:
    """What the server holds at one instant (the scrape's inputs)."""

    environments: list[EnvironmentCount]
    capacity: int
    snapstart_versions: Mapping[str, int]  # state -> count
    snapshot_bytes: Mapping[tuple[str, str], int]  # (function, version) -> bytes, Active ones
    tiers: Mapping[str, TierCount]
    queue_depth: int
    queue_oldest_age_s: float


class StateCollector(Collector):
    """Gauges and counters of the `ServerState` given to the scrape (`Metrics.render`)."""

    def __init__(self) -> None:
        self.state: ServerState | None = None

    def collect(self) -> Iterable[Metric]:
        state = self.state
        if state is None:
            return
        envs = GaugeMetricFamily("snapfaas_environments", "Live execution environments by state.",
                                 labels=["function", "version", "state"])
        starting = GaugeMetricFamily("snapfaas_environments_starting", "Environments being created.",
                                     labels=["function", "version"])
        for count in state.environments:
            envs.add_metric([count.function, count.version, "busy"], count.busy)
            envs.add_metric([count.function, count.version, "idle"], count.idle)
            starting.add_metric([count.function, count.version], count.starting)
        yield envs
        yield starting
        yield GaugeMetricFamily("snapfaas_environments_capacity", "The server's limit of live environments.",
                                value=state.capacity)
        versions = GaugeMetricFamily("snapfaas_snapstart_versions", "SnapStart versions by state.", labels=["state"])
        for name in ("Pending", "Active", "Inactive", "Failed"):
            versions.add_metric([name], state.snapstart_versions.get(name, 0))
        yield versions
        sizes = GaugeMetricFamily("snapfaas_snapshot_bytes", "Image bytes of an Active snapshot.",
                                  labels=["function", "version"])
        for (function, version), size in sorted(state.snapshot_bytes.items()):
            sizes.add_metric([function, version], size)
        yield sizes
        for field, name, text in (("hits", "snapfaas_store_hits", "Chunk reads served by a store tier."),
                                  ("misses", "snapfaas_store_misses", "Chunk reads a store tier could not serve."),
                                  ("bytes_read", "snapfaas_store_read_bytes", "Bytes served by a store tier."),
                                  ("bytes_written", "snapfaas_store_written_bytes", "Bytes stored into a store tier."),
                                  ("evictions", "snapfaas_store_evictions", "Chunks a store tier evicted for its budget."),
                                  ("corrupt", "snapfaas_store_corrupt", "Chunks that failed verification in a store tier.")):
            family = CounterMetricFamily(name, text, labels=["tier"])
            for tier in TIERS:
                count = state.tiers.get(tier)
                family.add_metric([tier], getattr(count, field) if count is not None else 0)
            yield family
        yield GaugeMetricFamily("snapfaas_event_queue_depth", "Asynchronous events waiting or running.",
                                value=state.queue_depth)
        yield GaugeMetricFamily("snapfaas_event_queue_oldest_age_seconds",
                                "Age of the oldest queued asynchronous event (0 when none).",
                                value=state.queue_oldest_age_s)


class SnapshotSizes:
    """Image bytes per snapshot id, read from the store's manifests once each."""

    def __init__(self) -> None:
        self.known: dict[str, int] = {}

    async def of(self, snapshot_ids: set[str], read: Callable[[str], int]) -> dict[str, int]:
        """Sizes of `snapshot_ids` (those readable now); `read` gives one from the store."""
        missing = [sid for sid in snapshot_ids if sid not in self.known]
        if missing:
            self.known.update(await asyncio.to_thread(_read_sizes, missing, read))
        for gone in set(self.known) - snapshot_ids:
            del self.known[gone]
        return {sid: self.known[sid] for sid in snapshot_ids if sid in self.known}


def _read_sizes(snapshot_ids: list[str], read: Callable[[str], int]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for sid in snapshot_ids:
        try:
            sizes[sid] = read(sid)
        except StoreError as exc:  # the origin down, a corrupt manifest: left out of this scrape, read again at the next
            logger.warning("metrics: snapshot %s size unavailable at step 'read manifest': %s", sid, exc)
    return sizes


class Metrics:
    """The server's metrics registry. `invocation`, `throttle` and `forget` may be called from
    any thread; `render` from one at a time (the server's event loop)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._series: dict[str, set[tuple[object, tuple[str, ...]]]] = {}  # function -> (metric, labels)
        # (metric, labels) -> the labelled child: `labels()` rebuilds and checks the key each call
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self.invocations = Counter("snapfaas_invocations", "Invocations by function, version and outcome.",
                                   ["function", "version", "outcome"], registry=self.registry)
        self.latency = Histogram("snapfaas_invocation_latency_seconds",
                                 "Admission to answer of invocations that ran code, by start kind.",
                                 ["function", "version", "start"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.duration = Histogram("snapfaas_invocation_duration_seconds", "The handler's duration (REPORT Duration).",
                                  ["function", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.init = Histogram("snapfaas_init_duration_seconds", "On-demand init duration of cold starts.",
                              ["function", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.restore = Histogram("snapfaas_restore_duration_seconds", "SnapStart restore duration.",
                                 ["function", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.throttles = Counter("snapfaas_throttles", "Throttled invocations (429) by function and reason.",
                                 ["function", "reason"], registry=self.registry)
        self.snapshot_sizes = SnapshotSizes()  # for the scrape's snapshot_bytes (api/metrics.py)
        self._recent: collections.deque[Invocation] = collections.deque(maxlen=RECENT)
        self._state = StateCollector()
        self.registry.register(self._state)

    def _labels(self, function: str, metric: Counter | Histogram, *values: str):  # type: ignore[no-untyped-def]
        """The child of `metric` for (`function`, *`values`), registered as one of `function`'s
        series (for `forget`); looked up once per series, then kept until `forget`."""
        key = (metric, (function, *values))
        child = self._children.get(key)
        if child is None:
            with self._lock:
                self._series.setdefault(function, set()).add(key)
                child = self._children[key] = metric.labels(function, *values)
        return child

    def invocation(self, event: Invocation) -> None:
        """Record one invocation (see `Invocation`)."""
        if event.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {event.outcome!r}")
        with self._lock:
            self._recent.append(event)
        self._labels(event.function, self.invocations, event.version, event.outcome).inc()
        if event.start is not None and event.latency_s is not None:
            self._labels(event.function, self.latency, event.version, event.start).observe(event.latency_s)
        if event.duration_ms is not None:
            self._labels(event.function, self.duration, event.version).observe(event.duration_ms / 1000)
        if event.init_ms is not None:
            self._labels(event.function, self.init, event.version).observe(event.init_ms / 1000)
        if event.restore_ms is not None:
            self._labels(event.function, self.restore, event.version).observe(event.restore_ms / 1000)

    def throttle(self, function: str, reason: str) -> None:
        self._labels(function, self.throttles, reason).inc()

    def recent(self, function: str | None = None, limit: int | None = None) -> list[Invocation]:
        """The last invocations recorded (of `function`, if given), oldest first."""
        with self._lock:
            picked = [e for e in self._recent if function is None or e.function == function]
        return picked[-limit:] if limit else picked

    def forget(self, function: str) -> None:
        """Drop every series of `function` (it was deleted), and its recent invocations."""
        with self._lock:
            series = self._series.pop(function, set())
            for key in series:
                self._children.pop(key, None)
            kept = [e for e in self._recent if e.function != function]
            self._recent.clear()
            self._recent.extend(kept)
        for metric, labels in series:
            try:
                metric.remove(*labels)
            except KeyError:  # already gone
                pass

    def render(self, state: ServerState | None = None) -> bytes:
        """The exposition text of every metric; the state ones only when `state` is given."""
        self._state.state = state
        try:
            return generate_latest(self.registry)
        finally:
            self._state.state = None


def parse(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in exposition `text` (for tests and the CLI)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, or None."""
    for sample_name, sample_labels, value in parse(text):
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None

