"""Handlers for TagResource, UntagResource and ListTags (function ARNs)."""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.context import json_body, json_response, services
from snapfaas.errors import ValidationError
from snapfaas.registry import tags as check
from snapfaas.registry import validation
from snapfaas.registry.tags import FunctionTags


def _function(request: web.Request) -> str:
    return check.function_of(request.match_info["resource"], services(request).registry.arn_prefix)


def _store(request: web.Request) -> FunctionTags:
    return FunctionTags(services(request).registry)


async def tag_resource(request: web.Request) -> web.Response:
    function = _function(request)
    body = await json_body(request)
    _store(request).tag(function, validation.require(body, "Tags", "tags"))
    return web.Response(status=204)


async def untag_resource(request: web.Request) -> web.Response:
    function = _function(request)
    keys = request.query.getall("tagKeys", [])
    if not keys:
        raise ValidationError("1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: "
                              "Member must not be null")
    _store(request).untag(function, keys)
    return web.Response(status=204)


async def list_tags(request: web.Request) -> web.Response:
    return json_response({"Tags": _store(request).get(_function(request))})
