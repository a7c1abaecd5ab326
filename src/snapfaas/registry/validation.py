"""Pure validation of control-plane input, with Lambda's exact error wording.

Every check raises a `snapfaas.errors` leaf and never touches state, so a request that fails
validation changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from snapfaas.config import SUPPORTED_RUNTIMES
from snapfaas.destinations import DESTINATION_ARN_PATTERN, DESTINATION_ARN_RE
from snapfaas.errors import InvalidParameterValue, ValidationError

ALIAS_NAME_RE = re.compile(r"^(?!^[0-9]+$)([a-zA-Z0-9-_]+)$")
VERSION_RE = re.compile(r"^(\$LATEST|[0-9]+)$")
ENV_NAME_RE = re.compile(r"^[a-zA-Z]([a-zA-Z0-9_])+$")
HANDLER_RE = re.compile(r"^[^\s]{1,128}$")
ROLE_RE = re.compile(r"^arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
# Lambda's own patterns, verbatim: they appear in error messages. Group 11 is the function name,
# group 13 the qualifier, in both.
_ARN_HEAD = r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?"
REF_PATTERN = _ARN_HEAD + r"([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?"
CREATE_PATTERN = _ARN_HEAD + r"([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?"
QUALIFIER_PATTERN = r"\$(LATEST(\.PUBLISHED)?)|[a-zA-Z0-9-_$]+"
REF_RE = re.compile(REF_PATTERN)
CREATE_RE = re.compile(CREATE_PATTERN)
QUALIFIER_RE = re.compile(QUALIFIER_PATTERN)
DEPRECATED_RUNTIMES = frozenset(
    {
        "python2.7", "python3.6", "python3.7", "nodejs", "nodejs4.3", "nodejs4.3-edge", "nodejs6.10", "nodejs8.10",
        "nodejs10.x", "nodejs12.x", "dotnetcore1.0", "dotnetcore2.0", "dotnetcore2.1", "ruby2.5",
    }
)
RESERVED_ENV = frozenset(
    {
        "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
    }
)


def constraint_error(value: object, member: str, constraint: str) -> ValidationError:
    return ValidationError(
        f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: {constraint}"
    )


def _function_ref(raw: str, regex: re.Pattern[str]) -> tuple[str, str | None]:
    """Match `raw` against one of Lambda's FunctionName patterns; ValidationException naming it."""
    if len(raw) > 140 or not raw:
        raise constraint_error(raw, "functionName", "Member must have length less than or equal to 140")
    match = regex.fullmatch(raw)
    if match is None:
        raise constraint_error(raw, "functionName", f"Member must satisfy regular expression pattern: {regex.pattern}")
    return match.group(11), match.group(13)


def parse_function_ref(raw: str) -> tuple[str, str | None]:
    """Split a FunctionName path member (name, name:qualifier, partial or full ARN).

    Returns ``(name, qualifier_or_None)``. The name's length is not checked: like Lambda, a
    name longer than 64 characters is simply a function that does not exist (404).
    """
    return _function_ref(raw, REF_RE)


def create_function_name(raw: object) -> str:
    """CreateFunction's FunctionName (bare name, partial or full ARN, no qualifier) -> bare name.

    A pattern violation is a ValidationException; a name over 64 characters is, as on Lambda,
    an InvalidParameterValueException carrying the same validation wording.
    """
    if not isinstance(raw, str):
        raise constraint_error(raw, "functionName", "Member must be a string")
    name, qualifier = _function_ref(raw, CREATE_RE)
    if qualifier is not None:
        raise constraint_error(raw, "functionName", "Member must not carry a qualifier")
    if len(name) > 64:
        raise InvalidParameterValue(
            f"1 validation error detected: Value '{raw}' at 'functionName' failed to satisfy constraint: "
            "Member must have length less than or equal to 64"
        )
    return name


def alias_name(name: object) -> str:
    if isinstance(name, str) and len(name) > 128:
        raise constraint_error(name, "name", "Member must have length less than or equal to 128")
    if not isinstance(name, str) or not ALIAS_NAME_RE.fullmatch(name):
        raise constraint_error(
            name, "name", "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)"
        )
    return name


def version_ref(version: object, member: str = "functionVersion") -> str:
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise constraint_error(version, member, "Member must satisfy regular expression pattern: (\\$LATEST|[0-9]+)")
    return version


def qualifier(value: str) -> str:
    if len(value) > 128:
        raise constraint_error(value, "qualifier", "Member must have length less than or equal to 128")
    if not QUALIFIER_RE.fullmatch(value):
        raise constraint_error(value, "qualifier", f"Member must satisfy regular expression pattern: {QUALIFIER_PATTERN}")
    return value


def runtime(value: object) -> str:
    """A runtime this server runs; Lambda's wording for deprecated and for unknown runtimes."""
    if value in SUPPORTED_RUNTIMES:
        return str(value)
    if isinstance(value, str) and value in DEPRECATED_RUNTIMES:
        raise InvalidParameterValue(
            f"The runtime parameter of {value} is no longer supported for creating or updating AWS Lambda functions. "
            "We recommend you use a supported runtime while creating or updating functions."
        )
    raise InvalidParameterValue(
        f"Value {value} at 'runtime' failed to satisfy constraint: Member must satisfy enum value set: "
        f"[{', '.join(SUPPORTED_RUNTIMES)}] or be a valid ARN"
    )


