"""How a restore brings memory back, against real CRIU: by default (``--restore-memory map``,
snapfaas's CRIU patch) the restored process maps the snapshot's page images copy-on-write;
with ``--restore-memory copy`` CRIU copies every page. Either way the restored memory holds
what init left, and writes stay private to the environment that made them: neither another
restored environment nor the image files ever see them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.snapshot import engine
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.netpeer import NetPeer
from tests.e2e.snapstart_support import (
    SNAPSTART, Counter, assert_restored, function_log, publish, snapshot_dirs, stored_pages_digest, wait_for,
)

APP = """
import hashlib, os, urllib.request

# 24 MiB built at init: lands in the snapshot's page images
BLOCK = bytearray(hashlib.sha256(str(i).encode()).digest()[i % 32] for i in range(4096)) * (6 * 1024)


def image_mappings():
    total = 0
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and os.path.basename(fields[5]).startswith("pages-") and fields[5].endswith(".img"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            total += end - start
    return total


def init_anonymous():  # kB of pid 1's (the environment's init) anonymous memory: copied or written
    for line in open("/proc/1/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    return None


def own_anonymous():  # kB of this process's (the runtime's) anonymous memory
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    return None


def handler(event, context):
    before = hashlib.sha256(BLOCK).hexdigest()
    if event.get("write"):
        BLOCK[::4096] = b"\\xff" * len(BLOCK[::4096])  # one byte in every page: each page is copied
        urllib.request.urlopen(event["written_url"], timeout=5).read()  # tell the test: written
        urllib.request.urlopen(event["release_url"], timeout=30).read()  # wait until it looked elsewhere
    # "env": the credentials token, new in every restored environment (SnapStart functions have no log stream name)
    return {"env": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"], "before": before, "after": hashlib.sha256(BLOCK).hexdigest(),
            "mapped_from_images": image_mappings(), "init_anonymous_kb": init_anonymous(), "anonymous_kb": own_anonymous()}
"""
BLOCK_DIGEST = hashlib.sha256(
    bytearray(hashlib.sha256(str(i).encode()).digest()[i % 32] for i in range(4096)) * (6 * 1024)
).hexdigest()


class Gate(Counter):
    """A `Counter` whose /release path answers only once `open()` was called."""

    def __init__(self, peer: NetPeer) -> None:
        self.opened = threading.Event()
        super().__init__(peer)
        handler_class = self.httpd.RequestHandlerClass
        gate = self

        class Handler(handler_class):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                if self.path == "/release":
                    gate.opened.wait(60)
                super().do_GET()

        self.httpd.RequestHandlerClass = Handler

    def open(self) -> None:
        self.opened.set()


def images_digest(cache_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(cache_dir.glob("pages-*.img")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def copy_server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("copy"), ["--keep-alive", "60", "--restore-memory", "copy"])


def writer_and_reader(lam, server: ServerHandle, name: str, peer: NetPeer) -> tuple[dict, dict, str, str]:  # type: ignore[no-untyped-def]
    """Environment A writes to init's memory and holds; meanwhile B is restored and reads.
    Returns (A's body, B's body, image digest before, image digest after)."""
    create(lam, name, {"app.py": APP}, MemorySize=512, Timeout=60, SnapStart=SNAPSTART)
    publish(lam, name)
    (manifest,) = snapshot_dirs(server, name, "1")[0]
    images_before = stored_pages_digest(server, manifest.name)
    gate = Gate(peer)
    try:
        event = {"write": True, "written_url": f"{gate.url}/written", "release_url": f"{gate.url}/release"}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            writing = pool.submit(invoke_json, lam, name, event, Qualifier="1", LogType="Tail")
            wait_for(lambda: gate.count("/written"), 60, "environment A to write to its memory")
            result, reader = invoke_json(lam, name, {}, Qualifier="1", LogType="Tail")  # A is busy: B restores
            assert_restored(result["LogResult"])
            gate.open()
            result, writer = writing.result(timeout=60)
        assert_restored(result["LogResult"])
    finally:
        gate.open()  # never leave environment A waiting
        gate.close()
    (images,) = snapshot_dirs(server, name, "1")[1]  # the view's exposure (lazy) or the RAM copy (eager)
    return writer, reader, images_before, images_digest(images)


def test_restores_map_the_page_images_and_writes_stay_private(lam, server: ServerHandle, netpeer: NetPeer) -> None:  # type: ignore[no-untyped-def]
    status = engine.probe()
    if not status.maps_pages:
        pytest.fail(f"CRIU lacks snapfaas's map-pages patch ({status.describe()}): run scripts/install-system-deps.sh")
    writer, reader, images_before, images_after = writer_and_reader(lam, server, "mem-map", netpeer)
    assert writer["env"] != reader["env"]
    assert writer["before"] == reader["before"] == BLOCK_DIGEST  # init's memory came back intact
    assert writer["after"] != BLOCK_DIGEST  # A's writes are A's ...
    assert reader["after"] == BLOCK_DIGEST  # ... B, restored after them, does not see them
    assert images_after == images_before  # and they never reached the image files
    assert reader["mapped_from_images"] >= 24 << 20, reader  # the 24 MiB block is mapped, not copied
    # pid 1's memory: the native init's stack, or the Python init's memory mapped too (not copied
    # to pair it with the runtime's) where CRIU has that patch
    if status.maps_inherited_pages:
        assert reader["init_anonymous_kb"] < 512, reader  # what is left: its stack
    assert reader["anonymous_kb"] < 24 << 10, reader  # the block's pages were not copied


def test_copy_mode_restores_the_same_memory_by_copying(copy_server: ServerHandle, netpeer: NetPeer) -> None:
    lam = copy_server.client()
    writer, reader, images_before, images_after = writer_and_reader(lam, copy_server, "mem-copy", netpeer)
    assert writer["before"] == reader["before"] == BLOCK_DIGEST
    assert writer["after"] != BLOCK_DIGEST and reader["after"] == BLOCK_DIGEST
    assert images_after == images_before
    assert reader["mapped_from_images"] == 0 and writer["mapped_from_images"] == 0
    assert reader["anonymous_kb"] >= 24 << 10, reader  # the 24 MiB block, copied back (the map test's contrast)


MOUNTS_APP = """
import os, stat


def describe(top):
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out.append([path, oct(st.st_mode), st.st_uid, st.st_gid, os.readlink(path) if stat.S_ISLNK(st.st_mode) else None])
    return out


def handler(event, context):
    st = os.stat("/tmp")
    with open("/tmp/probe", "w") as f:
        f.write("ok")
    return {"tmp_root": [oct(st.st_mode), st.st_uid, st.st_gid], "me": os.getuid(), "tmp": sorted(os.listdir("/tmp")),
            "acpi": sorted(os.listdir("/proc/acpi")) if os.path.isdir("/proc/acpi") else None,
            "dev": describe("/dev"), "dev_root": oct(os.stat("/dev").st_mode)}
"""


def test_restored_tmpfs_mounts_keep_their_attributes(lam) -> None:  # type: ignore[no-untyped-def]
    """Init leaves /tmp empty, /proc/acpi is masked by an empty tmpfs and runc's /dev holds
    directories, symlinks and empty files: the patched CRIU re-creates all three in-process
    instead of running tar. Each must come back exactly as an on-demand environment sees it."""
    create(lam, "mounts", {"app.py": MOUNTS_APP}, SnapStart=SNAPSTART)
    _, on_demand = invoke_json(lam, "mounts", {})
    publish(lam, "mounts")
    result, restored = invoke_json(lam, "mounts", {}, Qualifier="1", LogType="Tail")
    assert_restored(result["LogResult"])
    assert restored == on_demand, (restored, on_demand)
    assert restored["tmp_root"][1] == restored["me"] == 1000, restored  # the function owns its /tmp
    assert restored["tmp"] == ["probe"], restored
    names = {entry[0]: entry for entry in restored["dev"]}
    assert {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/fd", "/dev/stdout"} <= names.keys(), names
    assert names["/dev/fd"][4] == "/proc/self/fd", names["/dev/fd"]


JEMALLOC_APP = APP.replace("def image_mappings():", """import mmap
# stands for a wheel with jemalloc inside (pyarrow's libarrow): a mapped file carrying its marker
_LIB = open(os.path.join(os.path.dirname(__file__), "libfake_jemalloc.so"), "rb")
LIBRARY = mmap.mmap(_LIB.fileno(), 0, access=mmap.ACCESS_READ)


def image_mappings():""")


def test_a_snapshot_mapping_jemalloc_restores_by_copying(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    """jemalloc trusts MADV_DONTNEED to zero memory, which pages mapped from a snapshot do not
    do: a snapshot whose processes map a jemalloc build restores by copying, and says why."""
    library = b"\0" * 4096 + b"<jemalloc>: Invalid conf pair" + b"\0" * 4096
    create(lam, "mem-jemalloc", {"app.py": JEMALLOC_APP, "libfake_jemalloc.so": library.decode("latin-1")},
           MemorySize=512, SnapStart=SNAPSTART)
    publish(lam, "mem-jemalloc")
    warnings = [m for v, env, m in function_log(server, "mem-jemalloc") if "restores of this version copy memory" in m]
    assert len(warnings) == 1 and "jemalloc in /var/task/libfake_jemalloc.so" in warnings[0], warnings
    result, body = invoke_json(lam, "mem-jemalloc", {}, Qualifier="1", LogType="Tail")
    assert_restored(result["LogResult"])
    assert body["before"] == BLOCK_DIGEST and body["mapped_from_images"] == 0, body


LAYOUT_APP = """
import ctypes, mmap

PAGE = mmap.PAGESIZE
# 64 pages made at init: every fourth page and the last written, two or three never touched
# between (small holes)
REGION = mmap.mmap(-1, 64 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
WRITTEN = [*range(0, 64, 4), 63]
for page in WRITTEN:
    REGION[page * PAGE:page * PAGE + 5] = b"page" + bytes([page])


def pieces(start, end):  # the /proc/self/maps lines that cover [start, end)
    out = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low < end and high > start:
            out.append(line.strip())
    return out


def stack_start():  # the lowest address of the main thread's growsdown mapping (its stack)
    start = None
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            start = int(fields[0].split("-")[0], 16)
        elif fields[0] == "VmFlags:" and "gd" in fields[1:]:
            return start
    return None


def handler(event, context):
    base = ctypes.addressof(ctypes.c_char.from_buffer(REGION))
    contents = [bytes(REGION[p * PAGE:p * PAGE + 5]) == b"page" + bytes([p]) for p in WRITTEN]
    holes = all(REGION[p * PAGE:(p + 1) * PAGE] == bytes(PAGE) for p in range(64) if p not in WRITTEN)
    low = stack_start()
    ctypes.memset(low - 64 * PAGE, 0, PAGE)  # below the stack: the kernel grows it (else SIGSEGV)
    return {"pieces": pieces(base, base + 64 * PAGE), "contents": all(contents), "holes_zero": holes,
            "stack_grew_by": low - stack_start()}
"""


def test_a_restored_process_keeps_its_layout_and_its_stack_grows(lam) -> None:  # type: ignore[no-untyped-def]
    """What a map-pages restore changes in a process's layout stays invisible to it: the stack
    (mapped from the image above its lowest page, patch 0012) still grows below where it was
    at the checkpoint, and an anonymous mapping with small holes keeps its pages and reads
    zeros in its holes; when the checkpoint dumped those holes as zero pages (patch 0013) the
    restore maps the mapping from the image in one piece."""
    status = engine.probe()
    create(lam, "mem-layout", {"app.py": LAYOUT_APP}, MemorySize=512, SnapStart=SNAPSTART)
    publish(lam, "mem-layout")
    result, body = invoke_json(lam, "mem-layout", {}, Qualifier="1", LogType="Tail")
    assert_restored(result["LogResult"])
    assert body.get("stack_grew_by", 0) >= 64 * 4096, body
    assert body["contents"] and body["holes_zero"], body
    if status.maps_pages and engine.FILL_HOLES_PATCH in status.patches:
        assert len(body["pieces"]) == 1 and "/pages-" in body["pieces"][0], body["pieces"]
