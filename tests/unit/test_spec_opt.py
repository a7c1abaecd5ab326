"""A version's layers in its sandbox: /opt bound read-only when it has layers, the layer
directories on a Python runtime's path (snapfaas.sandbox.spec, snapfaas.worker.factory)."""

from __future__ import annotations

from pathlib import Path

from snapfaas.sandbox.interpreter import Interpreter
from snapfaas.sandbox.spec import BASE_DIRS, SandboxSpec, render
from snapfaas.worker.factory import _layer_paths


def spec(opt_dir: Path | None) -> SandboxSpec:
    return SandboxSpec(env_id="e", code_dir=Path("/code"), runtime_dir=Path("/runtime"),
                       interpreter=Interpreter("python3.12", "/usr/bin/python3.12", ("/usr",)), environ={},
                       memory_mb=128, tmp_mb=512, uid=1000, host_id_base=100000, cgroup="c", etc_dir=Path("/etc-dir"),
                       opt_dir=opt_dir)


def opt_mounts(config: dict) -> list[dict]:  # type: ignore[type-arg]
    return [m for m in config["mounts"] if m["destination"] == "/opt"]


def test_opt_is_bound_read_only_only_with_layers() -> None:
    assert "opt" in BASE_DIRS  # the empty mount point (and /opt of a function without layers)
    assert opt_mounts(render(spec(None), Path("/rootfs"), [])) == []
    [mount] = opt_mounts(render(spec(Path("/trees/0/opt-abc")), Path("/rootfs"), []))
    assert mount["source"] == "/trees/0/opt-abc" and mount["type"] == "bind"
    assert "ro" in mount["options"] and "nosuid" in mount["options"]


def test_layer_paths_follow_lambdas_python_runtime() -> None:
    assert _layer_paths("python3.12") == "/opt/python/lib/python3.12/site-packages:/opt/python:"
    assert _layer_paths("provided.al2023") == ""
