"""Errors the runtime reports, with the wire ``errorType`` strings of Lambda's Python runtime."""

from __future__ import annotations

import traceback
from types import TracebackType
from typing import Any


class Fault(Exception):
    """A runtime-level failure with Lambda's errorType."""

    IMPORT_MODULE = "Runtime.ImportModuleError"
    SYNTAX = "Runtime.UserCodeSyntaxError"
    HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
    MALFORMED_HANDLER = "Runtime.MalformedHandlerName"
    BUILTIN_CONFLICT = "Runtime.BuiltInModuleConflict"
    MARSHAL = "Runtime.MarshalError"
    BEFORE_SNAPSHOT = "Runtime.BeforeSnapshotError"
    AFTER_RESTORE = "Runtime.AfterRestoreError"

    def __init__(self, error_type: str, message: str, trace: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.trace = trace or []

    def to_error(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"errorMessage": self.message, "errorType": self.error_type}
        if request_id is not None:
            error["requestId"] = request_id
        error["stackTrace"] = self.trace
        return error


def stack_of(tb: TracebackType | None) -> list[str]:
    return traceback.format_list(traceback.extract_tb(tb))


def error_of(exc: BaseException, request_id: str | None) -> dict[str, Any]:
    """Lambda's error object for an exception raised by user code."""
    if isinstance(exc, Fault):
        return exc.to_error(request_id)
    error: dict[str, Any] = {"errorMessage": str(exc), "errorType": type(exc).__name__}
    if request_id is not None:
        error["requestId"] = request_id
    error["stackTrace"] = stack_of(exc.__traceback__)
    return error
