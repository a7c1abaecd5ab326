"""The function's application log, written the way Lambda's Python runtime writes it.

`install` puts one handler on the root logger (as the runtime does before importing the
handler module), so plain ``logging.info(...)`` / ``logging.getLogger(__name__).warning(...)``
reach the function's log:

- ``LogFormat: Text`` (``AWS_LAMBDA_LOG_FORMAT`` unset or ``Text``): each record is the line
  ``[LEVEL]\\t<UTC time with ms>Z\\t<request id>\\t<message>``. The root logger keeps Python's
  default level (WARNING): as on Lambda, ``logging.info`` shows only after the function lowers
  it (``logging.getLogger().setLevel(logging.INFO)``).
- ``LogFormat: JSON``: each record is one JSON object (`JsonFormatter`: ``timestamp``,
  ``level``, ``message``, ``logger``, ``requestId``, exception fields, the record's extra
  attributes) and the root logger's level is ``AWS_LAMBDA_LOG_LEVEL`` (the function's
  ``ApplicationLogLevel``; ``TRACE`` counts as DEBUG, ``FATAL`` as CRITICAL).

A record is one entry of the log even when its message spans lines (a traceback from
``logger.exception``): its inner newlines are written as ``\\r`` (`one_entry`), the way the
runtime joins the lines of an error it reports; the worker splits the stream on ``\\n`` only.
``print`` output is unchanged (one entry per line, in either format).

The request id is the one of the invocation being served, or of the last one served (empty
during init), as in Lambda's runtime.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Mapping
from typing import Any, TextIO

TEXT = "Text"
JSON = "JSON"
TEXT_LINE = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s"
TEXT_TIME = "%Y-%m-%dT%H:%M:%S"
JSON_TIME = "%Y-%m-%dT%H:%M:%SZ"
ENTRY_BREAK = "\r"  # a newline inside one log entry
TRACE_INDENT = "\u00a0"  # leading spaces of traceback lines in a reported error (kept by log viewers)
LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
          "WARNING": logging.WARNING, "ERROR": logging.ERROR, "FATAL": logging.CRITICAL, "CRITICAL": logging.CRITICAL}
# LogRecord attributes that are not "extra" fields of a JSON entry
RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "aws_request_id", "taskName",
}


class RequestId:
    """The request id log records carry (set by the serve loop)."""

    current = ""


def one_entry(text: str) -> str:
    """`text` as one log entry: inner newlines as `ENTRY_BREAK`, one final newline."""
    return text.rstrip("\n").replace("\n", ENTRY_BREAK) + "\n"


def json_level(levelno: int) -> int:
    """Lambda's JSON levels are multiples of 10 between NOTSET and CRITICAL."""
    return min(logging.CRITICAL, max(logging.NOTSET, levelno)) // 10 * 10


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_LINE, TEXT_TIME)
        self.converter = time.gmtime


class JsonFormatter(logging.Formatter):
    """One JSON object per record: the fields of Lambda's Python runtime, absent ones left out."""

    def __init__(self) -> None:
        super().__init__(datefmt=JSON_TIME)
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        level = logging.getLevelName(json_level(record.levelno))
        entry: dict[str, Any] = {
            "timestamp": self.formatTime(record, self.datefmt),
            "level": level,
            "message": record.getMessage(),
            "logger": record.name,
            "requestId": getattr(record, "aws_request_id", ""),
        }
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            entry["errorType"] = exc_type.__name__
            entry["errorMessage"] = str(exc)
            entry["stackTrace"] = traceback.format_tb(tb)
            entry["location"] = f"{record.pathname}:{record.funcName}:{record.lineno}"
        for key, value in vars(record).items():
            if key not in RECORD_FIELDS and key not in entry and value is not None:
                entry[key] = value
        return json.dumps(entry, ensure_ascii=False, default=str)


class LambdaHandler(logging.Handler):
    """Writes each record as one entry of the function's log stream, tagged with the request id."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.aws_request_id = RequestId.current
            self.stream.write(one_entry(self.format(record)))
            self.stream.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports through handleError
            self.handleError(record)


def log_format(environ: Mapping[str, str]) -> str:
    return JSON if environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON" else TEXT


def install(environ: Mapping[str, str], stream: TextIO) -> LambdaHandler:
    """Put the Lambda handler on the root logger (see the module docstring)."""
    json_format = log_format(environ) == JSON
    handler = LambdaHandler(stream, JsonFormatter() if json_format else TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = LEVELS.get(environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper())
    if level is not None:
        root.setLevel(level)
    return handler


def error_entry(error: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """How the runtime logs an error it reports (unhandled exception, init or hook failure):
    Text: ``[ERROR] Type: message`` and the traceback, as one entry; JSON: one object with
    ``timestamp``, ``log_level`` and the error's fields."""
    if log_format(environ) == JSON:
        stamp = time.strftime(JSON_TIME, time.gmtime())
        return json.dumps({"timestamp": stamp, "log_level": "ERROR", **error}, ensure_ascii=False, default=str) + "\n"
    head = "[ERROR]"
    if error.get("errorType"):
        head += f" {error['errorType']}"
    if error.get("errorMessage"):
        head += (":" if error.get("errorType") else "") + f" {error['errorMessage']}"
    lines = [head]
    trace = error.get("stackTrace")
    if trace is not None:
        lines.append("Traceback (most recent call last):")
        for frame in trace:
            for line in (frame.splitlines() or [""]):
                stripped = line.lstrip(" ")
                lines.append(TRACE_INDENT * (len(line) - len(stripped)) + stripped)
    return ENTRY_BREAK.join(lines) + "\n"
