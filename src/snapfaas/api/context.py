"""What request handlers can reach: the control plane, the invoker and a few stores."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from snapfaas.api.bodies import body_of
from snapfaas.api.links import CodeLinks
from snapfaas.config import ServerConfig
from snapfaas.identity import IdentityBroker
from snapfaas.metrics import Metrics
from snapfaas.errors import InvalidRequestContent, NotFound
from snapfaas.registry import validation as check
from snapfaas.registry.permissions import Permissions
from snapfaas.registry.service import ControlPlane
from snapfaas.worker.invoker import Invoker
from snapfaas.worker.logs import LogStore

if TYPE_CHECKING:
    from snapfaas.cluster.node import ClusterNode
    from snapfaas.registry.model import FunctionVersion
    from snapfaas.snapshot.operations import SnapStartOperations

SERVICES = web.AppKey("services", object)
PRINCIPAL = web.RequestKey("principal", object)  # who the verified caller is (absent with --no-auth)
FORWARDED = web.RequestKey("forwarded", object)  # the cluster assertion of a forwarded invoke
REQUEST_ID = web.RequestKey("request_id", str)  # the id the middleware gave the request (an invoke's too)


@dataclasses.dataclass
class Services:
    config: ServerConfig
    control: ControlPlane
    invoker: Invoker
    logs: LogStore
    links: CodeLinks = dataclasses.field(default_factory=CodeLinks)
    identity: IdentityBroker = dataclasses.field(default_factory=IdentityBroker)
    snapstart: "SnapStartOperations | None" = None  # operator-only verify / expire (api/snapstart.py)
    cluster: "ClusterNode | None" = None  # this node's membership and invoke routing (cluster/node.py)
    metrics: Metrics = dataclasses.field(default_factory=Metrics)  # GET /metrics (api/metrics.py)
    metrics_token: str | None = None  # the bearer token that may read /metrics without SigV4

    @property
    def registry(self):  # type: ignore[no-untyped-def]
        return self.control.registry

    @property
    def permissions(self) -> Permissions:
        """Functions' resource-based policies (stateless over the registry)."""
        return Permissions(self.control.registry)


def services(request: web.Request) -> Services:
    svc = request.app[SERVICES]
    assert isinstance(svc, Services)
    return svc


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = body_of(request)  # read (bounded) by the app's middleware
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestContent(f"Could not parse request body into json: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequestContent("Could not parse request body into json: expected a JSON object")
    return body


def function_ref(request: web.Request) -> tuple[str, str | None]:
    """FunctionName from the path plus the ``Qualifier`` query parameter, reconciled."""
    name, derived = check.parse_function_ref(request.match_info["name"])
    query = request.query.get("Qualifier")
    if query is not None:
        check.qualifier(query)
    if derived is not None and query is not None and derived != query:
        raise check.InvalidParameterValue("The derived qualifier from the function name does not match the specified qualifier.")
    return name, derived or query


def resolve_function(request: web.Request, name: str, qualifier: str | None) -> tuple[FunctionVersion, object]:
    """The version `name` and `qualifier` name (see `Registry.resolve`), or Lambda's
    "Function not found: <arn>" for a missing function or qualifier."""
    registry = services(request).registry
    try:
        return registry.resolve(name, qualifier)
    except NotFound as exc:
        raise NotFound(f"Function not found: {registry.function_arn(name, qualifier)}") from exc


def max_items(request: web.Request, upper: int) -> int:
    """The ``MaxItems`` query parameter (default 50), between 1 and `upper` (the operation's
    bound in Lambda's model)."""
    raw = request.query.get("MaxItems")
    if raw is None:
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= upper:
        raise check.constraint_error(raw, "maxItems", f"Member must have value between 1 and {upper}")
    return int(raw)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")
