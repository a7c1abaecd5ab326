"""Destinations for asynchronous invocation records (``DestinationConfig.OnSuccess/OnFailure``).

When an ``Event`` invocation finishes for good, snapfaas sends Lambda's *invocation record* to
the destination configured with ``PutFunctionEventInvokeConfig`` (or
``UpdateFunctionEventInvokeConfig``) for the function, version or alias it was invoked through.
``OnSuccess`` receives records of events that ran successfully; ``OnFailure`` receives records
of events that were dropped. Two kinds of destination are supported:

* **A Lambda function of this server** -
  ``arn:aws:lambda:<region>:<account>:function:<name>[:<version or alias>]`` (this server's
  region and account). The record is the payload of an asynchronous (``Event``) invocation of
  that function, which then follows its own retry rules. It must exist when the configuration
  is written, and must not be the configured function itself (Lambda's rules).
* **A file (operator queue)** - ``arn:aws:snapfaas:<region>:<account>:file/<name>``: each record
  is appended as one line of JSON to ``<data-dir>/destinations/<name>.jsonl`` (created 0600 on
  first use). ``<name>`` is 1-128 characters of ``A-Z a-z 0-9 _ . -``, not starting with a dot.
  The ARN uses the ``aws`` partition so that it passes Lambda's published ``DestinationArn``
  pattern, which SDKs and infrastructure tools check before sending it.

SQS, SNS, EventBridge and S3 destinations are refused with ``InvalidParameterValueException``.

The record (as on Lambda)::

    {"version": "1.0", "timestamp": "2026-11-30T10:00:00.000Z",
     "requestContext": {"requestId": "...", "functionArn": "arn:aws:lambda:...:function:f:$LATEST",
                        "condition": "Success | RetriesExhausted | EventAgeExceeded | VersionFailed | FunctionDeleted",
                        "approximateInvokeCount": 3},
     "requestPayload": <the event>,
     "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
     "responsePayload": <what the function returned or its error>}

``responseContext`` and ``responsePayload`` are present only when the function ran (an event
dropped for its age after throttles alone never ran). A record sent to a function destination
must fit the 256 KB ``Event`` payload limit: the response payload, then the request payload,
are replaced by ``null`` (and ``"truncated": true`` added to ``requestContext``) if needed.
Delivery is at least once: a daemon crash between delivery and removal from the queue repeats it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from snapfaas.errors import InvalidParameterValue
from snapfaas.worker.logs import utc_stamp

# Lambda's DestinationArn pattern, as its ValidationException quotes it.
DESTINATION_ARN_PATTERN = (r"$|kafka://([^.]([a-zA-Z0-9\-_.]{0,248}))|arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\-])+:"
                           r"((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1})?:(\d{12})?:(.*)")
DESTINATION_ARN_RE = re.compile(DESTINATION_ARN_PATTERN)
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
FUNCTION_ARN_RE = re.compile(r"arn:aws:lambda:(?P<region>[^:]+):(?P<account>\d{12}):function:"
                             r"(?P<name>[a-zA-Z0-9-_]{1,64})(:(?P<qualifier>\$LATEST|[a-zA-Z0-9-_]{1,128}))?")
FILE_ARN_RE = re.compile(r"arn:aws:snapfaas:(?P<region>[^:]+):(?P<account>\d{12}):file/(?P<name>.+)")


@dataclasses.dataclass(frozen=True)
class FunctionDestination:
    arn: str
    name: str
    qualifier: str | None


@dataclasses.dataclass(frozen=True)
class FileDestination:
    arn: str
    name: str

    def path(self, root: Path) -> Path:
        return root / f"{self.name}.jsonl"


Destination = FunctionDestination | FileDestination


def parse(arn: str, region: str, account: str) -> Destination:
    """The destination an ARN names, or `InvalidParameterValue` (pattern checked by the caller)."""
    fn = FUNCTION_ARN_RE.fullmatch(arn)
    if fn is not None and (fn["region"], fn["account"]) == (region, account):
        return FunctionDestination(arn, fn["name"], fn["qualifier"])
    file = FILE_ARN_RE.fullmatch(arn)
    if file is not None and (file["region"], file["account"]) == (region, account):
        name = file["name"]
        if not FILE_NAME_RE.fullmatch(name):
            raise InvalidParameterValue(
                f"The destination ARN {arn} is invalid: a file destination name is 1-128 characters of "
                "A-Z, a-z, 0-9, '_', '.', '-' and does not start with '.'."
            )
        return FileDestination(arn, name)
    if fn is not None or file is not None:
        raise InvalidParameterValue(f"The destination ARN {arn} is invalid.")
    raise InvalidParameterValue(
        f"The destination ARN {arn} is invalid. This server delivers to its own Lambda functions "
        f"(arn:aws:lambda:{region}:{account}:function:NAME) and to files "
        f"(arn:aws:snapfaas:{region}:{account}:file/NAME)."
    )


def _json_or_text(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode(errors="replace")


def invocation_record(
    *,
    request_id: str,
    function_arn: str,
    condition: str,
    invoke_count: int,
    request_payload: bytes | None,
    now: float,
    status: int | None = None,
    executed_version: str | None = None,
    function_error: str | None = None,
    response: bytes | None = None,
) -> dict[str, Any]:
    """Lambda's invocation record; the response part only if `status` is given (the code ran)."""
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": utc_stamp(now),
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": _json_or_text(request_payload),
    }
    if status is not None:
        context: dict[str, Any] = {"statusCode": status, "executedVersion": executed_version}
        if function_error:
            context["functionError"] = function_error
        record["responseContext"] = context
        record["responsePayload"] = _json_or_text(response)
    return record


def fit(record: dict[str, Any], limit: int) -> bytes:
    """The record as JSON of at most `limit` bytes, dropping payloads if needed (see module doc)."""
    data = json.dumps(record).encode()
    for key in ("responsePayload", "requestPayload"):
        if len(data) <= limit:
            break
        if record.get(key) is not None:
            record = {**record, key: None, "requestContext": {**record["requestContext"], "truncated": True}}
            data = json.dumps(record).encode()
    return data


def append_line(path: Path, line: bytes) -> None:
    """Append one record line to a file destination (its directory is created 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.rstrip(b"\n") + b"\n")
    finally:
        os.close(fd)
