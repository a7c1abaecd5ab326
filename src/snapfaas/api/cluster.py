"""The operator's view of the cluster (``GET /snapfaas/v1/cluster-status``, operator only)."""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.context import json_response, services
from snapfaas.cluster.nodes import NodeView
from snapfaas.errors import ServiceError


def node_json(view: NodeView) -> dict[str, object]:
    load = view.load
    return {"NodeId": view.node_id, "Url": view.url, "State": view.state, "HeartbeatAgeSeconds": round(view.age_s, 3),
            "StartedAt": view.record.started_at.isoformat(), "Busy": load.busy, "Idle": load.idle,
            "Capacity": load.capacity, "InFlight": load.inflight, "CachedBytes": load.cached_bytes,
            "Draining": view.record.draining}


async def nodes(request: web.Request) -> web.Response:
    node = services(request).cluster
    if node is None:
        raise ServiceError("cluster status failed at step 'membership': this server has no node identity")
    return json_response({"NodeId": node.node_id, "Clustered": node.clustered,
                          "Nodes": [node_json(v) for v in node.membership.nodes()]})
