"""Bounded decoding of what an environment writes: frames on its stdout, log lines on its stderr.

Everything here is synchronous, pure bookkeeping over byte chunks (the reader tasks in
`environment` do the I/O around it), and every buffer has a bound that nothing the function
writes can raise:

- `FrameDecoder` holds at most `MAX_HEADER_BYTES` of an unfinished frame header plus the
  payload of the frame being read, whose size it checks against the response limit *before*
  buffering a byte of it; a frame over the limit or a malformed header raises `FrameRejected`.
- `LineSplitter` holds at most `MAX_LINE_BYTES` of an unfinished line; longer lines are cut
  into pieces of that size (Lambda's cap on one log event is 256 KiB).
- `TailBuffer` keeps only the last `limit` characters of the lines it is given (the
  ``LogType=Tail`` capture).
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from snapfaas.runtime import protocol

MAX_HEADER_BYTES = 64 * 1024  # a runtime header is a few hundred bytes
MAX_LINE_BYTES = 256 * 1024  # Lambda's maximum log event size
FRAME_PREFIX = protocol.MAGIC + b" "


@dataclasses.dataclass
class Frame:
    kind: str
    header: dict[str, Any]
    payload: bytes


class FrameRejected(Exception):
    """The runtime sent a frame the worker refuses to read: a payload size over the limit
    (`oversized`) or a malformed header. The frame stream is over; the environment must end."""

    def __init__(self, reason: str, size: int | None = None, limit: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.size = size
        self.limit = limit

    @property
    def oversized(self) -> bool:
        return self.size is not None and self.limit is not None and self.size > self.limit


def _prefix_tail(buffer: bytearray) -> int:
    """Length of the longest suffix of `buffer` that is a proper prefix of `FRAME_PREFIX`
    (a frame header split across two reads)."""
    for length in range(min(len(FRAME_PREFIX) - 1, len(buffer)), 0, -1):
        if buffer.endswith(FRAME_PREFIX[:length]):
            return length
    return 0


class FrameDecoder:
    """Incremental decoder of the runtime -> worker stream (`protocol`'s framing).

    `feed` returns, in order, stray output (bytes user code wrote to fd 1, not part of a
    frame) and complete `Frame`s. Raises `FrameRejected` for a header whose ``n`` is not a
    non-negative integer, or exceeds `max_payload`, or a header line over `max_header` bytes;
    the decoder is then unusable (the stream cannot be resynchronised).
    """

    def __init__(self, max_payload: int, max_header: int = MAX_HEADER_BYTES) -> None:
        self.max_payload = max_payload
        self.max_header = max_header
        self._buffer = bytearray()
        self._in_header = False
        self._header: dict[str, Any] | None = None  # set while its payload is being read

    def feed(self, data: bytes) -> list[bytes | Frame]:
        try:
            return self._feed(data)
        except FrameRejected:
            self._buffer = bytearray()  # nothing more is read from this stream
            raise

    def _feed(self, data: bytes) -> list[bytes | Frame]:
        self._buffer += data
        out: list[bytes | Frame] = []
        while True:
            if self._header is not None:
                need = self._header["n"]
                if len(self._buffer) < need:
                    return out
                out.append(Frame(self._header["t"], self._header, bytes(self._buffer[:need])))
                del self._buffer[:need]
                self._header = None
            elif self._in_header:
                end = self._buffer.find(b"\n")
                if end < 0:
                    if len(self._buffer) > self.max_header:
                        raise FrameRejected(f"a frame header longer than {self.max_header} bytes")
                    return out
                header = self.parse(bytes(self._buffer[:end]))
                del self._buffer[: end + 1]
                self._in_header = False
                if header["n"]:
                    self._header = header
                else:
                    out.append(Frame(header["t"], header, b""))
            else:
                at = self._buffer.find(FRAME_PREFIX)
                if at >= 0:
                    if at:
                        out.append(bytes(self._buffer[:at]))
                    del self._buffer[: at + len(FRAME_PREFIX)]
                    self._in_header = True
                    continue
                stray = len(self._buffer) - _prefix_tail(self._buffer)
                if stray:
                    out.append(bytes(self._buffer[:stray]))
                    del self._buffer[:stray]
                return out

    def parse(self, text: bytes) -> dict[str, Any]:
        """The header after `FRAME_PREFIX`, validated: a JSON object with a string ``t`` and an
        integer ``n`` in [0, max_payload]."""
        try:  # decoded first: json.loads of bytes sniffs their encoding in Python code on every frame
            header = json.loads(text.decode())
        except ValueError:  # UnicodeDecodeError included
            header = None
        if not isinstance(header, dict) or not isinstance(header.get("t"), str):
            raise FrameRejected(f"a malformed frame header ({text[:100]!r})")
        size = header.get("n")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FrameRejected(f"a frame header with an invalid payload size ({str(size)[:40]!r})")
        if size > self.max_payload:
            raise FrameRejected(f"a frame of {size} bytes, over the {self.max_payload}-byte limit", size, self.max_payload)
        return header


def _cut(data: bytearray | bytes, limit: int) -> int:
    """Where to cut `data` into a piece of at most `limit` bytes without splitting a UTF-8
    sequence (unless the data is not UTF-8, then at `limit`)."""
    cut = limit
    for back in range(4):
        if cut - back <= 0:
            break
        if data[cut - back] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return cut - back
    return cut


class LineSplitter:
    """Splits a byte stream into lines of at most `max_line` bytes (newline excluded).

    Every returned line ends with ``b"\\n"``; a longer line comes out as several pieces, each
    with its own newline. `flush` returns the unfinished last line (at EOF)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if self._partial:
                self._partial += data[start:end]
                self._emit(self._partial, out)
                self._partial = bytearray()
            else:
                self._emit(data[start:end], out)
            start = end + 1
        self._partial += data[start:]
        while len(self._partial) > self.max_line:
            cut = _cut(self._partial, self.max_line)
            out.append(bytes(self._partial[:cut]) + b"\n")
            del self._partial[:cut]
        return out

    def _emit(self, line: bytes | bytearray, out: list[bytes]) -> None:
        while len(line) > self.max_line:
            cut = _cut(line, self.max_line)
            out.append(bytes(line[:cut]) + b"\n")
            line = line[cut:]
        out.append(bytes(line) + b"\n")

    def flush(self) -> list[bytes]:
        if not self._partial:
            return []
        line, self._partial = bytes(self._partial), bytearray()
        return [line + b"\n"]


class TailBuffer:
    """The last `limit` characters of a sequence of lines (a ring buffer of lines whose first
    line may be cut at its start). Holds O(limit) characters whatever it is fed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lines: collections.deque[str] = collections.deque()
        self._size = 0

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            self._lines.append(line)
            self._size += len(line)
        while self._lines and self._size - len(self._lines[0]) >= self.limit:
            self._size -= len(self._lines.popleft())
        if self._size > self.limit:
            first = self._lines[0]
            keep = len(first) - (self._size - self.limit)
            self._lines[0] = first[-keep:] if keep > 0 else ""
            self._size = self.limit

    def lines(self) -> list[str]:
        return list(self._lines)
