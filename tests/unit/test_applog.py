"""The runtime's application log formats (snapfaas.runtime.applog), as Lambda's Python runtime writes them."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from snapfaas.runtime import applog

TEXT_LINE = re.compile(r"^\[(?P<level>[A-Z]+)\]\t(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\t(?P<request>[^\t]*)\t(?P<message>.*)\n$", re.S)


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (install changes it, as in the runtime process)."""
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    logger.handlers = []
    logger.setLevel(logging.WARNING)
    yield logger
    logger.handlers, logger.level = handlers, level
    applog.RequestId.current = ""


def test_text_format_keeps_root_at_warning_and_tags_the_request(root: logging.Logger) -> None:
    stream = io.StringIO()
    applog.install({}, stream)
    logging.info("not shown: the root logger stays at WARNING, as on Lambda")
    logging.getLogger("app.module").warning("careful %s", 1)
    applog.RequestId.current = "req-1"
    root.setLevel(logging.INFO)
    logging.info("now shown")
    lines = stream.getvalue().split("\n")[:-1]
    assert len(lines) == 2
    first, second = (TEXT_LINE.match(line + "\n") for line in lines)
    assert first and second
    assert (first["level"], first["request"], first["message"]) == ("WARNING", "", "careful 1")
    assert (second["level"], second["request"], second["message"]) == ("INFO", "req-1", "now shown")


def test_multi_line_record_is_one_entry(root: logging.Logger) -> None:
    stream = io.StringIO()
    applog.install({}, stream)
    applog.RequestId.current = "req-2"
    try:
        raise ValueError("bad")
    except ValueError:
        logging.exception("failed\nsecond line")
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    parts = text.rstrip("\n").split("\r")
    assert parts[0].startswith("[ERROR]\t") and parts[0].endswith("\treq-2\tfailed")
    assert parts[1] == "second line"
    assert "Traceback (most recent call last):" in parts and parts[-1] == "ValueError: bad"


def test_json_format_sets_the_application_level(root: logging.Logger) -> None:
    stream = io.StringIO()
    applog.install({"AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": "DEBUG"}, stream)
    assert root.level == logging.DEBUG
    applog.RequestId.current = "req-3"
    logging.getLogger("svc").debug("hello %s", "world", extra={"order": 7})
    try:
        raise KeyError("k")
    except KeyError:
        logging.getLogger("svc").exception("oops")
    debug, error = (json.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", debug["timestamp"])
    assert {k: debug[k] for k in ("level", "message", "logger", "requestId", "order")} == {
        "level": "DEBUG", "message": "hello world", "logger": "svc", "requestId": "req-3", "order": 7}
    assert "errorType" not in debug and "stackTrace" not in debug
    assert (error["level"], error["errorType"], error["errorMessage"]) == ("ERROR", "KeyError", "'k'")
    assert error["stackTrace"] and error["location"].endswith(":test_json_format_sets_the_application_level:" + error["location"].rsplit(":", 1)[1])


@pytest.mark.parametrize(("setting", "level"), [("TRACE", logging.DEBUG), ("WARN", logging.WARNING), ("FATAL", logging.CRITICAL),
                                                ("INFO", logging.INFO)])
def test_application_levels_map_to_python_levels(root: logging.Logger, setting: str, level: int) -> None:
    applog.install({"AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": setting}, io.StringIO())
    assert root.level == level


def test_json_levels_are_rounded_to_lambda_levels(root: logging.Logger) -> None:
    stream = io.StringIO()
    applog.install({"AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": "DEBUG"}, stream)
    logging.log(25, "between info and warning")
    assert json.loads(stream.getvalue())["level"] == "INFO"


def test_error_entry_text_and_json() -> None:
    error = {"errorMessage": "boom", "errorType": "RuntimeError", "requestId": "r",
             "stackTrace": ['  File "/var/task/app.py", line 3, in handler\n    raise RuntimeError("boom")\n']}
    text = applog.error_entry(error, {})
    assert text.endswith("\n") and text.count("\n") == 1
    lines = text.rstrip("\n").split("\r")
    assert lines[:2] == ["[ERROR] RuntimeError: boom", "Traceback (most recent call last):"]
    assert lines[2] == '\u00a0\u00a0File "/var/task/app.py", line 3, in handler'
    assert lines[3] == '\u00a0\u00a0\u00a0\u00a0raise RuntimeError("boom")'
    entry = json.loads(applog.error_entry(error, {"AWS_LAMBDA_LOG_FORMAT": "JSON"}))
    assert entry["log_level"] == "ERROR" and entry["errorType"] == "RuntimeError" and entry["requestId"] == "r"
