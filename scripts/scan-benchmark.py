#!/usr/bin/env python3
"""Time `snapfaas scan` on a large package: by default the installed boto3 + botocore sources.

    .venv/bin/python scripts/scan-benchmark.py [PATH ...] [--runs N]

Prints files, lines, findings and seconds per run (and the best run). A measurement, not a test:
it never fails on time.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from snapfaas.scan import scan_paths


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{name} is not installed in this interpreter ({sys.executable})")
    return Path(next(iter(spec.submodule_search_locations)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="default: the installed boto3 and botocore")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    paths = args.paths or [package_dir("boto3"), package_dir("botocore")]
    print("scanning " + ", ".join(str(p) for p in paths))
    best = float("inf")
    for run in range(1, args.runs + 1):
        started = time.perf_counter()
        result = scan_paths(paths, include_deps=True)
        seconds = time.perf_counter() - started
        best = min(best, seconds)
        counts = ", ".join(f"{n} {s}" for s, n in result.counts().items())
        print(f"run {run}: {result.files} files, {result.lines} lines, {len(result.findings)} findings ({counts}), "
              f"{len(result.suppressed)} suppressed, {seconds:.2f} s ({result.lines / seconds:,.0f} lines/s)")
    print(f"best: {best:.2f} s")


if __name__ == "__main__":
    main()
