"""The CRIU engine: is CRIU usable here, and the runc checkpoint/restore invocations.

Only this module knows CRIU. runc drives CRIU over its RPC; extra CRIU options come from a
CRIU configuration file named by the container's ``org.criu.config`` annotation (runc passes
it to CRIU), one for dump and one for restore.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

from snapfaas.errors import ServiceError
from snapfaas.sandbox.container import RUNC_UMASK

MIN_MAJOR = 4
CONFIG_ANNOTATION = "org.criu.config"
DUMP_CONFIG = "file-locks\n"
RESTORE_CONFIG = "file-locks\n"


class CheckpointFailed(ServiceError):
    """`runc checkpoint` failed; `detail` holds CRIU's own error lines."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"checkpoint failed at step '{step}': {detail}")
        self.step = step
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class CriuStatus:
    available: bool
    binary: str | None
    version: str | None
    reason: str | None = None

    def describe(self) -> str:
        if self.available:
            return f"CRIU {self.version} at {self.binary}: criu check passed"
        return f"SnapStart unavailable: {self.reason}"


def probe(binary: str = "criu") -> CriuStatus:
    """Find CRIU and run `criu check`; never raises."""
    path = shutil.which(binary, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        return CriuStatus(False, None, None, "criu is not installed (run scripts/install-system-deps.sh)")
    try:
        version_out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        match = re.search(r"Version:\s*([0-9.]+)", version_out.stdout)
        version = match.group(1) if match else None
        if version is None or int(version.split(".")[0]) < MIN_MAJOR:
            return CriuStatus(False, path, version, f"criu {version} is too old (need {MIN_MAJOR}.x; Debian 12's 3.17 fails here)")
        check = subprocess.run([path, "check"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return CriuStatus(False, path, None, f"criu could not run: {exc}")
    output = check.stdout + check.stderr
    if "Looks good" not in output:
        errors = [line for line in output.splitlines() if "Error" in line and "RLIMIT_NOFILE" not in line]
        return CriuStatus(False, path, version, f"criu check failed: {'; '.join(errors[-3:]) or output.strip()[-300:]}")
    return CriuStatus(True, path, version)


def write_configs(directory: Path) -> tuple[Path, Path]:
    """The dump and restore CRIU config files referenced by the container annotation."""
    directory.mkdir(parents=True, exist_ok=True)
    dump, restore = directory / "criu-dump.conf", directory / "criu-restore.conf"
    dump.write_text(DUMP_CONFIG)
    restore.write_text(RESTORE_CONFIG)
    for path in (dump, restore):
        path.chmod(0o644)
    return dump, restore


def criu_errors(log: Path, limit: int = 3) -> str:
    """The last few CRIU error lines of a dump/restore log (the useful part for a StateReason)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no CRIU log"
    errors = [l.split(": ", 1)[-1].strip() for l in lines if "Error (" in l and "RLIMIT_NOFILE" not in l and "cgroupd" not in l]
    return "; ".join(errors[-limit:]) or (lines[-1] if lines else "CRIU log is empty")


async def checkpoint(runc_argv: list[str], container_id: str, image_dir: Path) -> float:
    """`runc checkpoint` the container into `image_dir` (the container stops); returns seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        *runc_argv, "checkpoint", "--image-path", str(image_dir), "--work-path", str(image_dir), container_id,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, umask=RUNC_UMASK,
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        detail = criu_errors(image_dir / "dump.log")
        raise CheckpointFailed("runc checkpoint", f"{detail} ({stderr.decode(errors='replace').strip()[-200:]})")
    return loop.time() - started


def restore_argv(runc_argv: list[str], container_id: str, image_dir: Path, bundle: Path) -> list[str]:
    """Foreground `runc restore`: runc stays the parent, stdio pipes are re-attached to ours."""
    return [*runc_argv, "restore", "--image-path", str(image_dir), "--work-path", str(bundle), "--bundle", str(bundle),
            container_id]
