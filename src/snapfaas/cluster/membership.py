"""Membership: this node's heartbeat in the shared database, and the live-node set.

Contract:

* `Membership.join(store_secret)` (blocking; call it in a thread, before the store is used)
  creates the cluster tables if needed, agrees on the cluster secrets (the cluster key,
  created by the first node; the store secret's fingerprint, which must match:
  `StoreSecretMismatch` otherwise) and reads the other nodes. This node is not live yet.
* `beat(load)` (blocking, every `HEARTBEAT_S` from `ClusterNode`, never on the event loop;
  the first once the API listens) writes this node's row with the database's ``now()`` and
  refreshes the cached view of all nodes. A failed beat keeps the last view and is logged; the node's own row then ages and the
  others stop routing to it after `LIVE_WINDOW_S`.
* `live_nodes()` (non-blocking, any thread) is the cached live set (this node included once it
  joined); `nodes()` every known row with its state; `suspect(node_id)` takes a node out of
  this node's live set at once, for `SUSPECT_S`, after a failed forward.
* `leave()` (blocking) deletes the row: the others drop the node at their next refresh.

`SingleNode` is the same interface for the embedded default (SQLite, no ``--registry``): one
node, nothing in any database, no heartbeat.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable

import sqlalchemy
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from snapfaas.cluster import schema
from snapfaas.cluster.nodes import SUSPECT_S, NodeLoad, NodeRecord, NodeView, classify
from snapfaas.database import create_tables, unavailable
from snapfaas.errors import SnapfaasError

logger = logging.getLogger(__name__)


class StoreSecretMismatch(SnapfaasError):
    """This node's snapshot store secret is not the cluster's."""


def store_fingerprint(secret: bytes) -> str:
    """A public fingerprint of the store secret (16 hex digits of a domain-separated SHA-256)."""
    return hashlib.sha256(b"snapfaas store secret fingerprint\x00" + secret).hexdigest()[:16]


class SingleNode:
    """Membership of the embedded default: this node alone, always live."""

    clustered = False

    def __init__(self, node_id: str, url: str, load: Callable[[], NodeLoad]) -> None:
        self.node_id = node_id
        self.url = url
        self._load = load
        self._started = dt.datetime.now(dt.timezone.utc)

    def _view(self) -> NodeView:
        now = dt.datetime.now(dt.timezone.utc)
        return NodeView(NodeRecord(self.node_id, self.url, self._started, now, self._load()), "live", 0.0)

    def live_nodes(self) -> list[NodeView]:
        return [self._view()]

    def nodes(self) -> list[NodeView]:
        return [self._view()]

    def is_live(self, node_id: str) -> bool:
        return node_id == self.node_id

    def suspect(self, node_id: str) -> None:
        """Nothing to route around: there are no other nodes."""


class Membership:
    """Heartbeats and the node view of a cluster node (see the module docstring)."""

    clustered = True

    def __init__(self, engine: Engine, node_id: str, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.node_id = node_id
        self.url = url
        self.clock = clock
        self.cluster_key = b""
        self._lock = threading.Lock()
        self._records: list[NodeRecord] = []
        self._db_now = dt.datetime.now(dt.timezone.utc)
        self._read_at = clock()  # when _db_now was read (local monotonic)
        self._suspects: dict[str, float] = {}
        self._joined = False  # the first beat sets started_at

    # -- blocking (threads) -----------------------------------------------------------------
    def join(self, store_secret: bytes) -> None:
        """Create the tables, agree on the secrets, read the nodes."""
        with unavailable("join the cluster"):
            create_tables(self.engine, schema.metadata)
            with self.engine.begin() as conn:
                key = secrets.token_hex(32)
                fingerprint = store_fingerprint(store_secret)
                for name, value in ((schema.CLUSTER_KEY, key), (schema.STORE_FINGERPRINT, fingerprint)):
                    conn.execute(pg_insert(schema.cluster_secrets).values(name=name, value=value)
                                 .on_conflict_do_nothing(index_elements=["name"]))
                rows = dict(conn.execute(sqlalchemy.select(schema.cluster_secrets.c.name,
                                                           schema.cluster_secrets.c.value)).all())
            if rows[schema.STORE_FINGERPRINT] != fingerprint:
                raise StoreSecretMismatch(
                    f"joining the cluster failed at step 'store secret': this node's snapshot store secret has "
                    f"fingerprint {fingerprint}, the cluster's is {rows[schema.STORE_FINGERPRINT]} (copy the other "
                    "nodes' secret file and pass it with --store-secret-file)")
            self.cluster_key = bytes.fromhex(rows[schema.CLUSTER_KEY])
            self.refresh()

    def beat(self, load: NodeLoad) -> None:
        """One heartbeat: rewrite this node's row, then refresh the view."""
        with unavailable("heartbeat"):
            self._write(load, started=not self._joined)
            self._joined = True
            self.refresh()

    def _write(self, load: NodeLoad, started: bool) -> None:
        now = sqlalchemy.func.now()
        values = dict(advertise_url=self.url, heartbeat_at=now, busy=load.busy, idle=load.idle,
                      capacity=load.capacity, inflight=load.inflight, cached_bytes=load.cached_bytes, draining=False)
        statement = pg_insert(schema.nodes).values(node_id=self.node_id, started_at=now, **values)
        update = dict(values, started_at=now) if started else values
        with self.engine.begin() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["node_id"], set_=update))

    def refresh(self) -> None:
        """Read every node's row and the database's clock (`ServiceUnavailable` when it is away)."""
        with unavailable("read the nodes"), self.engine.connect() as conn:
            db_now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
            rows = conn.execute(sqlalchemy.select(schema.nodes)).mappings().all()
        records = [NodeRecord(r["node_id"], r["advertise_url"], r["started_at"], r["heartbeat_at"],
                              NodeLoad(r["busy"], r["idle"], r["capacity"], r["inflight"], r["cached_bytes"]),
                              r["draining"]) for r in rows]
        with self._lock:
            self._records, self._db_now, self._read_at = records, db_now, self.clock()

    def leave(self) -> None:
        """Delete this node's row (a clean shutdown: the others stop routing here at their next refresh)."""
        with unavailable("leave the cluster"), self.engine.begin() as conn:
            conn.execute(sqlalchemy.delete(schema.nodes).where(schema.nodes.c.node_id == self.node_id))

    # -- non-blocking -----------------------------------------------------------------------
    def nodes(self) -> list[NodeView]:
        """Every node in the last view, with its state; the database clock is advanced by the
        local time since that view was read, so a node whose heartbeats stopped ages even while
        the database is unreachable."""
        with self._lock:
            now = self.clock()
            db_now = self._db_now + dt.timedelta(seconds=now - self._read_at)
            self._suspects = {n: until for n, until in self._suspects.items() if until > now}
            return classify(self._records, db_now, self._suspects, now)

    def live_nodes(self) -> list[NodeView]:
        """The live set (see `nodes`)."""
        return [n for n in self.nodes() if n.state == "live"]

    def is_live(self, node_id: str) -> bool:
        return any(n.node_id == node_id for n in self.live_nodes())

    def suspect(self, node_id: str) -> None:
        """Route around `node_id` for `SUSPECT_S` (a forward to it failed to connect or was cut)."""
        if node_id == self.node_id:
            return
        with self._lock:
            self._suspects[node_id] = self.clock() + SUSPECT_S
        logger.warning("node %s is suspect for %.0f s: a forward to it failed", node_id, SUSPECT_S)
