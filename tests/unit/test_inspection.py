"""What a runtime reports to `snapfaas snapstart verify` (snapfaas.runtime.inspection), in process."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

from snapfaas.runtime import inspection


class FakeGenerator:
    def __init__(self, state: int) -> None:
        self.bit_generator = types.SimpleNamespace(state={"state": state})


class FakeRandomState:
    def __init__(self, state: int) -> None:
        self.state = state

    def get_state(self, legacy: bool = True) -> dict[str, int]:
        return {"state": self.state}

    def rand(self) -> float:
        return 0.5


@pytest.fixture
def fake_numpy(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """numpy's surface the inspection reads (numpy is not installed in the test venv)."""
    numpy = types.ModuleType("numpy")
    numpy_random = types.ModuleType("numpy.random")
    legacy = FakeRandomState(7)
    numpy_random.Generator, numpy_random.RandomState = FakeGenerator, FakeRandomState  # type: ignore[attr-defined]
    numpy_random.mtrand = types.SimpleNamespace(_rand=legacy)  # type: ignore[attr-defined]
    numpy_random.get_state = legacy.get_state  # type: ignore[attr-defined]
    numpy.random = numpy_random  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "numpy", numpy)
    monkeypatch.setitem(sys.modules, "numpy.random", numpy_random)
    return numpy


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, code: str) -> types.ModuleType:
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_numpy_generators_in_globals_and_the_legacy_state_when_drawn_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_numpy: types.ModuleType) -> None:
    load(tmp_path, monkeypatch, "npapp", "import numpy as np\nfrom numpy.random import Generator\nRNG = Generator(3)\n")
    found = inspection.fingerprint(str(tmp_path), frozenset(sys.modules))
    assert found["npapp.RNG"]["kind"] == "numpy-generator" and found["npapp.RNG"]["category"] == "state"
    assert found["numpy.random (legacy global state)"]["kind"] == "numpy-random-state"


def test_global_states_are_left_out_when_the_function_never_draws_from_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_numpy: types.ModuleType) -> None:
    import random  # loaded (as the standard library loads it), but not by the function

    load(tmp_path, monkeypatch, "quiet", "import os\nNAME = 'x'\n")
    found = inspection.fingerprint(str(tmp_path), frozenset(sys.modules))
    assert "random (global state)" not in found and "numpy.random (legacy global state)" not in found
    # a function bound to the global instance counts as drawing from it
    load(tmp_path, monkeypatch, "chooser", "from random import choice\n")
    found = inspection.fingerprint(str(tmp_path), frozenset(sys.modules))
    assert found["random (global state)"]["digest"] == inspection.digest(random.getstate())


def test_cryptography_openssl_is_sampled_only_once_loaded(tmp_path: Path) -> None:
    loaded = frozenset(sys.modules) - {"cryptography.hazmat.bindings._rust"}
    assert "cryptography's OpenSSL (X25519 key)" not in inspection.generator_states(loaded, set())
    from cryptography.hazmat.bindings import _rust  # noqa: F401

    first = inspection.generator_states(frozenset(sys.modules), set())["cryptography's OpenSSL (X25519 key)"]
    second = inspection.generator_states(frozenset(sys.modules), set())["cryptography's OpenSSL (X25519 key)"]
    assert first["kind"] == "openssl" and first["digest"] != second["digest"]  # fresh output, hashed


@pytest.mark.parametrize(("name", "value", "kind"), [
    ("STARTED", 1_790_000_000.5, "timestamp"), ("STARTED_MS", 1_790_000_000_500, "timestamp"),
    ("LIMIT", 10, "value"), ("API_KEY_SECRET", "abc", "credential"), ("ID", "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "uuid"),
    ("FLAG", True, "value"),
])
def test_labels(name: str, value: object, kind: str) -> None:
    assert inspection.label(name, value) == kind
