"""Handlers for asynchronous-invocation configuration (``/2019-09-25/.../event-invoke-config``)."""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.context import function_ref, json_body, json_response, services
from snapfaas.api.shapes import event_invoke_config, page_of
from snapfaas.registry import validation as check
from snapfaas.registry.model import EventInvokeConfig


def _render(request: web.Request, config: EventInvokeConfig) -> dict[str, object]:
    return event_invoke_config(config, services(request).registry.function_arn(config.function, config.qualifier))


async def put_config(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    config = services(request).control.event_configs.put(name, qualifier, await json_body(request))
    return json_response(_render(request, config))


async def update_config(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    config = services(request).control.event_configs.update(name, qualifier, await json_body(request))
    return json_response(_render(request, config))


async def get_config(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    return json_response(_render(request, services(request).control.event_configs.get(name, qualifier)))


async def delete_config(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    services(request).control.event_configs.delete(name, qualifier)
    return web.Response(status=204)


async def list_configs(request: web.Request) -> web.Response:
    name, _ = function_ref(request)
    raw = request.query.get("MaxItems", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 50:
        raise check.constraint_error(raw, "maxItems", "Member must have value less than or equal to 50")
    items = [_render(request, c) for c in services(request).control.event_configs.list(name)]
    return json_response(page_of("FunctionEventInvokeConfigs", items, request.query.get("Marker"), int(raw)))
