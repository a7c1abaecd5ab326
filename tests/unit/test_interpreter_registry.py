"""The startup banner's interpreter lookup (`InterpreterRegistry.available`): every runtime's
interpreter or the reason it is unavailable, in the order asked, probed concurrently."""

from __future__ import annotations

import sys

from snapfaas.sandbox.interpreter import Interpreter, InterpreterRegistry


def test_available_answers_every_runtime_in_order_with_its_interpreter_or_reason() -> None:
    registry = InterpreterRegistry({"python3.11": sys.executable}, {"PATH": "", "HOME": "/nonexistent"})
    found = registry.available(("python3.99", "python3.11", "python3.98"))
    assert list(found) == ["python3.99", "python3.11", "python3.98"]
    interp = found["python3.11"]
    assert isinstance(interp, Interpreter) and interp.runtime == "python3.11"
    assert registry.resolve("python3.11") is interp, "the probe's result is cached"
    for missing in ("python3.99", "python3.98"):
        reason = found[missing]
        assert isinstance(reason, str) and f"Runtime {missing} is not available" in reason
