"""Handlers for functions, versions and reserved concurrency."""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.context import function_ref, json_body, json_response, max_items, resolve_function, services
from snapfaas.api.shapes import function_configuration, page_of
from snapfaas.errors import NotFound
from snapfaas.registry import validation as check
from snapfaas.registry.model import LATEST, FunctionVersion
from snapfaas.registry.tags import FunctionTags


def _arn_for(request: web.Request, v: FunctionVersion, qualifier: str | None) -> str:
    return services(request).registry.function_arn(v.name, qualifier)


async def create_function(request: web.Request) -> web.Response:
    svc = services(request)
    body = await json_body(request)
    v = await svc.control.create_function(body)
    return json_response(function_configuration(v, svc.registry.function_arn(v.name)), 201)


async def get_function(request: web.Request) -> web.Response:
    svc = services(request)
    name, qualifier = function_ref(request)
    v, _ = resolve_function(request, name, qualifier)
    config = function_configuration(v, svc.registry.function_arn(name, qualifier))
    out: dict[str, object] = {
        "Configuration": config,
        "Code": {"RepositoryType": "S3", "Location": svc.links.url(f"{request.scheme}://{request.host}", v.code_digest)},
    }
    tags = FunctionTags(svc.registry).get(name)
    if tags:
        out["Tags"] = tags
    reserved = svc.registry.function_info(name).reserved_concurrency
    if reserved is not None:
        out["Concurrency"] = {"ReservedConcurrentExecutions": reserved}
    return json_response(out)


async def get_configuration(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    v, _ = resolve_function(request, name, qualifier)
    return json_response(function_configuration(v, _arn_for(request, v, qualifier)))


async def update_code(request: web.Request) -> web.Response:
    name, _ = function_ref(request)
    v = await services(request).control.update_code(name, await json_body(request))
    return json_response(function_configuration(v, _arn_for(request, v, None if v.is_latest else v.version)))


async def update_configuration(request: web.Request) -> web.Response:
    name, _ = function_ref(request)
    v = services(request).control.update_configuration(name, await json_body(request))
    return json_response(function_configuration(v, _arn_for(request, v, None)))


async def delete_function(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    await services(request).control.delete(name, qualifier)
    return web.Response(status=204)


async def list_functions(request: web.Request) -> web.Response:
    svc = services(request)
    every = request.query.get("FunctionVersion")
    if every is not None and every != "ALL":
        raise check.constraint_error(every, "functionVersion", "Member must satisfy enum value set: [ALL]")
    records = svc.registry.list_all_versions() if every else svc.registry.list_latest()
    items = [
        function_configuration(v, svc.registry.function_arn(v.name, v.version if every else None), listing=True)
        for v in records
    ]
    return json_response(page_of("Functions", items, request.query.get("Marker"), max_items(request, 10000)))


async def publish_version(request: web.Request) -> web.Response:
    name, _ = function_ref(request)
    v = services(request).control.publish_version(name, await json_body(request))
    return json_response(function_configuration(v, _arn_for(request, v, v.version)), 201)


async def list_versions(request: web.Request) -> web.Response:
    svc = services(request)
    name, _ = function_ref(request)
    items = [function_configuration(v, svc.registry.function_arn(name, v.version), listing=True)
             for v in svc.registry.list_versions(name)]
    return json_response(page_of("Versions", items, request.query.get("Marker"), max_items(request, 10000)))


def _unqualified_ref(request: web.Request) -> str:
    """FunctionName for function-level operations (reserved concurrency): no version or alias."""
    name, qualifier = function_ref(request)
    if qualifier is not None:
        raise check.InvalidParameterValue(
            "This operation is permitted on Lambda functions only. Aliases and versions do not support this operation. "
            "Please specify either a function name or an unqualified function ARN."
        )
    return name


async def put_concurrency(request: web.Request) -> web.Response:
    svc = services(request)
    name = _unqualified_ref(request)
    try:
        svc.registry.function_info(name)  # existence is checked before the value, as on Lambda
    except NotFound as exc:
        raise NotFound(f"Function not found: {svc.registry.function_arn(name, LATEST)}") from exc
    body = await json_body(request)
    value = check.reserved_concurrency(check.require(body, "ReservedConcurrentExecutions", "reservedConcurrentExecutions"))
    limit = svc.config.account_concurrency or svc.config.max_environments
    if value > limit:
        raise check.InvalidParameterValue(
            f"Specified ReservedConcurrentExecutions for function exceeds this server's concurrency limit of [{limit}]."
        )
    svc.registry.set_reserved_concurrency(name, value)
    return json_response({"ReservedConcurrentExecutions": value})


async def get_concurrency(request: web.Request) -> web.Response:
    reserved = services(request).registry.function_info(_unqualified_ref(request)).reserved_concurrency
    return json_response({} if reserved is None else {"ReservedConcurrentExecutions": reserved})


async def delete_concurrency(request: web.Request) -> web.Response:
    services(request).registry.set_reserved_concurrency(_unqualified_ref(request), None)
    return web.Response(status=204)


__all__ = ["LATEST"]
