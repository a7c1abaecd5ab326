"""Serve deployment packages through the links `snapfaas.api.links.CodeLinks` hands out."""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from snapfaas.api.context import services
from snapfaas.errors import NotFound
from snapfaas.registry.packages import CodeUnavailable

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


async def download_code(request: web.Request) -> web.Response:
    """GET a package by a link from `CodeLinks.url` (no SigV4: the link is the credential).
    The bytes come from this node's code cache, filled from the store origin if needed (in a
    worker thread); a package no copy of which exists any more (the function was updated or
    deleted and its package collected) answers 404."""
    svc = services(request)
    digest = request.match_info["digest"]
    if not DIGEST_RE.match(digest):
        raise NotFound(f"No code package {digest!r}")
    svc.links.check(digest, request.query.get("Expires", ""), request.query.get("Signature", ""))
    try:
        data = await asyncio.to_thread(svc.control.artifacts.read_zip, digest)
    except CodeUnavailable as exc:
        if not exc.missing:
            raise
        raise NotFound(f"No code package {digest} (the function was updated or deleted)") from exc
    return web.Response(body=data, content_type="application/zip")
