"""The /etc every execution environment sees: a minimal one synthesized per server, not the host's.

Built once at each daemon start into ``<sandbox-dir>/etc`` (a stable path: CRIU restores need
the same bind source at checkpoint and restore) and bound read-only at /etc. It holds:

- ``passwd`` / ``group``: ``root`` (0), the sandbox user (`SANDBOX_USER`, uid/gid 1000, named
  like Lambda's ``sbx_user1051``, home ``/tmp``: the only writable directory, so libraries that
  cache under ``~`` work) and ``nobody``/``nogroup`` (65534: what files owned by unmapped host
  ids, e.g. everything under /usr, show as inside the user namespace). No ``shadow``, no host
  users.
- ``hosts``: localhost for 127.0.0.1 and ::1, plus the container's hostname.
- ``resolv.conf``: the host's ``nameserver`` lines except loopback ones (127.0.0.0/8, ::1: a
  stub resolver such as systemd-resolved's 127.0.0.53 listens in the host's network namespace,
  which an environment with its own network namespace cannot reach), and its ``options``
  lines. ``search``/``domain`` lines are dropped (host-specific; functions use full names).
  Without a usable nameserver the file holds only a comment and name resolution fails.
  Read at daemon start: a later change of the host's resolvers needs a restart.
- ``nsswitch.conf``: files for everything, then DNS for hosts.
- ``localtime`` (a UTC TZif file written here) and ``timezone`` (``Etc/UTC``).
- ``ssl/certs`` (a copy of the host's CA directory: the bundle, the per-certificate files and
  their hash links; links into /usr are kept as links, /usr is bound too) and
  ``ssl/openssl.cnf``: ``ssl.create_default_context()`` verifies without certifi. Never
  ``ssl/private``. Copied, not bound: one mount fewer per restore; refreshed at each start
  (the daemon hard-links the entries from host-wide copies, `LINK_TEMPLATES`).
- ``ld.so.cache`` (the host's: without it every shared library lookup walks the default
  directories), ``os-release``, ``services``, ``protocols`` (service and protocol names for
  ``getaddrinfo``/``getservbyname``), ``alternatives`` (the links some /usr/bin commands go
  through, kept only when they point into /usr) and ``mtab`` (a link to /proc/self/mounts).

No ``machine-id``, no ``hostname`` file of the host, no ``ld.so.preload``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

SANDBOX_USER = "sbx_user1051"
NOBODY = 65534
logger = logging.getLogger(__name__)

HOST_ETC = Path("/etc")
# host-wide copies of the CA directory and alternatives (`_template`), hard-linked into each
# daemon's /etc: a link() is ~0.07 ms where a symlink() took 0.7-2.6 ms on a churned ext4
# directory, and the two trees hold ~680 links (0.5-0.7 s of every daemon start)
LINK_TEMPLATES = Path("/var/lib/snapfaas/etc-links")
COPIED = ("ld.so.cache", "os-release", "services", "protocols")  # copied (dereferenced) if the host has them
NSSWITCH = """passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
ethers: files
rpc: files
netgroup: files
"""


def passwd(uid: int) -> str:
    return (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{SANDBOX_USER}:x:{uid}:{uid}::/tmp:/usr/sbin/nologin\n"
        f"nobody:x:{NOBODY}:{NOBODY}:nobody:/nonexistent:/usr/sbin/nologin\n"
    )


def group(gid: int) -> str:
    return f"root:x:0:\n{SANDBOX_USER}:x:{gid}:\nnogroup:x:{NOBODY}:\n"


def hosts(hostname: str) -> str:
    return f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def resolv_conf(host_text: str) -> str:
    """The sandbox's resolv.conf from the host's: non-loopback nameservers and options only."""
    lines = []
    for raw in host_text.splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                address = ipaddress.ip_address(words[1].split("%", 1)[0])
            except ValueError:
                continue
            if not address.is_loopback:
                lines.append(f"nameserver {words[1]}")
        elif words and words[0] == "options":
            lines.append(" ".join(words))
    if not any(line.startswith("nameserver") for line in lines):
        lines.insert(0, "# no nameserver reachable from a sandbox (the host's are loopback-only or absent)")
    return "\n".join(lines) + "\n"


def utc_tzif() -> bytes:
    """A TZif (version 1) file for UTC: one time type, offset 0, abbreviation "UTC"."""
    header = b"TZif" + b"\0" + b"\0" * 15 + struct.pack(">6l", 0, 0, 0, 0, 1, 4)
    return header + struct.pack(">lBB", 0, 0, 0) + b"UTC\0"


def _plan(source: Path) -> list[tuple[str, str, str]]:
    """What the copy of a flat directory of files and links (the CA directory, alternatives)
    holds, by name: ``(name, "link", target)`` for a link whose target is inside /usr or a
    sibling (kept a link), ``(name, "file", path)`` for a file or another link's resolved
    target (copied dereferenced); links that resolve to nothing readable are left out."""
    plan: list[tuple[str, str, str]] = []
    for entry in sorted(source.iterdir()):
        if entry.is_symlink():
            link = os.readlink(entry)
            resolved = entry.resolve()
            if "/" not in link or resolved.is_relative_to("/usr"):
                if resolved.exists() or "/" not in link:
                    plan.append((entry.name, "link", link))
                continue
            if resolved.is_file():
                plan.append((entry.name, "file", str(resolved)))
        elif entry.is_file():
            plan.append((entry.name, "file", str(entry)))
    return plan


def _materialize(plan: list[tuple[str, str, str]], dest: Path) -> None:
    dest.mkdir(mode=0o755)
    for name, kind, what in plan:
        if kind == "link":
            os.symlink(what, dest / name)
        else:
            shutil.copyfile(what, dest / name)
            (dest / name).chmod(0o644)


def _template(plan: list[tuple[str, str, str]], templates: Path) -> Path:
    """`plan` made once under `templates`, named by a digest of the plan and of the copied
    files' stats (a changed host file gives a new template); made in a staging directory and
    renamed into place, so a daemon sees a complete one or none (a concurrent maker's is kept)."""
    digest = hashlib.sha256()
    for name, kind, what in plan:
        st = os.stat(what) if kind == "file" else None
        digest.update(json.dumps([name, kind, what, [st.st_ino, st.st_size, st.st_mtime_ns] if st else None]).encode())
    final = templates / digest.hexdigest()[:32]
    if final.is_dir():
        return final
    templates.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=templates))
    try:
        _materialize(plan, staging / "tree")
        try:
            os.rename(staging / "tree", final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _copy_tree_links(source: Path, dest: Path, templates: Path | None = None) -> None:
    """Copy a flat directory of files and links into `dest` as `_plan` says. With `templates`,
    each entry is a hard link to the host-wide copy (`_template`); where that fails (another
    filesystem, a damaged template) the entries are made here instead."""
    plan = _plan(source)
    if templates is not None:
        try:
            template = _template(plan, templates)
            dest.mkdir(mode=0o755)
            for name, _, _ in plan:
                os.link(template / name, dest / name, follow_symlinks=False)
            return
        except OSError as exc:
            logger.info("/etc: linking %s from %s failed (%s); copying it", source, templates, exc)
            shutil.rmtree(dest, ignore_errors=True)
    _materialize(plan, dest)


def _write(path: Path, content: str | bytes) -> None:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(0o644)


def populate(dest: Path, uid: int, hostname: str, host_etc: Path = HOST_ETC, templates: Path | None = None) -> None:
    """Write the synthesized /etc into the empty directory `dest` (see the module docstring);
    with `templates`, the CA directory and alternatives are hard-linked from host-wide copies there."""
    _write(dest / "passwd", passwd(uid))
    _write(dest / "group", group(uid))
    _write(dest / "hosts", hosts(hostname))
    _write(dest / "hostname", hostname + "\n")
    try:
        host_resolv = (host_etc / "resolv.conf").read_text(errors="replace")
    except OSError:
        host_resolv = ""
    _write(dest / "resolv.conf", resolv_conf(host_resolv))
    _write(dest / "nsswitch.conf", NSSWITCH)
    _write(dest / "localtime", utc_tzif())
    _write(dest / "timezone", "Etc/UTC\n")
    for name in COPIED:
        source = host_etc / name
        if source.is_file():
            shutil.copyfile(source, dest / name)
            (dest / name).chmod(0o644)
    (dest / "ssl").mkdir(mode=0o755)
    if (host_etc / "ssl" / "certs").is_dir():
        _copy_tree_links(host_etc / "ssl" / "certs", dest / "ssl" / "certs", templates)
    if (host_etc / "ssl" / "openssl.cnf").is_file():
        shutil.copyfile(host_etc / "ssl" / "openssl.cnf", dest / "ssl" / "openssl.cnf")
        (dest / "ssl" / "openssl.cnf").chmod(0o644)
    if (host_etc / "alternatives").is_dir():
        _copy_tree_links(host_etc / "alternatives", dest / "alternatives", templates)
    os.symlink("../proc/self/mounts", dest / "mtab")


def build(sandbox_dir: Path, uid: int, hostname: str, host_etc: Path = HOST_ETC, templates: Path | None = None) -> Path:
    """(Re)build ``<sandbox_dir>/etc`` and return it: written into a temporary sibling, then
    swapped in. Contract: called at daemon start, before any environment binds it."""
    final = sandbox_dir / "etc"
    staging = Path(tempfile.mkdtemp(prefix=".etc-", dir=sandbox_dir))
    try:
        populate(staging, uid, hostname, host_etc, templates)
        for dirpath, _, _ in os.walk(staging):
            os.chmod(dirpath, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
