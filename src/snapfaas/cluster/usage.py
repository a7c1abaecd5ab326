"""Per-node in-use counts in the shared database, for concurrency limits that hold cluster-wide.

Table ``node_usage(node_id, function, inflight, lease_until)``: each node replaces its own rows
every `REFRESH_S` (one row per function with admitted requests, and a row with function ``''``
holding the node's total, present even when idle) and reads the other nodes' rows in the same
transaction. Rows expire `ROW_TTL_S` after their last refresh (by the DB clock), so a node that
died stops counting within seconds. Until the membership table of the nodes slice lands, a node
is *live* when it has a non-expired row here.

Precision (docs/cluster-leases.md): each node admits against its own exact
counts plus the other nodes' counts as last read, so no database round-trip is on the invoke path.
The cluster can over-admit by what the other nodes admitted since their last refresh and this
node's last read: at most the admissions of about two refresh intervals (and never more than
each node's own limit, `Worker` still enforces the limit locally). A node that cannot reach the
database keeps the last view for `ROW_TTL_S`, then enforces with its own counts only (a
database outage must not block invokes).

`aggregate` (rows + time -> what the other nodes use) is a pure function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapfaas.cluster.leases import db_now
from snapfaas.database import create_tables, unavailable, write_transaction

logger = logging.getLogger(__name__)

REFRESH_S = 0.5
ROW_TTL_S = 5.0
TOTAL = ""  # the `function` value of a node's total row

metadata = sa.MetaData()
node_usage = sa.Table(
    "node_usage", metadata,
    sa.Column("node_id", sa.String(128), primary_key=True),
    sa.Column("function", sa.String(256), primary_key=True),
    sa.Column("inflight", sa.Integer, nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
)


@dataclasses.dataclass(frozen=True)
class UsageRow:
    node_id: str
    function: str
    inflight: int
    lease_until: float


@dataclasses.dataclass(frozen=True)
class RemoteUsage:
    """What the *other* live nodes had admitted when last read."""

    functions: Mapping[str, int] = dataclasses.field(default_factory=dict)
    total: int = 0
    nodes: frozenset[str] = frozenset()

    def of(self, function: str) -> int:
        return self.functions.get(function, 0)


def aggregate(rows: Iterable[UsageRow], me: str, now: float) -> RemoteUsage:
    """Sum the live rows of every node but `me`."""
    functions: dict[str, int] = {}
    total = 0
    nodes: set[str] = set()
    for row in rows:
        if row.node_id == me or row.lease_until <= now:
            continue
        nodes.add(row.node_id)
        if row.function == TOTAL:
            total += row.inflight
        else:
            functions[row.function] = functions.get(row.function, 0) + row.inflight
    return RemoteUsage(functions, total, frozenset(nodes))


class UsageBoard:
    """This node's rows of ``node_usage`` and its view of the others' (module contract)."""

    def __init__(self, engine: Engine, node_id: str, row_ttl_s: float = ROW_TTL_S) -> None:
        self.engine = engine
        self.node_id = node_id
        self.row_ttl_s = row_ttl_s
        self._now = db_now(engine)
        with unavailable("create node_usage table"):
            create_tables(engine, metadata)

    def exchange(self, counts: Mapping[str, int]) -> RemoteUsage:
        """Publish this node's in-use counts; return the other live nodes' (one transaction)."""
        with unavailable("exchange node usage"), write_transaction(self.engine) as conn:
            now = float(conn.execute(sa.select(self._now)).scalar_one())
            until = now + self.row_ttl_s
            conn.execute(node_usage.delete().where(node_usage.c.node_id == self.node_id))
            values = [{"node_id": self.node_id, "function": TOTAL, "inflight": sum(counts.values()), "lease_until": until}]
            values += [{"node_id": self.node_id, "function": f, "inflight": n, "lease_until": until}
                       for f, n in sorted(counts.items()) if n > 0]
            conn.execute(node_usage.insert(), values)
            rows = conn.execute(sa.select(node_usage).where(node_usage.c.node_id != self.node_id,
                                                            node_usage.c.lease_until > now)).all()
        return aggregate((UsageRow(r.node_id, r.function, int(r.inflight), float(r.lease_until)) for r in rows),
                         self.node_id, now)

    def withdraw(self) -> None:
        """Remove this node's rows (a clean shutdown: its counts stop at once)."""
        with unavailable("withdraw node usage"), write_transaction(self.engine) as conn:
            conn.execute(node_usage.delete().where(node_usage.c.node_id == self.node_id))


class UsageExchange:
    """The background task: every `REFRESH_S`, `counts()` out, `apply(remote)` in (on the loop).

    A failing database is logged (once per outage) and retried; after `ROW_TTL_S` without a
    successful exchange the remote view is dropped (`RemoteUsage()`)."""

    def __init__(self, board: UsageBoard, counts: Callable[[], dict[str, int]],
                 apply: Callable[[RemoteUsage], None], refresh_s: float = REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.board = board
        self.counts = counts
        self.apply = apply
        self.refresh_s = refresh_s
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="node-usage")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.to_thread(self.board.withdraw)
        except Exception:  # shutting down with the database away: the rows expire by themselves
            logger.warning("node usage: could not withdraw this node's rows; they expire in %.0f s",
                           self.board.row_ttl_s, exc_info=True)

    async def _run(self) -> None:
        last_ok = self.clock()
        failing = False
        while True:
            try:
                remote = await asyncio.to_thread(self.board.exchange, self.counts())
                self.apply(remote)
                last_ok = self.clock()
                if failing:
                    logger.info("node usage: exchanging with the database again")
                failing = False
            except Exception:  # the database is away: keep serving on local counts, retry
                if not failing:
                    logger.warning("node usage: exchange failed; limits use the last view, then local counts",
                                   exc_info=True)
                failing = True
                if self.clock() - last_ok > self.board.row_ttl_s:
                    self.apply(RemoteUsage())
            await asyncio.sleep(self.refresh_s)  # a periodic timer
