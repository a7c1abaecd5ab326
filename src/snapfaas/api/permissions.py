"""Handlers for functions' resource-based policies: AddPermission, RemovePermission, GetPolicy.

Wire shapes as botocore's model: ``Statement`` and ``Policy`` are JSON documents encoded as
strings; Qualifier comes from the query string (or the FunctionName) and is reconciled with
`function_ref`.
"""

from __future__ import annotations

import json

from aiohttp import web

from snapfaas.api.context import function_ref, json_body, json_response, services


async def add_permission(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    body = await json_body(request)
    statement = services(request).permissions.add(name, qualifier, body)
    return json_response({"Statement": json.dumps(statement)}, 201)


async def remove_permission(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    services(request).permissions.remove(name, qualifier, request.match_info["sid"], request.query.get("RevisionId"))
    return web.Response(status=204)


async def get_policy(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    document, revision = services(request).permissions.get(name, qualifier)
    return json_response({"Policy": json.dumps(document), "RevisionId": revision})
