"""Nodes of a cluster and their liveness: records in, classification out (no I/O).

A node is *live* while its last heartbeat (database clock) is younger than `LIVE_WINDOW_S`
and it is not draining; *suspect* while live by heartbeat but marked locally because a
forward to it failed at the connection level (new invokes route around it at once); *out*
otherwise. `cluster status` shows the three states; routing uses live nodes only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from snapfaas.durable import write_atomic

HEARTBEAT_S = 1.0  # a node writes its row this often
LIVE_WINDOW_S = 3.0  # a heartbeat older than this puts a node out of the live set
SUSPECT_S = LIVE_WINDOW_S + 1.0  # how long a failed forward keeps a node suspect (then its heartbeat decides)
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
NODE_ID_FILE = "node-id"


@dataclasses.dataclass(frozen=True)
class NodeLoad:
    """What a node reports with each heartbeat."""

    busy: int = 0  # environments running an invoke
    idle: int = 0  # warm environments waiting
    capacity: int = 0  # --max-environments
    inflight: int = 0  # synchronous invokes admitted and running on this node
    cached_bytes: int = 0  # the snapshot store's local disk cache

    @property
    def saturated(self) -> bool:
        return self.capacity > 0 and self.inflight >= self.capacity


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """A row of the ``nodes`` table, with the database's clock at the time it was read."""

    node_id: str
    url: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    load: NodeLoad
    draining: bool = False

    def age_s(self, db_now: dt.datetime) -> float:
        return max(0.0, (db_now - self.heartbeat_at).total_seconds())


@dataclasses.dataclass(frozen=True)
class NodeView:
    """A node as this node sees it now: its record and its state (live, suspect or out)."""

    record: NodeRecord
    state: str
    age_s: float

    @property
    def node_id(self) -> str:
        return self.record.node_id

    @property
    def url(self) -> str:
        return self.record.url

    @property
    def load(self) -> NodeLoad:
        return self.record.load


def classify(records: Iterable[NodeRecord], db_now: dt.datetime, suspects: Mapping[str, float], now: float,
             window_s: float = LIVE_WINDOW_S) -> list[NodeView]:
    """Every record with its state. `suspects` maps a node id to the local monotonic time its
    suspicion ends; `now` is that clock's present. Sorted by node id."""
    views = []
    for record in records:
        age = record.age_s(db_now)
        if age > window_s or record.draining:
            state = "out"
        elif suspects.get(record.node_id, 0.0) > now:
            state = "suspect"
        else:
            state = "live"
        views.append(NodeView(record, state, age))
    return sorted(views, key=lambda v: v.node_id)


def check_node_id(node_id: str) -> str:
    """`node_id` if valid (1-63 of letters, digits, '.', '_', '-'; a letter or digit first), else ValueError."""
    if not NODE_ID_RE.match(node_id):
        raise ValueError(f"not a node id: {node_id!r} (1-63 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit)")
    return node_id


def check_advertise_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host and no path, else ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"--advertise-url {url!r}: expected http(s)://HOST:PORT with no path")
    return url.rstrip("/")


def load_or_create_node_id(data_dir: Path) -> str:
    """The node id kept in ``<data-dir>/node-id``; generated (``node-`` + 12 hex digits) and
    written there atomically (0600) on first use, so a restarted node is the same node (it
    recovers its event claims instead of waiting for their leases). ValueError names a
    damaged file."""
    path = data_dir / NODE_ID_FILE
    try:
        return check_node_id(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; fix or remove the file, or pass --node-id") from exc
    node_id = f"node-{secrets.token_hex(6)}"
    write_atomic(path, (node_id + "\n").encode())
    return node_id