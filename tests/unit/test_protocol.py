"""Framing of the worker <-> runtime channel (snapfaas.runtime.protocol)."""

from __future__ import annotations

import io
import json

import pytest

from snapfaas.runtime import protocol
from snapfaas.runtime.protocol import LOG_MARK, MAGIC, encode, parse_header, read_frame


def test_encode_layout() -> None:
    frame = encode("invoke", b'{"a": 1}', id="r-1", deadline_ms=123)
    line, _, payload = frame.partition(b"\n")
    assert line.startswith(MAGIC + b" ")
    header = json.loads(line[len(MAGIC) + 1 :])
    assert header == {"t": "invoke", "n": 8, "id": "r-1", "deadline_ms": 123}
    assert payload == b'{"a": 1}'
    assert b" " not in line[len(MAGIC) + 1 :]  # compact JSON
    assert encode("ready") == MAGIC + b' {"t":"ready","n":0}\n'


def test_magic_and_mark_constants() -> None:
    assert MAGIC == b"\x1esnapfaas"
    assert LOG_MARK == "\x1esnapfaas-end "


@pytest.mark.parametrize(
    ("kind", "payload", "fields"),
    [
        ("ready", b"", {}),
        ("invoke", b'{"x": [1, 2, 3]}', {"id": "abc", "arn": "arn:aws:lambda:us-east-1:0:function:f",
                                        "deadline_ms": 1_700_000_000_000, "client_context": None,
                                        "trace_id": "Root=1-abc"}),
        ("response", b"line1\nline2\n\n" + MAGIC + b" {not a header}\n", {"id": "r"}),  # payload with newlines/MAGIC
        ("error", bytes(range(256)), {"id": "r", "error_type": "ValueError"}),
        ("restore", b"", {"note": "unicode \u00e9\u2603 and \n newline and \x1e"}),
        ("response", b"x" * 1_000_000, {}),
    ],
)
def test_round_trip(kind: str, payload: bytes, fields: dict[str, object]) -> None:
    frame = encode(kind, payload, **fields)
    line = frame[: frame.index(b"\n") + 1]
    header = parse_header(line)
    assert header == {"t": kind, "n": len(payload), **fields}
    stream = io.BytesIO(frame)
    got = read_frame(stream)
    assert got is not None
    assert got[0] == header
    assert got[1] == payload
    assert read_frame(stream) is None  # EOF after the frame


def test_header_is_one_line_even_with_newlines_in_fields() -> None:
    frame = encode("invoke", b"", id="a\nb")
    assert frame.count(b"\n") == 1 and frame.endswith(b"\n")


def test_parse_header_rejects_non_frames() -> None:
    assert parse_header(b"hello world\n") is None
    assert parse_header(b"") is None
    assert parse_header(MAGIC + b'{"t":"ready","n":0}\n') is None  # no space after MAGIC
    assert parse_header(b" " + MAGIC + b' {"t":"ready","n":0}\n') is None
    assert parse_header(b"snapfaas {}\n") is None


@pytest.mark.parametrize(
    "header",
    [b'{"n":0}', b'{"t":"ready"}', b"[1,2]", b'"ready"', b"null"],
)
def test_parse_header_rejects_malformed_frames(header: bytes) -> None:
    with pytest.raises(ValueError, match="malformed frame header"):
        parse_header(MAGIC + b" " + header + b"\n")


def test_parse_header_rejects_invalid_json() -> None:
    with pytest.raises(ValueError):  # json.JSONDecodeError is a ValueError
        parse_header(MAGIC + b" {not json}\n")


def test_read_frame_skips_non_frame_lines() -> None:
    stream = io.BytesIO(
        b"some output a subprocess wrote\n"
        + b"\n"
        + MAGIC + b"without-space\n"
        + encode("response", b"one", id="1")
        + b"more noise\n"
        + encode("error", b"two\n", id="2")
        + encode("ready")
    )
    assert read_frame(stream) == ({"t": "response", "n": 3, "id": "1"}, b"one")
    assert read_frame(stream) == ({"t": "error", "n": 4, "id": "2"}, b"two\n")
    assert read_frame(stream) == ({"t": "ready", "n": 0}, b"")
    assert read_frame(stream) is None
    assert read_frame(stream) is None  # EOF stays EOF


def test_read_frame_eof_cases() -> None:
    assert read_frame(io.BytesIO(b"")) is None
    assert read_frame(io.BytesIO(b"only noise\nno frame here")) is None
    # payload cut short by EOF
    frame = encode("invoke", b"0123456789", id="x")
    assert read_frame(io.BytesIO(frame[:-3])) is None
    # header line without its newline at EOF, but complete JSON: the frame has no payload
    assert read_frame(io.BytesIO(encode("ready").rstrip(b"\n"))) == ({"t": "ready", "n": 0}, b"")


def test_read_frame_payload_is_exact_and_next_frame_follows() -> None:
    # the payload does not end in a newline; the next frame starts right after it
    stream = io.BytesIO(encode("invoke", b"abc", id="1") + encode("invoke", b"", id="2"))
    assert read_frame(stream) == ({"t": "invoke", "n": 3, "id": "1"}, b"abc")
    assert read_frame(stream) == ({"t": "invoke", "n": 0, "id": "2"}, b"")


def test_read_frame_from_pipe() -> None:
    import os

    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader, os.fdopen(w, "wb") as writer:
        writer.write(b"noise\n" + encode("invoke", b'{"k": "v"}', id="p"))
        writer.close()
        assert read_frame(reader) == ({"t": "invoke", "n": 10, "id": "p"}, b'{"k": "v"}')
        assert read_frame(reader) is None


def test_read_frame_eof_inside_header() -> None:
    frame = encode("invoke", b"abc", id="x")
    assert read_frame(io.BytesIO(frame[:12])) is None


# -- decode_json: json.loads's value or exception ------------------------------------------------
JSON_CASES = [
    b"{}", b"[]", b"1", b"-0.5e3", b'"text"', b"null", b"true", b" \t\r\n{\"a\": [1, 2.5, null]} \n",
    b'{"a": "\\u00e9\\ud83d\\ude00", "b": {"c": NaN, "d": Infinity}}', '{"é": "ü"}'.encode(),
    '\ufeff{"bom": 1}'.encode(), '{"utf16": 1}'.encode("utf-16"), '{"utf16le": 1}'.encode("utf-16-le"),
    '[1]'.encode("utf-32-be"), b"1 2", b"{", b"", b"   ", b"[1,]", b'"\x00"', b"\xff\xfe", b"\x80",
    b'{"a": 1} x', b"12345678901234567890", b'{"a": 1, "a": 2}',
]


@pytest.mark.parametrize("data", JSON_CASES)
def test_decode_json_is_json_loads(data: bytes) -> None:
    try:
        expected: object = ("value", json.loads(data))
    except Exception as exc:  # noqa: BLE001 - the exception itself is what is compared
        expected = ("error", type(exc), str(exc))
    try:
        got: object = ("value", protocol.decode_json(data))
    except Exception as exc:  # noqa: BLE001
        got = ("error", type(exc), str(exc))
    assert repr(got) == repr(expected)  # repr: NaN != NaN
