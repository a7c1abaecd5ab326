"""Real CRIU images through the store: a Python process that imported real libraries is
dumped by the real CRIU, the image directory is put into one ChunkStore, materialized through
a second one with an empty cache (same origin and secret only), and CRIU restores the process
from the materialized copy; the restored process answers. Also prints stored vs raw bytes and
the chunks two independently initialized versions share (measurements, not assertions)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from snapfaas.snapshot import engine
from snapfaas.store import ChunkStore, DirectoryOrigin
from tests.conftest import ProcessFactory, require_root
from tests.storekit import tree_digest

SECRET = bytes(range(32))
WAIT = 60.0

HANDLER = textwrap.dedent("""
    import json, os, time
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # no terminal or inherited pipe for CRIU to care about
    import boto3, botocore.session, zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    MODEL = botocore.session.get_session().get_service_model("lambda")
    TABLE = {i: str(i) * 3 for i in range(20000)}
    ANSWER = "{answer}"
    open("ready", "w").close()
    while True:
        if os.path.exists("ping"):
            os.remove("ping")
            with open("pong.tmp", "w") as out:
                out.write(json.dumps([ANSWER, len(TABLE), MODEL.service_name]))
            os.rename("pong.tmp", "pong")
        time.sleep(0.02)
""")


def wait_for(path: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            pytest.fail(f"{path} never appeared")
        time.sleep(0.02)  # polling a condition under a deadline


def start_function(processes: ProcessFactory, workdir: Path, answer: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True)
    (workdir / "handler.py").write_text(HANDLER.replace("{answer}", answer))
    proc = processes.start([sys.executable, str(workdir / "handler.py")], workdir / "out.log", env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    wait_for(workdir / "ready", proc)
    return proc


def criu_binary() -> str:
    status = engine.probe()
    assert status.available and status.binary, status.describe()
    return status.binary


def dump(criu: str, proc: subprocess.Popen[bytes], images: Path) -> None:
    """`criu dump` the process (a session leader without a terminal); it is gone afterwards."""
    images.mkdir()
    result = subprocess.run([criu, "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (images / "dump.log").read_text()[-3000:]
    proc.wait(timeout=WAIT)  # CRIU killed it after dumping; reap it
    (images / "dump.log").unlink()


def test_criu_images_round_trip_through_the_store_and_restore(tmp_path: Path, processes: ProcessFactory) -> None:
    require_root()
    criu = criu_binary()
    workdir = tmp_path / "fn"
    proc = start_function(processes, workdir, "v1")
    images = tmp_path / "images"
    dump(criu, proc, images)

    writer = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=tmp_path / "cache-w")
    writer.put_tree("fn-1-aaaa", images)
    writer.close()
    reader = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=tmp_path / "cache-r")
    restored_images = tmp_path / "restored-images"
    reader.materialize("fn-1-aaaa", restored_images)
    assert tree_digest(restored_images) == tree_digest(images)
    stats = reader.snapshot_stats("fn-1-aaaa")
    print(f"\nreal CRIU images of a Python process (boto3, botocore, cryptography, zstandard imported): "
          f"raw {stats.raw_bytes} B in {stats.files} files, {stats.chunks} chunks, holes {stats.hole_bytes} B, "
          f"stored {stats.stored_bytes} B = {stats.stored_bytes / stats.raw_bytes:.1%} of raw")
    reader.close()

    shutil.rmtree(images)  # the restore can only use the store's copy
    pidfile = tmp_path / "restored.pid"
    result = subprocess.run([criu, "restore", "-D", str(restored_images), "-d", "--pidfile", str(pidfile), "-o", "restore.log"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (restored_images / "restore.log").read_text()[-3000:]
    pid = int(pidfile.read_text())
    try:
        (workdir / "ping").write_text("")
        wait_for(workdir / "pong")
        assert (workdir / "pong").read_text() == '["v1", 20000, "lambda"]'
    finally:
        os.kill(pid, signal.SIGKILL)  # the restored process is ours (started by this test's restore)


def test_two_independently_initialized_versions_measured(tmp_path: Path, processes: ProcessFactory) -> None:
    """Measurement only: how many chunks two versions differing in one line share when each is
    initialized in its own process (ASLR and run-to-run differences move most heap pages)."""
    require_root()
    criu = criu_binary()
    store = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=None)
    for version in ("1", "2"):
        proc = start_function(processes, tmp_path / f"fn-{version}", f"v{version}")
        dump(criu, proc, tmp_path / f"images-{version}")
        store.put_tree(f"fn-{version}-aaaa", tmp_path / f"images-{version}")
    one, two = store.snapshot_stats("fn-1-aaaa"), store.snapshot_stats("fn-2-aaaa")
    stats = store.stats()
    print(f"\ntwo versions, one line apart, each initialized in its own process: v2 shares {two.shared_chunks} of its "
          f"{two.chunks} chunks with v1; stored {stats.stored_bytes} B for {stats.raw_bytes} B raw "
          f"({stats.stored_bytes / stats.raw_bytes:.1%}); dedup ratio {stats.dedup_ratio:.2f}")
    assert one.chunks > 0 and two.chunks > 0
    store.close()
