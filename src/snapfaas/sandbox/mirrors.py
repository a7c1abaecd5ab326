"""Host-wide mirrors of interpreter trees that a sandbox's mapped root can reach.

CRIU restores bind mounts by opening their sources as the container's mapped root, which
cannot search e.g. a mode-0700 home directory holding a pyenv install. Such a prefix is
mirrored with hard links (same files, no copy; a copy on another filesystem) under one
host-wide directory that every daemon shares: a mirror is made once per interpreter tree and
reused by every later daemon start, not made again per daemon (~60,000 links and seconds of
wall time per python3.11-3.13 tree).

Contract:

* A mirror ``<mirrors>/<prefix key>-<fingerprint>`` is immutable once it has its final name:
  it is built under a staging name and renamed into place whole, after its manifest
  ``<name>.json`` (written by rename too). A daemon killed mid-creation leaves only a staging
  tree, which the next creator deletes.
* Creators serialize on ``<mirrors>/.lock`` (flock: released by the kernel when a creator
  dies), so every staging tree found while holding it is garbage. Readers take no lock.
* The fingerprint covers what a hard link does not share with its source: the stat (inode,
  mtime, ctime) of every directory of the prefix (an entry added, removed, renamed or
  replaced, or a mode changed, changes it); for a copy, of every entry as well. A mirror is
  used only while every recorded stat still matches the prefix; otherwise a new one is made
  under its new fingerprint's name. Stale mirrors are left in place (a running daemon may
  still bind from one); an operator may delete those no daemon uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from snapfaas.errors import InvalidParameterValue

MANIFEST_VERSION = 1
STAGING_PREFIX = ".staging-"
FINGERPRINT_ATTEMPTS = 3  # a prefix still changing after this many copies is refused


def _entry(rel: str, st: os.stat_result) -> list[object]:
    return [rel, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_size]


def fingerprint(prefix: str, every_entry: bool) -> list[list[object]]:
    """The recorded stats of `prefix`: every directory (not following symlinks), and with
    `every_entry` every other entry too; relative paths, sorted."""
    root = os.lstat(prefix)
    out: list[list[object]] = [_entry(".", root)]
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(prefix, rel_dir)) as entries:
            for item in entries:
                rel = os.path.join(rel_dir, item.name)
                is_dir = item.is_dir(follow_symlinks=False)
                if is_dir:
                    pending.append(rel)
                if is_dir or every_entry:
                    out.append(_entry(rel, item.stat(follow_symlinks=False)))
    out.sort(key=lambda e: str(e[0]))
    return out


def _matches(prefix: str, entries: list[list[object]]) -> bool:
    """Whether every recorded entry still has its recorded stat under `prefix`."""
    for recorded in entries:
        try:
            st = os.lstat(os.path.join(prefix, str(recorded[0])))
        except OSError:
            return False
        if _entry(str(recorded[0]), st) != recorded:
            return False
    return True


def _key(prefix: str) -> str:
    return hashlib.sha256(prefix.encode()).hexdigest()[:16]


def current_mirror(prefix: str, mirrors: Path) -> Path | None:
    """A complete mirror of `prefix` under `mirrors` whose fingerprint still matches, or None."""
    for manifest_path in sorted(mirrors.glob(f"{_key(prefix)}-*.json")):
        target = manifest_path.with_suffix("")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if (manifest.get("version") == MANIFEST_VERSION and manifest.get("prefix") == prefix
                and target.is_dir() and _matches(prefix, manifest["entries"])):
            return target
    return None


@contextlib.contextmanager
def _creation_lock(mirrors: Path) -> Iterator[None]:
    fd = os.open(mirrors / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _copy(prefix: str, staging: Path) -> bool:
    """Copy `prefix` to `staging` as hard links, or as a copy when links are impossible;
    returns whether it is linked."""
    done = subprocess.run(["cp", "-al", prefix, str(staging)], capture_output=True, text=True)
    if done.returncode == 0:
        return True
    shutil.rmtree(staging, ignore_errors=True)  # a partial link tree, about to be replaced by a copy
    done = subprocess.run(["cp", "-a", prefix, str(staging)], capture_output=True, text=True)
    if done.returncode != 0:
        raise InvalidParameterValue(f"cannot mirror interpreter tree {prefix}: {done.stderr.strip()}")
    return False


def _create(prefix: str, mirrors: Path) -> Path:
    """Build a mirror of `prefix` (the caller holds the creation lock)."""
    for leftover in mirrors.glob(f"{STAGING_PREFIX}*"):  # a creator that died: nobody else creates now
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()  # its manifest, not renamed yet
    for _ in range(FINGERPRINT_ATTEMPTS):
        before = fingerprint(prefix, every_entry=True)
        staging = mirrors / f"{STAGING_PREFIX}{_key(prefix)}-{secrets.token_hex(4)}"
        linked = _copy(prefix, staging)
        # linking changes each file's ctime (its link count): a linked mirror records directories only
        entries = [e for e in before if stat.S_ISDIR(int(str(e[4])))] if linked else before
        if fingerprint(prefix, every_entry=not linked) == entries:
            break
        shutil.rmtree(staging)  # the tree changed while it was copied: the copy may be torn
    else:
        raise InvalidParameterValue(f"cannot mirror interpreter tree {prefix}: it kept changing while it was copied")
    os.chmod(staging, os.stat(prefix).st_mode & 0o777 | 0o005)
    document = json.dumps({"version": MANIFEST_VERSION, "prefix": prefix, "entries": entries}, separators=(",", ":"))
    name = f"{_key(prefix)}-{hashlib.sha256(document.encode()).hexdigest()[:16]}"
    target = mirrors / name
    manifest_tmp = mirrors / f"{STAGING_PREFIX}{name}.json"
    manifest_tmp.write_text(document)
    os.rename(manifest_tmp, mirrors / f"{name}.json")
    if target.exists():  # the same fingerprint was mirrored before (its manifest was lost): that tree is complete
        shutil.rmtree(staging)
    else:
        os.rename(staging, target)
    return target


def ensure_mirror(prefix: str, mirrors: Path) -> Path:
    """The current mirror of `prefix` under `mirrors`, made first when none matches the
    prefix (see the module's contract). Raises `InvalidParameterValue` naming the prefix when
    it cannot be mirrored."""
    found = current_mirror(prefix, mirrors)
    if found is not None:
        return found
    mirrors.mkdir(parents=True, exist_ok=True)
    os.chmod(mirrors, 0o711)
    with _creation_lock(mirrors):
        found = current_mirror(prefix, mirrors)  # another daemon made it while this one waited
        return found if found is not None else _create(prefix, mirrors)
