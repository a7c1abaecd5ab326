"""Run the analyzer over files, directories and deployment zips; collect one `ScanResult`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from snapfaas.scan.analyzer import analyze_source, parse_error
from snapfaas.scan.findings import ScanResult
from snapfaas.scan.sources import SourceFile, decode, files_in_directory, files_in_zip, read_file


def scan_source(text: str, path: str = "<string>") -> ScanResult:
    """Scan one module given as text."""
    started = time.perf_counter()
    result = ScanResult(files=1, lines=_count_lines(text), roots=[path])
    result.findings, result.suppressed = analyze_source(text, path)
    result.seconds = time.perf_counter() - started
    return result


def scan_files(files: Iterable[SourceFile], result: ScanResult) -> None:
    for source in files:
        result.files += 1
        if source.data is None:
            result.findings.append(parse_error(source.path, OSError(source.error or "unreadable")))
            continue
        try:
            text = decode(source.data)
        except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
            result.findings.append(parse_error(source.path, ValueError(f"cannot decode source: {exc}")))
            continue
        result.lines += _count_lines(text)
        findings, suppressed = analyze_source(text, source.path)
        result.findings.extend(findings)
        result.suppressed.extend(suppressed)


def scan_paths(paths: Iterable[str | Path], include_deps: bool = False) -> ScanResult:
    """Scan files and directories (recursively, ``*.py``); a ``.zip`` path is scanned as a package."""
    started = time.perf_counter()
    result = ScanResult()
    for raw in paths:
        path = Path(raw)
        result.roots.append(path.as_posix())
        if path.is_dir():
            scan_files(files_in_directory(path, include_deps), result)
        elif path.suffix == ".zip" and path.is_file():
            try:
                data = path.read_bytes()
            except OSError as exc:
                scan_files([SourceFile(path.as_posix(), None, f"unreadable: {exc.strerror or exc}")], result)
                continue
            scan_files(_prefixed(files_in_zip(data, include_deps), path.as_posix() + "!/"), result)
        else:
            scan_files([read_file(path)], result)
    result.sort()
    result.seconds = time.perf_counter() - started
    return result


def scan_zip(data: bytes, include_deps: bool = False) -> ScanResult:
    """Scan the ``*.py`` files of a deployment package (paths are the archive member names)."""
    started = time.perf_counter()
    result = ScanResult(roots=["<zip>"])
    scan_files(files_in_zip(data, include_deps), result)
    result.sort()
    result.seconds = time.perf_counter() - started
    return result


def _prefixed(files: Iterable[SourceFile], prefix: str) -> Iterable[SourceFile]:
    for source in files:
        yield SourceFile(prefix + source.path, source.data, source.error)


def _count_lines(text: str) -> int:
    return text.count("\n") + (0 if not text or text.endswith("\n") else 1)
