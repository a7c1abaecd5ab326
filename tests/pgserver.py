"""A private PostgreSQL cluster for the test session (Debian's server binaries, installed by
``scripts/install-system-deps.sh``): ``initdb`` into a fresh directory (a private tmpfs), started with ``pg_ctl``
as the ``postgres`` system user (the server refuses to run as root), stopped and deleted when the
session ends.

It listens on every address of the test host (``listen_addresses = '*'``) so that servers in the
network namespaces a test creates reach it over their veth; clients authenticate with a password
(scram-sha-256). Each test module gets a database of its own (`create_database`). `stop`/`start`
let a test take the server away and bring it back (outage tests).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

USER = "snapfaas"
TMPFS_SIZE = "4g"  # the cluster's private tmpfs (an upper bound; pages are used as written)


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql (run scripts/install-system-deps.sh)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.owner = pwd.getpwnam("postgres")
        self.base = Path(tempfile.mkdtemp(prefix="snapfaas-pg-"))
        # a private tmpfs: ~100 databases of ~7 MB each are created on it, and unmounting it at the
        # end takes none of the 20-30 s that deleting their files from a disk did
        self.tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "snapfaas-pg",
                                     str(self.base)], capture_output=True).returncode == 0
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        os.chown(self.base, self.owner.pw_uid, self.owner.pw_gid)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
        self._as_postgres(str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=scram-sha-256",
                          f"--pwfile={pwfile}", "--encoding=UTF8", "--no-sync")
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '*'\nport = {self.port}\nunix_socket_directories = '{self.base}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\n")
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        self.start()

    def _as_postgres(self, *argv: str) -> None:
        cmd = ["setpriv", f"--reuid={self.owner.pw_uid}", f"--regid={self.owner.pw_gid}", "--init-groups", *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.base)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr.strip()}\n"
                               f"{self.log.read_text()[-2000:] if self.log.exists() else ''}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections (pg_ctl -w)."""
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                          "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: smart, fast or immediate) and wait until it is gone."""
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://{USER}:{self.password}@{host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL (loopback)."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            if self.tmpfs and subprocess.run(["umount", str(self.base)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "--lazy", str(self.base)], capture_output=True)
            shutil.rmtree(self.base, ignore_errors=True)
