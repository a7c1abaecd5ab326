"""Pure input validation (snapfaas.registry.validation)."""

from __future__ import annotations

import pytest

from snapfaas.config import AWS_SNAPSTART_RUNTIMES, SUPPORTED_RUNTIMES, parse_snapstart_runtimes
from snapfaas.errors import InvalidParameterValue, ValidationError
from snapfaas.registry import validation as check

ARN = "arn:aws:lambda:us-east-1:123456789012:function:my-func"


# -- parse_function_ref ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("my-func", ("my-func", None)),
        ("my_func2", ("my_func2", None)),
        ("my.func", ("my.func", None)),  # Invoke's pattern allows dots
        ("my-func:prod", ("my-func", "prod")),
        ("my-func:7", ("my-func", "7")),
        ("my-func:$LATEST", ("my-func", "$LATEST")),
        ("123456789012:function:my-func", ("my-func", None)),
        ("123456789012:function:my-func:prod", ("my-func", "prod")),
        (ARN, ("my-func", None)),
        (ARN + ":3", ("my-func", "3")),
        (ARN + ":live", ("my-func", "live")),
        (ARN + ":$LATEST", ("my-func", "$LATEST")),
        ("arn:aws-us-gov:lambda:us-gov-west-1:123456789012:function:g", ("g", None)),
        ("x" * 64, ("x" * 64, None)),
    ],
)
def test_parse_function_ref_accepts(raw: str, expected: tuple[str, str | None]) -> None:
    assert check.parse_function_ref(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "my-func:",  # empty qualifier
        ":my-func",
        "my func",
        "my/func",
        "my-func:a:b",
        ARN + ":1:2",
        "arn:aws:lambda:us-east-1:123456789012:function:",  # no name
        "arn:aws:s3:::bucket",
        "my-func:pro d",
        "my-func\n",
        "my-func:prod\n",
    ],
)
def test_parse_function_ref_rejects(raw: str) -> None:
    with pytest.raises(ValidationError) as info:
        check.parse_function_ref(raw)
    assert info.value.code == "ValidationException"
    assert info.value.status == 400
    assert "at 'functionName'" in info.value.message


def test_parse_function_ref_length_limit() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 140"):
        check.parse_function_ref("a" * 141)
    # a full ARN of exactly 140 characters is fine
    prefix = "arn:aws:lambda:us-east-1:123456789012:function:"
    name = "n" * 64
    qualifier = "q" * (140 - len(prefix) - len(name) - 1)
    raw = f"{prefix}{name}:{qualifier}"
    assert len(raw) == 140
    assert check.parse_function_ref(raw) == (name, qualifier)
    with pytest.raises(ValidationError, match="140"):
        check.parse_function_ref(raw + "q")


def test_error_message_names_value_and_member() -> None:
    with pytest.raises(ValidationError) as info:
        check.parse_function_ref("bad name")
    assert info.value.message.startswith(
        "1 validation error detected: Value 'bad name' at 'functionName' failed to satisfy constraint:"
    )


# -- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "name"),
    [("f", "f"), ("F-1_x", "F-1_x"), ("a" * 64, "a" * 64), ("123", "123"), (ARN, "my-func"),
     ("123456789012:function:g", "g")],
)
def test_create_function_name_accepts(raw: str, name: str) -> None:
    assert check.create_function_name(raw) == name


@pytest.mark.parametrize("raw", ["", "a.b", "a b", "a/b", "f\n", "f:1", "f:$LATEST", ARN + ":prod"])
def test_create_function_name_rejects(raw: str) -> None:
    with pytest.raises(ValidationError, match="at 'functionName'"):
        check.create_function_name(raw)


def test_create_function_name_too_long() -> None:
    with pytest.raises(InvalidParameterValue, match="less than or equal to 64"):
        check.create_function_name("a" * 65)


@pytest.mark.parametrize("raw", [5, True])
def test_create_function_name_rejects_non_strings(raw: object) -> None:
    with pytest.raises((ValidationError, InvalidParameterValue)):
        check.create_function_name(raw)


@pytest.mark.parametrize("value", ["prod", "7", "$LATEST", "$LATEST.PUBLISHED", "a" * 128])
def test_qualifier_accepts(value: str) -> None:
    assert check.qualifier(value) == value


