"""Vendoring PyPI packages into a test function's zip, as a user would (`pip install --target`).

Installs are cached by (requirement list, Python version): in pytest's cache dir when the cache
provider is on (reruns are fast), else in the session's temporary directory.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from snapfaas.sandbox.interpreter import InterpreterRegistry


def function_runtime(preferred: tuple[str, ...] = ("python3.12", "python3.11")) -> str:
    """The first of `preferred` this host has an interpreter for (CI hosts may only have 3.11)."""
    found = InterpreterRegistry({}).available(preferred)
    for runtime in preferred:
        if not isinstance(found.get(runtime), str):
            return runtime
    pytest.fail(f"no interpreter for any of {preferred}: {found}")


def vendored(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory, requirements: list[str],
             python_version: str) -> Path:
    """A directory holding `requirements` (each pinned with ==) installed for CPython
    `python_version` on manylinux x86-64, wheels only."""
    unpinned = [r for r in requirements if "==" not in r]
    assert not unpinned, f"pin every vendored requirement: {unpinned}"
    digest = hashlib.sha256("\n".join(sorted(requirements) + [python_version]).encode()).hexdigest()[:16]
    name = f"vendor-{digest}"
    cache = getattr(config, "cache", None)
    target = Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.getbasetemp() / name
    done = target / ".snapfaas-vendored"
    if done.exists():
        return target
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
         "--upgrade", "--target", str(target), "--python-version", python_version, "--implementation", "cp",
         "--platform", "manylinux2014_x86_64", "--only-binary=:all:", *requirements],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, f"pip install --target failed:\n{out.stderr[-3000:]}"
    done.write_text("\n".join(requirements) + "\n")
    return target


def zip_with(vendor: Path | None, files: dict[str, str], executables: tuple[str, ...] = ()) -> bytes:
    """A deployment zip: the vendored tree (without pip's bin/ and caches; none if `vendor` is
    None) plus `files`, those named in `executables` with mode 0755."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, names in os.walk(vendor) if vendor is not None else ():
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "bin"))
            for name in sorted(names):
                path = Path(root) / name
                if name.startswith(".snapfaas"):
                    continue
                archive.write(path, path.relative_to(vendor).as_posix())
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100755 if name in executables else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return buf.getvalue()
