"""Framing of the worker <-> runtime channel (the Runtime API semantics over stdio pipes).

The channel is the environment's stdin (worker -> runtime) and stdout (runtime -> worker):
pipes survive a CRIU checkpoint/restore of the container (runc re-attaches them), which a TCP
connection to the worker would not. Each message is one frame::

    +-----------+-----+--------------------------------+----+-----------------+
    | MAGIC (9) | ' ' | header: compact JSON object    | \n | payload (n B)   |
    +-----------+-----+--------------------------------+----+-----------------+

``MAGIC`` is ``b"\\x1esnapfaas"``; the header always carries ``"t"`` (the kind) and ``"n"`` (the
payload length, possibly 0). A line on stdout that does not start with ``MAGIC`` is not a frame:
it is output some user code wrote to fd 1 directly (a subprocess, say) and the worker logs it.

Kinds, runtime -> worker: ``ready`` (init done, waiting for work: Runtime API ``/next``),
``init_error``, ``response``, ``error`` (invocation error), ``hooks`` (SnapStart: init code done,
the before-snapshot hooks start; progress only), ``restore_ready`` (SnapStart: init
and before-snapshot hooks done, blocked in ``/restore/next``; header ``closed``: peers of the TCP
connections broken for the snapshot, ``kept``: the inet sockets left for CRIU, see
runtime/sockets.py), ``resumed`` (restored and running again, about to run the after-restore
work), ``restore_error``, ``inspection`` (JSON payload).
Kinds, worker -> runtime: ``invoke`` (the event as payload), ``restore`` (resume after restore;
header fields ``reseed``: reseed the RNGs first, ``connections``: how init's TCP connections come
back, ``--snapstart-connections``), ``inspect`` (``snapfaas snapstart verify`` only: answer
``inspection``, fingerprints of what restored copies should not share; see `inspection`).

After every init and every invocation the runtime also writes `LOG_MARK` + ``<tag>\\n`` to
stderr, after flushing it, so that the worker knows it has read all of that phase's log output.
Except for a successful invocation when the ``invoke`` frame says ``log_direct`` (the worker
reads the log pipe itself, nothing relays it) and the pipe is empty once flushed: the worker has
then read every log byte already, and the ``response`` frame says ``logs_read`` instead.
"""

from __future__ import annotations

import json
import json.encoder as json_encoder
from typing import Any, BinaryIO

MAGIC = b"\x1esnapfaas"
LOG_MARK = "\x1esnapfaas-end "


_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps with options builds one per call
# The C encoder `_HEADER_ENCODER.encode` builds on every call, built once (no circular-reference
# markers: a header is a flat dict the platform builds); None where json has no C accelerator.
_C_HEADER_ENCODER = (json_encoder.c_make_encoder(None, _HEADER_ENCODER.default, json_encoder.encode_basestring_ascii,
                                                 None, ":", ",", False, False, True)
                     if json_encoder.c_make_encoder is not None else None)
_FRAME_START = MAGIC + b" "
_DECODER = json.JSONDecoder()
_SCAN = _DECODER.scan_once  # the C scanner where json has its accelerator
_JSON_WHITESPACE = " \t\n\r"


def decode_json(data: bytes) -> Any:
    """``json.loads(data)``, the same value or the same exception, with fewer Python calls for
    UTF-8 text: json.loads of bytes runs `json.detect_encoding`, then the decoder's Python
    methods, on every call. Fewer calls touch fewer objects, which matters after a restore:
    each object touched has its reference count written, a private copy of its page per
    restored environment. Anything the fast path does not take (not UTF-8, a BOM, NUL bytes,
    invalid JSON: json.loads decides and words the error) goes to json.loads."""
    try:
        text = str(data, "utf-8")
        value, end = _SCAN(text, len(text) - len(text.lstrip(_JSON_WHITESPACE)))
        if end == len(text) or not text[end:].strip(_JSON_WHITESPACE):
            return value
    except (ValueError, StopIteration):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        pass
    return json.loads(data)


def encode(kind: str, payload: bytes = b"", **fields: Any) -> bytes:
    """One frame: the same bytes as ``MAGIC + b" " + compact JSON header + b"\\n" + payload``."""
    header = {"t": kind, "n": len(payload), **fields}
    if _C_HEADER_ENCODER is not None:
        text = "".join(_C_HEADER_ENCODER(header, 0))
    else:
        text = _HEADER_ENCODER.encode(header)
    return b"".join((_FRAME_START, text.encode(), b"\n", payload))


def parse_header(line: bytes) -> dict[str, Any] | None:
    """Return the header of a frame line, or None if `line` is not a frame."""
    if not line.startswith(MAGIC + b" "):
        return None
    header = decode_json(line[len(MAGIC) + 1 :])
    if not isinstance(header, dict) or "t" not in header or "n" not in header:
        raise ValueError(f"malformed frame header: {line[:200]!r}")
    return header


def split_stray_output(line: bytes) -> tuple[bytes, bytes]:
    """Split a stdout line into (stray output, frame header line).

    User code (or a subprocess) may write to fd 1 without a trailing newline, so a frame header
    can follow its output on the same line. Returns ``(line, b"")`` when there is no frame.
    """
    at = line.find(MAGIC + b" ")
    if at < 0:
        return line, b""
    return line[:at], line[at:]


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """Blocking read of one frame (used by the runtime on stdin); None at EOF."""
    while True:
        line = stream.readline()
        if not line:
            return None
        try:
            header = parse_header(line)
        except ValueError:
            if line.endswith(b"\n"):
                raise
            return None  # EOF in the middle of a header: the worker is gone
        if header is None:
            continue
        payload = stream.read(header["n"]) if header["n"] else b""
        if len(payload) != header["n"]:
            return None
        return header, payload
