"""Which node runs an invoke: rendezvous (highest random weight) hashing with bounded load.

`choose(nodes, key, local_id)` is a pure decision. Every live node gets a score for the
version key (function ARN + version); nodes are tried in decreasing score, so a version's
invokes concentrate on one node (its warm environments and cached chunks are there) and, when
a node leaves, only the keys it was first for move. A node is skipped (the invoke spills over
to the next in that order) when it is:

* saturated: its in-flight invokes reached its capacity;
* over the bound: its in-flight invokes, plus this one, would exceed `BOUND` x the average
  in-flight per live node (consistent hashing with bounded loads; the average counts this
  invoke), and never below `FLOOR`: a node running fewer than `FLOOR` invokes is not over the
  bound, so a quiet cluster keeps affinity even when a heartbeat caught one invoke in flight.

If every node is skipped the invoke runs on the receiving node when it is live (its own
admission then queues or throttles it), else on the first node in hashing order. The
load of a node is its in-flight count from its last heartbeat, or the number of invokes this
node is forwarding to it right now (`pending`) when that is larger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence

from snapfaas.cluster.nodes import NodeView

BOUND = 1.25
FLOOR = 4


@dataclasses.dataclass(frozen=True)
class Route:
    """The decision: the node to run on, and whether that is the receiving node."""

    node: NodeView
    local: bool
    spilled: bool  # the preferred (highest scoring) node was skipped


def score(node_id: str, key: str) -> int:
    """The node's rendezvous weight for `key` (64 bits of BLAKE2b: stable across processes)."""
    digest = hashlib.blake2b(f"{node_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def name_preferring(prefix: str, version: str, winner: str, loser: str,
                    arn_prefix: str = "arn:aws:lambda:us-east-1:000000000000:function:") -> str:
    """The first function name ``<prefix><n>`` whose `version` ranks node `winner` above node
    `loser` (benchmarks and tests use it to place invokes on a chosen node)."""
    for i in range(10_000):
        name = f"{prefix}{i}"
        if score(winner, f"{arn_prefix}{name}:{version}") > score(loser, f"{arn_prefix}{name}:{version}"):
            return name
    raise ValueError(f"no name {prefix}<n> routes {version} to {winner} rather than {loser}")


def ranking(nodes: Sequence[NodeView], key: str) -> list[NodeView]:
    """`nodes` in decreasing rendezvous weight for `key` (ties by node id)."""
    return sorted(nodes, key=lambda n: (-score(n.node_id, key), n.node_id))


def choose(nodes: Sequence[NodeView], key: str, local_id: str, pending: Mapping[str, int] | None = None,
           bound: float = BOUND, floor: int = FLOOR) -> Route | None:
    """The node that should run an invoke of `key` among the live `nodes` (see the module
    docstring); None when no node is live. `pending` adds invokes this node forwarded and
    to a node and that are still running (a node's load is the larger of that and its heartbeat's)."""
    pending = pending or {}
    live = [n for n in nodes if n.state == "live"]
    if not live:
        return None
    loads = {n.node_id: max(n.load.inflight, pending.get(n.node_id, 0)) for n in live}
    cap = max(floor, math.ceil(bound * (sum(loads.values()) + 1) / len(live)))
    ordered = ranking(live, key)
    for position, node in enumerate(ordered):
        saturated = node.load.capacity > 0 and loads[node.node_id] >= node.load.capacity
        if not saturated and loads[node.node_id] + 1 <= cap:
            return Route(node, node.node_id == local_id, position > 0)
    local = next((n for n in live if n.node_id == local_id), None)
    fallback = local if local is not None else ordered[0]
    return Route(fallback, fallback.node_id == local_id, True)
