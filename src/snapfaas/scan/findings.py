"""What a scan produces: findings (one flagged expression each) and the result of a whole scan."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from snapfaas.scan.rules import BY_ID, Rule, Severity, threshold


@dataclasses.dataclass
class Finding:
    rule: str  # rule id, e.g. SNAP001
    severity: Severity
    path: str  # as given (files/directories) or the archive member name (zips), posix separators
    line: int  # 1-based
    col: int  # 1-based, in characters
    end_line: int
    end_col: int
    code: str  # the flagged source, first line, shortened
    message: str  # what was found, where
    api: str = ""  # the fully qualified call (or variable) that triggered the rule
    scope: str = ""  # "module level", "class body of C", "function f() called at init"
    targets: frozenset[str] = frozenset()  # module-level names the state is stored in
    suppressed: str | None = None  # why it is not reported (ignore comment, after-restore hook)
    note: str | None = None  # e.g. why the severity was downgraded
    original_severity: Severity | None = None

    @property
    def kind(self) -> str:
        return "parse-error" if self.rule == "SNAP000" else "snapshot-safety"

    @property
    def definition(self) -> Rule:
        return BY_ID[self.rule]

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    def to_dict(self) -> dict[str, Any]:
        rule = self.definition
        data: dict[str, Any] = {
            "rule": self.rule, "name": rule.name, "kind": self.kind, "severity": str(self.severity),
            "path": self.path, "line": self.line, "column": self.col, "end_line": self.end_line,
            "end_column": self.end_col, "code": self.code, "api": self.api, "scope": self.scope,
            "message": self.message, "why": rule.why, "fix": rule.fix, "targets": sorted(self.targets),
        }
        if self.note:
            data["note"] = self.note
        if self.original_severity is not None:
            data["original_severity"] = str(self.original_severity)
        if self.suppressed:
            data["suppressed"] = self.suppressed
        return data

    def log_line(self) -> str:
        return f"SCAN {self.severity} {self.rule} {self.path}:{self.line} {self.message}"


@dataclasses.dataclass
class ScanResult:
    findings: list[Finding] = dataclasses.field(default_factory=list)  # reported
    suppressed: list[Finding] = dataclasses.field(default_factory=list)  # ignored by comment or hook
    files: int = 0
    lines: int = 0
    seconds: float = 0.0
    roots: list[str] = dataclasses.field(default_factory=list)  # what was scanned (paths or "<zip>")

    def extend(self, other: ScanResult) -> None:
        self.findings.extend(other.findings)
        self.suppressed.extend(other.suppressed)
        self.files += other.files
        self.lines += other.lines

    def sort(self) -> None:
        key = lambda f: (f.path, f.line, f.col, f.rule)  # noqa: E731
        self.findings.sort(key=key)
        self.suppressed.sort(key=key)

    def counts(self) -> dict[str, int]:
        counter = Counter(str(f.severity) for f in self.findings)
        return {str(s): counter.get(str(s), 0) for s in sorted(Severity, reverse=True)}

    def at_or_above(self, level: str | Severity | None) -> list[Finding]:
        """Findings at or above `level`; none for None / "never"."""
        limit = threshold(level)
        if limit is None:
            return []
        return [f for f in self.findings if f.severity >= limit]

    def exit_code(self, fail_on: str | Severity | None) -> int:
        return 1 if self.at_or_above(fail_on) else 0

    def summary(self) -> str:
        counts = self.counts()
        parts = [f"{n} {name}{'s' if n != 1 else ''}" for name, n in counts.items() if n]
        total = len(self.findings)
        text = f"{total} finding{'s' if total != 1 else ''}"
        if parts:
            text += " (" + ", ".join(parts) + ")"
        text += f" in {self.files} file{'s' if self.files != 1 else ''}, {self.lines} lines, {self.seconds:.2f} s"
        if self.suppressed:
            text += f"; {len(self.suppressed)} suppressed"
        return text
