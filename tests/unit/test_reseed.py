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


def test_reseed_feeds_openssl_fresh_entropy_once_it_is_loaded(modules, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    calls: list[tuple[bytes, float]] = []
    monkeypatch.setattr(ssl, "RAND_add", lambda data, entropy: calls.append((data, entropy)))
    monkeypatch.setitem(modules, "_ssl", modules.get("_ssl") or types.ModuleType("_ssl"))
    bootstrap.reseed()
    bootstrap.reseed()
    assert [(len(data), entropy) for data, entropy in calls] == [(48, 48.0), (48, 48.0)]
    assert calls[0][0] != calls[1][0]  # os.urandom each time


def test_reseed_does_not_load_openssl_when_init_did_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """In a fresh interpreter (as in a runtime whose init never touched ssl/hashlib), reseed
    neither imports OpenSSL's bindings nor fails; with them loaded, the real RAND_add runs."""
    import subprocess
    import sys

    code = ("import sys; from snapfaas.runtime import bootstrap; bootstrap.reseed(); "
            "print(sorted(m for m in ('ssl', '_ssl', '_hashlib') if m in sys.modules)); "
            "import ssl; bootstrap.reseed(); print(ssl.RAND_status())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"]
