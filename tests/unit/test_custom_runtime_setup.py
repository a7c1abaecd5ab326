"""How the daemon sets up an OS-only runtime's sandbox: its interpreter, its process arguments
and Lambda's variables (pure functions; the sandbox itself is covered end to end)."""

from __future__ import annotations

import os
from pathlib import Path

from snapfaas.config import ServerConfig
from snapfaas.registry.model import LATEST, FunctionVersion
from snapfaas.runtime import custom
from snapfaas.sandbox.interpreter import InterpreterRegistry, candidate_commands
from snapfaas.worker.factory import is_custom, lambda_environ, runtime_argv


def version(runtime: str) -> FunctionVersion:
    return FunctionVersion(name="fn", version=LATEST, runtime=runtime, handler="any.thing", role="r",
                           code_digest="d", code_sha256="s", code_size=1)


def test_custom_runtime_interpreter_is_the_sandbox_python3() -> None:
    candidates = candidate_commands("provided.al2023", {"PATH": "/somewhere/else"})
    assert candidates and all(c in ("/usr/local/bin/python3", "/usr/bin/python3") for c in candidates)
    interp = InterpreterRegistry({}).resolve("provided.al2")
    assert interp.executable in candidates and interp.mount_sources() == []  # all under the /usr bind


def test_custom_runtime_arguments_and_environment(tmp_path: Path) -> None:
    config = ServerConfig(tmp_path)
    assert is_custom("provided.al2023") and not is_custom("python3.12")
    native = "/var/runtime/snapfaas_runtime/snapfaas-init"
    assert runtime_argv("provided.al2023", "/py", True) == [native, "/py", "-m", "snapfaas_runtime.start", "custom"]
    assert runtime_argv("python3.12", "/py", True) == [native, "/py", "-m", "snapfaas_runtime.start"]
    assert runtime_argv("provided.al2023", "/py", False) == ["/py", "-m", "snapfaas_runtime", "custom"]  # the Python init
    assert runtime_argv("python3.12", "/py", False) == ["/py", "-m", "snapfaas_runtime"]
    environ = lambda_environ(config, version("provided.al2023"), "on-demand", "stream")
    assert "AWS_EXECUTION_ENV" not in environ
    assert environ[custom.RESPONSE_LIMIT_VAR] == str(config.limits.response_bytes)
    assert environ["_HANDLER"] == "any.thing" and environ["LAMBDA_TASK_ROOT"] == "/var/task"
    assert lambda_environ(config, version("python3.12"), "on-demand", "s")["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.12"


def test_child_environment_drops_the_supervisors_variables() -> None:
    child = custom.child_environ({"PYTHONPATH": "/var/runtime", "PYTHONDONTWRITEBYTECODE": "1", custom.RESPONSE_LIMIT_VAR: "9",
                                  "_SNAPFAAS_INIT_VARS": "", "_HANDLER": "h", "USER_VAR": "v"}, "127.0.0.1:9002")
    assert child == {"_HANDLER": "h", "USER_VAR": "v", "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9002"}


def test_extension_discovery_and_bootstrap_lookup(tmp_path: Path) -> None:
    exts = tmp_path / "extensions"
    exts.mkdir()
    for name, mode in (("b", 0o755), ("a", 0o755), ("not-executable", 0o644)):
        (exts / name).write_text("#!/bin/sh\n")
        os.chmod(exts / name, mode)
    (exts / "dir").mkdir()
    assert custom.discover_extensions(str(exts)) == [str(exts / "a"), str(exts / "b")]
    assert custom.discover_extensions(str(tmp_path / "missing")) == []
    (tmp_path / "second").write_text("")
    assert custom.find_bootstrap((str(tmp_path / "first"), str(tmp_path / "second"))) == str(tmp_path / "second")
    assert custom.find_bootstrap((str(tmp_path / "first"),)) is None