def handler(value: object) -> str:
    """The API model's constraint only: as on Lambda, a handler without a dot or naming a module
    the package lacks is accepted and fails at invoke (the runtime reports it)."""
    if not isinstance(value, str) or not HANDLER_RE.fullmatch(value):
        raise constraint_error(value, "handler", "Member must satisfy regular expression pattern: [^\\s]+")
    return value


def int_range(value: object, member: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterValue(f"Value {value!r} at '{member}' must be an integer")
    if value < low:
        raise constraint_error(value, member, f"Member must have value greater than or equal to {low}")
    if value > high:
        raise constraint_error(value, member, f"Member must have value less than or equal to {high}")
    return value


MEMORY_MODEL_MAX = 32768  # the API model's bound: beyond it, the model's "1 validation error" message
MEMORY_QUOTA_MAX = 10240  # Lambda's actual limit, enforced by the service with its own wording


def memory_size(value: object) -> int:
    size = int_range(value, "memorySize", 128, MEMORY_MODEL_MAX)
    if size > MEMORY_QUOTA_MAX:
        raise ValidationError(f"'MemorySize' value failed to satisfy constraint: Member must have value less than or equal "
                              f"to {MEMORY_QUOTA_MAX}")
    return size


def timeout(value: object) -> int:
    return int_range(value, "timeout", 1, 900)


def ephemeral_storage(value: object) -> int:
    if not isinstance(value, Mapping) or "Size" not in value:
        raise InvalidParameterValue("EphemeralStorage must be an object with a Size member")
    return int_range(value["Size"], "ephemeralStorage.size", 512, 10240)


def architectures(value: object) -> list[str]:
    """``Architectures``: exactly one of x86_64 and arm64 (stored and returned as given)."""
    if not isinstance(value, list) or len(value) != 1:
        raise constraint_error(value, "architectures", "Member must have length less than or equal to 1")
    if value[0] not in ("x86_64", "arm64"):
        raise constraint_error(f"[{value[0]}]", "architectures",
                               "Member must satisfy constraint: [Member must satisfy enum value set: [x86_64, arm64], "
                               "Member must not be null]")
    return [str(value[0])]


def snap_start(value: object) -> str:
    if not isinstance(value, Mapping):
        raise InvalidParameterValue("SnapStart must be an object with an ApplyOn member")
    apply_on = value.get("ApplyOn", "None")
    if apply_on not in ("PublishedVersions", "None"):
        raise constraint_error(apply_on, "snapStart.applyOn", "Member must satisfy enum value set: [PublishedVersions, None]")
    return str(apply_on)


SNAPSTART_MAX_EPHEMERAL_MB = 512  # AWS: SnapStart does not support ephemeral storage above 512 MB


def snap_start_support(runtime: str, ephemeral_storage_mb: int, allowed_runtimes: tuple[str, ...] | frozenset[str]) -> None:
    """Whether a SnapStart-enabled configuration is one AWS accepts: a runtime of the SnapStart
    list (AWS's wording, as recorded from the service) and at most 512 MB of ephemeral storage
    (AWS documents the limit; the message follows the same "... is not supported for SnapStart
    enabled functions." form). Provisioned concurrency, EFS and container images, which AWS
    also excludes, are not modeled by this server."""
    if runtime not in allowed_runtimes:
        raise InvalidParameterValue(f"{runtime} is not supported for SnapStart enabled functions.")
    if ephemeral_storage_mb > SNAPSTART_MAX_EPHEMERAL_MB:
        raise InvalidParameterValue(
            f"EphemeralStorage size greater than {SNAPSTART_MAX_EPHEMERAL_MB} MB is not supported for SnapStart enabled functions."
        )


def environment(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidParameterValue("Environment must be an object with a Variables member")
    variables = value.get("Variables") or {}
    if not isinstance(variables, Mapping):
        raise InvalidParameterValue("Environment.Variables must be a map of strings")
    out: dict[str, str] = {}
    for key, val in variables.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            raise constraint_error(key, "environment.variables", "Member must satisfy regular expression pattern: [a-zA-Z]([a-zA-Z0-9_])+")
        if key in RESERVED_ENV:
            raise InvalidParameterValue(
                f"Lambda was unable to configure your environment variables because the environment variables you have provided contains reserved keys that are currently not supported for modification. Reserved keys used in this request: {key}"
            )
        if not isinstance(val, str):
            raise InvalidParameterValue(f"Environment variable {key} must be a string")
        out[key] = val
    if sum(len(k.encode()) + len(v.encode()) for k, v in out.items()) > 4096:
        raise InvalidParameterValue(
            "Lambda was unable to configure your environment variables because the environment variables you have provided exceeded the 4KB limit."
        )
    return out


def description(value: object) -> str:
    if not isinstance(value, str) or len(value) > 256:
        raise constraint_error(value, "description", "Member must have length less than or equal to 256")
    return value


def role(value: object) -> str:
    if not isinstance(value, str) or not ROLE_RE.fullmatch(value):
        raise constraint_error(
            value, "role", "Member must satisfy regular expression pattern: arn:(aws[a-zA-Z-]*)?:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+"
        )
    return value


def reserved_concurrency(value: object) -> int:
    return int_range(value, "reservedConcurrentExecutions", 0, 1_000_000)


def require(body: Mapping[str, Any], key: str, member: str) -> Any:
    if key not in body or body[key] is None:
        raise constraint_error("null", member, "Member must not be null")
    return body[key]


# -- FunctionEventInvokeConfig -------------------------------------------------------------------
EVENT_CONFIG_MEMBERS = ("MaximumRetryAttempts", "MaximumEventAgeInSeconds", "DestinationConfig")


def maximum_retry_attempts(value: object) -> int:
    return int_range(value, "maximumRetryAttempts", 0, 2)


def maximum_event_age(value: object) -> int:
    return int_range(value, "maximumEventAgeInSeconds", 60, 21600)


def destination_config(value: object) -> dict[str, str | None]:
    """``DestinationConfig`` -> ``{"OnSuccess": arn or None, "OnFailure": ...}`` for the members
    given (an empty ``{}`` or ``""`` destination clears it). Only the ARN pattern is checked here;
    what it names is checked by `snapfaas.destinations.parse`."""
    if not isinstance(value, Mapping):
        raise InvalidParameterValue("DestinationConfig must be an object with OnSuccess and/or OnFailure members")
    out: dict[str, str | None] = {}
    for key in ("OnSuccess", "OnFailure"):
        if key not in value or value[key] is None:
            continue
        member = value[key]
        if not isinstance(member, Mapping):
            raise InvalidParameterValue(f"DestinationConfig.{key} must be an object with a Destination member")
        arn = member.get("Destination")
        if arn is None or arn == "":
            out[key] = None
            continue
        path = f"destinationConfig.{key[0].lower() + key[1:]}.destination"
        if not isinstance(arn, str) or len(arn) > 350:
            raise constraint_error(arn, path, "Member must have length less than or equal to 350")
        if not DESTINATION_ARN_RE.fullmatch(arn):
            raise constraint_error(arn, path, f"Member must satisfy regular expression pattern: {DESTINATION_ARN_PATTERN}")
        out[key] = arn
    return out


LOG_FORMATS = ("JSON", "Text")
APPLICATION_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
SYSTEM_LOG_LEVELS = ("DEBUG", "INFO", "WARN")
LOG_GROUP_RE = re.compile(r"[\.\-_/#A-Za-z0-9]+")
TEXT_LOG_LEVEL = ('LogLevel is not supported when LogFormat is set to "Text". Remove LogLevel from your request or '
                  'change the LogFormat to "JSON" and try again.')


def _enum(value: object, member: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise constraint_error(value, member, f"Member must satisfy enum value set: [{', '.join(allowed)}]")
    return str(value)


def logging_config(value: object, current: tuple[str, str | None, str | None, str | None]) -> tuple[str, str | None, str | None, str | None]:
    """A LoggingConfig request member applied to the `current` (format, application level,
    system level, log group), as Lambda merges it: members not given keep their value;
    switching to JSON sets missing levels to INFO, switching to Text drops them; a level
    with a resulting Text format is refused."""
    if not isinstance(value, Mapping):
        raise InvalidParameterValue("LoggingConfig must be an object")
    log_format, app_level, system_level, group = current
    if "LogFormat" in value:
        log_format = _enum(value["LogFormat"], "loggingConfig.logFormat", LOG_FORMATS)
    levels_given = "ApplicationLogLevel" in value or "SystemLogLevel" in value
    if "ApplicationLogLevel" in value:
        app_level = _enum(value["ApplicationLogLevel"], "loggingConfig.applicationLogLevel", APPLICATION_LOG_LEVELS)
    if "SystemLogLevel" in value:
        system_level = _enum(value["SystemLogLevel"], "loggingConfig.systemLogLevel", SYSTEM_LOG_LEVELS)
    if "LogGroup" in value:
        raw = value["LogGroup"]
        if not isinstance(raw, str) or not raw:
            raise constraint_error(raw, "loggingConfig.logGroup", "Member must have length greater than or equal to 1")
        if len(raw) > 512:
            raise constraint_error(raw, "loggingConfig.logGroup", "Member must have length less than or equal to 512")
        if not LOG_GROUP_RE.fullmatch(raw):
            raise constraint_error(raw, "loggingConfig.logGroup", f"Member must satisfy regular expression pattern: {LOG_GROUP_RE.pattern}")
        group = raw
    if log_format == "Text":
        if levels_given:
            raise InvalidParameterValue(TEXT_LOG_LEVEL)
        return log_format, None, None, group
    return log_format, app_level or "INFO", system_level or "INFO", group
