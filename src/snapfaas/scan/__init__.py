"""`snapfaas scan`: find snapshot-unsafe initialization code before it ships.

State created while a module is imported (random values, UUIDs, timestamps, credentials,
connections, threads) is copied into every environment restored from a SnapStart snapshot. The
scanner parses Python source with `ast` (nothing is imported or executed), follows init-time code
(module level, class bodies, same-module functions called from there) and reports calls that
capture such state. Rules: `rules.RULES` and docs/scan-rules.md.

    result = scan_paths(["src/"])          # files and directories (*.py), or .zip packages
    result = scan_zip(package_bytes)       # a deployment package
    render(result, "sarif")                # or "json", "table"
"""

from __future__ import annotations

from snapfaas.scan.findings import Finding, ScanResult
from snapfaas.scan.publish import check_package, publish_scanner
from snapfaas.scan.report import render
from snapfaas.scan.rules import RULES, Rule, Severity
from snapfaas.scan.scanner import scan_paths, scan_source, scan_zip

__all__ = [
    "RULES", "Finding", "Rule", "ScanResult", "Severity", "check_package", "publish_scanner", "render",
    "scan_paths", "scan_source", "scan_zip",
]
