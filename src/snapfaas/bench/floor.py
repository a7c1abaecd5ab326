"""The engine floor: `runc restore` of a snapshot's images with nothing of the platform around
it (no API, no pool, no stdio frames), timed until runc reports the container restored.

It borrows the bundle of a live restored environment (same mounts and namespaces, as CRIU
requires), gives it a private rootfs and its own cgroup and runc state dir, restores it
detached, then kills and deletes it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from snapfaas.sandbox.container import runc_environ
from snapfaas.sandbox.mounts import remove_tree, unmount_below
from snapfaas.sandbox.spec import BASE_DIRS, MERGED_USR_LINKS


def _skeleton(rootfs: Path, template: Path) -> None:
    """Copy the directory skeleton (dirs and links only) of `template` into `rootfs`."""
    for path in sorted(template.rglob("*")):
        rel = path.relative_to(template)
        target = rootfs / rel
        if path.is_symlink():
            target.symlink_to(path.readlink())
        elif path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o755)
    for rel in BASE_DIRS:
        (rootfs / rel).mkdir(parents=True, exist_ok=True)
    for name, link in MERGED_USR_LINKS.items():
        if not (rootfs / name).is_symlink():
            (rootfs / name).symlink_to(link)


def restore_floor(bundle_config: Path, images: Path, scratch: Path, runs: int,
                  environ: Mapping[str, str] | None = None) -> list[float]:
    """Time `runc restore --detach` of `images` `runs` times; milliseconds per run. runc runs
    with `runc_environ(environ)` (`environ`: CRIU's options), as the platform's restores do."""
    config = json.loads(bundle_config.read_text())
    template = Path(config["root"]["path"])
    state = scratch / "runc-state"
    state.mkdir(parents=True, exist_ok=True)
    timings = []
    for i in range(runs):
        cid = f"sf-floor-{secrets.token_hex(4)}"
        bundle = scratch / cid
        bundle.mkdir(parents=True)
        bundle.chmod(0o711)
        rootfs = bundle / "rootfs"
        rootfs.mkdir()
        rootfs.chmod(0o755)
        _skeleton(rootfs, template)
        config["root"]["path"] = str(rootfs)
        config["linux"]["cgroupsPath"] = f"/snapfaas-floor/{cid}"
        (bundle / "config.json").write_text(json.dumps(config))
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        try:
            started = time.perf_counter()
            runc = subprocess.Popen(
                ["runc", "--root", str(state), "restore", "--detach", "--image-path", str(images),
                 "--work-path", str(bundle), "--bundle", str(bundle), cid],
                stdin=r_in, stdout=w_out, stderr=w_err, umask=0o022, env=runc_environ(environ),
            )
            # A watchdog, not `wait(timeout=...)`: Popen polls with sleeps of up to 50 ms when
            # given a timeout, which would add up to 50 ms to what is measured here.
            watchdog = threading.Timer(60, runc.kill)
            watchdog.start()
            returncode = runc.wait()
            elapsed = (time.perf_counter() - started) * 1000
            watchdog.cancel()
        finally:
            for fd in (r_in, w_in, r_out, w_out, r_err, w_err):
                os.close(fd)
            if (bundle / "restore.log").exists():
                shutil.copy(bundle / "restore.log", scratch / f"restore-{i}.log")
            subprocess.run(["runc", "--root", str(state), "delete", "--force", cid], capture_output=True)
            unmount_below(bundle)
            remove_tree(bundle)
        if returncode != 0:
            raise RuntimeError(f"engine-floor restore failed (runc exit {returncode}); see {bundle}/restore.log")
        timings.append(elapsed)
    shutil.rmtree(state, ignore_errors=True)
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        floor = hierarchy / "snapfaas-floor"
        if floor.is_dir():
            for child in floor.iterdir():
                if child.is_dir():
                    child.rmdir()
            floor.rmdir()
    return timings

