"""The dashboard's routes under ``/dashboard`` (server-rendered HTML, Jinja2, Chart.js served
from the package: it works offline).

Every page but the sign-in form needs a session (`sessions.Sessions`); without one a page
redirects to the form. With ``--no-auth`` there is no sign-in (everything is open anyway).
The SigV4 middleware does not apply here (`api.app._unsigned_allowed`): these handlers check
the session cookie themselves. Responses carry a strict Content-Security-Policy (scripts and
styles from this server only, no inline script), ``X-Frame-Options: DENY`` and no caching.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from pathlib import Path
from typing import Any

from aiohttp import web

from snapfaas.api import logs as log_routes
from snapfaas.api.context import services
from snapfaas.dashboard import views
from snapfaas.dashboard.sessions import COOKIE, SESSION_S, Sessions
from snapfaas.errors import NotFound
from snapfaas.store import StoreError

PREFIX = "/dashboard"
MAX_FORM_BYTES = 4096  # the sign-in form: two keys
HERE = Path(__file__).parent
SESSIONS = web.AppKey("dashboard_sessions", Sessions)


@functools.cache
def templates() -> Any:
    """The dashboard's Jinja2 environment, made at the first page served (a daemon whose
    dashboard is never opened does not load jinja2: ~0.1 s CPU per start)."""
    import jinja2
    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined)


HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def _page(template: str, **context: Any) -> web.Response:
    html = templates().get_template(template).render(prefix=PREFIX, **context)
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers=HEADERS)


def _signed_in(request: web.Request) -> bool:
    sessions = request.app.get(SESSIONS)
    return sessions is None or sessions.valid(request.cookies.get(COOKIE))


def _require(request: web.Request) -> None:
    if not _signed_in(request):
        raise web.HTTPSeeOther(f"{PREFIX}/login", headers=HEADERS)


async def login_form(request: web.Request) -> web.Response:
    return _page("login.html", error=None)


async def login(request: web.Request) -> web.Response:
    sessions = request.app.get(SESSIONS)
    if sessions is None:
        raise web.HTTPSeeOther(PREFIX, headers=HEADERS)
    if (request.content_length or 0) > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM_BYTES, actual_size=request.content_length or 0)
    form = await request.post()
    client = request.remote or "?"
    token = sessions.sign_in(str(form.get("access_key_id", "")), str(form.get("secret_access_key", "")), client)
    if token is None:
        response = _page("login.html", error="Those keys do not sign in here.")
        response.set_status(401)
        return response
    response = web.HTTPSeeOther(PREFIX, headers=HEADERS)
    response.set_cookie(COOKIE, token, max_age=int(SESSION_S), httponly=True, samesite="Strict",
                        secure=request.secure, path=PREFIX)
    raise response


async def logout(request: web.Request) -> web.Response:
    sessions = request.app.get(SESSIONS)
    if sessions is not None:
        sessions.sign_out(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther(f"{PREFIX}/login", headers=HEADERS)
    response.del_cookie(COOKIE, path=PREFIX)
    raise response


async def index(request: web.Request) -> web.Response:
    _require(request)
    svc = services(request)
    model = views.index_page(svc.registry.list_latest(), svc.registry.list_versions, svc.invoker.worker.pools, svc.metrics)
    return _page("index.html", **model)


async def function(request: web.Request) -> web.Response:
    _require(request)
    svc = services(request)
    name = request.match_info["name"]
    try:
        latest = svc.registry.get_version(name, "$LATEST")
    except NotFound:
        return await not_found(request)
    model = views.function_page(latest, svc.registry.list_versions(name), svc.invoker.worker.pools, svc.metrics)
    return _page("function.html", **model)


async def version(request: web.Request) -> web.Response:
    _require(request)
    svc = services(request)
    name, number = request.match_info["name"], request.match_info["version"]
    try:
        record = svc.registry.get_version(name, number)
    except NotFound:
        return await not_found(request)
    lines = await asyncio.to_thread(svc.logs.read, name)
    snapshot = None
    snapshots = svc.invoker.worker.snapshots
    if record.snapshot_id and snapshots is not None:
        snapshot = await asyncio.to_thread(_snapshot_stats, snapshots.vault.store, record.snapshot_id)
    return _page("version.html", **views.version_page(record, svc.invoker.worker.pools, svc.metrics, lines, snapshot))


def _snapshot_stats(store, snapshot_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    try:
        return dataclasses.asdict(store.snapshot_stats(snapshot_id))
    except StoreError as exc:
        return {"snapshot_id": snapshot_id, "error": str(exc)}


async def function_logs(request: web.Request) -> web.Response:
    _require(request)
    name = request.match_info["name"]
    try:
        services(request).registry.function_info(name)
    except NotFound:
        return await not_found(request)
    return _page("logs.html", name=name, version=request.query.get("version", ""), request_id=request.query.get("request_id", ""))


async def log_stream(request: web.Request) -> web.StreamResponse:
    """The same stream as ``GET /snapfaas/v1/logs/{name}`` (same query), for a signed-in browser."""
    if not _signed_in(request):
        raise web.HTTPForbidden(text="sign in first", headers=HEADERS)
    return await log_routes.function_logs(request)


async def not_found(request: web.Request) -> web.Response:
    response = _page("missing.html", what=request.path)
    response.set_status(404)
    return response


def install(app: web.Application, keys: dict[str, str] | None) -> None:
    """Add the dashboard to `app`; `keys` are the operator's (None: no sign-in, ``--no-auth``)."""
    if keys is not None:
        app[SESSIONS] = Sessions(keys)
    app.router.add_get(PREFIX, index)
    app.router.add_get(PREFIX + "/login", login_form)
    app.router.add_post(PREFIX + "/login", login)
    app.router.add_post(PREFIX + "/logout", logout)
    app.router.add_get(PREFIX + "/functions/{name}", function)
    app.router.add_get(PREFIX + "/functions/{name}/versions/{version}", version)
    app.router.add_get(PREFIX + "/functions/{name}/logs", function_logs)
    app.router.add_get(PREFIX + "/functions/{name}/logs/stream", log_stream)
    app.router.add_static(PREFIX + "/static", HERE / "static", append_version=False)
