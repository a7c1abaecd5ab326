"""Helpers shared by the SnapStart end-to-end tests (test_snapstart*.py).

`Counter` is an HTTP server in the test process that counts requests per path, listening in a
test peer namespace (`tests.netpeer`) that functions reach through their own network namespace's
NAT; what it counts lives outside every snapshot (a count kept inside the function would be
restored, too).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from snapfaas.config import snapshot_cache_for, snapshot_view_for, store_secret_for
from snapfaas.store import ChunkStore, DirectoryOrigin, load_or_create_secret
from tests.conftest import ServerHandle
from tests.storekit import flip_byte
from tests.netpeer import NetPeer

SNAPSTART = {"ApplyOn": "PublishedVersions"}
REPORT_FIELDS = re.compile(r"(?P<key>[A-Z][A-Za-z ]+): (?P<value>[^\t]+)")


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that answers with a body and logs nothing."""

    def answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        return None


def serve_in_peer(peer: NetPeer, handler: type[BaseHTTPRequestHandler], name: str) -> ThreadingHTTPServer:
    """A threading HTTP server listening in `peer`, served by a daemon thread named `name`."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
    httpd.socket.close()
    httpd.socket = peer.listen()
    httpd.server_address = httpd.socket.getsockname()
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name=name, daemon=True).start()
    return httpd


class Counter:
    """Counts GET requests per path and answers with the count so far (as text).

    Connections that never send a request are accepted and held by a handler thread until the
    client closes them (a function can keep one open through init)."""

    def __init__(self, peer: NetPeer) -> None:
        self.peer = peer
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        counter = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                with counter.lock:
                    counter.hits[self.path] += 1
                    body = str(counter.hits[self.path]).encode()
                self.answer(body)

        self.httpd = serve_in_peer(peer, Handler, "counter")

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.peer.ip}:{self.port}"

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits[path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Gate:
    """Holds a function's invoke until the test lets it finish: a GET of ``/<key>`` is answered
    only once `release(key)` was called (or after `hold_s`, a bound for a failing test), so an
    invoke stays in flight exactly as long as the test needs instead of for a fixed sleep.
    Serves in the suite's network peer, like `Counter`."""

    def __init__(self, peer: NetPeer, hold_s: float = 120) -> None:
        self.peer = peer
        self.lock = threading.Lock()
        self.opened: dict[str, threading.Event] = {}
        self.arrived: collections.Counter[str] = collections.Counter()
        gate = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                key = self.path.lstrip("/")
                with gate.lock:
                    gate.arrived[key] += 1
                released = gate.event(key).wait(hold_s)
                self.answer(b"released" if released else b"held-too-long")

        self.httpd = serve_in_peer(peer, Handler, "gate")

    @property
    def url(self) -> str:
        return f"http://{self.peer.ip}:{int(self.httpd.server_address[1])}"

    def event(self, key: str) -> threading.Event:
        with self.lock:
            return self.opened.setdefault(key, threading.Event())

    def held(self, key: str) -> int:
        """How many GETs of ``/<key>`` arrived so far (held until `release`, or answered after it)."""
        with self.lock:
            return self.arrived[key]

    def release(self, key: str) -> None:
        """Answer every held and later GET of ``/<key>``."""
        self.event(key).set()

    def close(self) -> None:
        with self.lock:
            for event in self.opened.values():
                event.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_state(lam, name: str, qualifier: str, states: tuple[str, ...], timeout: float = 60) -> dict:  # type: ignore[no-untyped-def]
    """Poll GetFunctionConfiguration until State is one of `states`; returns the configuration."""
    last: dict[str, Any] = {}

    def check() -> dict | None:
        nonlocal last
        last = lam.get_function_configuration(FunctionName=name, Qualifier=qualifier)
        return last if last["State"] in states else None

    try:
        return wait_for(check, timeout, f"{name}:{qualifier} to reach {states}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last state {last.get('State')} ({last.get('StateReason')})") from None


def publish(lam, name: str, expect: str = "Active", timeout: float = 60) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """PublishVersion, then wait until the version settles; (publish response, final config).

    The publish response of a SnapStart function must be Pending: the snapshot is taken after
    the call returns."""
    response = lam.publish_version(FunctionName=name)
    final = wait_state(lam, name, response["Version"], ("Active", "Failed"), timeout)
    assert final["State"] == expect, f"{name}:{response['Version']} is {final['State']}: {final.get('StateReason')}"
    return response, final


