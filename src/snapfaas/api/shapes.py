"""Render registry records as Lambda's JSON shapes (FunctionConfiguration, AliasConfiguration)."""

from __future__ import annotations

from typing import Any

from snapfaas.registry.model import Alias, EventInvokeConfig, FunctionVersion


def logging_config(v: FunctionVersion) -> dict[str, str]:
    """LoggingConfig as Lambda echoes it: the levels only with the JSON format."""
    out = {"LogFormat": v.log_format}
    if v.application_log_level:
        out["ApplicationLogLevel"] = v.application_log_level
    if v.system_log_level:
        out["SystemLogLevel"] = v.system_log_level
    out["LogGroup"] = v.log_group_name
    return out


def function_configuration(v: FunctionVersion, arn: str, listing: bool = False) -> dict[str, Any]:
    """FunctionConfiguration as AWS returns it; list items omit the state fields."""
    out: dict[str, Any] = {
        "FunctionName": v.name,
        "FunctionArn": arn,
        "Runtime": v.runtime,
        "Role": v.role,
        "Handler": v.handler,
        "CodeSize": v.code_size,
        "Description": v.description,
        "Timeout": v.timeout,
        "MemorySize": v.memory_size,
        "LastModified": v.last_modified,
        "CodeSha256": v.code_sha256,
        "Version": v.version,
        "TracingConfig": {"Mode": "PassThrough"},
        "RevisionId": v.revision_id,
        "PackageType": "Zip",
        "Architectures": list(v.architectures),
        "EphemeralStorage": {"Size": v.ephemeral_storage},
        "SnapStart": {"ApplyOn": v.snap_start, "OptimizationStatus": v.optimization_status},
        "LoggingConfig": logging_config(v),
    }
    if v.environment or v.environment_set:
        out["Environment"] = {"Variables": dict(v.environment)}
    if v.layers:
        out["Layers"] = [{"Arn": layer["arn"], "CodeSize": layer["size"]} for layer in v.layers]
    if listing:
        return out
    out["State"] = v.state.value
    if v.state_reason:
        out["StateReason"] = v.state_reason
    if v.state_reason_code:
        out["StateReasonCode"] = v.state_reason_code
    if v.last_update_status:
        out["LastUpdateStatus"] = v.last_update_status
    if v.last_update_status_reason:
        out["LastUpdateStatusReason"] = v.last_update_status_reason
    if v.last_update_status_reason_code:
        out["LastUpdateStatusReasonCode"] = v.last_update_status_reason_code
    return out


def alias_configuration(alias: Alias, arn: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "AliasArn": arn,
        "Name": alias.name,
        "FunctionVersion": alias.version,
        "Description": alias.description,
        "RevisionId": alias.revision_id,
    }
    if alias.routing:
        out["RoutingConfig"] = {"AdditionalVersionWeights": dict(alias.routing)}
    return out


def event_invoke_config(config: EventInvokeConfig, arn: str) -> dict[str, Any]:
    """FunctionEventInvokeConfig: unset limits are omitted, both destinations always present."""
    out: dict[str, Any] = {"LastModified": config.last_modified, "FunctionArn": arn}
    if config.max_retry_attempts is not None:
        out["MaximumRetryAttempts"] = config.max_retry_attempts
    if config.max_event_age_s is not None:
        out["MaximumEventAgeInSeconds"] = config.max_event_age_s
    out["DestinationConfig"] = {
        "OnSuccess": {"Destination": config.on_success} if config.on_success else {},
        "OnFailure": {"Destination": config.on_failure} if config.on_failure else {},
    }
    return out


def paginate(items: list[Any], marker: str | None, max_items: int, default_max: int = 50) -> tuple[list[Any], str | None]:
    """Marker is the decimal offset of the next page (opaque to clients)."""
    start = int(marker) if marker and marker.isdigit() else 0
    size = max(1, min(max_items or default_max, default_max))
    page = items[start : start + size]
    next_marker = str(start + size) if start + size < len(items) else None
    return page, next_marker


def page_of(key: str, items: list[Any], marker: str | None, max_items: int) -> dict[str, Any]:
    """A List* response body: ``{key: page}`` plus ``NextMarker`` while more pages remain."""
    page, next_marker = paginate(items, marker, max_items)
    out: dict[str, Any] = {key: page}
    if next_marker:
        out["NextMarker"] = next_marker
    return out
