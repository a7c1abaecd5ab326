"""Invoke handler: headers in, status + headers + raw payload out.

In cluster mode a synchronous (``RequestResponse``) invoke may run on another node: the
receiving node resolves the version, asks `ClusterNode.route` where its key belongs and
forwards it there (`forward`); ``Event`` invokes go to the event queue and ``DryRun`` answers
here. A forwarded invoke arrives on the internal route (`forwarded_invoke`) and always runs
on the node that receives it, never forwarded again. Every answer names the node that ran the
invoke in ``X-Snapfaas-Node``.
"""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.bodies import body_of
from snapfaas.api.context import FORWARDED, PRINCIPAL, REQUEST_ID, function_ref, services
from snapfaas.cluster.forwarding import internal_path
from snapfaas.cluster.node import NODE_HEADER
from snapfaas.errors import SnapfaasError

FORWARDED_REQUEST_HEADERS = ("X-Amz-Invocation-Type", "X-Amz-Log-Type", "X-Amz-Client-Context", "Content-Type")


async def invoke(request: web.Request) -> web.Response:
    svc = services(request)
    name, qualifier = function_ref(request)
    cluster = svc.cluster
    if (cluster is not None and cluster.clustered
            and request.headers.get("X-Amz-Invocation-Type", "RequestResponse") == "RequestResponse"):
        answer = await _forward(request, name, qualifier)
        if answer is not None:
            return answer
    return await run_here(request, name, qualifier)


async def forwarded_invoke(request: web.Request) -> web.Response:
    """The internal route: an invoke another node forwarded (its signature was verified by the
    app's middleware). Runs here, whatever routing would say now."""
    name, qualifier = function_ref(request)
    return await run_here(request, name, qualifier, request_id=request[FORWARDED].request_id)


async def _forward(request: web.Request, name: str, qualifier: str | None) -> web.Response | None:
    """The answer of the node this invoke belongs to, or None to run it here."""
    svc = services(request)
    cluster = svc.cluster
    assert cluster is not None
    registry = svc.registry
    try:
        version, _ = svc.invoker.lookups.resolve(name, qualifier)
    except SnapfaasError:
        return None  # not found, bad qualifier...: answered here, as a local invoke would
    key = f"{registry.function_arn(name)}:{version.version}"
    route = cluster.route(key)
    if route is None:
        return None
    headers = {h: request.headers[h] for h in FORWARDED_REQUEST_HEADERS if h in request.headers}
    answer = await cluster.forward(key, route, internal_path(request.raw_path), body_of(request), headers,
                                   request.get(PRINCIPAL))
    if answer is None:
        return None
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


async def run_here(request: web.Request, name: str, qualifier: str | None, request_id: str | None = None) -> web.Response:
    svc = services(request)
    payload = body_of(request)
    result = await svc.invoker.invoke(
        name,
        qualifier,
        payload,
        invocation_type=request.headers.get("X-Amz-Invocation-Type", "RequestResponse"),
        tail=request.headers.get("X-Amz-Log-Type") == "Tail",
        client_context=request.headers.get("X-Amz-Client-Context"),
        request_id=request_id or request.get(REQUEST_ID),  # the id an error answer would carry: one uuid per request
    )
    headers = {"x-amzn-RequestId": result.request_id}
    if result.executed_version is not None and result.status != 202:
        headers["X-Amz-Executed-Version"] = result.executed_version
    if result.function_error:
        headers["X-Amz-Function-Error"] = result.function_error
    if result.log_tail is not None:
        headers["X-Amz-Log-Result"] = result.log_tail
    if svc.cluster is not None:
        headers[NODE_HEADER] = svc.cluster.node_id
    return web.Response(status=result.status, body=result.payload, headers=headers,
                        content_type="application/json" if result.status == 200 else None)
