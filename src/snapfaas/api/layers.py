"""Handlers for layers: PublishLayerVersion, GetLayerVersion(ByArn), ListLayers,
ListLayerVersions, DeleteLayerVersion."""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.context import json_body, json_response, max_items, services
from snapfaas.api.shapes import page_of
from snapfaas.registry import layers as check
from snapfaas.registry.layers import LayerVersion


def _detail(request: web.Request, v: LayerVersion) -> dict[str, object]:
    svc = services(request)
    location = svc.links.url(f"{request.scheme}://{request.host}", v.digest)
    return check.version_detail(v, svc.registry.arn_prefix, location)


def _name(request: web.Request) -> str:
    return check.layer_name(request.match_info["layer"], services(request).registry.arn_prefix)


async def publish_layer_version(request: web.Request) -> web.Response:
    svc = services(request)
    v = await svc.control.publish_layer_version(request.match_info["layer"], await json_body(request))
    return json_response(_detail(request, v), 201)


async def get_layer_version(request: web.Request) -> web.Response:
    name = _name(request)
    number = check.version_number(request.match_info["version"])
    return json_response(_detail(request, services(request).control.layers.get(name, number)))


async def delete_layer_version(request: web.Request) -> web.Response:
    services(request).control.delete_layer_version(request.match_info["layer"], request.match_info["version"])
    return web.Response(status=204)


async def list_layer_versions(request: web.Request) -> web.Response:
    svc = services(request)
    name = _name(request)
    runtime, architecture = check.list_filters(request.query)
    items = [check.version_item(v, svc.registry.arn_prefix) for v in svc.control.layers.versions(name)
             if v.matches(runtime, architecture)]
    return json_response(page_of("LayerVersions", items, request.query.get("Marker"), max_items(request, 50)))


async def layers_root(request: web.Request) -> web.Response:
    """``GET /2018-10-31/layers``: GetLayerVersionByArn with ``find=LayerVersion``, else ListLayers."""
    if request.query.get("find") == "LayerVersion":
        return await _get_by_arn(request)
    svc = services(request)
    runtime, architecture = check.list_filters(request.query)
    items = [{"LayerName": v.layer, "LayerArn": svc.control.layers.arn(v.layer),
              "LatestMatchingVersion": check.version_item(v, svc.registry.arn_prefix)}
             for v in svc.control.layers.latest_matching(runtime, architecture)]
    return json_response(page_of("Layers", items, request.query.get("Marker"), max_items(request, 50)))


async def _get_by_arn(request: web.Request) -> web.Response:
    layers = services(request).control.layers
    arn = check.layer_version_arn(request.query.get("Arn"))
    head, _, number = arn.rpartition(":")
    if not head.startswith(layers.arn_prefix):
        raise check.NotFound(check.NOT_FOUND)
    return json_response(_detail(request, layers.get(head[len(layers.arn_prefix):], check.version_number(number))))
