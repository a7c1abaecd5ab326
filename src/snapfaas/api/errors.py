"""Map domain errors to Lambda's wire errors (status, x-amzn-ErrorType, JSON body)."""

from __future__ import annotations

import json
import uuid

from aiohttp import web

from snapfaas.errors import SnapfaasError


def error_response(err: SnapfaasError, request_id: str | None = None) -> web.Response:
    body: dict[str, object] = {}
    if err.code != "ValidationException":
        body["Type"] = err.error_type
    body[err.message_key] = err.message
    body.update(err.extra())
    headers = {
        "x-amzn-ErrorType": err.code,
        "x-amzn-RequestId": request_id or str(uuid.uuid4()),
    }
    if err.code == "ValidationException":
        body = {"message": err.message}
    return web.Response(status=err.status, body=json.dumps(body).encode(), headers=headers, content_type="application/json")
