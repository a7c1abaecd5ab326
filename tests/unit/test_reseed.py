"""reseed(): the global RNGs diverge after a restore, without importing anything new."""

from __future__ import annotations

import random
import sys
import types

import pytest

from snapfaas.runtime import bootstrap


class LazyNumpy(types.ModuleType):
    """numpy 2 imports numpy.random on first attribute access; reseed must not trigger that."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"reseed touched numpy.{name}")


@pytest.fixture
def modules(monkeypatch: pytest.MonkeyPatch) -> dict[str, types.ModuleType]:
    state = random.getstate()
    yield sys.modules
    random.setstate(state)


def test_reseed_leaves_a_lazily_imported_numpy_random_alone(modules, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(modules, "numpy", LazyNumpy("numpy"))
    monkeypatch.delitem(modules, "numpy.random", raising=False)
    bootstrap.reseed()  # would raise AssertionError if it accessed numpy.random


def test_reseed_seeds_an_imported_numpy_random_from_entropy(modules, monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list[int] = []
    fake = types.ModuleType("numpy.random")
    fake.seed = seeds.append  # type: ignore[attr-defined]
    monkeypatch.setitem(modules, "numpy", LazyNumpy("numpy"))
    monkeypatch.setitem(modules, "numpy.random", fake)
    bootstrap.reseed()
    bootstrap.reseed()
    assert len(seeds) == 2 and all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    assert seeds[0] != seeds[1]  # fresh OS entropy each time (equal with probability 2**-32)


def test_reseed_makes_python_random_diverge_from_the_snapshotted_state(modules) -> None:
    random.seed(7)
    state = random.getstate()
    bootstrap.reseed()
    after_restore = random.random()
    random.setstate(state)
    assert after_restore != random.random()
