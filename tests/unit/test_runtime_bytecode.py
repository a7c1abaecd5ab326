"""The runtime package a daemon installs is byte-compiled by each runtime's interpreter
(worker/factory.py `_compile_runtime`), so an on-demand init does not compile it: the sandbox
mounts it read-only and cannot write bytecode."""

from __future__ import annotations

import importlib.util
import shutil
import stat
import sys
from pathlib import Path

from snapfaas.sandbox.spec import RUNTIME_PACKAGE
from snapfaas.worker.factory import RUNTIME_SOURCE, EnvironmentFactory


def _factory_with_runtime(tmp_path: Path) -> tuple[EnvironmentFactory, Path]:
    factory = EnvironmentFactory.__new__(EnvironmentFactory)  # only the compile step is exercised
    factory.runtime_mount = tmp_path / "runtime"
    package = factory.runtime_mount / RUNTIME_PACKAGE
    shutil.copytree(RUNTIME_SOURCE, package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return factory, package


def test_every_runtime_module_gets_valid_world_readable_bytecode(tmp_path: Path) -> None:
    factory, package = _factory_with_runtime(tmp_path)
    factory._compile_runtime(sys.executable)
    modules = sorted(package.glob("*.py"))
    assert modules
    for module in modules:
        cached = Path(importlib.util.cache_from_source(str(module)))
        assert cached.is_file(), f"{module.name} was not compiled"
        assert stat.S_IMODE(cached.stat().st_mode) == 0o644
        # the pyc records the source's mtime and size: the import system accepts it as it is
        header = cached.read_bytes()[:16]
        assert int.from_bytes(header[8:12], "little") == int(module.stat().st_mtime)
        assert int.from_bytes(header[12:16], "little") == module.stat().st_size
    assert stat.S_IMODE((package / "__pycache__").stat().st_mode) == 0o755


def test_a_failing_interpreter_costs_only_the_compile(tmp_path: Path) -> None:
    factory, package = _factory_with_runtime(tmp_path)
    factory._compile_runtime(str(tmp_path / "no-such-python"))  # logged, not raised
    factory._compile_runtime("/bin/false")
    assert not (package / "__pycache__").exists()
