"""Render a `ScanResult`: a readable table (rich), JSON, or SARIF 2.1.0 for editors and code-scanning UIs."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.parse
from pathlib import PurePosixPath
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from snapfaas.scan.findings import Finding, ScanResult
from snapfaas.scan.rules import BY_ID, PARSE_ERROR, RULES, Rule, Severity

TOOL_NAME = "snapfaas-scan"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
FORMATS = ("table", "json", "sarif")
_STYLES = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("snapfaas")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        return "0"


# -- JSON ---------------------------------------------------------------------------------------
def to_json(result: ScanResult) -> dict[str, Any]:
    return {
        "tool": TOOL_NAME,
        "version": _version(),
        "roots": result.roots,
        "files": result.files,
        "lines": result.lines,
        "seconds": round(result.seconds, 4),
        "summary": result.counts(),
        "findings": [f.to_dict() for f in result.findings],
        "suppressed": [f.to_dict() for f in result.suppressed],
    }


def render_json(result: ScanResult) -> str:
    return json.dumps(to_json(result), indent=2) + "\n"


# -- SARIF 2.1.0 ---------------------------------------------------------------------------------
def _sarif_rule(rule: Rule) -> dict[str, Any]:
    markdown = (f"**{rule.title}**\n\n{rule.why}\n\n**Fix:** {rule.fix}\n\n"
                f"Flagged:\n\n```python\n{rule.bad}```\n\nFixed:\n\n```python\n{rule.good}```\n")
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.why},
        "help": {"text": f"{rule.why} Fix: {rule.fix}", "markdown": markdown},
        "defaultConfiguration": {"level": rule.severity.sarif_level},
        "properties": {"tags": ["snapstart", "snapshot-safety"], "severity": str(rule.severity)},
    }


def _uri(path: str) -> tuple[str, str | None]:
    """(uri, uriBaseId): absolute paths become file URIs, relative ones are relative to %SRCROOT%."""
    if PurePosixPath(path).is_absolute():
        return "file://" + urllib.parse.quote(path, safe="/!:@._-~"), None
    return urllib.parse.quote(path.removeprefix("./"), safe="/!:@._-~"), "%SRCROOT%"


def _sarif_result(finding: Finding, index: dict[str, int]) -> dict[str, Any]:
    uri, base = _uri(finding.path)
    artifact: dict[str, Any] = {"uri": uri}
    if base:
        artifact["uriBaseId"] = base
    region: dict[str, Any] = {"startLine": finding.line, "startColumn": finding.col}
    if finding.end_line >= finding.line:
        region["endLine"] = finding.end_line
        if finding.end_col > 0 and (finding.end_line > finding.line or finding.end_col > finding.col):
            region["endColumn"] = finding.end_col
    rule = finding.definition
    text = f"{finding.message}. {rule.why} Fix: {rule.fix}"
    if finding.note:
        text += f" ({finding.note})"
    fingerprint = hashlib.sha256(f"{finding.rule}\0{finding.path}\0{finding.code}".encode()).hexdigest()[:32]
    properties: dict[str, Any] = {"severity": str(finding.severity), "scope": finding.scope, "api": finding.api,
                                  "code": finding.code, "targets": sorted(finding.targets), "kind": finding.kind}
    if finding.original_severity is not None:
        properties["originalSeverity"] = str(finding.original_severity)
    data: dict[str, Any] = {
        "ruleId": finding.rule,
        "ruleIndex": index[finding.rule],
        "level": finding.severity.sarif_level,
        "message": {"text": text},
        "locations": [{"physicalLocation": {"artifactLocation": artifact, "region": region}}],
        "partialFingerprints": {"snapfaasFinding/v1": fingerprint},
        "properties": properties,
    }
    if finding.suppressed:
        data["suppressions"] = [{"kind": "inSource", "justification": finding.suppressed}]
    return data


def to_sarif(result: ScanResult) -> dict[str, Any]:
    rules = [*RULES, PARSE_ERROR]
    index = {rule.id: i for i, rule in enumerate(rules)}
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": TOOL_NAME,
                "semanticVersion": _version(),
                "rules": [_sarif_rule(rule) for rule in rules],
            }},
            "columnKind": "unicodeCodePoints",
            "originalUriBaseIds": {"%SRCROOT%": {"description": {"text": "The directory the scan was run from."}}},
            "invocations": [{"executionSuccessful": True}],
            "results": [_sarif_result(f, index) for f in [*result.findings, *result.suppressed]],
            "properties": {"files": result.files, "lines": result.lines, "seconds": round(result.seconds, 4)},
        }],
    }


def render_sarif(result: ScanResult) -> str:
    return json.dumps(to_sarif(result), indent=2) + "\n"


# -- table -----------------------------------------------------------------------------------------
def print_table(result: ScanResult, console: Console, show_suppressed: bool = False) -> None:
    shown = [*result.findings, *(result.suppressed if show_suppressed else [])]
    if shown:
        table = Table(title="snapfaas scan: snapshot-unsafe init code", title_justify="left", show_lines=False)
        table.add_column("Severity", no_wrap=True)
        table.add_column("Rule", no_wrap=True)
        table.add_column("Location", overflow="fold")
        table.add_column("Code", overflow="fold")
        table.add_column("Finding", overflow="fold", ratio=1)
        for f in shown:
            severity = Text(str(f.severity), style=_STYLES[f.severity])
            detail = Text(f.message)
            if f.note:
                detail.append(f"\n{f.note}", style="dim")
            if f.suppressed:
                detail.append(f"\nsuppressed: {f.suppressed}", style="dim")
            table.add_row(severity, f.rule, f.location, Text(f.code, style="bold"), detail)
        console.print(table)
        hit = sorted({f.rule for f in shown})
        console.print()
        for rule_id in hit:
            rule = BY_ID[rule_id]
            console.print(f"[bold]{rule.id}[/] {escape(rule.name)}: {escape(rule.title)}")
            console.print(f"  [dim]why:[/] {escape(rule.why)}")
            console.print(f"  [dim]fix:[/] {escape(rule.fix)}")
        console.print()
    else:
        console.print("[green]No snapshot-unsafe init code found.[/]")
    console.print(escape(result.summary()))


def render_table(result: ScanResult, width: int = 160, show_suppressed: bool = False) -> str:
    buffer = io.StringIO()
    print_table(result, Console(file=buffer, width=width, no_color=True, force_terminal=False, highlight=False),
                show_suppressed)
    return buffer.getvalue()


def render(result: ScanResult, fmt: str) -> str:
    if fmt == "json":
        return render_json(result)
    if fmt == "sarif":
        return render_sarif(result)
    if fmt == "table":
        return render_table(result)
    raise ValueError(f"unknown format {fmt!r} (use one of {', '.join(FORMATS)})")
