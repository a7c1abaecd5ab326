"""The synthesized /etc (snapfaas.sandbox.etc), built from a fake host /etc in a temp dir."""

from __future__ import annotations

import os
import stat
import zoneinfo
from pathlib import Path

import pytest

from snapfaas.sandbox import etc


@pytest.fixture
def host_etc(tmp_path: Path) -> Path:
    host = tmp_path / "host-etc"
    (host / "ssl" / "certs").mkdir(parents=True)
    (host / "ssl" / "private").mkdir()
    (host / "ssl" / "private" / "key.pem").write_text("PRIVATE")
    (host / "ssl" / "openssl.cnf").write_text("openssl_conf = x\n")
    (host / "ssl" / "certs" / "ca-certificates.crt").write_text("BUNDLE")
    os.symlink("/usr/bin/env", host / "ssl" / "certs" / "Some_CA.pem")  # any existing file under /usr
    os.symlink("ca-certificates.crt", host / "ssl" / "certs" / "abcd1234.0")
    outside = tmp_path / "outside.pem"
    outside.write_text("LOCAL CA")
    os.symlink(outside, host / "ssl" / "certs" / "local.pem")
    (host / "alternatives").mkdir()
    os.symlink("/usr/bin/mawk", host / "alternatives" / "awk")
    os.symlink(str(tmp_path / "nowhere"), host / "alternatives" / "dangling")
    (host / "ld.so.cache").write_bytes(b"ld.so-1.7.0 cache")
    (host / "os-release").write_text('ID=debian\n')
    (host / "services").write_text("https 443/tcp\n")
    (host / "resolv.conf").write_text("nameserver 127.0.0.53\nnameserver 10.1.2.3\nsearch corp.example\noptions edns0\n")
    for name in ("shadow", "machine-id", "ld.so.preload", "hostname"):
        (host / name).write_text("HOST SECRET " + name)
    (host / "passwd").write_text("root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    return host


def test_build(tmp_path: Path, host_etc: Path) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    built = etc.build(sandbox, 1000, "sandbox", host_etc)
    assert built == sandbox / "etc"
    names = sorted(p.name for p in built.iterdir())
    assert names == sorted(["passwd", "group", "hosts", "hostname", "resolv.conf", "nsswitch.conf", "localtime", "timezone",
                            "ld.so.cache", "os-release", "services", "ssl", "alternatives", "mtab"])
    assert (built / "passwd").read_text().splitlines() == [
        "root:x:0:0:root:/root:/usr/sbin/nologin",
        "sbx_user1051:x:1000:1000::/tmp:/usr/sbin/nologin",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
    ]
    assert "alice" not in (built / "passwd").read_text() + (built / "group").read_text()
    assert (built / "group").read_text().splitlines()[1] == "sbx_user1051:x:1000:"
    assert "127.0.0.1\tlocalhost sandbox" in (built / "hosts").read_text()
    assert "::1\tlocalhost" in (built / "hosts").read_text()
    assert (built / "hostname").read_text() == "sandbox\n"
    assert (built / "ld.so.cache").read_bytes() == b"ld.so-1.7.0 cache"
    assert os.readlink(built / "mtab") == "../proc/self/mounts"
    certs = built / "ssl" / "certs"
    assert sorted(p.name for p in (built / "ssl").iterdir()) == ["certs", "openssl.cnf"]  # never private/
    assert (certs / "ca-certificates.crt").read_text() == "BUNDLE"
    assert os.readlink(certs / "Some_CA.pem") == "/usr/bin/env"
    assert os.readlink(certs / "abcd1234.0") == "ca-certificates.crt"
    assert not (certs / "local.pem").is_symlink() and (certs / "local.pem").read_text() == "LOCAL CA"
    assert os.readlink(built / "alternatives" / "awk") == "/usr/bin/mawk"
    assert not (built / "alternatives" / "dangling").exists()
    for path in built.rglob("*"):
        if not path.is_symlink():
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    # rebuilt in place at the next start; no staging directory is left
    (host_etc / "os-release").write_text("ID=debian\nVERSION_ID=13\n")
    etc.build(sandbox, 1000, "sandbox", host_etc)
    assert "VERSION_ID=13" in (sandbox / "etc" / "os-release").read_text()
    assert sorted(p.name for p in sandbox.iterdir()) == ["etc"]


def _tree(root: Path) -> dict[str, object]:
    """Every entry below `root`: a link's target, a file's content and mode, or "dir"."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", stat.S_IMODE(path.stat().st_mode))
        else:
            out[rel] = ("file", path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return out


def test_linked_from_host_wide_templates_the_same_tree_is_built(tmp_path: Path, host_etc: Path) -> None:
    plain, linked, again = (tmp_path / name for name in ("plain", "linked", "again"))
    for sandbox in (plain, linked, again):
        sandbox.mkdir()
    templates = tmp_path / "templates"
    etc.build(plain, 1000, "sandbox", host_etc)
    etc.build(linked, 1000, "sandbox", host_etc, templates)
    assert _tree(linked / "etc") == _tree(plain / "etc")
    assert len(list(templates.iterdir())) == 2  # the CA directory's and the alternatives' copies
    # a second daemon reuses them: its entries are hard links to the same inodes
    etc.build(again, 1000, "sandbox", host_etc, templates)
    assert _tree(again / "etc") == _tree(plain / "etc") and len(list(templates.iterdir())) == 2
    for rel in ("ssl/certs/abcd1234.0", "ssl/certs/local.pem", "alternatives/awk"):
        assert os.lstat(again / "etc" / rel).st_ino == os.lstat(linked / "etc" / rel).st_ino, rel
    # a changed host file gives a new template; a damaged template is not used
    (tmp_path / "outside.pem").write_text("ANOTHER LOCAL CA")
    for template in templates.iterdir():
        for entry in template.iterdir():
            if entry.name == "awk":
                entry.unlink()
    etc.build(again, 1000, "sandbox", host_etc, templates)
    assert (again / "etc" / "ssl" / "certs" / "local.pem").read_text() == "ANOTHER LOCAL CA"
    assert os.readlink(again / "etc" / "alternatives" / "awk") == "/usr/bin/mawk"
    assert sorted(p.name for p in again.iterdir()) == ["etc"]


def test_resolv_conf_keeps_non_loopback_nameservers_and_options() -> None:
    text = ("# comment\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.1.2.3 # office\n"
            "nameserver fe80::1%eth0\nnameserver bogus\nsearch corp.example\ndomain corp.example\noptions edns0 trust-ad\n")
    assert etc.resolv_conf(text) == "nameserver 10.1.2.3\nnameserver fe80::1%eth0\noptions edns0 trust-ad\n"


def test_resolv_conf_without_usable_nameserver_says_so() -> None:
    out = etc.resolv_conf("nameserver 127.0.0.53\n")
    assert "nameserver" not in out.replace("no nameserver", "")
    assert out.startswith("#")


def test_localtime_is_a_valid_utc_tzif(tmp_path: Path) -> None:
    (tmp_path / "UTC").write_bytes(etc.utc_tzif())
    zone = zoneinfo.ZoneInfo.from_file(open(tmp_path / "UTC", "rb"))
    import datetime as dt
    moment = dt.datetime(2026, 7, 1, 12, tzinfo=zone)
    assert moment.utcoffset() == dt.timedelta(0)
    assert moment.tzname() == "UTC"
