"""Every API route is either named by a Lambda action (and so authorized) or unsigned by design."""

from __future__ import annotations

from snapfaas.api import access
from snapfaas.config import CREDENTIALS_PATH
from snapfaas.api.app import _unsigned_allowed, build_app


def routes() -> set[tuple[str, str]]:
    app = build_app(object(), None)  # type: ignore[arg-type]
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource is not None}


def test_every_signed_route_has_an_action() -> None:
    signed = {route for route in routes() if not _unsigned_allowed(route[1])}
    assert signed - access.ACTIONS.keys() == set()
    assert access.ACTIONS.keys() - signed == set()  # no stale entries either


def test_unsigned_routes_are_only_health_credentials_code_links_and_the_dashboard() -> None:
    assert {path for _, path in routes() if _unsigned_allowed(path) and not path.startswith("/dashboard")} == {
        "/snapfaas/v1/health", CREDENTIALS_PATH, "/snapfaas/v1/code/{digest}"}
    dashboard = {path for _, path in routes() if path.startswith("/dashboard")}
    assert "/dashboard" in dashboard and "/dashboard/login" in dashboard
    assert not _unsigned_allowed("/dashboardx") and not _unsigned_allowed("/2015-03-31/dashboard")


def test_action_names() -> None:
    assert access.action_for("POST", access.FORWARDED_INVOKE) == "lambda:InvokeFunction"  # re-authorized on the target
    assert access.action_for("POST", access.FN + "/invocations") == "lambda:InvokeFunction"
    assert access.action_for("GET", "/2015-03-31/functions/") == "lambda:ListFunctions"
    assert access.action_for("DELETE", access.FN + "/policy/{sid}") == "lambda:RemovePermission"
    assert access.action_for("PUT", "/2099-01-01/new/{name}") == "snapfaas:PUT /2099-01-01/new/{name}"


def test_snapstart_operations_are_operator_only() -> None:
    """verify, expire and the metrics are refused to a function's environment before any policy is read,
    even one whose resource policies grant everything; the operator passes."""
    import asyncio

    import pytest
    from aiohttp.test_utils import make_mocked_request

    from snapfaas.errors import AccessDenied
    from snapfaas.principals import FunctionPrincipal, Operator

    app = build_app(object(), None)  # type: ignore[arg-type]
    assert access.OPERATOR_ONLY == {access.action_for("POST", access.VERIFY), access.action_for("POST", access.EXPIRE),
                                    access.action_for("GET", access.CLUSTER_NODES),
                                    access.action_for("GET", "/metrics")}
    principal = FunctionPrincipal("attacker", "arn:aws:iam::000000000000:role/any")
    for method, path in (("POST", "/snapfaas/v1/snapstart/victim:1/verify"), ("POST", "/snapfaas/v1/snapshots/victim:1/expire"),
                         ("GET", "/snapfaas/v1/cluster-status"), ("GET", "/metrics")):
        request = make_mocked_request(method, path, app=app)
        request._match_info = asyncio.run(app.router.resolve(request))  # what aiohttp's dispatcher sets
        with pytest.raises(AccessDenied, match="reserved to the operator"):
            access.authorize_request(request, principal)
        access.authorize_request(request, Operator("AKIDOPERATOR"))
