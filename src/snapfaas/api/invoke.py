"""Invoke handler: headers in, status + headers + raw payload out."""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.bodies import body_of
from snapfaas.api.context import function_ref, services


async def invoke(request: web.Request) -> web.Response:
    svc = services(request)
    name, qualifier = function_ref(request)
    payload = body_of(request)
    result = await svc.invoker.invoke(
        name,
        qualifier,
        payload,
        invocation_type=request.headers.get("X-Amz-Invocation-Type", "RequestResponse"),
        tail=request.headers.get("X-Amz-Log-Type") == "Tail",
        client_context=request.headers.get("X-Amz-Client-Context"),
    )
    headers = {"x-amzn-RequestId": result.request_id}
    if result.executed_version is not None and result.status != 202:
        headers["X-Amz-Executed-Version"] = result.executed_version
    if result.function_error:
        headers["X-Amz-Function-Error"] = result.function_error
    if result.log_tail is not None:
        headers["X-Amz-Log-Result"] = result.log_tail
    return web.Response(status=result.status, body=result.payload, headers=headers,
                        content_type="application/json" if result.status == 200 else None)
