"""Resolve a Lambda runtime name to a host interpreter that can be mounted into a sandbox."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from snapfaas.config import is_custom
from snapfaas.errors import InvalidParameterValue
from snapfaas.sandbox.mirrors import ensure_mirror

PROBE = (
    "import json, sys, sysconfig; print(json.dumps({'executable': sys.executable, "
    "'prefixes': sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}), "
    "'version': '%d.%d' % sys.version_info[:2]}))"
)


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """A real interpreter binary and the install trees it needs (mounted read-only)."""

    runtime: str
    executable: str
    prefixes: tuple[str, ...]

    def mount_sources(self) -> list[str]:
        """Prefixes not already visible through the sandbox's /usr bind."""
        return [p for p in self.prefixes if not (p == "/usr" or p.startswith("/usr/"))]


SANDBOX_PATH = ("/usr/local/bin", "/usr/bin")  # the sandbox's PATH inside its /usr bind (factory.lambda_environ)
MIN_CUSTOM_PYTHON = (3, 11)  # the oldest interpreter the in-sandbox supervisor (runtime/custom.py) runs on


def custom_candidates() -> list[str]:
    """For an OS-only runtime (``provided.*``): the ``python3`` the sandbox's PATH finds in the
    host's /usr, which its supervisor runs on and a ``#!/bin/sh`` bootstrap's ``python3`` is."""
    return [path for path in (os.path.join(d, "python3") for d in SANDBOX_PATH) if os.access(path, os.X_OK)]


def candidate_commands(runtime: str, environ: Mapping[str, str]) -> list[str]:
    """Every ``python3.X`` on PATH in order, then pyenv installs (whose shims may refuse to run).
    Where PATH has pyenv's shims directory, the pyenv installs of that runtime (newest first) come
    before its shim: a shim only runs one of them, through pyenv's shell scripts (~0.5-1 s per
    probe, at every daemon start)."""
    if is_custom(runtime):
        return custom_candidates()
    pyenv_root = environ.get("PYENV_ROOT") or os.path.join(environ.get("HOME", "/root"), ".pyenv")
    minor = runtime.removeprefix("python")
    installs = sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{minor}.*", "bin", runtime)), reverse=True)
    shims = os.path.join(pyenv_root, "shims")
    found: list[str] = []
    for entry in environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep):
        path = os.path.join(entry, runtime)
        if entry and os.path.normpath(entry) == shims:
            found.extend(install for install in installs if install not in found)
        if entry and os.access(path, os.X_OK) and path not in found:
            found.append(path)
    found.extend(install for install in installs if install not in found)
    return found


class InterpreterRegistry:
    """Resolves and caches interpreters; configured paths win over ``python3.X`` on PATH."""

    def __init__(self, overrides: Mapping[str, str], environ: Mapping[str, str] | None = None) -> None:
        self._overrides = dict(overrides)
        self._environ = dict(environ or {})
        self._cache: dict[str, Interpreter] = {}

    def resolve(self, runtime: str) -> Interpreter:
        """Return the interpreter for `runtime` or raise a clear `InvalidParameterValue`."""
        if runtime in self._cache:
            return self._cache[runtime]
        hint = f"configure it with `snapfaas serve --runtime {runtime}=/path/to/python`"
        override = self._overrides.get(runtime)
        candidates = [override] if override else candidate_commands(runtime, self._environ)
        if not candidates:
            raise InvalidParameterValue(f"Runtime {runtime} is not available on this server: no {runtime} on PATH; {hint}")
        failures = []
        for command in candidates:
            try:
                out = subprocess.run([command, "-c", PROBE], capture_output=True, text=True, timeout=30, check=True)
                info = json.loads(out.stdout)
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                failures.append(f"{command}: {exc}")
                continue
            if f"python{info['version']}" == runtime:
                break
            if is_custom(runtime) and tuple(map(int, info["version"].split("."))) >= MIN_CUSTOM_PYTHON:
                break
            failures.append(f"{command} is Python {info['version']}")
        else:
            raise InvalidParameterValue(
                f"Runtime {runtime} is not available on this server ({'; '.join(failures)}); {hint}"
            )
        interp = Interpreter(runtime, info["executable"], tuple(info["prefixes"]))
        self._cache[runtime] = interp
        return interp

    def available(self, runtimes: tuple[str, ...]) -> dict[str, Interpreter | str]:
        """Each runtime's interpreter, or the reason it is unavailable (for the startup banner),
        in the order of `runtimes`. The runtimes are probed at once, one thread each (every
        probe starts an interpreter: ~0.2-0.4 s each, one after another, at every daemon start)."""

        def one(name: str) -> Interpreter | str:
            try:
                return self.resolve(name)
            except InvalidParameterValue as exc:
                return exc.message

        with concurrent.futures.ThreadPoolExecutor(max(1, len(runtimes)), thread_name_prefix="interpreter-probe") as pool:
            return dict(zip(runtimes, pool.map(one, runtimes)))


def traversable_by_others(path: str) -> bool:
    """Whether every ancestor of `path` lets a non-owner search it (mode o+x)."""
    current = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            if not os.stat(current).st_mode & 0o001:
                return False
        except OSError:
            return False
        if current == "/":
            return True
        current = os.path.dirname(current)


def mirror_source(prefix: str, mirrors: Path) -> str:
    """A bind source for `prefix` that the sandbox's mapped root can reach.

    CRIU restores bind mounts by opening their sources as the container's mapped root, which
    cannot search e.g. a mode-0700 home directory holding a pyenv install. Such a prefix is
    bound from its host-wide hard-link mirror under `mirrors` (`snapfaas.sandbox.mirrors`:
    made once, reused by every daemon while the prefix is unchanged); a prefix that is
    already reachable is used as it is.
    """
    if traversable_by_others(prefix):
        return prefix
    return str(ensure_mirror(prefix, mirrors))