def report(log_result: str) -> dict[str, str]:
    """The fields of the REPORT line in a base64 LogResult tail ("Restore Duration" -> "61.34 ms")."""
    text = base64.b64decode(log_result).decode()
    lines = [line for line in text.splitlines() if line.startswith("REPORT RequestId:")]
    assert len(lines) == 1, f"expected one REPORT line in the log tail:\n{text}"
    return {m["key"]: m["value"].strip() for m in REPORT_FIELDS.finditer(lines[0])}


def assert_restored(log_result: str) -> dict[str, str]:
    """The REPORT of an invoke served by a just-restored environment (and its fields)."""
    fields = report(log_result)
    assert re.fullmatch(r"\d+\.\d{2} ms", fields.get("Restore Duration", "")), fields
    assert re.fullmatch(r"\d+ ms", fields.get("Billed Restore Duration", "")), fields
    assert "Init Duration" not in fields, fields
    return fields


def assert_warm(log_result: str) -> dict[str, str]:
    fields = report(log_result)
    assert not {"Init Duration", "Restore Duration", "Billed Restore Duration"} & fields.keys(), fields
    return fields


def function_log(server: ServerHandle, name: str) -> list[tuple[str, str, str]]:
    """The function's log file as (version, environment id, message) entries; platform lines
    about a version's snapshot (stream ``snapshot/[<version>]``) have an empty environment id."""
    server.flush_logs(name)
    path = server.data_dir / "logs" / f"{name}.log"
    entries = []
    text = path.read_bytes().decode(errors="replace") if path.exists() else ""
    for line in text.split("\n")[:-1]:  # "\r" stays inside an entry (a traceback)
        _, stream, message = line.split("\t", 2)
        match = re.fullmatch(r"(?:.*/)?\[(?P<version>[^\]]+)\](?P<env>.*)", stream)
        if match:
            entries.append((match["version"], match["env"], message))
    return entries


def cache_root(server: ServerHandle) -> Path:
    """The server's plaintext snapshot cache (/dev/shm/snapfaas/<sandbox dir name>)."""
    sandbox = Path(server.extra_args[server.extra_args.index("--sandbox-dir") + 1])
    return snapshot_cache_for(sandbox)


def drop_page_cache() -> None:
    """Drop the host's clean page cache (the snapshot view's included, but pages a live
    process maps): what a restore reads next comes from the store's tiers."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


def view_root(server: ServerHandle) -> Path:
    """The server's snapshot view mount point (lazy restores)."""
    sandbox = Path(server.extra_args[server.extra_args.index("--sandbox-dir") + 1])
    return snapshot_view_for(sandbox)


def store_root(server: ServerHandle) -> Path:
    """The server's store origin directory (``--store-origin``, default <data-dir>/store)."""
    args = server.extra_args
    return Path(args[args.index("--store-origin") + 1]) if "--store-origin" in args else server.data_dir / "store"


def store_cache(server: ServerHandle) -> Path:
    """The server's store disk cache (``--store-cache-dir``, default <data-dir>/store-cache)."""
    args = server.extra_args
    return Path(args[args.index("--store-cache-dir") + 1]) if "--store-cache-dir" in args else server.data_dir / "store-cache"


def snapshot_dirs(server: ServerHandle, name: str, version: str) -> tuple[list[Path], list[Path]]:
    """(manifests of the version's snapshots at the store origin, plaintext image dirs: the
    eager RAM cache's copies and the view's exposures). A manifest's file name is its snapshot
    id. The view's root is not listable: exposures are found by the ids of manifests and of
    RAM cache copies. Lazy leases' local copies of the small images (marked ``.lazy``, page
    images linked into the view) are not image dirs of their own: the exposure stands for them."""
    pattern = re.compile(re.escape(f"{name}-{version}-") + r"[0-9a-f]{12}")

    def matching(root: Path) -> list[Path]:
        return sorted(p for p in root.iterdir() if pattern.fullmatch(p.name)) if root.exists() else []

    manifests = matching(store_root(server) / "manifests")
    copies = [p for p in matching(cache_root(server)) if not (p / ".lazy").exists()]
    exposed = [view_root(server) / p.name for p in manifests if (view_root(server) / p.name).is_dir()]
    return manifests, sorted(copies + exposed)


