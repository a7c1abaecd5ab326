"""Authorization of API requests: route -> Lambda action and resource, then `policy.authorize`.

Every signed route has an action name (`ACTIONS`, checked complete by a unit test); routes
outside it are unsigned by design (`UNSIGNED`: health, the credentials endpoint, code links
that carry their own signature). The decision itself is `snapfaas.policy.authorize`; this
module only gathers its inputs (the resource ARN, and for an invoke by a function the target's
policy statements) around it.
"""

from __future__ import annotations

from aiohttp import web

from snapfaas import policy
from snapfaas.api.context import services
from snapfaas.errors import AccessDenied, SnapfaasError
from snapfaas.principals import Operator, Principal
from snapfaas.registry import validation as check

FN = "/2015-03-31/functions/{name}"
VERIFY = "/snapfaas/v1/snapstart/{name}/verify"
PUBLISH_PROGRESS = "/snapfaas/v1/snapstart/{name}/publish"
EXPIRE = "/snapfaas/v1/snapshots/{name}/expire"
LAYERS = "/2018-10-31/layers"
LAYER = LAYERS + "/{layer}"
TAGS = "/2017-03-31/tags/{resource}"
CLUSTER_PREFIX = "/snapfaas/v1/cluster/"  # internal routes between nodes: signed with the cluster key, not SigV4
FORWARDED_INVOKE = CLUSTER_PREFIX + "functions/{name}/invocations"
CLUSTER_NODES = "/snapfaas/v1/cluster-status"  # operator view of the nodes (SigV4, operator only)
ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/2015-03-31/functions"): "lambda:CreateFunction",
    ("POST", "/2015-03-31/functions/"): "lambda:CreateFunction",
    ("GET", "/2015-03-31/functions"): "lambda:ListFunctions",
    ("GET", "/2015-03-31/functions/"): "lambda:ListFunctions",
    ("GET", FN): "lambda:GetFunction",
    ("DELETE", FN): "lambda:DeleteFunction",
    ("GET", FN + "/configuration"): "lambda:GetFunctionConfiguration",
    ("PUT", FN + "/configuration"): "lambda:UpdateFunctionConfiguration",
    ("PUT", FN + "/code"): "lambda:UpdateFunctionCode",
    ("POST", FN + "/versions"): "lambda:PublishVersion",
    ("GET", FN + "/versions"): "lambda:ListVersionsByFunction",
    ("POST", FN + "/aliases"): "lambda:CreateAlias",
    ("GET", FN + "/aliases"): "lambda:ListAliases",
    ("GET", FN + "/aliases/{alias}"): "lambda:GetAlias",
    ("PUT", FN + "/aliases/{alias}"): "lambda:UpdateAlias",
    ("DELETE", FN + "/aliases/{alias}"): "lambda:DeleteAlias",
    ("POST", FN + "/invocations"): policy.INVOKE,
    ("POST", FN + "/policy"): "lambda:AddPermission",
    ("GET", FN + "/policy"): "lambda:GetPolicy",
    ("DELETE", FN + "/policy/{sid}"): "lambda:RemovePermission",
    ("PUT", "/2017-10-31/functions/{name}/concurrency"): "lambda:PutFunctionConcurrency",
    ("DELETE", "/2017-10-31/functions/{name}/concurrency"): "lambda:DeleteFunctionConcurrency",
    ("GET", "/2019-09-30/functions/{name}/concurrency"): "lambda:GetFunctionConcurrency",
    ("PUT", "/2019-09-25/functions/{name}/event-invoke-config"): "lambda:PutFunctionEventInvokeConfig",
    ("POST", "/2019-09-25/functions/{name}/event-invoke-config"): "lambda:UpdateFunctionEventInvokeConfig",
    ("GET", "/2019-09-25/functions/{name}/event-invoke-config"): "lambda:GetFunctionEventInvokeConfig",
    ("DELETE", "/2019-09-25/functions/{name}/event-invoke-config"): "lambda:DeleteFunctionEventInvokeConfig",
    ("GET", "/2019-09-25/functions/{name}/event-invoke-config/list"): "lambda:ListFunctionEventInvokeConfigs",
    ("POST", LAYER + "/versions"): "lambda:PublishLayerVersion",
    ("GET", LAYER + "/versions"): "lambda:ListLayerVersions",
    ("GET", LAYER + "/versions/{version}"): "lambda:GetLayerVersion",
    ("DELETE", LAYER + "/versions/{version}"): "lambda:DeleteLayerVersion",
    ("GET", LAYERS): "lambda:ListLayers",  # and GetLayerVersionByArn (?find=LayerVersion): both reads
    ("POST", TAGS): "lambda:TagResource",
    ("DELETE", TAGS): "lambda:UntagResource",
    ("GET", TAGS): "lambda:ListTags",
    ("GET", "/2020-06-30/functions/{name}/code-signing-config"): "lambda:GetFunctionCodeSigningConfig",
    ("GET", "/2021-07-20/functions/{name}/runtime-management-config"): "lambda:GetRuntimeManagementConfig",
    ("GET", "/2024-08-31/functions/{name}/recursion-config"): "lambda:GetFunctionRecursionConfig",
    ("GET", "/2021-10-31/functions/{name}/url"): "lambda:GetFunctionUrlConfig",
    ("GET", "/2021-10-31/functions/{name}/urls"): "lambda:ListFunctionUrlConfigs",
    ("GET", "/2019-09-30/functions/{name}/provisioned-concurrency"): "lambda:ListProvisionedConcurrencyConfigs",
    ("GET", "/2015-03-31/event-source-mappings"): "lambda:ListEventSourceMappings",
    ("GET", "/2015-03-31/event-source-mappings/"): "lambda:ListEventSourceMappings",
    ("GET", "/snapfaas/v1/logs/{name}"): "snapfaas:GetFunctionLogs",
    ("POST", "/snapfaas/v1/echo"): "snapfaas:Echo",
    ("POST", VERIFY): "snapfaas:VerifySnapStart",
    ("POST", EXPIRE): "snapfaas:ExpireSnapshot",
    ("POST", FORWARDED_INVOKE): policy.INVOKE,  # a forwarded invoke: its asserted caller is authorized again
    ("GET", CLUSTER_NODES): "snapfaas:GetClusterStatus",
    ("GET", "/metrics"): "snapfaas:GetMetrics",
    ("GET", PUBLISH_PROGRESS): "snapfaas:GetPublishProgress",
}
# Actions only the operator may take, whatever grants a function's policy holds: they create
# environments outside the pools and inspect them (verify), or drop a snapshot (expire); the
# cluster status and the metrics are the whole server's (every function's) numbers.
OPERATOR_ONLY = frozenset({"snapfaas:VerifySnapStart", "snapfaas:ExpireSnapshot", "snapfaas:GetClusterStatus",
                           "snapfaas:GetMetrics"})


