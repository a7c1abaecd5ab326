"""System log lines in the JSON log format (snapfaas.worker.platform_log)."""

from __future__ import annotations

import dataclasses
import json

from snapfaas.registry.model import FunctionVersion
from snapfaas.worker.platform_log import render

TEXT = FunctionVersion("f", "$LATEST", "python3.11", "app.handler", "arn:aws:iam::000000000000:role/r", "d", "s", 1)
JSON = dataclasses.replace(TEXT, log_format="JSON", application_log_level="INFO", system_log_level="INFO")
SNAP = dataclasses.replace(JSON, version="1", snap_start="PublishedVersions")

START = "START RequestId: r-1 Version: $LATEST\n"
END = "END RequestId: r-1\n"
REPORT = ("REPORT RequestId: r-1\tDuration: 2.50 ms\tBilled Duration: 150 ms\tMemory Size: 128 MB\tMax Memory Used: 40 MB\t"
          "Init Duration: 146.30 ms\t\n")


def test_text_format_is_left_alone() -> None:
    assert render([START, "user output\n", END, REPORT], TEXT) == [START, "user output\n", END, REPORT]


def test_json_format_records_lifecycle_events() -> None:
    out = [json.loads(line) for line in render(["INIT_START Runtime Version: python3.11.snapfaas\n",
                                                 "INIT_REPORT Init Duration: 146.30 ms\tPhase: init\tStatus: success\n",
                                                 START, END, REPORT], JSON)]
    assert [o["type"] for o in out] == ["platform.initStart", "platform.initReport", "platform.start",
                                        "platform.runtimeDone", "platform.report"]
    assert out[0]["record"] == {"initializationType": "on-demand", "phase": "init", "runtimeVersion": "python3.11.snapfaas"}
    assert out[1]["record"] == {"initializationType": "on-demand", "phase": "init", "status": "success", "metrics": {"durationMs": 146.3}}
    assert out[2]["record"] == {"requestId": "r-1", "version": "$LATEST"}
    assert out[3]["record"] == {"requestId": "r-1", "status": "success"}
    assert out[4]["record"] == {"requestId": "r-1", "status": "success", "metrics": {
        "durationMs": 2.5, "billedDurationMs": 150, "memorySizeMB": 128, "maxMemoryUsedMB": 40, "initDurationMs": 146.3}}
    assert all(o["time"].endswith("Z") for o in out)


def test_json_errors_and_restores() -> None:
    failed = REPORT.replace("\t\n", "\tStatus: error\tError Type: Runtime.ExitError\t\n")
    done, report = (json.loads(line) for line in render([END, failed], JSON))
    assert done["record"] == {"requestId": "r-1", "status": "error", "errorType": "Runtime.ExitError"}
    assert report["record"]["status"] == "error" and report["record"]["errorType"] == "Runtime.ExitError"
    restore = json.loads(render(["RESTORE_REPORT Restore Duration: 80.25 ms\n"], SNAP)[0])
    assert restore == {"time": restore["time"], "type": "platform.restoreReport",
                       "record": {"status": "success", "metrics": {"durationMs": 80.25}}}
    report_line = ("REPORT RequestId: r-2\tDuration: 3.00 ms\tBilled Duration: 30 ms\tMemory Size: 128 MB\tMax Memory Used: 40 MB\t"
                   "Restore Duration: 80.25 ms\tBilled Restore Duration: 27 ms\t\n")
    metrics = json.loads(render([report_line], SNAP)[0])["record"]["metrics"]
    assert metrics["restoreDurationMs"] == 80.25 and metrics["billedRestoreDurationMs"] == 27


def test_system_log_level_filters() -> None:
    warn = dataclasses.replace(JSON, system_log_level="WARN")
    out = render([START, "WARNING SnapStart: something\n", "user output\n", END, REPORT], warn)
    assert [json.loads(line)["type"] if line.startswith("{") else line for line in out] == ["platform.warning", "user output\n"]
    debug = dataclasses.replace(JSON, system_log_level="DEBUG")
    assert len(render([START, END, REPORT], debug)) == 3
