"""Lambda's reserved variables per initialization type and log format (worker.factory.lambda_environ)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from snapfaas.config import ServerConfig
from snapfaas.registry.model import FunctionVersion
from snapfaas.worker.factory import lambda_environ

VERSION = FunctionVersion("fn", "1", "python3.12", "app.handler", "arn:aws:iam::000000000000:role/r", "d", "s", 1,
                          environment={"USER_VAR": "x"})
STREAM = "2026/11/30/[1]abc"


def test_on_demand_gets_log_group_and_stream(tmp_path: Path) -> None:
    environ = lambda_environ(ServerConfig(tmp_path), VERSION, "on-demand", STREAM)
    assert environ["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert environ["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/fn"
    assert environ["AWS_LAMBDA_LOG_STREAM_NAME"] == STREAM
    assert "AWS_LAMBDA_LOG_FORMAT" not in environ and "AWS_LAMBDA_LOG_LEVEL" not in environ
    assert environ["USER_VAR"] == "x"


def test_snap_start_gets_no_log_names(tmp_path: Path) -> None:
    environ = lambda_environ(ServerConfig(tmp_path), VERSION, "snap-start", STREAM)
    assert environ["AWS_LAMBDA_INITIALIZATION_TYPE"] == "snap-start"
    assert "AWS_LAMBDA_LOG_GROUP_NAME" not in environ and "AWS_LAMBDA_LOG_STREAM_NAME" not in environ


def test_json_format_sets_format_and_application_level(tmp_path: Path) -> None:
    json_version = dataclasses.replace(VERSION, log_format="JSON", application_log_level="DEBUG",
                                       system_log_level="WARN", log_group="/custom/g")
    environ = lambda_environ(ServerConfig(tmp_path), json_version, "on-demand", STREAM)
    assert (environ["AWS_LAMBDA_LOG_FORMAT"], environ["AWS_LAMBDA_LOG_LEVEL"]) == ("JSON", "DEBUG")
    assert environ["AWS_LAMBDA_LOG_GROUP_NAME"] == "/custom/g"
