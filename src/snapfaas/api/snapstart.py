"""SnapStart routes (snapfaas extensions, not Lambda's API): verify, expire, publish progress.

``POST /snapfaas/v1/snapstart/{name}/verify`` (body ``{"Copies": 3, "Payload": "<json text>"}``)
answers the `VerifyReport` of ``snapfaas snapstart verify``; ``POST /snapfaas/v1/snapshots/{name}/expire``
forces the version's snapshot Inactive and answers its configuration; ``GET
/snapfaas/v1/snapstart/{name}/publish`` answers where the version's publish is (phase by phase,
`snapshot.progress`) and its state. `{name}` is ``NAME:VERSION`` (or ``NAME:ALIAS``, or an ARN).
Verify and expire are in `access.OPERATOR_ONLY`; progress is a read like GetFunctionConfiguration.
"""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.context import function_ref, json_body, json_response, services
from snapfaas.api.shapes import function_configuration
from snapfaas.errors import InvalidParameterValue, ServiceError
from snapfaas.snapshot.operations import SnapStartOperations

DEFAULT_COPIES = 3


def _operations(request: web.Request) -> SnapStartOperations:
    ops = services(request).snapstart
    if ops is None:
        raise ServiceError("SnapStart operations are not available on this server.")
    return ops


async def verify(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    body = await json_body(request)
    payload = body.get("Payload", "{}")
    if not isinstance(payload, str):
        raise InvalidParameterValue("Payload must be a string holding a JSON document.")
    report = await _operations(request).verify(name, qualifier, body.get("Copies", DEFAULT_COPIES), payload.encode())
    return json_response(report.to_json())


async def publish_progress(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    return json_response(_operations(request).publish_progress(name, qualifier))


async def expire(request: web.Request) -> web.Response:
    name, qualifier = function_ref(request)
    version = await _operations(request).expire(name, qualifier)
    return json_response(function_configuration(version, services(request).registry.function_arn(version.name, version.version)))