@pytest.mark.parametrize("value", ["", "a b", "a.b", "a:b", "prod\n", "a" * 129])
def test_qualifier_rejects(value: str) -> None:
    with pytest.raises(ValidationError, match="at 'qualifier'"):
        check.qualifier(value)


@pytest.mark.parametrize("name", ["prod", "v1", "1a", "a1", "-", "_", "a" * 128, "live_2-x"])
def test_alias_name_accepts(name: str) -> None:
    assert check.alias_name(name) == name


@pytest.mark.parametrize("name", ["1", "42", "0123456789", "", "a" * 129, "a.b", "a:b", "$LATEST", "pro d", None, 3])
def test_alias_name_rejects(name: object) -> None:
    with pytest.raises(ValidationError) as info:
        check.alias_name(name)
    assert "at 'name'" in info.value.message


@pytest.mark.parametrize(
    ("func", "value"),
    [
        (check.alias_name, "prod\n"),
        (check.version_ref, "1\n"),
        (check.handler, "app.handler\n"),
        (check.role, "arn:aws:iam::000000000000:role/x\n"),
        (lambda name: check.environment({"Variables": {name: "x"}}), "FOO\n"),
    ],
)
def test_trailing_newline_is_rejected(func, value: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        func(value)


@pytest.mark.parametrize("value", ["$LATEST", "1", "123"])
def test_version_ref_accepts(value: str) -> None:
    assert check.version_ref(value) == value


@pytest.mark.parametrize("value", ["latest", "v1", "", "-1", None, 1])
def test_version_ref_rejects(value: object) -> None:
    with pytest.raises(ValidationError):
        check.version_ref(value)


# -- numeric bounds --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("func", "low", "high"),
    [(check.memory_size, 128, 10240), (check.timeout, 1, 900)],
)
def test_int_bounds(func, low: int, high: int) -> None:  # type: ignore[no-untyped-def]
    assert func(low) == low
    assert func(high) == high
    with pytest.raises(ValidationError, match=f"greater than or equal to {low}"):
        func(low - 1)
    with pytest.raises(ValidationError, match=f"less than or equal to {high}"):
        func(high + 1)


@pytest.mark.parametrize("value", [10241, 32768])
def test_memory_between_lambdas_quota_and_the_model_bound_gets_the_services_message(value: int) -> None:
    with pytest.raises(ValidationError) as info:
        check.memory_size(value)
    assert info.value.message == "'MemorySize' value failed to satisfy constraint: Member must have value less than or equal to 10240"


def test_memory_beyond_the_model_bound_gets_the_models_message() -> None:
    with pytest.raises(ValidationError, match="1 validation error detected: Value '32769' at 'memorySize'.*less than or equal to 32768"):
        check.memory_size(32769)


@pytest.mark.parametrize("value", [True, 256.0, "256", None])
def test_int_bounds_reject_non_integers(value: object) -> None:
    with pytest.raises(InvalidParameterValue):
        check.memory_size(value)
    with pytest.raises(InvalidParameterValue):
        check.timeout(value)


def test_ephemeral_storage() -> None:
    assert check.ephemeral_storage({"Size": 512}) == 512
    assert check.ephemeral_storage({"Size": 10240}) == 10240
    with pytest.raises(ValidationError, match="greater than or equal to 512"):
        check.ephemeral_storage({"Size": 511})
    with pytest.raises(ValidationError, match="less than or equal to 10240"):
        check.ephemeral_storage({"Size": 10241})
    for bad in ({}, 1024, None, {"size": 1024}):
        with pytest.raises(InvalidParameterValue):
            check.ephemeral_storage(bad)


# -- environment -----------------------------------------------------------------------------
def test_environment_accepts_and_copies() -> None:
    source = {"Variables": {"FOO": "bar", "a1_b": ""}}
    out = check.environment(source)
    assert out == {"FOO": "bar", "a1_b": ""}
    out["X"] = "y"
    assert "X" not in source["Variables"]
    assert check.environment({}) == {}
    assert check.environment({"Variables": None}) == {}


@pytest.mark.parametrize("key", sorted(check.RESERVED_ENV - {"_HANDLER", "_X_AMZN_TRACE_ID"}))
def test_environment_rejects_reserved_keys(key: str) -> None:
    with pytest.raises(InvalidParameterValue, match=f"Reserved keys used in this request: {key}$"):
        check.environment({"Variables": {"OK": "1", key: "x"}})


