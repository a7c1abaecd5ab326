"""Function settings this server does not offer, read as AWS answers them when they are not
configured, so infrastructure-as-code tools (Terraform's AWS provider, CloudFormation, CDK)
can read a function back after every create and on every plan:

- GetFunctionCodeSigningConfig: 200, ``{"CodeSigningConfigArn": "", "FunctionName": name}``
  (both members are required by the API model; no code signing config is attached).
- GetRuntimeManagementConfig: ``UpdateRuntimeOn: Auto`` (no RuntimeVersionArn outside Manual).
- GetFunctionRecursionConfig: ``RecursiveLoop: Terminate`` (Lambda's default).
- GetFunctionUrlConfig: 404 ResourceNotFoundException "The resource you requested does not
  exist." (also for a function that does not exist, as recorded from AWS);
  ListFunctionUrlConfigs: an empty list.
- ListProvisionedConcurrencyConfigs: an empty list; GetProvisionedConcurrencyConfig: 404
  ProvisionedConcurrencyConfigNotFoundException.
- ListEventSourceMappings: an empty list.

Every read of a named function answers Lambda's "Function not found" first if it does not exist.
"""

from __future__ import annotations

from aiohttp import web

from snapfaas.api.context import function_ref, json_response, resolve_function, services
from snapfaas.errors import NotFound
from snapfaas.registry.layers import NOT_FOUND


class ProvisionedConcurrencyConfigNotFound(NotFound):
    code = "ProvisionedConcurrencyConfigNotFoundException"


def _existing(request: web.Request) -> tuple[str, str | None]:
    """(name, qualifier) of the function the path names; Lambda's not-found for a missing
    function or qualifier."""
    name, qualifier = function_ref(request)
    resolve_function(request, name, qualifier)
    return name, qualifier


async def get_code_signing_config(request: web.Request) -> web.Response:
    name, _ = _existing(request)
    return json_response({"CodeSigningConfigArn": "", "FunctionName": name})


async def get_runtime_management_config(request: web.Request) -> web.Response:
    name, qualifier = _existing(request)
    arn = services(request).registry.function_arn(name, qualifier)
    return json_response({"UpdateRuntimeOn": "Auto", "FunctionArn": arn})


async def get_recursion_config(request: web.Request) -> web.Response:
    _existing(request)
    return json_response({"RecursiveLoop": "Terminate"})


async def get_url_config(request: web.Request) -> web.Response:
    function_ref(request)  # a malformed name is still a validation error
    raise NotFound(NOT_FOUND)


async def list_url_configs(request: web.Request) -> web.Response:
    _existing(request)
    return json_response({"FunctionUrlConfigs": []})


async def provisioned_concurrency(request: web.Request) -> web.Response:
    """``GET .../provisioned-concurrency``: the list with ``List=ALL``, else one qualifier's."""
    _existing(request)
    if request.query.get("List") == "ALL":
        return json_response({"ProvisionedConcurrencyConfigs": []})
    raise ProvisionedConcurrencyConfigNotFound("No Provisioned Concurrency Config found for this function")


async def list_event_source_mappings(request: web.Request) -> web.Response:
    return json_response({"EventSourceMappings": []})
