"""The aiohttp application: routes, authentication and error mapping middlewares."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from snapfaas.api import access, aliases, cluster, event_configs, functions, layers, metrics, permissions, settings, snapstart, tags
from snapfaas.api.auth import SigV4Verifier
from snapfaas.api.bodies import MAX_REQUEST_BYTES, UploadAborted, body_of, keep_body, receive, route_limit
from snapfaas.api.code import download_code
from snapfaas.api.connections import ClientTimeouts, peer_of
from snapfaas.api.context import FORWARDED, PRINCIPAL, REQUEST_ID, SERVICES, Services, services
from snapfaas.api.errors import error_response
from snapfaas.api import logs as log_routes
from snapfaas.api.invoke import forwarded_invoke, invoke
from snapfaas.api.links import PATH_PREFIX
from snapfaas.dashboard import routes as dashboard
from snapfaas import request_ids, timeline
from snapfaas.config import CREDENTIALS_PATH, Limits
from snapfaas.api.replay import ReplayCache
from snapfaas.errors import InvalidSignature, NotFound, RequestTooLarge, ServiceError, SnapfaasError

logger = logging.getLogger(__name__)
FN = access.FN
EVENT_CONFIG = "/2019-09-25/functions/{name}/event-invoke-config"


def build_app(svc: Services, verifier: SigV4Verifier | None, replay: ReplayCache | None = None,
              limits: Limits | None = None, timeouts: ClientTimeouts | None = None,
              spool_dir: Path | None = None, dashboard_keys: dict[str, str] | None = None,
              with_dashboard: bool = True, invoke_timeline: bool = False) -> web.Application:
    """`verifier` None disables authentication (``--no-auth``); `replay` refuses a second use
    of a signature (``--replay-cache``); `limits` and `timeouts` bound request bodies, whose
    bytes past 256 KiB wait in `spool_dir` (default: the system's temporary directory) until
    their signature is verified (`snapfaas.api.bodies`).

    Order for a signed route: headers checked (no body read yet), the declared length checked
    against the route's limit, the body received (bounded, with an idle timeout, hashed as it
    streams), payload hash and signature verified, replay checked, the caller authorized
    (`access.authorize_request`), the body loaded into memory, then the handler runs.
    Unsigned routes (health, credentials, code links) read no body.
    The dashboard (`with_dashboard`) signs in with `dashboard_keys` (None: open, ``--no-auth``).
    `invoke_timeline` (``--invoke-timeline``): each invoke's steps are marked and logged
    (`snapfaas.timeline`).
    """
    body_limits = limits or Limits()
    body_idle_s = (timeouts or ClientTimeouts()).body_s

    async def admit(request: web.Request) -> None:
        """Authenticate and authorize a signed route's request, receiving its body on the way."""
        if request.path.startswith(access.CLUSTER_PREFIX):
            return await admit_forwarded(request)
        pending = None
        if verifier is not None:
            pending = verifier.check_headers(request.method, request.raw_path, request.headers)
        upload = await receive(request, route_limit(_operation(request), body_limits), body_idle_s, spool_dir)
        try:
            if pending is not None:
                principal = pending.verify_payload(upload.sha256, upload.size)
                if replay is not None:
                    replay.admit(pending.signature, pending.signed_at)
                access.authorize_request(request, principal)
                request[PRINCIPAL] = principal
            keep_body(request, await upload.contents())  # only now, verified, in memory
        finally:
            upload.close()

    async def admit_forwarded(request: web.Request) -> None:
        """An internal cluster route: the cluster key's signature from a live node instead of
        SigV4 (`cluster.signing`); the asserted caller is authorized here again."""
        node = services(request).cluster
        if node is None:
            raise InvalidSignature("forwarded request refused at step 'cluster': this server is not a cluster node")
        node.precheck_forwarded(request.headers)  # nothing unsigned is received
        upload = await receive(request, route_limit(_operation(request), body_limits), body_idle_s, spool_dir)
        try:
            assertion = await node.verify_forwarded(request.method, request.raw_path, upload.sha256, request.headers)
            if assertion.principal is not None:
                access.authorize_request(request, assertion.principal)
            request[PRINCIPAL] = assertion.principal
            request[FORWARDED] = assertion
            keep_body(request, await upload.contents())
        finally:
            upload.close()

    @web.middleware
    async def lambda_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
        request_id = request[REQUEST_ID] = request_ids.new()
        timed = timeline.begin(request_id) if invoke_timeline and request.path.endswith("/invocations") else None
        try:
            if not _unsigned_allowed(request.path) and not _metrics_token(request):
                await admit(request)
                timeline.mark("authenticated")
            response = await handler(request)
        except SnapfaasError as err:
            return error_response(err, request_id)
        except UploadAborted as aborted:
            return _abandon(request, aborted)
        except web.HTTPRequestEntityTooLarge:
            return error_response(RequestTooLarge(f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the {_operation(request)} operation"), request_id)
        except web.HTTPNotFound:
            return error_response(NotFound(f"Unknown operation: {request.method} {request.path}"), request_id)
        except web.HTTPMethodNotAllowed:
            return error_response(NotFound(f"Unknown operation: {request.method} {request.path}"), request_id)
        except web.HTTPException:  # a deliberate HTTP answer (the dashboard's redirects and refusals)
            raise
        except Exception:  # every other failure is ours: log it, answer ServiceException, keep serving
            logger.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(ServiceError("An internal error occurred; see the snapfaas server log."), request_id)
        finally:
            if timed is not None:
                timeline.end(timed)
        response.headers.setdefault("x-amzn-RequestId", request_id)
        return response

    app = web.Application(middlewares=[lambda_errors], client_max_size=MAX_REQUEST_BYTES)
    app[SERVICES] = svc
    app.router.add_post("/2015-03-31/functions", functions.create_function)
    app.router.add_post("/2015-03-31/functions/", functions.create_function)
    app.router.add_get("/2015-03-31/functions/", functions.list_functions)
    app.router.add_get("/2015-03-31/functions", functions.list_functions)
    # first of the routes under /2015-03-31/functions/{name}: the router tries those in this
    # order for every request under that prefix, and invokes are nearly all of them
    app.router.add_post(FN + "/invocations", invoke)
    app.router.add_get(FN, functions.get_function)
    app.router.add_delete(FN, functions.delete_function)
    app.router.add_get(FN + "/configuration", functions.get_configuration)
    app.router.add_put(FN + "/configuration", functions.update_configuration)
    app.router.add_put(FN + "/code", functions.update_code)
    app.router.add_post(FN + "/versions", functions.publish_version)
    app.router.add_get(FN + "/versions", functions.list_versions)
    app.router.add_post(FN + "/aliases", aliases.create_alias)
    app.router.add_get(FN + "/aliases", aliases.list_aliases)
    app.router.add_get(FN + "/aliases/{alias}", aliases.get_alias)
    app.router.add_put(FN + "/aliases/{alias}", aliases.update_alias)
    app.router.add_delete(FN + "/aliases/{alias}", aliases.delete_alias)
    app.router.add_post(FN + "/policy", permissions.add_permission)
    app.router.add_get(FN + "/policy", permissions.get_policy)
    app.router.add_delete(FN + "/policy/{sid}", permissions.remove_permission)
    app.router.add_put("/2017-10-31/functions/{name}/concurrency", functions.put_concurrency)
    app.router.add_delete("/2017-10-31/functions/{name}/concurrency", functions.delete_concurrency)
    app.router.add_get("/2019-09-30/functions/{name}/concurrency", functions.get_concurrency)
    app.router.add_put(EVENT_CONFIG, event_configs.put_config)
    app.router.add_post(EVENT_CONFIG, event_configs.update_config)
    app.router.add_get(EVENT_CONFIG, event_configs.get_config)
    app.router.add_delete(EVENT_CONFIG, event_configs.delete_config)
    app.router.add_get(EVENT_CONFIG + "/list", event_configs.list_configs)
    app.router.add_post(access.LAYER + "/versions", layers.publish_layer_version)
    app.router.add_get(access.LAYER + "/versions", layers.list_layer_versions)
    app.router.add_get(access.LAYER + "/versions/{version}", layers.get_layer_version)
    app.router.add_delete(access.LAYER + "/versions/{version}", layers.delete_layer_version)
    app.router.add_get(access.LAYERS, layers.layers_root)
    app.router.add_post(access.TAGS, tags.tag_resource)
    app.router.add_delete(access.TAGS, tags.untag_resource)
    app.router.add_get(access.TAGS, tags.list_tags)
    app.router.add_get("/2020-06-30/functions/{name}/code-signing-config", settings.get_code_signing_config)
    app.router.add_get("/2021-07-20/functions/{name}/runtime-management-config", settings.get_runtime_management_config)
    app.router.add_get("/2024-08-31/functions/{name}/recursion-config", settings.get_recursion_config)
    app.router.add_get("/2021-10-31/functions/{name}/url", settings.get_url_config)
    app.router.add_get("/2021-10-31/functions/{name}/urls", settings.list_url_configs)
    app.router.add_get("/2019-09-30/functions/{name}/provisioned-concurrency", settings.provisioned_concurrency)
    app.router.add_get("/2015-03-31/event-source-mappings", settings.list_event_source_mappings)
    app.router.add_get("/2015-03-31/event-source-mappings/", settings.list_event_source_mappings)
    log_routes.install(app)
    app.router.add_get(PATH_PREFIX + "{digest}", download_code)
    app.router.add_get("/snapfaas/v1/health", health)
    app.router.add_get(CREDENTIALS_PATH, container_credentials)
    app.router.add_post("/snapfaas/v1/echo", echo)
    app.router.add_post(access.VERIFY, snapstart.verify)
    app.router.add_post(access.EXPIRE, snapstart.expire)
    app.router.add_post(access.FORWARDED_INVOKE, forwarded_invoke)
    app.router.add_get(access.CLUSTER_NODES, cluster.nodes)
    app.router.add_get(access.PUBLISH_PROGRESS, snapstart.publish_progress)
    app.router.add_get(metrics.PATH, metrics.metrics)
    if with_dashboard:
        dashboard.install(app, dashboard_keys)
    return app


def _operation(request: web.Request) -> str:
    """Lambda's name for the request's operation (``CreateFunction``, ``InvokeFunction``, ...)."""
    resource = request.match_info.route.resource
    if resource is None:
        return request.path.rstrip("/").split("/")[-1] or "requested"
    return access.action_for(request.method, resource.canonical).partition(":")[2]


def _abandon(request: web.Request, aborted: UploadAborted) -> web.Response:
    """One log line for an upload the client stopped sending, and the connection closed."""
    expected = "?" if aborted.expected is None else str(aborted.expected)
    logger.warning("aborted upload from %s: %s %s, %d of %s bytes received: %s", peer_of(request.protocol),
                   request.method, request.path, aborted.received, expected, aborted.reason)
    request.protocol.force_close()  # nobody to answer; the rest of the body is not read
    return web.Response(status=408)


def _metrics_token(request: web.Request) -> bool:
    """A scrape of /metrics presenting the metrics token (it reads no body)."""
    return (request.path == metrics.PATH and request.method == "GET"
            and metrics.bearer_allowed(request.headers.get("Authorization"), services(request).metrics_token))


def _unsigned_allowed(path: str) -> bool:
    """Health checks, code links (which carry their own signature) and the dashboard (which
    checks its own session cookie: `snapfaas.dashboard.routes`)."""
    return (path in ("/snapfaas/v1/health", CREDENTIALS_PATH) or path.startswith(PATH_PREFIX)
            or path == dashboard.PREFIX or path.startswith(dashboard.PREFIX + "/"))


async def container_credentials(request: web.Request) -> web.Response:
    """The container-credentials endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI``).

    Authenticated by the environment's token (``AWS_CONTAINER_AUTHORIZATION_TOKEN``, sent by
    botocore as the Authorization header), not SigV4. Unknown tokens get 404, as on Lambda.
    """
    token = request.headers.get("Authorization", "")
    creds = services(request).identity.credentials(token) if token else None
    if creds is None:
        return web.json_response({"message": "unknown or revoked credentials token"}, status=404)
    return web.json_response(creds.to_json())


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def echo(request: web.Request) -> web.Response:
    """Bench baseline: the same server stack (auth + middleware) with no function behind it."""
    return web.Response(body=body_of(request), content_type="application/json")
