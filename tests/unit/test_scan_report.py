"""`snapfaas scan` reports: JSON and SARIF 2.1.0 structure, and the readable table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from snapfaas.scan import RULES, ScanResult, scan_paths, scan_source
from snapfaas.scan.report import render, render_json, render_sarif, render_table, to_sarif

SOURCE = '''import random, time, uuid
import snapshot_restore_py

ID = uuid.uuid4()
STARTED = time.time()
JITTER = random.random()  # snapfaas: ignore[SNAP002]
LATER = uuid.uuid1()


@snapshot_restore_py.register_after_restore
def renew():
    global LATER
    LATER = uuid.uuid1()
'''


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> ScanResult:
    root = tmp_path_factory.mktemp("src")
    (root / "app.py").write_text(SOURCE)
    (root / "broken.py").write_text("def broken(:\n")
    return scan_paths([root])


def test_json_structure(result: ScanResult) -> None:
    data = json.loads(render_json(result))
    assert data["tool"] == "snapfaas-scan" and data["files"] == 2 and data["lines"] > 0
    assert data["summary"] == {"error": 1, "warning": 1, "info": 1}
    assert [(f["rule"], f["line"]) for f in data["findings"]] == [("SNAP001", 4), ("SNAP003", 5), ("SNAP000", 1)]
    finding = data["findings"][0]
    assert finding["path"].endswith("/app.py") and (finding["line"], finding["column"]) == (4, 6)
    for key in ("severity", "code", "message", "why", "fix", "name", "kind", "scope", "targets", "end_line", "end_column"):
        assert finding[key] not in (None, ""), key
    assert finding["code"] == "ID = uuid.uuid4()" and finding["targets"] == ["ID"]
    suppressed = {(f["rule"], f["line"]): f["suppressed"] for f in data["suppressed"]}
    assert suppressed[("SNAP002", 6)] == "ignore comment on line 6"
    assert suppressed[("SNAP001", 7)].startswith("re-created by after-restore hook renew()")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def test_sarif_structure(result: ScanResult) -> None:
    sarif = json.loads(render_sarif(result))
    assert sarif["version"] == "2.1.0"
    assert sarif["$schema"].endswith("sarif-2.1.0.json")
    assert len(sarif["runs"]) == 1
    run = sarif["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "snapfaas-scan"
    rules = driver["rules"]
    assert [r["id"] for r in rules] == [*(rule.id for rule in RULES), "SNAP000"]
    for rule in rules:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"] and rule["help"]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
    assert run["results"], "findings become results"
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note", "none")
        assert res["message"]["text"]
        [location] = res["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"]
        region = physical["region"]
        assert _is_positive_int(region["startLine"]) and _is_positive_int(region["startColumn"])
        if "endLine" in region:
            assert region["endLine"] >= region["startLine"]
        if "endColumn" in region and region.get("endLine") == region["startLine"]:
            assert region["endColumn"] > region["startColumn"]
    levels = {(r["ruleId"], r["locations"][0]["physicalLocation"]["region"]["startLine"]): r["level"] for r in run["results"]}
    assert levels[("SNAP001", 4)] == "error" and levels[("SNAP003", 5)] == "warning" and levels[("SNAP000", 1)] == "note"
    suppressed = [r for r in run["results"] if r.get("suppressions")]
    assert {(r["ruleId"], r["suppressions"][0]["kind"]) for r in suppressed} == {("SNAP002", "inSource"), ("SNAP001", "inSource")}


def test_sarif_uris(tmp_path: Path) -> None:
    absolute = to_sarif(scan_source("import uuid\nX = uuid.uuid4()\n", "/abs/dir with space/app.py"))
    location = absolute["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "file:///abs/dir%20with%20space/app.py"}
    relative = to_sarif(scan_source("import uuid\nX = uuid.uuid4()\n", "./src/app.py"))
    location = relative["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "src/app.py", "uriBaseId": "%SRCROOT%"}


def test_table_lists_findings_rules_and_summary(result: ScanResult) -> None:
    text = render_table(result, width=400)  # the location column shows the full temporary path: no cut
    for needle in ("SNAP001", "SNAP003", "app.py:4:6", "ID = uuid.uuid4()", "why:", "fix:",
                   "3 findings (1 error, 1 warning, 1 info) in 2 files", "2 suppressed"):
        assert needle in text, needle
    assert "renew()" not in text
    with_suppressed = render_table(result, width=400, show_suppressed=True)
    assert "suppressed: re-created by after-restore hook renew()" in with_suppressed
    assert "suppressed: ignore comment on line 6" in with_suppressed


def test_table_without_findings() -> None:
    text = render(scan_source("def handler(event, context):\n    return 1\n"), "table")
    assert "No snapshot-unsafe init code found." in text and "0 findings in 1 file" in text


def test_unknown_format() -> None:
    with pytest.raises(ValueError):
        render(ScanResult(), "xml")
