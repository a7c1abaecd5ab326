"""The ``context`` object passed to handlers, with the attributes of Lambda's Python runtime."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any


class CognitoIdentity:
    def __init__(self, data: Mapping[str, Any] | None) -> None:
        data = data or {}
        self.cognito_identity_id = data.get("cognitoIdentityId")
        self.cognito_identity_pool_id = data.get("cognitoIdentityPoolId")


class Client:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.installation_id = data.get("installation_id")
        self.app_title = data.get("app_title")
        self.app_version_name = data.get("app_version_name")
        self.app_version_code = data.get("app_version_code")
        self.app_package_name = data.get("app_package_name")


class ClientContext:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.client = Client(data["client"]) if data.get("client") else None
        self.custom = data.get("custom")
        self.env = data.get("env")


class LambdaContext:
    """Built per invocation from the invoke frame and the process environment."""

    def __init__(self, header: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.aws_request_id: str = header["id"]
        self.invoked_function_arn: str = header.get("arn", "")
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.tenant_id = header.get("tenant_id")
        self.identity = CognitoIdentity(header.get("identity"))
        raw_cc = header.get("client_context")
        self.client_context = ClientContext(json.loads(raw_cc)) if raw_cc else None
        self._deadline_ms: int = int(header["deadline_ms"])

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def log(self, msg: str) -> None:
        import sys

        sys.stderr.write(str(msg))
        sys.stderr.flush()

    def __repr__(self) -> str:
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},log_group_name={self.log_group_name},"
            f"log_stream_name={self.log_stream_name},function_name={self.function_name},"
            f"memory_limit_in_mb={self.memory_limit_in_mb},function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn},client_context={self.client_context},"
            f"identity={self.identity}])"
        )