@pytest.mark.parametrize("key", ["_HANDLER", "_X_AMZN_TRACE_ID", "1ABC", "A", "A-B", "A B", "ÄB", ""])
def test_environment_rejects_bad_names(key: str) -> None:
    # reserved keys that start with "_" fail the name pattern before the reserved-key check
    with pytest.raises(ValidationError, match="environment.variables"):
        check.environment({"Variables": {key: "x"}})


def test_environment_4kb_limit() -> None:
    exactly = {"K" + "0" * 9: "v" * (4096 - 10)}
    assert check.environment({"Variables": exactly}) == exactly
    over = {"K" + "0" * 9: "v" * (4096 - 9)}
    with pytest.raises(InvalidParameterValue, match="exceeded the 4KB limit"):
        check.environment({"Variables": over})
    # the limit is on the total over all variables
    many = {f"K{i:03d}": "v" * 100 for i in range(40)}  # 40 * 104 = 4160
    with pytest.raises(InvalidParameterValue, match="4KB"):
        check.environment({"Variables": many})


def test_environment_4kb_limit_counts_bytes() -> None:
    with pytest.raises(InvalidParameterValue, match="4KB"):
        check.environment({"Variables": {"KEY": "é" * 3000}})  # 6003 bytes UTF-8


@pytest.mark.parametrize("bad", [None, "x", ["FOO"], {"Variables": ["FOO=bar"]}, {"Variables": {"FOO": 1}}])
def test_environment_rejects_bad_shapes(bad: object) -> None:
    with pytest.raises(InvalidParameterValue):
        check.environment(bad)


# -- enums -----------------------------------------------------------------------------------
def test_snap_start() -> None:
    assert check.snap_start({"ApplyOn": "PublishedVersions"}) == "PublishedVersions"
    assert check.snap_start({"ApplyOn": "None"}) == "None"
    assert check.snap_start({}) == "None"
    with pytest.raises(ValidationError, match=r"enum value set: \[PublishedVersions, None\]"):
        check.snap_start({"ApplyOn": "publishedversions"})
    with pytest.raises(ValidationError):
        check.snap_start({"ApplyOn": None})
    with pytest.raises(InvalidParameterValue):
        check.snap_start("PublishedVersions")


@pytest.mark.parametrize("value", SUPPORTED_RUNTIMES)
def test_runtime_accepts(value: str) -> None:
    assert check.runtime(value) == value


@pytest.mark.parametrize("value", ["python3.8", "python3.10", "nodejs20.x", "Python3.12", "", None, 3.12])
def test_runtime_rejects_unknown(value: object) -> None:
    with pytest.raises(InvalidParameterValue) as info:
        check.runtime(value)
    assert info.value.code == "InvalidParameterValueException"
    assert f"Value {value} at 'runtime'" in info.value.message
    assert "[python3.11, python3.12, python3.13, provided.al2023, provided.al2]" in info.value.message


@pytest.mark.parametrize("runtime", ["provided.al2023", "provided.al2"])
def test_snap_start_refused_for_os_only_runtimes(runtime: str) -> None:
    with pytest.raises(InvalidParameterValue, match=f"^{runtime} is not supported for SnapStart enabled functions.$"):
        check.snap_start_support(runtime, 512, AWS_SNAPSTART_RUNTIMES)
    with pytest.raises(ValueError, match="unknown runtime"):  # not even an operator can widen SnapStart to them
        parse_snapstart_runtimes(f"python3.12,{runtime}")


@pytest.mark.parametrize("value", ["python2.7", "python3.7", "nodejs12.x"])
def test_runtime_rejects_deprecated(value: str) -> None:
    with pytest.raises(InvalidParameterValue, match=f"The runtime parameter of {value} is no longer supported"):
        check.runtime(value)


# -- a few more members ----------------------------------------------------------------------
def test_handler() -> None:
    assert check.handler("app.handler") == "app.handler"
    assert check.handler("pkg.mod.fn") == "pkg.mod.fn"
    # as on Lambda, only the model's pattern is checked here; these fail at invoke
    assert check.handler("handler") == "handler"
    assert check.handler("app.") == "app."
    with pytest.raises(ValidationError):
        check.handler("app handler.x")
    with pytest.raises(ValidationError):
        check.handler("a" * 129)


