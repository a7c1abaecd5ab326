"""Per-function execution logs (what CloudWatch Logs holds on Lambda).

One append-only file per function under ``<data-dir>/logs/<function>.log``; each line is::

    <ISO-8601 UTC timestamp> <TAB> <log stream> <TAB> <message>

A message never holds a newline; one that spans lines (a logged traceback) has them as
``\r``, which `read` keeps inside the entry.

The log stream is ``YYYY/MM/DD/[<version>]<environment id>`` as on Lambda.

Bounds: a file is rotated to ``<function>.log.1`` (replacing the previous generation) before
it would grow past `max_bytes`, so a function's log takes at most twice that on disk.
Writes leave the caller's thread (the event loop): `append` queues the lines for one writer
thread, which writes in batches on one timer per batch: woken by the first line queued while
it is idle, it waits until that line has waited `max_delay_s` (50 ms) and writes everything
queued in one go (one file write per function); then it lingers for `max_delay_s` (appends do
not wake it then) and writes what came meanwhile, until a linger ends with nothing queued and
it goes idle again. Under a steady stream of lines that is one thread wake-up per 50 ms,
whatever the rate (appends never re-arm a timer). So a SIGKILL of the daemon (or a power cut)
loses at most the last ~50 ms of log lines; a clean shutdown (`close`) writes everything.
`read`, `follow` and `delete` do not wait for the batch delay (they ask for an immediate
write). The queue holds at most `queue_bytes` (a function flooding stderr cannot make the
daemon buffer more), lines that do not fit are dropped and counted, and once the queue has
drained the writer adds one ``N log lines dropped`` line per function that lost some.
`read` and `delete` first wait for everything appended before them to be written.
`follow` hands each function's lines, as written (so up to `max_delay_s` after they were
appended), to readers that follow the log live: every line reaches them.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_QUEUE_BYTES = 8 * 1024 * 1024
FLUSH_WAIT_S = 30.0  # a reader waits at most this long for the writer (a stuck disk must not hang it forever)
LINE_OVERHEAD = 64  # bytes counted per queued line beyond its message (timestamp, stream, tabs)
MAX_DELAY_S = 0.050  # a queued line waits at most this long for the writer (and a SIGKILL loses at most this)


_second: tuple[int, str] = (-1, "")  # (epoch second, its "YYYY-MM-DDTHH:MM:SS." text): one strftime per second


def utc_stamp(epoch: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds (``2026-11-30T12:00:00.123Z``) of `epoch`, or of now."""
    global _second
    if epoch is None:
        epoch = time.time()
    millis = int(epoch * 1000)
    second, ms = divmod(millis, 1000)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, dt.datetime.fromtimestamp(second, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{cached[1]}{ms:03d}Z"


@dataclasses.dataclass(slots=True)
class _Batch:
    function: str
    stream: str
    stamp: str
    lines: list[str]


class LogStore:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES, queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 max_delay_s: float = MAX_DELAY_S) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.queue_bytes = queue_bytes
        self.max_delay_s = max_delay_s
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # `_cond`'s lock: `append` takes it directly (Condition.__enter__ is Python code)
        self._cond = threading.Condition(self._lock)
        self._pending: collections.deque[_Batch] = collections.deque()
        self._pending_bytes = 0
        self._dropped: dict[str, tuple[int, str]] = {}  # function -> (lines dropped, last stream)
        self._queued = 0  # batches accepted so far
        self._written = 0  # batches written (or failed) so far
        self._closed = False
        self._oldest = 0.0  # monotonic time the oldest queued batch was queued
        self._idle = True  # the writer waits for a first line (only then does `append` wake it)
        self._urgent = False  # a reader waits: write what is queued now, without the batch delay
        self._writer: threading.Thread | None = None
        self._files = threading.Lock()  # held while files change: writes, rotation, reads, deletes
        self._followers: dict[str, list[Callable[[list[str] | None], None]]] = {}  # guarded by _files

    def path(self, function: str) -> Path:
        return self.root / f"{function}.log"

    def rotated(self, function: str) -> Path:
        return self.root / f"{function}.log.1"

    # -- the caller's side -----------------------------------------------------------------
    def append(self, function: str, stream: str, lines: list[str]) -> None:
        """Queue `lines` (stamped now); never blocks on disk. Dropped if the queue is full."""
        if not lines:
            return
        batch = _Batch(function, stream, utc_stamp(), lines)
        size = sum(map(len, lines)) + LINE_OVERHEAD * len(lines)
        with self._lock:  # = with self._cond
            if self._closed:  # after close (shutdown): write in the caller's thread
                self._write([batch])
                return
            if self._pending and self._pending_bytes + size > self.queue_bytes:
                count, _ = self._dropped.get(function, (0, stream))
                self._dropped[function] = (count + len(lines), stream)
                return
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(batch)
            self._pending_bytes += size
            self._queued += 1
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="log-writer", daemon=True)
                self._writer.start()
            if self._idle:  # while it batches, the writer wakes up by itself
                self._cond.notify_all()

    def flush(self) -> None:
        """Wait until everything appended before this call is written (bounded by `FLUSH_WAIT_S`)."""
        with self._cond:
            target = self._queued
            if self._written < target:
                self._urgent = True
                self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._written >= target or self._writer is None, FLUSH_WAIT_S):
                logger.warning("log flush gave up after %.0f s: the log writer is behind", FLUSH_WAIT_S)

    def read(self, function: str, limit: int | None = None) -> list[str]:
        """The function's log lines, oldest first (the rotated generation, then the current
        file); the last `limit` if given. Sees every line appended before the call."""
        self.flush()
        with self._files:
            return self._read_locked(function, limit)

    def _read_locked(self, function: str, limit: int | None) -> list[str]:
        current = self._read_lines(self.path(function))
        if limit and len(current) >= limit:
            return current[-limit:]
        lines = self._read_lines(self.rotated(function)) + current
        return lines[-limit:] if limit else lines

    @staticmethod
    def _read_lines(path: Path) -> list[str]:
        try:
            with open(path, errors="replace", newline="") as file:  # "\r" stays inside an entry
                text = file.read()
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        return lines[:-1] if lines[-1] == "" else lines

    def follow(self, function: str, deliver: Callable[[list[str] | None], None],
               limit: int | None = None) -> tuple[list[str], Callable[[], None]]:
        """The log as `read` gives it, and from then on every batch of `function`'s lines once
        written, handed to `deliver` on the writer thread (it must only pass them on), then
        None when the store closes. Every line is either in the returned list or delivered,
        exactly once. Returns ``(lines, stop)``; `stop` ends the delivery."""
        self.flush()
        with self._files:
            lines = self._read_locked(function, limit)
            self._followers.setdefault(function, []).append(deliver)

        def stop() -> None:
            with self._files:
                listeners = self._followers.get(function, [])
                if deliver in listeners:
                    listeners.remove(deliver)
                if not listeners:
                    self._followers.pop(function, None)
        return lines, stop

    def delete(self, function: str) -> None:
        self.flush()
        with self._files:
            self.path(function).unlink(missing_ok=True)
            self.rotated(function).unlink(missing_ok=True)

    def close(self) -> None:
        """Write what is queued and stop the writer; later appends are written synchronously."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join(FLUSH_WAIT_S)
        with self._files:
            followers, self._followers = self._followers, {}
        for listeners in followers.values():
            for deliver in listeners:
                deliver(None)

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        lingered = False  # the last batch was written: wait `max_delay_s` for more before going idle
        while True:
            with self._cond:
                if lingered:
                    self._linger()
                if not (self._pending or self._dropped or self._closed):
                    self._urgent = False  # a reader that asked meanwhile was served by the last write
                    self._idle = True
                    self._cond.wait_for(lambda: self._pending or self._dropped or self._closed)
                    self._idle = False
                    lingered = False
                if not lingered:  # the first lines since the writer started or idled: one timer
                    self._wait_batch()
                self._urgent = False
                if not self._pending and not self._dropped:  # closed and drained
                    self._writer = None
                    self._cond.notify_all()
                    return
                batches = list(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                dropped, self._dropped = self._dropped, {}
                upto = self._queued
            notices = [_Batch(f, stream, utc_stamp(), [f"[snapfaas] {count} log lines dropped: the function logged faster than its log is written\n"])
                       for f, (count, stream) in dropped.items()]
            try:
                self._write(batches + notices)
            except Exception:  # noqa: BLE001 - the writer must survive anything: every flush waits for it
                logger.exception("log writer failed at step 'write': %d batch(es) lost", len(batches))
            with self._cond:
                self._written = upto
                self._cond.notify_all()
            lingered = True

    def _wait_batch(self) -> None:
        """With `_cond` held and lines queued: wait until the oldest queued line has waited
        `max_delay_s` (one timer: appends meanwhile do not wake the writer)."""
        self._wait_until(self._oldest + self.max_delay_s)

    def _linger(self) -> None:
        """With `_cond` held, right after a write: wait `max_delay_s` (not idle, so appends do
        not wake the writer). A line queued meanwhile was queued after the write, so it waits
        at most `max_delay_s`."""
        self._wait_until(time.monotonic() + self.max_delay_s)

    def _wait_until(self, due: float) -> None:
        """With `_cond` held: wait until monotonic time `due`, unless the store closes or a
        reader asks for a write."""
        while not (self._closed or self._urgent):
            now = time.monotonic()
            if now >= due:
                return
            self._cond.wait(due - now)

    def _write(self, batches: list[_Batch]) -> None:
        by_function: dict[str, list[bytes]] = {}
        for batch in batches:
            encoded = by_function.setdefault(batch.function, [])
            prefix = f"{batch.stamp}\t{batch.stream}\t"
            encoded.extend(f"{prefix}{line.rstrip(chr(10))}\n".encode(errors="replace") for line in batch.lines)
        with self._files:
            for function, lines in by_function.items():
                try:
                    self._append_file(function, lines)
                except OSError as exc:  # a full or broken disk loses these lines, not the daemon
                    logger.warning("log write failed at step 'append' for %s: %s", function, exc)
                    continue
                listeners = self._followers.get(function)
                if listeners:
                    text = [line.decode(errors="replace").removesuffix("\n") for line in lines]
                    for deliver in listeners:
                        deliver(text)

    def _append_file(self, function: str, lines: list[bytes]) -> None:
        """Append `lines`, rotating before the file would pass `max_bytes` (a single line
        longer than that still goes, alone, into a fresh file)."""
        path = self.path(function)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            chunk: list[bytes] = []
            chunk_bytes = 0
            for line in lines:
                if size + chunk_bytes + len(line) > self.max_bytes and size + chunk_bytes > 0:
                    if chunk:
                        os.write(fd, b"".join(chunk))
                        chunk, chunk_bytes = [], 0
                    os.close(fd)
                    fd = -1
                    os.replace(path, self.rotated(function))
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    size = 0
                chunk.append(line)
                chunk_bytes += len(line)
            if chunk:
                os.write(fd, b"".join(chunk))
        finally:
            if fd >= 0:
                os.close(fd)
