"""Per-function execution logs (what CloudWatch Logs holds on Lambda).

One append-only file per function under ``<data-dir>/logs/<function>.log``; each line is::

    <ISO-8601 UTC timestamp> <TAB> <log stream> <TAB> <message>

The log stream is ``YYYY/MM/DD/[<version>]<environment id>`` as on Lambda.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path


def utc_stamp() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, function: str) -> Path:
        return self.root / f"{function}.log"

    def append(self, function: str, stream: str, lines: list[str]) -> None:
        if not lines:
            return
        stamp = utc_stamp()
        text = "".join(f"{stamp}\t{stream}\t{line.rstrip(chr(10))}\n" for line in lines)
        fd = os.open(self.path(function), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, text.encode(errors="replace"))
        finally:
            os.close(fd)

    def read(self, function: str, limit: int | None = None) -> list[str]:
        try:
            lines = self.path(function).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return lines[-limit:] if limit else lines

    def delete(self, function: str) -> None:
        self.path(function).unlink(missing_ok=True)
