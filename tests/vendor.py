"""Vendoring PyPI packages into a test function's zip, as a user would (`pip install --target`).

Installs are cached by (requirement list, Python version): in pytest's cache dir when the cache
provider is on, else in the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``,
``snapfaas/test-vendor``), so a fresh clone on the same host (CI runs with ``-p no:cacheprovider``)
does not resolve and download the same pinned wheels again (~10-20 s per requirement list). An
install is made under a temporary name and renamed into place complete: a cached directory is
never partial, and concurrent suites each install and the first rename wins.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
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
    target = Path(cache.mkdir("vendor")) / name if cache is not None else user_cache() / name
    if (target / DONE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{name}-{os.getpid()}-{tmp_path_factory.getbasetemp().name}")
    shutil.rmtree(staging, ignore_errors=True)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
         "--upgrade", "--target", str(staging), "--python-version", python_version, "--implementation", "cp",
         "--platform", "manylinux2014_x86_64", "--only-binary=:all:", *requirements],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, f"pip install --target failed:\n{out.stderr[-3000:]}"
    (staging / DONE).write_text("\n".join(requirements) + "\n")
    try:
        os.rename(staging, target)
    except OSError:  # another suite's install of the same list got there first (or a partial old one is in the way)
        if not (target / DONE).exists():
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
        shutil.rmtree(staging, ignore_errors=True)
    return target


DONE = ".snapfaas-vendored"  # written last into a complete install


def user_cache() -> Path:
    """Where vendored installs outlive the test session: ``snapfaas/test-vendor`` in the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "snapfaas" / "test-vendor"


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
