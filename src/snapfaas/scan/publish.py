"""Scanning at deployment: before a SnapStart version is snapshotted (server) and before
`snapfaas deploy --snapstart` uploads a package (CLI).

Server wiring (`SnapshotManager.scanner` is awaited before the snapshot is taken; a non-empty
list fails the publish with those reasons)::

    snapshots.scanner = publish_scanner(artifacts, logs, cfg.scan_block_on)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from snapfaas.scan.findings import Finding, ScanResult
from snapfaas.scan.rules import Severity, threshold
from snapfaas.scan.scanner import scan_zip

if TYPE_CHECKING:
    from rich.console import Console

    from snapfaas.registry.artifacts import ArtifactStore
    from snapfaas.registry.model import FunctionVersion
    from snapfaas.worker.logs import LogStore

logger = logging.getLogger(__name__)
MAX_BLOCKING_REASONS = 10  # StateReason stays readable; the log has every finding


def blocking_reason(finding: Finding) -> str:
    return f"{finding.rule} {finding.path}:{finding.line} {finding.definition.title}"


def publish_scanner(artifacts: ArtifactStore, logs: LogStore,
                    block_on: str | Severity | None) -> Callable[[FunctionVersion], Awaitable[list[str]]]:
    """A `SnapshotManager.scanner`: scan the version's code package, log every finding to the
    function's log (stream ``scan/[<version>]``), and return the findings at or above
    `block_on` (none when `block_on` is None or "never"), which then block the publish.

    A scanner failure is logged and never blocks a publish.
    """
    limit = threshold(block_on)

    async def scan_version(version: FunctionVersion) -> list[str]:
        stream = f"scan/[{version.version}]"
        try:
            data = await asyncio.to_thread(artifacts.read_zip, version.code_digest)
            result: ScanResult = await asyncio.to_thread(scan_zip, data)
        except Exception as exc:  # a missing artifact or a scanner bug must not decide the publish
            logger.exception("snapshot safety scan of %s:%s failed", version.name, version.version)
            await asyncio.to_thread(logs.append, version.name, stream,
                                    [f"SCAN info SNAP000 - scan failed: {type(exc).__name__}: {exc}"])
            return []
        lines = [f.log_line() for f in result.findings]
        if lines:
            await asyncio.to_thread(logs.append, version.name, stream, lines)
        logger.info("snapshot safety scan of %s:%s: %s", version.name, version.version, result.summary())
        if limit is None:
            return []
        blocking = [blocking_reason(f) for f in result.findings if f.severity >= limit]
        if len(blocking) > MAX_BLOCKING_REASONS:
            blocking = [*blocking[:MAX_BLOCKING_REASONS], f"and {len(blocking) - MAX_BLOCKING_REASONS} more (see the function log)"]
        return blocking

    return scan_version


def check_package(package: bytes, fail_on: str | None, console: Console) -> list[Finding]:
    """`snapfaas deploy --snapstart`: scan the package about to be uploaded and print the findings.

    Returns the findings at or above `fail_on` (the caller refuses to deploy when there are any).
    """
    from snapfaas.scan.report import print_table

    result = scan_zip(package)
    if result.findings:
        print_table(result, console)
    else:
        console.print(f"[dim]snapshot safety scan: {result.summary()}[/]")
    return result.at_or_above(fail_on)
