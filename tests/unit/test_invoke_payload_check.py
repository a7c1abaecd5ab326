"""The invoke payload check (`invoker.check_json`) accepts and refuses what json.loads of the
bytes accepts and refuses, with the same message, whichever way it gets there."""

from __future__ import annotations

import json

import pytest

from snapfaas.errors import InvalidRequestContent
from snapfaas.runtime import protocol
from snapfaas.worker.invoker import check_json

PAYLOADS = [
    b"", b"{}", b'{"hello": "world"}', b"[1, 2]", b"1", b'"x"', b"null", b" {} ", b"{", b"nope",
    '{"k": "caf\u00e9"}'.encode(), "\ufeff{}".encode(), '{"a": 1}'.encode("utf-16"), '{"a": 1}'.encode("utf-16-le"),
    '{"a": 1}'.encode("utf-32-be"), b'{"a": "\xff"}', b'"\x00x"', b'{"a": 1}\x00', b"\x00", b"NaN", b'{"a": "\\ud800"}',
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_check_json_decides_as_json_loads_of_the_bytes(payload: bytes) -> None:
    if not payload:  # no payload: nothing to check (Lambda's default event)
        check_json(payload)
        return
    try:
        json.loads(payload)
        expected = None
    except (ValueError, UnicodeDecodeError) as exc:
        expected = exc
    if expected is None:
        check_json(payload)
        check_json(bytearray(payload))
        return
    with pytest.raises(InvalidRequestContent) as refused:
        check_json(payload)
    assert str(expected) in refused.value.message


@pytest.mark.parametrize("fields", [
    {}, {"id": "r-1", "arn": "arn:aws:lambda:us-east-1:000000000000:function:f", "deadline_ms": 1764612345678,
         "client_context": None, "trace_id": None, "log_direct": True},
    {"text": "caf\u00e9 \"quoted\"\n\t\u2028", "n2": 1.5, "nested": {"a": [1, None, False]}, "big": 10 ** 30},
])
def test_frames_are_the_compact_json_header_and_the_payload(fields: dict[str, object]) -> None:
    payload = b'{"hello": "world"}'
    header = json.dumps({"t": "invoke", "n": len(payload), **fields}, separators=(",", ":")).encode()
    assert protocol.encode("invoke", payload, **fields) == protocol.MAGIC + b" " + header + b"\n" + payload
    assert protocol.encode("ready") == protocol.MAGIC + b' {"t":"ready","n":0}\n'
