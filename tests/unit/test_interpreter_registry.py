"""The startup banner's interpreter lookup (`InterpreterRegistry.available`): every runtime's
interpreter or the reason it is unavailable, in the order asked, probed concurrently."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from snapfaas.sandbox.interpreter import Interpreter, InterpreterRegistry, candidate_commands


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


def _executable(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_pyenv_installs_are_tried_before_the_shim_that_would_run_them_and_path_order_holds(tmp_path: Path) -> None:
    root = tmp_path / "pyenv"
    shim = _executable(root / "shims" / "python3.11")
    older = _executable(root / "versions" / "3.11.2" / "bin" / "python3.11")
    newer = _executable(root / "versions" / "3.11.9" / "bin" / "python3.11")
    early = _executable(tmp_path / "early" / "python3.11")
    late = _executable(tmp_path / "late" / "python3.11")
    path = os.pathsep.join([str(tmp_path / "early"), str(root / "shims"), str(tmp_path / "late")])
    assert candidate_commands("python3.11", {"PATH": path, "PYENV_ROOT": str(root)}) == [early, newer, older, shim, late]
    # without the shims on PATH the installs come last, as before
    path = os.pathsep.join([str(tmp_path / "early"), str(tmp_path / "late")])
    assert candidate_commands("python3.11", {"PATH": path, "PYENV_ROOT": str(root)}) == [early, late, newer, older]
