"""Deterministic SnapStart init: the per-function hash seed, the variables an init gets, the
launcher without ASLR, and which statements of a handler module run early (pure parts)."""

from __future__ import annotations

import platform

import pytest

from snapfaas.runtime import bootstrap, init
from snapfaas.runtime.preimport import leading_imports
from snapfaas.snapshot import determinism

SECRET = bytes(range(32))


def test_the_hash_seed_is_stable_per_function_and_secret_and_differs_otherwise() -> None:
    seed = determinism.hash_seed(SECRET, "fn")
    assert seed == determinism.hash_seed(SECRET, "fn") and 0 <= seed < 2**32
    assert seed != determinism.hash_seed(SECRET, "other")
    assert seed != determinism.hash_seed(bytes(32), "fn")


def test_init_variables_skip_what_the_function_configures_and_name_what_they_add() -> None:
    pid = str(determinism.FIXED_RUNTIME_PID)
    assert determinism.init_environ(7, True, {}) == {
        "PYTHONHASHSEED": "7", "GLIBC_TUNABLES": determinism.NO_TCACHE, determinism.RUNTIME_PID: pid,
        determinism.INIT_VARS: f"GLIBC_TUNABLES,PYTHONHASHSEED,{determinism.RUNTIME_PID}"}
    assert determinism.init_environ(7, False, {"PYTHONHASHSEED": "0"}) == {}
    assert determinism.init_environ(None, True, {}) == {"GLIBC_TUNABLES": determinism.NO_TCACHE, determinism.RUNTIME_PID: pid,
                                                        determinism.INIT_VARS: f"GLIBC_TUNABLES,{determinism.RUNTIME_PID}"}


def test_the_runtime_drops_exactly_the_variables_the_worker_added() -> None:
    environ = {"PYTHONHASHSEED": "7", "GLIBC_TUNABLES": "x", bootstrap.INIT_VARS: "GLIBC_TUNABLES,PYTHONHASHSEED", "KEEP": "1"}
    bootstrap.drop_init_variables(environ)
    assert environ == {"KEEP": "1"}
    configured = {"PYTHONHASHSEED": "0"}  # the function's own: no list, nothing dropped
    bootstrap.drop_init_variables(configured)
    assert configured == {"PYTHONHASHSEED": "0"}


def test_the_launcher_is_setarch_without_randomization() -> None:
    launcher = determinism.fixed_layout_launcher()
    assert launcher is not None and launcher[0].endswith("setarch")
    assert launcher[1:] == [platform.machine(), "--addr-no-randomize"]


@pytest.mark.parametrize(("source", "expected"), [
    ('"""doc"""\nfrom __future__ import annotations\nimport torch\nimport numpy as np, json\nfrom scipy import linalg\nX = 1\nimport late\n',
     "import torch\nimport numpy as np, json\nfrom scipy import linalg"),
    ("import os\nos.environ['OMP_NUM_THREADS'] = '1'\nimport torch\n", "import os"),  # stops at the first other statement
    ("from . import sibling\nimport torch\n", ""),  # a relative import stops it too
    ("try:\n    import ujson as json\nexcept ImportError:\n    import json\n", ""),
    ("x = 1\nimport torch\n", ""),
    ("def handler(:\n", ""),  # does not parse: the ordinary import reports it
    ("", ""),
])
def test_leading_imports_are_the_import_statements_before_anything_else(source: str, expected: str) -> None:
    assert leading_imports(source.encode()) == expected


def test_the_pointer_guard_is_stable_per_function_and_secret_and_set_only_with_the_fixed_layout() -> None:
    guard = determinism.pointer_guard(SECRET, "fn")
    assert guard == determinism.pointer_guard(SECRET, "fn") and 0 <= guard < 2**64
    assert guard != determinism.pointer_guard(SECRET, "other") and guard != determinism.pointer_guard(bytes(32), "fn")
    assert determinism.init_environ(7, True, {}, guard) == {
        "PYTHONHASHSEED": "7", "GLIBC_TUNABLES": determinism.NO_TCACHE, determinism.POINTER_GUARD: f"{guard:016x}",
        determinism.RUNTIME_PID: str(determinism.FIXED_RUNTIME_PID),
        determinism.INIT_VARS: f"GLIBC_TUNABLES,PYTHONHASHSEED,{determinism.POINTER_GUARD},{determinism.RUNTIME_PID}"}
    assert determinism.init_environ(7, False, {}, guard) == {"PYTHONHASHSEED": "7", determinism.INIT_VARS: "PYTHONHASHSEED"}
    assert init.POINTER_GUARD == determinism.POINTER_GUARD and init.RUNTIME_PID == determinism.RUNTIME_PID


def test_the_stack_canary_is_stable_per_function_has_a_zero_low_byte_and_goes_with_the_guard() -> None:
    canary = determinism.stack_canary(SECRET, "fn")
    assert canary == determinism.stack_canary(SECRET, "fn") and 0 <= canary < 2**64 and canary & 0xFF == 0
    assert canary != determinism.stack_canary(SECRET, "other") and canary != determinism.pointer_guard(SECRET, "fn") & ~0xFF
    environ = determinism.init_environ(7, True, {}, 1, canary)
    assert environ[determinism.STACK_CANARY] == f"{canary:016x}"
    assert determinism.STACK_CANARY in environ[determinism.INIT_VARS].split(",")
    assert determinism.STACK_CANARY not in determinism.init_environ(7, True, {}, None, canary)
    assert determinism.STACK_CANARY not in determinism.init_environ(7, False, {}, 1, canary)
    assert init.STACK_CANARY == determinism.STACK_CANARY


def test_burning_pids_stops_at_the_target_or_past_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pids handed out in order from 4: the last burnt child has target - 1."""
    forked: list[int] = []
    monkeypatch.setattr(init.os, "fork", lambda: forked.append(4 + len(forked)) or forked[-1])
    monkeypatch.setattr(init.os, "waitpid", lambda pid, options: (pid, 0))
    assert init.burn_pids_before(16) and forked[-1] == 15
    forked.clear()
    monkeypatch.setattr(init.os, "fork", lambda: forked.append(20 + len(forked)) or forked[-1])
    assert not init.burn_pids_before(16) and forked == [20]
