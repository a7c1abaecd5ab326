"""Handlers for aliases."""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.context import function_ref, json_body, json_response, services
from snapfaas.api.shapes import alias_configuration, page_of
from snapfaas.errors import NotFound
from snapfaas.registry import validation as check
from snapfaas.registry.model import Alias


def _render(request: web.Request, alias: Alias) -> dict[str, object]:
    return alias_configuration(alias, services(request).registry.function_arn(alias.function, alias.name))


async def create_alias(request: web.Request) -> web.Response:
    name, _ = function_ref(request)
    alias = services(request).control.create_alias(name, await json_body(request))
    return json_response(_render(request, alias), 201)


async def get_alias(request: web.Request) -> web.Response:
    svc = services(request)
    name, _ = function_ref(request)
    alias_name = request.match_info["alias"]
    try:
        alias = svc.registry.get_alias(name, alias_name)
    except NotFound as exc:
        if "Alias" in exc.message:
            raise NotFound(f"Cannot find alias arn: {svc.registry.function_arn(name, alias_name)}") from exc
        raise
    return json_response(_render(request, alias))


async def update_alias(request: web.Request) -> web.Response:
    name, _ = function_ref(request)
    alias = services(request).control.update_alias(name, request.match_info["alias"], await json_body(request))
    return json_response(_render(request, alias))


async def list_aliases(request: web.Request) -> web.Response:
    svc = services(request)
    name, _ = function_ref(request)
    version = request.query.get("FunctionVersion")
    aliases = [a for a in svc.registry.list_aliases(name) if version is None or a.version == version]
    raw_max = request.query.get("MaxItems", "50")
    if not raw_max.isdigit():
        raise check.constraint_error(raw_max, "maxItems", "Member must have value between 1 and 10000")
    items = [_render(request, a) for a in aliases]
    return json_response(page_of("Aliases", items, request.query.get("Marker"), int(raw_max)))


async def delete_alias(request: web.Request) -> web.Response:
    name, _ = function_ref(request)
    services(request).registry.delete_alias(name, request.match_info["alias"])
    return web.Response(status=204)
