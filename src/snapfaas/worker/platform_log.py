"""System (platform) log lines in the function's log format.

The worker writes its lifecycle lines (``INIT_START``, ``INIT_REPORT``, ``RESTORE_START``,
``RESTORE_REPORT``, ``START``, ``END``, ``REPORT``, ``SNAPSHOT_REPORT``, ``WARNING ...``) in
Lambda's Text format. For a function with ``LogFormat: JSON`` `render` turns each into the JSON
record Lambda writes (``{"time", "type": "platform.<event>", "record": {...}}``, the Telemetry
API's schema) and drops those below the function's ``SystemLogLevel`` (lifecycle events are
INFO, warnings WARN). Lines it does not know stay as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from snapfaas.registry.model import FunctionVersion
from snapfaas.worker.logs import utc_stamp

SYSTEM_LEVELS = {"DEBUG": 0, "INFO": 1, "WARN": 2}
FIELD = re.compile(r"([A-Z][A-Za-z ]*?): ([^\t]*)")
MS = re.compile(r"([0-9.]+) ms")


def fields_of(text: str) -> dict[str, str]:
    """The ``Key: value`` fields of a platform line after its head (tab-separated)."""
    return {key: value.strip() for key, value in FIELD.findall(text)}


def _ms(value: str | None) -> float | None:
    match = MS.fullmatch(value or "")
    return float(match.group(1)) if match else None


def _number(value: float | None) -> float | int | None:
    return None if value is None else (int(value) if float(value).is_integer() else value)


def _status(fields: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"status": fields.get("Status", "success")}
    if "Error Type" in fields:
        out["errorType"] = fields["Error Type"]
    return out


def _metrics(fields: dict[str, str], names: dict[str, str]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for text_name, json_name in names.items():
        value = fields.get(text_name)
        if value is None:
            continue
        number = _ms(value)
        if number is None and value.endswith(" MB"):
            number = float(value[:-3])
        if number is not None:
            metrics[json_name] = _number(number)
    return metrics


def init_report(duration_ms: float, status: str = "success", error_type: str | None = None) -> str:
    """Lambda's ``INIT_REPORT`` line of an init phase that ended with `status` (success, error,
    timeout); an error names its type."""
    line = f"INIT_REPORT Init Duration: {duration_ms:.2f} ms\tPhase: init\tStatus: {status}"
    return f"{line}\tError Type: {error_type}\n" if error_type else f"{line}\n"


REPORT_METRICS = {
    "Duration": "durationMs", "Billed Duration": "billedDurationMs", "Memory Size": "memorySizeMB",
    "Max Memory Used": "maxMemoryUsedMB", "Init Duration": "initDurationMs", "Restore Duration": "restoreDurationMs",
    "Billed Restore Duration": "billedRestoreDurationMs",
}


PLATFORM_HEADS = frozenset({"START", "END", "REPORT", "INIT_START", "INIT_REPORT", "RESTORE_START", "RESTORE_REPORT",
                            "SNAPSHOT_REPORT", "WARNING"})


def event_of(line: str, version: FunctionVersion) -> tuple[str, dict[str, Any], str] | None:
    """(type, record, system level) of a Text platform line, or None for another line."""
    text = line.rstrip("\n")
    head, _, rest = text.partition(" ")
    if head not in PLATFORM_HEADS:  # a function's own line: not parsed
        return None
    fields = fields_of(rest)
    init_type = "snap-start" if "Phase: snapshot" in rest or version.uses_snapshot else "on-demand"
    if head == "START":
        return "platform.start", {"requestId": fields.get("RequestId", "").split(" ")[0], "version": fields.get("Version", version.version)}, "INFO"
    if head == "END":
        return "platform.runtimeDone", {"requestId": fields.get("RequestId", ""), "status": "success"}, "INFO"
    if head == "REPORT":
        record = {"requestId": fields.get("RequestId", ""), "metrics": _metrics(fields, REPORT_METRICS)}
        return "platform.report", {**record, **_status(fields)}, "INFO"
    if head == "INIT_START":
        return "platform.initStart", {"initializationType": init_type, "phase": "init",
                                      "runtimeVersion": fields.get("Runtime Version", "")}, "INFO"
    if head == "INIT_REPORT":
        return "platform.initReport", {"initializationType": init_type, "phase": fields.get("Phase", "init"), **_status(fields),
                                       "metrics": _metrics(fields, {"Init Duration": "durationMs"})}, "INFO"
    if head == "RESTORE_START":
        return "platform.restoreStart", {"runtimeVersion": fields.get("Runtime Version", "")}, "INFO"
    if head == "RESTORE_REPORT":
        record = {**_status(fields), "metrics": _metrics(fields, {"Restore Duration": "durationMs"})}
        if "error" in record["status"] and "errorType" not in record:
            record["errorType"] = rest.partition("Status: error\t")[2] or "Runtime.Unknown"
        return "platform.restoreReport", record, "INFO"
    if head == "SNAPSHOT_REPORT":
        return "platform.snapshotReport", {"snapshot": fields.get("Snapshot", ""),
                                           "metrics": _metrics(fields, {"Checkpoint Duration": "durationMs"})}, "INFO"
    if head == "WARNING":
        return "platform.warning", {"message": rest}, "WARN"
    return None


def render(lines: Iterable[str], version: FunctionVersion) -> list[str]:
    """`lines` as the function's log format wants them (see the module docstring)."""
    lines = list(lines)
    if version.log_format != "JSON":
        return lines
    threshold = SYSTEM_LEVELS.get(version.system_log_level or "INFO", 1)
    out: list[str] = []
    events = [event_of(line, version) for line in lines]
    for index, (line, event) in enumerate(zip(lines, events)):
        if event is None:
            out.append(line)
            continue
        kind, record, level = event
        if SYSTEM_LEVELS[level] < threshold:
            continue
        if kind == "platform.runtimeDone":  # its status is the REPORT's that follows it
            following = events[index + 1] if index + 1 < len(events) else None
            if following is not None and following[0] == "platform.report":
                record = {**record, **_status_of(following[1])}
        out.append(json.dumps({"time": utc_stamp(), "type": kind, "record": record}) + "\n")
    return out


def _status_of(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in ("status", "errorType") if key in record}