def action_for(method: str, canonical: str) -> str:
    """The action of a route; a route missing from `ACTIONS` is named after its path, and
    denied to functions like every other action without a grant."""
    return ACTIONS.get((method, canonical), f"snapfaas:{method} {canonical}")


def resource_for(request: web.Request) -> str:
    """The ARN the request acts on: the (qualified) function, the tagged resource, the layer
    (version), or every function."""
    registry = services(request).registry
    if "resource" in request.match_info:  # tags: the ARN given
        return request.match_info["resource"]
    if "layer" in request.match_info:  # a layer, or one of its versions
        layer = request.match_info["layer"].rpartition(":")[2]
        arn = registry.arn_prefix.removesuffix("function:") + "layer:" + layer
        return arn + (f":{request.match_info['version']}" if "version" in request.match_info else "")
    raw = request.match_info.get("name")
    if raw is None:
        return registry.function_arn("*")
    try:
        name, derived = check.parse_function_ref(raw)
    except SnapfaasError:
        return registry.function_arn(raw)
    qualifier = request.match_info.get("alias") or derived or request.query.get("Qualifier")
    return registry.function_arn(name, qualifier)


def authorize_request(request: web.Request, principal: Principal) -> None:
    """Raise `AccessDenied` unless `principal` may make this request. Unmatched paths pass
    (they end in 404 without touching anything)."""
    if isinstance(principal, Operator):
        return
    route = request.match_info.route
    if route.resource is None:
        return
    action = action_for(request.method, route.resource.canonical)
    if action in OPERATOR_ONLY:  # before any policy: no grant reaches these
        raise AccessDenied(f"User: {principal.arn} is not authorized to perform: {action} because it is reserved "
                           "to the operator")
    resource = resource_for(request)
    statements = _invoke_statements(request) if action == policy.INVOKE else []
    decision = policy.authorize(principal, action, resource, statements)
    if not decision.allowed:
        raise AccessDenied(decision.reason or "Access denied")


def _invoke_statements(request: web.Request) -> list[dict]:  # type: ignore[type-arg]
    """The statements of the invoked qualifier's policy; none for a name that does not parse
    (the request is then denied, not validated: a function learns nothing it may not call)."""
    try:
        name, derived = check.parse_function_ref(request.match_info["name"])
    except SnapfaasError:
        return []
    return services(request).permissions.statements(name, derived or request.query.get("Qualifier"))