def test_role() -> None:
    role = "arn:aws:iam::000000000000:role/test"
    assert check.role(role) == role
    for bad in ("arn:aws:iam::0:role/test", "role/test", "", None):
        with pytest.raises(ValidationError):
            check.role(bad)


def test_require() -> None:
    assert check.require({"A": 0}, "A", "a") == 0
    with pytest.raises(ValidationError, match="Member must not be null"):
        check.require({"A": None}, "A", "a")
    with pytest.raises(ValidationError, match="at 'a'"):
        check.require({}, "A", "a")


# -- SnapStart restrictions ------------------------------------------------------------------
def test_snapstart_runtimes_are_aws_list_by_default() -> None:
    from snapfaas.config import AWS_SNAPSTART_RUNTIMES

    assert AWS_SNAPSTART_RUNTIMES == ("python3.12", "python3.13", "python3.14")
    check.snap_start_support("python3.12", 512, AWS_SNAPSTART_RUNTIMES)
    with pytest.raises(InvalidParameterValue) as info:
        check.snap_start_support("python3.11", 512, AWS_SNAPSTART_RUNTIMES)
    assert info.value.message == "python3.11 is not supported for SnapStart enabled functions."  # AWS's wording
    check.snap_start_support("python3.11", 512, ("python3.11", "python3.12"))  # --snapstart-runtimes widens it


def test_snapstart_refuses_ephemeral_storage_above_512_mb() -> None:
    check.snap_start_support("python3.12", 512, ("python3.12",))
    with pytest.raises(InvalidParameterValue, match="greater than 512 MB is not supported for SnapStart enabled functions"):
        check.snap_start_support("python3.12", 513, ("python3.12",))


def test_parse_snapstart_runtimes() -> None:
    from snapfaas.config import parse_snapstart_runtimes

    assert parse_snapstart_runtimes("python3.11, python3.12,python3.11") == ("python3.11", "python3.12")
    assert parse_snapstart_runtimes("python3.14") == ("python3.14",)  # on AWS's list even where not served
    for bad in ("", " , ", "python3.10", "nodejs22.x"):
        with pytest.raises(ValueError, match="--snapstart-runtimes"):
            parse_snapstart_runtimes(bad)


# -- LoggingConfig -----------------------------------------------------------------------------
TEXT_DEFAULT = ("Text", None, None, None)


def test_logging_config_json_defaults_levels_to_info() -> None:
    assert check.logging_config({"LogFormat": "JSON"}, TEXT_DEFAULT) == ("JSON", "INFO", "INFO", None)
    assert check.logging_config({"LogFormat": "JSON", "ApplicationLogLevel": "DEBUG", "LogGroup": "/custom/group"},
                                TEXT_DEFAULT) == ("JSON", "DEBUG", "INFO", "/custom/group")


def test_logging_config_merges_with_the_current_one() -> None:
    current = ("JSON", "WARN", "DEBUG", "/g")
    assert check.logging_config({"ApplicationLogLevel": "ERROR"}, current) == ("JSON", "ERROR", "DEBUG", "/g")
    assert check.logging_config({"LogFormat": "Text"}, current) == ("Text", None, None, "/g")  # levels dropped
    assert check.logging_config({}, current) == current


def test_logging_config_levels_need_the_json_format() -> None:
    with pytest.raises(InvalidParameterValue) as info:
        check.logging_config({"LogFormat": "Text", "ApplicationLogLevel": "INFO"}, TEXT_DEFAULT)
    assert str(info.value) == check.TEXT_LOG_LEVEL
    with pytest.raises(InvalidParameterValue):
        check.logging_config({"SystemLogLevel": "WARN"}, TEXT_DEFAULT)


@pytest.mark.parametrize(("body", "member"), [
    ({"LogFormat": "XML"}, "loggingConfig.logFormat"),
    ({"LogFormat": "JSON", "ApplicationLogLevel": "VERBOSE"}, "loggingConfig.applicationLogLevel"),
    ({"LogFormat": "JSON", "SystemLogLevel": "ERROR"}, "loggingConfig.systemLogLevel"),
    ({"LogGroup": "bad group!"}, "loggingConfig.logGroup"),
    ({"LogGroup": ""}, "loggingConfig.logGroup"),
])
def test_logging_config_enum_and_pattern_violations(body: dict, member: str) -> None:
    with pytest.raises(ValidationError, match=f"at '{member}' failed to satisfy constraint"):
        check.logging_config(body, TEXT_DEFAULT)
