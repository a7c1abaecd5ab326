"""Which lines of a function's log a reader asked for (`snapfaas logs --since/--version/--request-id`).

Pure: no I/O. A line is ``<stamp> TAB <stream> TAB <message>`` (`worker.logs`). The stream
``YYYY/MM/DD/[<version>]<environment id>`` names the version. An environment runs one request at
a time, so a line belongs to request R when it comes, in R's stream, between ``START RequestId:
R`` and R's ``REPORT`` (inclusive); lines of init or restore (before the first START) belong to
no request. `LogFilter` keeps that per-stream state, so it can be fed lines as they arrive
(``--follow``) and gives the same answer as on the whole file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re

SINCE_RE = re.compile(r"^(?P<n>\d+)(?P<unit>[smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: float) -> float:
    """Epoch seconds of `value`: a duration back from `now` (``90s``, ``10m``, ``2h``, ``1d``) or an
    ISO 8601 time (``2026-12-01T10:00:00Z``). Raises ValueError with the accepted forms."""
    match = SINCE_RE.match(value.strip())
    if match:
        return now - int(match["n"]) * UNITS[match["unit"]]
    try:
        stamp = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"since {value!r}: expected a duration like 30s, 10m, 2h, 1d or an ISO 8601 time") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp()


def stamp_of(line: str) -> float | None:
    """Epoch seconds of a log line's stamp (None if the line has none)."""
    head = line.split("\t", 1)[0]
    try:
        return dt.datetime.fromisoformat(head.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def version_of(stream: str) -> str | None:
    """The version in a log stream name (``2026/12/01/[3]abc`` -> ``3``)."""
    start = stream.find("[")
    end = stream.find("]", start + 1)
    return stream[start + 1:end] if start >= 0 and end > start else None


@dataclasses.dataclass
class LogFilter:
    """Select lines by time (`since`, epoch seconds), `version` and `request_id`; None = any."""

    since: float | None = None
    version: str | None = None
    request_id: str | None = None
    _current: dict[str, str | None] = dataclasses.field(default_factory=dict)  # stream -> request running in it

    def accepts(self, line: str) -> bool:
        """Whether `line` is wanted. Feed every line in order: request membership is tracked."""
        parts = line.split("\t", 2)
        if len(parts) < 3:
            return self.version is None and self.request_id is None and self.since is None
        _, stream, message = parts
        request = self._track(stream, message)
        if self.since is not None:
            stamp = stamp_of(line)
            if stamp is None or stamp < self.since:
                return False
        if self.version is not None and version_of(stream) != self.version:
            return False
        return self.request_id is None or request == self.request_id

    def _track(self, stream: str, message: str) -> str | None:
        """The request `message` belongs to, updating the stream's running request."""
        if message.startswith("{"):
            return self._track_json(stream, message)
        if message.startswith("START RequestId: "):
            self._current[stream] = message[len("START RequestId: "):].split(" ", 1)[0].split("\t", 1)[0]
            return self._current[stream]
        request = self._current.get(stream)
        if message.startswith("REPORT RequestId: "):
            self._current[stream] = None
            return message[len("REPORT RequestId: "):].split("\t", 1)[0].strip()
        return request

    def _track_json(self, stream: str, message: str) -> str | None:
        """The same for a function with ``LogFormat: JSON``: platform records carry
        ``record.requestId``, the runtime's application records a top-level ``requestId``."""
        try:
            entry = json.loads(message)
        except ValueError:
            return self._current.get(stream)
        if not isinstance(entry, dict):
            return self._current.get(stream)
        record = entry.get("record") if isinstance(entry.get("record"), dict) else {}
        kind = entry.get("type")
        if kind == "platform.start":
            self._current[stream] = record.get("requestId")
            return self._current[stream]
        if kind == "platform.report":
            self._current[stream] = None
            return record.get("requestId")
        own = entry.get("requestId")
        return own if isinstance(own, str) else self._current.get(stream)

    def select(self, lines: list[str]) -> list[str]:
        return [line for line in lines if self.accepts(line)]
