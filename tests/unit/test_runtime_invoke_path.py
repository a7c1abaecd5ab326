"""The runtime's per-invoke helpers keep the behaviour of what they replace: the result's
encoding is json.dumps's (Decimal as Lambda's runtime serializes it), the trace variable is
removed only when present, and the SnapStart rehearsal leaves the environment as it was."""

from __future__ import annotations

import decimal
import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from snapfaas.runtime import bootstrap, protocol
from snapfaas.runtime.faults import Fault

RESULTS: list[Any] = [
    {"a": [1, 2.5, None, True], "é": "ü\n\u2028", "n": {"x": -0.0}}, "plain string", 3, None, [], {},
    float("nan"), float("inf"), {"d": decimal.Decimal("1.50"), "i": decimal.Decimal("2")}, (1, 2),
    {1: "int key", 2.5: "float key", None: "null key", True: "bool key"}, "\ud800",
]


@pytest.mark.parametrize("result", RESULTS)
def test_encode_result_is_the_json_encoders_text(result: Any) -> None:
    expected = bootstrap._RESULT_ENCODER.encode(result).encode()
    assert bootstrap.encode_result(result) == expected
    assert expected == json.dumps(result, default=bootstrap._json_default).encode()


@pytest.mark.parametrize("bad", [{"x": object()}, {"s": {1, 2}}, {("tuple", "key"): 1}])
def test_encode_result_refuses_what_json_refuses_and_recovers(bad: Any) -> None:
    with pytest.raises(Fault) as caught:
        bootstrap.encode_result(bad)
    with pytest.raises((TypeError, ValueError)) as reference:
        json.dumps(bad, default=bootstrap._json_default)
    assert caught.value.error_type == Fault.MARSHAL
    assert caught.value.message == f"Unable to marshal response: {reference.value}"
    assert bootstrap.encode_result({"after": [1]}) == b'{"after": [1]}'


def test_a_circular_result_is_refused_and_the_next_one_encodes() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(Fault, match="Circular reference detected"):
        bootstrap.encode_result({"l": loop})
    inner = {"x": 1}
    assert bootstrap.encode_result([inner, inner]) == b'[{"x": 1}, {"x": 1}]'  # no stale markers


def test_clear_trace_removes_only_a_present_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bootstrap.TRACE_VARIABLE, "Root=1-abc")
    bootstrap.clear_trace()
    assert bootstrap.TRACE_VARIABLE not in os.environ
    bootstrap.clear_trace()  # absent: nothing to do, nothing raised
    assert bootstrap.TRACE_VARIABLE not in os.environ


def test_rehearsal_leaves_the_environment_and_the_channel_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    before = dict(os.environ)
    out = io.BytesIO()
    log = io.StringIO()
    bootstrap.rehearse(bootstrap.Channel(io.BytesIO(), out, log))
    assert dict(os.environ) == before
    assert out.getvalue() == b"" and log.getvalue() == ""


def test_the_rehearsal_reads_a_restore_frame_and_an_invoke_frame() -> None:
    """The frames the rehearsal reads from memory are well-formed frames of the kinds a
    restored copy reads first (so it runs the same decoding code)."""
    frames = io.BufferedReader(io.BytesIO(bootstrap.REHEARSAL_FRAMES))
    kinds = []
    while (frame := protocol.read_frame(frames)) is not None:
        kinds.append(frame[0]["t"])
        assert isinstance(protocol.decode_json(frame[1]), dict)
    assert kinds == ["restore", "invoke"]


PRIORITY_PROBE = """
import os
from snapfaas.runtime import bootstrap, protocol
start = os.getpriority(os.PRIO_PROCESS, 0)
bootstrap.lower_priority()
lowered = os.getpriority(os.PRIO_PROCESS, 0)
bootstrap.lower_priority(bootstrap.INVOKE_NICE - 5)
print(start, lowered, os.getpriority(os.PRIO_PROCESS, 0))
"""


def test_the_invoke_loop_runs_at_invoke_nice_and_never_raises_its_priority() -> None:
    """In a child (a raised nice value is not undone without a capability): `lower_priority`
    sets INVOKE_NICE and a second call asking for a higher priority leaves it at that."""
    probe = subprocess.run([sys.executable, "-c", PRIORITY_PROBE], capture_output=True, text=True, check=True)
    start, lowered, again = (int(word) for word in probe.stdout.split())
    assert lowered == max(start, bootstrap.INVOKE_NICE)
    assert again == lowered