def chunk_files(root: Path) -> dict[str, Path]:
    """Chunk name -> blob file in a directory origin or disk cache (both fan out by name[:2])."""
    base = root / "chunks" if (root / "chunks").is_dir() else root
    return {p.name: p for p in base.glob("??/*") if p.is_file() and not p.name.startswith(".")}


@contextlib.contextmanager
def origin_store(server: ServerHandle) -> Iterator[ChunkStore]:
    """A cacheless store on the server's directory origin with its data dir's secret."""
    store = ChunkStore(DirectoryOrigin(store_root(server)), load_or_create_secret(store_secret_for(server.data_dir)),
                       cache_dir=None, memory_bytes=0)
    try:
        yield store
    finally:
        store.close()


def manifest_chunks(server: ServerHandle, snapshot_id: str) -> set[str]:
    """The chunk names `snapshot_id`'s manifest references (read with the data dir's secret)."""
    with origin_store(server) as store:
        return store.manifest(snapshot_id).names()


def stored_pages_digest(server: ServerHandle, snapshot_id: str) -> str:
    """sha256 over the snapshot's ``pages-*.img`` files as stored (by name), read from the origin."""
    digest = hashlib.sha256()
    with origin_store(server) as store:
        files = sorted((e for e in store.manifest(snapshot_id).files if re.fullmatch(r"pages-\d+\.img", e.path)),
                       key=lambda e: e.path)
        for entry in files:
            digest.update(store.read(snapshot_id, entry.path, 0, entry.size))
    return digest.hexdigest()


def damage_an_origin_chunk(server: ServerHandle, snapshot_id: str, cached: Path | None) -> None:
    """Flip a byte in one chunk blob of `snapshot_id` at the origin (bit rot), remove its
    disk-cache copy and drop the plaintext RAM copy: the next restore must read that chunk from
    the origin, and fail. (The server under test must run with a negligible chunk memory tier,
    ``--store-memory-bytes 1K``, or an earlier restore may still hold the chunk in memory.)"""
    origin = chunk_files(store_root(server))
    name = max(manifest_chunks(server, snapshot_id), key=lambda n: origin[n].stat().st_size)
    damage_at_origin(server, name, "corrupt")
    if cached is not None:
        shutil.rmtree(cached)


def restore_chunk(manifest: Any, others: set[str]) -> str:
    """The largest chunk of a small image file (CRIU reads those whole at every restore) that no
    snapshot in `others` shares: larger than the 1 KiB chunk memory tier the storage tests run
    with, so a restore must read it from the disk cache or the origin."""
    candidates = [ref for entry in manifest.files if entry.type == "file" and not entry.path.startswith("pages-")
                  for ref in entry.chunks if ref.name is not None and ref.name not in others]
    assert candidates, f"test premise: {manifest.snapshot_id} has an image chunk of its own"
    largest = max(candidates, key=lambda ref: ref.length)
    assert largest.length > 1024, f"test premise: a chunk larger than the memory tier ({largest.length} bytes)"
    return largest.name


def damage_a_restore_chunk(server: ServerHandle, snapshot_id: str, how: str = "corrupt") -> str:
    """Corrupt (flip a byte) or remove, at the origin, a chunk that every restore of
    `snapshot_id` reads, lazy or eager (one of a small image file: CRIU reads those whole) and
    that no other snapshot at the origin shares; drop its disk-cache copy and the host's page
    cache (a publish primes the view's page cache with the whole snapshot). Returns its name."""
    with origin_store(server) as store:
        manifest = store.manifest(snapshot_id)
        others: set[str] = set()
        for other in store.snapshots():
            if other != snapshot_id:
                others |= store.manifest(other).names()
    name = restore_chunk(manifest, others)
    damage_at_origin(server, name, how)
    drop_page_cache()
    return name


def damage_at_origin(server: ServerHandle, name: str, how: str) -> None:
    """Corrupt (a byte flipped mid-blob: bit rot) or remove chunk `name` at the origin, and
    remove its disk-cache copy (the next read of it must go to the origin)."""
    blob = chunk_files(store_root(server))[name]
    if how == "corrupt":
        flip_byte(blob, blob.stat().st_size // 2)
    else:
        blob.unlink()
    chunk_files(store_cache(server)).get(name, Path("/nonexistent")).unlink(missing_ok=True)


def containers_of(server: ServerHandle, env_ids: set[str]) -> list[str]:
    """runc containers still present for the given environment ids."""
    return [c for c in server.runc_containers() if c.removeprefix("sf-") in env_ids]
